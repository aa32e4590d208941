"""The job report: a self-contained HTML folder of charts and tables, from log and models."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sentinel_daemon import ml
from sentinel_daemon.cli import main as cli_main
from sentinel_daemon.core.events import JobSubmitted
from sentinel_daemon.errors import UnknownJob
from sentinel_daemon.layout import report_index
from sentinel_daemon.log.store import Store
from sentinel_daemon.tools.history import JobHistory, Outcome, TrialRecord, read_history
from sentinel_daemon.tools.report import (
    REPORT_LOCK,
    ReportError,
    build_report,
    feature_gains,
    write_report,
)
from tests.jobkit import JOB, BuiltJob, build_job, job_spec, make_data

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_data(tmp_path_factory.mktemp("report-data"))


@pytest.fixture(scope="module")
def promoted(tmp_path_factory: pytest.TempPathFactory, data: tuple[Path, Path]) -> BuiltJob:
    return build_job(tmp_path_factory.mktemp("promoted") / "state", data, promote=True)


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory, data: tuple[Path, Path]) -> BuiltJob:
    return build_job(tmp_path_factory.mktemp("refused") / "state", data, promote=False)


@pytest.fixture(scope="module")
def promoted_index(promoted: BuiltJob) -> Path:
    """The promoted job's report, written once; the data are prepared through its cache."""

    def matrices() -> list[tuple[str, int]]:
        cache = promoted.state_dir / "cache"
        return sorted((p.name, p.stat().st_mtime_ns) for p in cache.glob("*.parquet"))

    before = matrices()
    index = write_report(promoted.state_dir, promoted.job_id)
    assert matrices() == before, "the feature matrix was built again, not read from the cache"
    return index


def linked_files(index: Path) -> list[str]:
    text = index.read_text(encoding="utf-8")
    return re.findall(r'(?:src|href)="([^"]*)"', text)


def assert_self_contained(index: Path) -> None:
    text = index.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert (
        "http://" not in text
        and "https://" not in text
        and "//" not in "".join(linked_files(index))
    )
    for name in linked_files(index):
        assert "/" not in name and not name.startswith(".")  # beside index.html
        target = index.parent / name
        assert target.is_file(), name
        if name.endswith(".png"):
            assert target.read_bytes().startswith(PNG), name
    assert sorted(p.name for p in index.parent.iterdir()) == sorted(
        {*linked_files(index), "index.html"}
    ), "every file in the folder is linked, and nothing else is there"


def test_a_promoted_jobs_report_has_every_chart_and_opens_from_disk(
    promoted: BuiltJob, promoted_index: Path
) -> None:
    index = promoted_index
    assert index == promoted.state_dir / "jobs" / JOB / "report" / "index.html"
    assert_self_contained(index)
    assert set(linked_files(index)) == {
        "history-xgboost.png",
        "history-lightgbm.png",
        "importance-xgboost.png",
        "importance-lightgbm.png",
        "roc.png",
        "precision-recall.png",
        "features.png",
    }
    text = index.read_text(encoding="utf-8")
    assert f"Trial {promoted.promoted} (" in text
    assert "Quality gate passed" in text


def test_the_best_trials_table_lists_saved_trials_by_value_with_their_params(
    promoted: BuiltJob, promoted_index: Path
) -> None:
    text = promoted_index.read_text(encoding="utf-8")
    table = text.split("<h2>Best trials</h2>", 1)[1]
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\w+)</td><td>([0-9.]+)</td>", table)
    saved = {n: t for n, t in promoted.trials.items() if t["outcome"] == "saved"}
    expected = sorted(saved, key=lambda n: -saved[n]["value"])
    assert [int(n) for n, _, _ in rows] == expected
    for n, _, value in rows:
        assert float(value) == pytest.approx(saved[int(n)]["value"], abs=5e-5)
        for name, param in saved[int(n)]["params"].items():
            assert f"{name}={param}" in table


def test_a_job_completed_without_promotion_gets_history_importances_and_says_why_no_curves(
    refused: BuiltJob,
) -> None:
    # In a separate process, as the daemon will run it.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from sentinel_daemon.tools.report import "
            "write_report; print(write_report(Path(sys.argv[1]), sys.argv[2]))",
            str(refused.state_dir),
            refused.job_id,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    index = Path(done.stdout.strip())
    assert index == report_index(refused.state_dir, refused.job_id)
    assert_self_contained(index)
    assert set(linked_files(index)) == {
        "history-xgboost.png",
        "history-lightgbm.png",
        "importance-xgboost.png",
        "importance-lightgbm.png",
    }
    text = index.read_text(encoding="utf-8")
    assert "No model was promoted: test ROC AUC" in text and "below min_test_auc" in text
    assert "Quality gate refused" in text
    assert "<h2>Best trials</h2>" in text


