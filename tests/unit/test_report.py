"""The job report: one self-contained HTML file of charts and tables, from log and models."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from sentinel_daemon import ml
from sentinel_daemon.cli import main as cli_main
from sentinel_daemon.core.events import JobSubmitted
from sentinel_daemon.errors import UnknownJob
from sentinel_daemon.layout import report_index
from sentinel_daemon.log.store import Store
from sentinel_daemon.ml.study import TRIAL_ATTR
from sentinel_daemon.tools.export import export_optuna, study_name
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


def image_alts(index: Path) -> set[str]:
    return set(
        re.findall(r'<img src="data:image/png;base64,[^"]+" alt="([^"]*)"', index.read_text())
    )


def assert_self_contained(index: Path) -> None:
    """One file, nothing beside it: every image inline as a PNG, no script, no network."""
    text = index.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert "http://" not in text and "https://" not in text
    links = linked_files(index)
    assert links, "the report shows no image"
    for link in links:
        assert link.startswith("data:image/png;base64,"), link[:80]
        assert base64.b64decode(link.split(",", 1)[1]).startswith(PNG)
    assert [p.name for p in index.parent.iterdir()] == ["index.html"]


def test_a_promoted_jobs_report_has_every_chart_inline_in_one_file(
    promoted: BuiltJob, promoted_index: Path
) -> None:
    index = promoted_index
    assert index == promoted.state_dir / "jobs" / JOB / "report" / "index.html"
    assert_self_contained(index)
    assert image_alts(index) == {
        "xgboost optimisation history",
        "lightgbm optimisation history",
        "xgboost parameter importances",
        "lightgbm parameter importances",
        "ROC curve on the test split",
        "precision-recall curve",
        "top features by gain",
    }
    text = index.read_text(encoding="utf-8")
    assert f"Trial {promoted.promoted} (" in text
    assert "Quality gate passed" in text


def test_the_best_trials_table_lists_saved_trials_by_value_with_their_params(
    promoted: BuiltJob, promoted_index: Path
) -> None:
    text = promoted_index.read_text(encoding="utf-8")
    table = text.split("<h2>Best trials</h2>", 1)[1]
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td><td>(\w+)</td><td>([0-9.]+)</td>", table)
    saved = {n: t for n, t in promoted.trials.items() if t["outcome"] == "saved"}
    expected = sorted(saved, key=lambda n: -saved[n]["value"])
    assert [int(n) for n, _, _, _ in rows] == expected
    for n, _, _, value in rows:
        assert float(value) == pytest.approx(saved[int(n)]["value"], abs=5e-5)
        for name, param in saved[int(n)]["params"].items():
            # Each name=value in a span that no line breaks inside: no number split in two.
            assert f'<span class="nb">{name}={param}</span>' in table


def test_the_best_trials_show_the_trial_numbers_optuna_gives_them_in_the_export(
    promoted: BuiltJob, promoted_index: Path, tmp_path: Path
) -> None:
    table = promoted_index.read_text(encoding="utf-8").split("<h2>Best trials</h2>", 1)[1]
    shown = {
        int(n): (model, int(number))
        for n, number, model in re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td><td>(\w+)</td>", table)
    }
    out = tmp_path / "job.journal"
    export_optuna(promoted.state_dir, promoted.job_id, out)
    storage = JournalStorage(JournalFileBackend(str(out)))
    in_export = {}
    for model in ("xgboost", "lightgbm"):
        study = optuna.load_study(study_name=study_name(JOB, model), storage=storage)
        in_export |= {t.user_attrs[TRIAL_ATTR]: (model, t.number) for t in study.trials}
    assert shown and all(in_export[n] == shown[n] for n in shown)


def test_the_parameter_column_never_breaks_inside_a_number(promoted_index: Path) -> None:
    text = promoted_index.read_text(encoding="utf-8")
    style = text.split("<style>", 1)[1].split("</style>", 1)[0]
    assert "break-all" not in style and ".nb { white-space: nowrap; }" in style


def family_rows(text: str) -> dict[str, list[str]]:
    """The test-split table: model -> its cells (text only)."""
    part = text.split("<h2>Models on the test split</h2>", 1)[1].split("<h3>", 1)[0]
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", part)[1:]:
        cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td>(.*?)</td>", row)]
        rows[cells[0]] = cells[1:]
    return rows


def test_each_models_best_trial_gets_test_scores_with_bootstrap_intervals(
    promoted: BuiltJob, promoted_index: Path
) -> None:
    text = promoted_index.read_text(encoding="utf-8")
    recorded = read_history(promoted.state_dir, JOB).stages["validate"]["test"]
    rows = family_rows(text)
    assert set(rows) == {"xgboost", "lightgbm"}
    for model, cells in rows.items():
        for cell, metric in zip(cells[2:4], ("roc_auc", "pr_auc"), strict=True):
            value, low, high = map(float, re.findall(r"[0-9]+\.[0-9]+", cell))
            assert value == pytest.approx(recorded[model][metric], abs=5e-5), (model, metric)
            assert low <= value <= high and high - low > 0
    assert "1,000 resamples of the test rows" in text


def test_each_model_gets_its_operating_point_at_one_percent_false_positives(
    promoted: BuiltJob, promoted_index: Path
) -> None:
    text = promoted_index.read_text(encoding="utf-8")
    recorded = read_history(promoted.state_dir, JOB).stages["validate"]["test"]
    part = text.split("<h3>Operating point at 1% false-positive rate (test split)</h3>", 1)[1]
    part = part.split("</table>", 1)[0]
    for row in re.findall(r"<tr>(.*?)</tr>", part)[1:]:
        model, _threshold, recall, _precision, fpr, tp, fp, fn, tn = (
            re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td>(.*?)</td>", row)
        )
        assert float(recall) == pytest.approx(recorded[model]["recall_at_1pct_fpr"], abs=5e-5)
        assert float(fpr) <= 0.01
        assert int(tp) + int(fp) + int(fn) + int(tn) == 300  # the test split's rows


def test_a_margin_within_noise_is_flagged_and_the_page_says_what_that_means(
    promoted_index: Path,
) -> None:
    text = promoted_index.read_text(encoding="utf-8")
    margin = text.split("<h3>Selection margin</h3>", 1)[1].split("</section>", 1)[0]
    assert "Within noise means" in margin and "paired bootstrap" in margin
    interval = re.search(r"95% interval \[(-?[0-9.]+), (-?[0-9.]+)\]", margin)
    assert interval is not None
    low, high = float(interval[1]), float(interval[2])
    within = low <= 0 <= high
    assert ('class="note"' in margin and "within noise" in margin) == within
    assert ("larger than noise" in margin) == (not within)


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
    assert image_alts(index) == {
        "xgboost optimisation history",
        "lightgbm optimisation history",
        "xgboost parameter importances",
        "lightgbm parameter importances",
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
    assert list(files) == ["index.html"]
    text = files["index.html"].decode()
    assert text.count("Not enough trials: 1 completed, 2 needed") == 2
    assert not [a for a in re.findall(r'alt="([^"]*)"', text) if "importances" in a]
    assert "Not scored: the job&#x27;s data could not be prepared again" in text
    assert "The job failed: validate failed: the data file is gone." in text
    assert '<td><span class="nb">1 min 15 s</span></td>' in text


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


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (apt-get install chromium); `make report-check` "
    "runs the same check on the demo job's report",
)


def check_report_module() -> Any:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import check_report
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return check_report


@needs_chromium
def test_a_lone_copy_of_the_report_renders_every_image_in_headless_chromium(
    promoted_index: Path, tmp_path: Path
) -> None:
    shot = tmp_path / "page.png"
    states = check_report_module().check(promoted_index, screenshot=shot)
    assert len(states) == 7, states  # history x2, importances x2, ROC, PR, features
    assert all(state.startswith("loaded") for state in states.values()), states
    assert shot.read_bytes().startswith(PNG)


@needs_chromium
def test_the_chromium_check_finds_an_image_that_needs_a_file_beside_the_page(
    promoted_index: Path, tmp_path: Path
) -> None:
    text = promoted_index.read_text(encoding="utf-8")
    first = re.search(r'src="(data:image/png;base64,[^"]+)"', text)
    assert first is not None
    (tmp_path / "history-xgboost.png").write_bytes(base64.b64decode(first[1].split(",", 1)[1]))
    linked = tmp_path / "index.html"  # an old-style page: its PNG beside it, by name
    linked.write_text(text.replace(first[1], "history-xgboost.png", 1), encoding="utf-8")
    states = check_report_module().check(linked)
    assert sorted(states.values()).count("broken") == 1, states  # copied alone: PNG left behind
