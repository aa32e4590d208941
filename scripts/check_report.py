"""Open a job report in headless Chromium and check that every image it shows renders.

Usage: python scripts/check_report.py STATE/jobs/JOB/report/index.html [--screenshot OUT.png]

Chromium loads a copy of the report folder with a probe page that holds the same images
with onload/onerror handlers, and dumps the DOM once its virtual time has run out: each
image is marked loaded (with its decoded width) or broken. It also renders index.html
itself to a screenshot. Exit 0 when every image rendered; 1 otherwise; 2 without Chromium.
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--allow-file-access-from-files",
    "--virtual-time-budget=10000",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def browser() -> str | None:
    return next((p for b in BROWSERS if (p := shutil.which(b))), None)


def image_sources(index: Path) -> list[str]:
    return re.findall(r'<img[^>]+src="([^"]+)"', index.read_text(encoding="utf-8"))


def check(index: Path, screenshot: Path | None = None) -> dict[str, str]:
    """Source -> "loaded <width>px" or "broken", as Chromium saw it."""
    exe = browser()
    if exe is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    sources = image_sources(index)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "report"
        shutil.copytree(index.parent, folder)
        probes = "\n".join(
            f'<img data-src="{html.escape(src)}" src="{html.escape(src)}" '
            "onload=\"this.setAttribute('data-state','loaded '+this.naturalWidth+'px')\" "
            "onerror=\"this.setAttribute('data-state','broken')\">"
            for src in sources
        )
        probe = folder / "probe.html"
        probe.write_text(f"<!doctype html><html><body>{probes}</body></html>", encoding="utf-8")
        profile = ["--user-data-dir=" + str(Path(tmp) / "profile")]
        dom = subprocess.run(
            [exe, *FLAGS, *profile, "--dump-dom", probe.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        if screenshot is not None:
            subprocess.run(
                [
                    exe,
                    *FLAGS,
                    *profile,
                    f"--screenshot={screenshot.resolve()}",
                    "--window-size=1200,2400",
                    (folder / "index.html").as_uri(),
                ],
                capture_output=True,
                timeout=120,
                check=True,
            )
    states: dict[str, str] = {}
    for tag in re.findall(r"<img[^>]*>", dom):
        src = re.search(r'data-src="([^"]*)"', tag)
        state = re.search(r'data-state="([^"]*)"', tag)
        if src:
            states[html.unescape(src[1])] = state[1] if state else "not loaded"
    return {src: states.get(src, "missing") for src in sources}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path)
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args()
    if browser() is None:
        print("no Chromium found: apt-get install chromium", file=sys.stderr)
        return 2
    states = check(args.index, args.screenshot)
    for src, state in states.items():
        print(f"{state:14s} {src}")
    bad = [s for s, st in states.items() if not st.startswith("loaded")]
    print(
        f"{len(states) - len(bad)} of {len(states)} images rendered"
        + (f"; broken: {bad}" if bad else "")
    )
    return 1 if bad or not states else 0


if __name__ == "__main__":
    sys.exit(main())