def test_the_promoted_models_features_are_named_from_its_meta(promoted: BuiltJob) -> None:
    history = read_history(promoted.state_dir, promoted.job_id)
    assert history.promoted is not None
    loaded = ml.load_model(promoted.state_dir / history.promoted.artifact, history.promoted.sha256)
    names = loaded.meta["feature_names"]
    gains = feature_gains(loaded, names)
    assert gains and all(name in names for name, _ in gains)
    assert [g for _, g in gains] == sorted((g for _, g in gains), reverse=True)


def one_saved_trial_each(tmp_path: Path) -> JobHistory:
    spec = job_spec((tmp_path / "t.csv", tmp_path / "i.csv"))
    history = JobHistory(JOB, "fraud-report", spec, "2025-06-02T08:00:00.000000Z")
    history.status, history.ended = "failed", "2025-06-02T08:05:00.000000Z"
    history.reason = "validate failed: the data file is gone"
    params = {"xgboost": {"max_depth": 3}, "lightgbm": {"num_leaves": 8}}
    for number, model in enumerate(("xgboost", "lightgbm")):
        history.trials[number] = TrialRecord(
            number=number,
            model=model,
            params=params[model],
            attempts=1,
            started="2025-06-02T08:01:00.000000Z",
            outcome=Outcome.SAVED,
            ended="2025-06-02T08:02:00.000000Z",
            value=0.9 - number / 10,
            duration_s=75.0,
        )
    return history


def test_a_model_with_fewer_than_two_completed_trials_says_not_enough_trials(
    tmp_path: Path,
) -> None:
    files = build_report(tmp_path, one_saved_trial_each(tmp_path))
    text = files["index.html"].decode()
    assert text.count("Not enough trials: 1 completed, 2 needed") == 2
    assert not any(name.startswith("importance-") for name in files)
    assert "The job failed: validate failed: the data file is gone." in text
    assert "<td>1 min 15 s</td>" in text


def test_text_from_the_log_is_escaped(tmp_path: Path) -> None:
    history = one_saved_trial_each(tmp_path)
    history.reason = "<img src=x onerror=alert(1)>"
    text = build_report(tmp_path, history)["index.html"].decode()
    assert "<img src=x" not in text and "&lt;img src=x" in text


def test_rewriting_replaces_the_report_whole_and_clears_a_dead_writers_leftovers(
    refused: BuiltJob,
) -> None:
    job_dir = refused.state_dir / "jobs" / JOB
    first = write_report(refused.state_dir, refused.job_id)
    (first.parent / "stale.png").write_bytes(b"from an older report")
    (job_dir / ".report.999999999.tmp").mkdir()  # a writer killed mid-build
    (job_dir / ".report.999999999.old").mkdir()  # ... or between its two renames
    second = write_report(refused.state_dir, refused.job_id)
    assert second == first and not (second.parent / "stale.png").exists()
    assert sorted(p.name for p in job_dir.iterdir() if p.name.startswith(".report")) == [
        REPORT_LOCK
    ]


def test_a_running_or_unknown_job_gets_no_report(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    store = Store.open(state_dir)
    try:
        spec = job_spec((tmp_path / "t.csv", tmp_path / "i.csv"))
        store.append(
            [JobSubmitted(job_id=JOB, name="fraud-report", spec=spec, file="f", file_sha256="0")]
        )
    finally:
        store.close(snapshot=False)
    with pytest.raises(ReportError, match="still running"):
        write_report(state_dir, JOB)
    with pytest.raises(UnknownJob):
        write_report(state_dir, "no-such-job")
    assert not (state_dir / "jobs" / JOB / "report").exists()


def test_sentinel_report_writes_when_missing_and_rewrites_only_when_forced(
    refused: BuiltJob, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI points structlog at sys.stdout, here the capture that closes after the test.
    monkeypatch.setattr("sentinel_daemon.cli.configure_logging", lambda *args: None)
    index = report_index(refused.state_dir, refused.job_id)
    args = ["report", "--state-dir", str(refused.state_dir), refused.job_id]
    if index.exists():
        os.unlink(index)
    assert cli_main(args) == 0
    assert capsys.readouterr().out.strip() == str(index)
    written = index.stat().st_mtime_ns
    assert cli_main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"job_id": refused.job_id, "report": str(index), "written": False}
    assert index.stat().st_mtime_ns == written
    assert cli_main([*args, "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["written"] is True
    assert cli_main(["report", "--state-dir", str(refused.state_dir), "../etc"]) == 1
    assert "not a job id" in capsys.readouterr().err


@pytest.mark.skipif(
    shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
    reason="Chromium is not installed (apt-get install chromium); `make report-check` "
    "runs the same check on the demo job's report",
)
def test_the_report_renders_every_image_in_headless_chromium(
    promoted_index: Path, tmp_path: Path
) -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import check_report
    finally:
        sys.path.remove(str(REPO / "scripts"))
    shot = tmp_path / "page.png"
    states = check_report.check(promoted_index, screenshot=shot)
    assert len(states) >= 6, states  # history x2, importances x2, ROC, PR, features
    assert all(state.startswith("loaded") for state in states.values()), states
    assert shot.read_bytes().startswith(PNG)
