"""The operator commands on real files and real processes: tail, tail -f, log verify/repair."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sentinel_daemon.core.events import JobSubmitted, TrialSaved, TrialStarted
from sentinel_daemon.log.store import Store
from tests.helpers import wait_for

SENTINEL = [sys.executable, "-m", "sentinel_daemon.cli"]


def run(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SENTINEL, *args, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def fill(state_dir: Path, jobs: int = 2, trials: int = 3, segment_bytes: int = 1 << 20) -> None:
    store = Store.open(state_dir, segment_bytes=segment_bytes)
    for j in range(jobs):
        store.append(
            [
                JobSubmitted(
                    job_id=f"j{j}", name="fraud", spec={}, file="f.yaml", file_sha256="0" * 64
                )
            ]
        )
        for t in range(trials):
            store.append(
                [
                    TrialStarted(
                        job_id=f"j{j}",
                        trial=t,
                        model="lightgbm",
                        params={"num_leaves": 31},
                        attempt=1,
                    )
                ]
            )
            store.append(
                [
                    TrialSaved(
                        job_id=f"j{j}",
                        trial=t,
                        model="lightgbm",
                        value=0.9,
                        metrics={"roc_auc": 0.9},
                        artifact="a",
                        sha256="0" * 64,
                        duration_s=1.0,
                    )
                ]
            )
    store.close()


def test_tail_prints_the_last_records_for_people_and_as_raw_json(state_dir: Path) -> None:
    fill(state_dir)
    human = run("tail", "-n", "3", state_dir=state_dir)
    assert human.returncode == 0
    lines = human.stdout.splitlines()
    assert len(lines) == 3 and "trial.saved" in lines[-1] and "#14" in lines[-1]
    raw = run("tail", "--all", "--json", "--type", "trial.*", "--job", "j1", state_dir=state_dir)
    objs = [json.loads(line) for line in raw.stdout.splitlines()]
    assert len(objs) == 6
    assert {o["job_id"] for o in objs} == {"j1"} and all(
        o["type"].startswith("trial.") for o in objs
    )
    assert all("seq" in o and "ts" in o for o in objs)


def test_tail_follow_keeps_printing_across_segment_rotation(state_dir: Path) -> None:
    fill(state_dir, jobs=1, trials=1, segment_bytes=4096)
    proc = subprocess.Popen(
        [
            *SENTINEL,
            "tail",
            "-f",
            "--json",
            "-n",
            "1",
            "--type",
            "trial.saved",
            "--state-dir",
            str(state_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    reader = threading.Thread(target=pump)
    reader.start()
    try:
        first = json.loads(lines.get(timeout=30))  # tail printed the past: it is following now
        assert first["trial"] == 0
        store = Store.open(state_dir, segment_bytes=4096)
        segments_before = len(list((state_dir / "events").glob("*.jsonl")))
        for t in range(1, 40):
            store.append(
                [
                    TrialStarted(job_id="j0", trial=t, model="xgboost", params={}, attempt=1),
                    TrialSaved(
                        job_id="j0",
                        trial=t,
                        model="xgboost",
                        value=t / 100,
                        metrics={},
                        artifact="a",
                        sha256="0" * 64,
                        duration_s=1.0,
                    ),
                ]
            )
        store.close()
        assert len(list((state_dir / "events").glob("*.jsonl"))) > segments_before + 2
        seen: list[dict] = []

        def got_all() -> bool:
            while not lines.empty():
                seen.append(json.loads(lines.get()))
            return len(seen) >= 39

        wait_for(got_all, timeout=20, what="tail -f to print 39 records")
        assert [o["trial"] for o in seen] == list(range(1, 40))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        reader.join(timeout=10)
        if proc.stdout:
            proc.stdout.close()
    assert proc.returncode == 0


def test_verify_passes_an_intact_log(state_dir: Path) -> None:
    fill(state_dir)
    result = run("log", "verify", "--json", state_dir=state_dir)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["records"] == 14 and report["snapshot"]["status"] == "ok"


def test_verify_names_segment_and_line_of_corruption_and_exits_non_zero(state_dir: Path) -> None:
    fill(state_dir)
    seg = sorted((state_dir / "events").glob("*.jsonl"))[0]
    lines = seg.read_bytes().split(b"\n")
    lines[4] = lines[4].replace(b"0.9", b"0.8", 1)
    seg.write_bytes(b"\n".join(lines))
    result = run("log", "verify", state_dir=state_dir)
    assert result.returncode == 1
    assert f"{seg} line 5" in result.stderr and "sentinel log repair" in result.stderr


def test_verify_reports_a_torn_tail_and_repair_cuts_it_after_a_backup(state_dir: Path) -> None:
    fill(state_dir)
    seg = sorted((state_dir / "events").glob("*.jsonl"))[-1]
    with open(seg, "ab") as fh:
        fh.write(b'{"seq":15,"ts":"20')
    verify = run("log", "verify", state_dir=state_dir)
    assert verify.returncode == 1 and "torn tail" in verify.stderr and "line 15" in verify.stderr
    repaired = run("log", "repair", "--json", state_dir=state_dir)
    assert repaired.returncode == 0, repaired.stderr
    detail = json.loads(repaired.stdout)
    assert detail["action"] == "cut" and Path(detail["backup"]).read_bytes().endswith(b'"ts":"20')
    again = run("log", "verify", "--json", state_dir=state_dir)
    assert again.returncode == 0
    tail = run("tail", "-n", "1", "--json", state_dir=state_dir)
    assert json.loads(tail.stdout)["type"] == "log.repaired"


def test_repair_refuses_mid_log_corruption_unless_asked_to_truncate(state_dir: Path) -> None:
    fill(state_dir)
    seg = sorted((state_dir / "events").glob("*.jsonl"))[0]
    lines = seg.read_bytes().split(b"\n")
    lines[6] = b"x" + lines[6]
    seg.write_bytes(b"\n".join(lines))
    refused = run("log", "repair", state_dir=state_dir)
    assert refused.returncode == 1 and "line 7" in refused.stderr
    cut = run("log", "repair", "--truncate-corrupt", "--json", state_dir=state_dir)
    assert cut.returncode == 0, cut.stderr
    assert json.loads(cut.stdout)["last_seq"] == 7  # six whole records, then log.repaired
    store = Store.open(state_dir)  # the daemon starts on the repaired log (snapshot ignored)
    assert store.state.last_seq == 7 and store.report.snapshot_problem is not None
    store.close()


def test_repair_refuses_while_another_process_holds_the_state_dir(state_dir: Path) -> None:
    fill(state_dir)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from sentinel_daemon.log.store import Store;"
            "s = Store.open(Path(sys.argv[1])); print('locked', flush=True); sys.stdin.read()",
            str(state_dir),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result = run("log", "repair", state_dir=state_dir)
        assert result.returncode == 1
        assert f"locked by pid {holder.pid}" in result.stderr
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()  # type: ignore[union-attr]


def test_bad_settings_exit_2_naming_the_key(state_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("eventlog:\n  snapshot_every: often\n")
    result = subprocess.run(
        [*SENTINEL, "tail", "--config", str(cfg), "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert result.returncode == 2
    assert "eventlog.snapshot_every" in result.stderr and str(cfg) in result.stderr


@pytest.mark.parametrize("args", [["tail"], ["log", "verify"]])
def test_readers_work_on_an_empty_state_dir(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "empty").mkdir()
    result = run(*args, state_dir=tmp_path / "empty")
    assert result.returncode == 0, result.stderr


def test_verify_prints_readable_lines_for_people(state_dir: Path) -> None:
    fill(state_dir)
    result = run("log", "verify", state_dir=state_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "{" not in result.stdout and "'" not in result.stdout  # no Python dict
    assert lines[0].startswith("00000000000000000001.jsonl  seq 1..")
    assert "snapshot: ok, at seq 14" in lines
    assert lines[-1] == "ok: 14 records, last seq 14"
    (state_dir / "snapshot.json").unlink()
    again = run("log", "verify", state_dir=state_dir)
    assert "snapshot: none (start-up replays the whole log)" in again.stdout.splitlines()


def test_verify_flags_an_empty_stray_segment_and_repair_sets_it_aside(state_dir: Path) -> None:
    fill(state_dir)
    stray = state_dir / "events" / "00000000000000000100.jsonl"
    stray.touch()
    verify = run("log", "verify", state_dir=state_dir)
    assert verify.returncode == 1
    assert f"events/{stray.name}: an empty segment" in verify.stderr
    assert "sentinel log repair" in verify.stderr
    repaired = run("log", "repair", state_dir=state_dir)
    assert repaired.returncode == 0, repaired.stderr
    assert f"mended {stray.name}: set aside a stray empty segment" in repaired.stdout
    assert not stray.exists()
    assert run("log", "verify", state_dir=state_dir).returncode == 0


def test_repair_says_what_to_restore_for_damage_it_cannot_mend(state_dir: Path) -> None:
    fill(state_dir)
    seg = sorted((state_dir / "events").glob("*.jsonl"))[0]
    lines = seg.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"lightgbm", b"lightgbX", 1)
    seg.write_bytes(b"\n".join(lines))
    result = run("log", "repair", state_dir=state_dir)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"NOT MENDED: {seg} line 3: corrupt" in result.stderr
    assert f"replace {seg} with a backup copy of that segment holding seq 1" in result.stderr
