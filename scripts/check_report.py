"""Open a job report alone in headless Chromium and check that every image it shows renders.

Usage: python scripts/check_report.py STATE/jobs/JOB/report/index.html [--screenshot OUT.png]

The report must stand on its own, as when it is attached to a ticket: the check copies
``index.html`` ALONE into an empty folder elsewhere, and a probe page in a sibling folder
loads that copy in an iframe. When the copy has loaded, the probe's script lists each
``<img>`` of it (decoded, with its width, or broken) in its own DOM, which ``--dump-dom``
prints. It also renders the copy to a screenshot. Exit 0 when every
image rendered; 1 otherwise; 2 without Chromium (``apt-get install chromium``).
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
    # The probe reads the iframe's document: both are file:// pages.
    "--allow-file-access-from-files",
    "--disable-web-security",
    "--virtual-time-budget=15000",
    "--no-first-run",
    "--disable-dev-shm-usage",
]

# Once the copy has loaded (a document's load event waits for its images), writes one
# <li data-alt=... data-state=...> per image into the probe's own body: "loaded <width>px"
# when the browser decoded it (complete, with a natural width), else "broken".
PROBE = """<!doctype html><html><body><ol id="images"></ol>
<iframe id="report" width="1200" height="800"></iframe>
<script>
const frame = document.getElementById("report");
const list = document.getElementById("images");
frame.addEventListener("load", () => {
  const doc = frame.contentDocument;
  if (!doc) { list.setAttribute("data-error", "the report's document is not readable"); return; }
  for (const img of doc.images) {
    const item = document.createElement("li");
    item.setAttribute("data-alt", img.getAttribute("alt") || "");
    const ok = img.complete && img.naturalWidth > 0;
    item.setAttribute("data-state", ok ? "loaded " + img.naturalWidth + "px" : "broken");
    list.appendChild(item);
  }
  list.setAttribute("data-done", String(doc.images.length));
});
frame.src = "REPORT";  // after the listener: a local file may load at once
</script></body></html>
"""


def browser() -> str | None:
    return next((p for b in BROWSERS if (p := shutil.which(b))), None)


def image_sources(index: Path) -> list[str]:
    return re.findall(r'<img[^>]+src="([^"]+)"', index.read_text(encoding="utf-8"))


def check(index: Path, screenshot: Path | None = None) -> dict[str, str]:
    """``"<n> <alt>"`` -> ``"loaded <width>px"`` or ``"broken"``, as Chromium saw each image
    of a lone copy of ``index``; ``"missing"`` for an image the probe did not report."""
    exe = browser()
    if exe is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    expected = len(image_sources(index))
    with tempfile.TemporaryDirectory() as tmp:
        alone = Path(tmp) / "attachment"
        alone.mkdir()
        copy = alone / "index.html"
        shutil.copyfile(index, copy)  # and nothing else: no PNG, no folder beside it
        probe_dir = Path(tmp) / "probe"
        probe_dir.mkdir()
        probe = probe_dir / "probe.html"
        probe.write_text(PROBE.replace("REPORT", html.escape(copy.as_uri())), encoding="utf-8")
        profile = ["--user-data-dir=" + str(Path(tmp) / "profile")]
        dom = subprocess.run(
            [exe, *FLAGS, *profile, "--dump-dom", probe.as_uri()],
            capture_output=True,
            text=True,
            timeout=180,
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
                    copy.as_uri(),
                ],
                capture_output=True,
                timeout=180,
                check=True,
            )
    states: dict[str, str] = {}
    for n, tag in enumerate(re.findall(r"<li [^>]*>", dom)):
        alt = re.search(r'data-alt="([^"]*)"', tag)
        state = re.search(r'data-state="([^"]*)"', tag)
        states[f"{n} {html.unescape(alt[1]) if alt else ''}"] = state[1] if state else "?"
    for n in range(len(states), expected):
        states[f"{n} (not reported by the probe)"] = "missing"
    return states


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path, help="a report's index.html")
    parser.add_argument("--screenshot", type=Path, default=None, help="also render it here")
    args = parser.parse_args()
    if browser() is None:
        print("no Chromium found: apt-get install chromium", file=sys.stderr)
        return 2
    states = check(args.index, args.screenshot)
    for image, state in states.items():
        print(f"{state:14s} {image}")
    bad = [s for s, st in states.items() if not st.startswith("loaded")]
    print(
        f"{len(states) - len(bad)} of {len(states)} images rendered from a lone copy of "
        f"{args.index.name}" + (f"; broken: {bad}" if bad else "")
    )
    return 1 if bad or not states else 0


if __name__ == "__main__":
    sys.exit(main())
