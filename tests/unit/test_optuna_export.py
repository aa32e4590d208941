"""``sentinel export-optuna``: a job's studies as an Optuna journal file that Optuna reads back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from sentinel_daemon.cli import main as cli_main
from sentinel_daemon.core.events import JobCancelled, JobSubmitted, TrialStarted
from sentinel_daemon.layout import EVENTS_DIR
from sentinel_daemon.log.segments import LogScan
from sentinel_daemon.log.store import Store
from sentinel_daemon.ml.study import TRIAL_ATTR
from sentinel_daemon.tools.export import (
    METRIC_NAME,
    ExportError,
    export_optuna,
    optuna_numbers,
    study_name,
)
from sentinel_daemon.tools.history import read_history
from tests.jobkit import JOB, MODELS, BuiltJob, build_job, job_spec, make_data

REPO = Path(__file__).resolve().parents[2]
GOLDEN_V1 = REPO / "events" / "golden" / "v1"
STATES = {
    "saved": optuna.trial.TrialState.COMPLETE,
    "pruned": optuna.trial.TrialState.PRUNED,
    "failed": optuna.trial.TrialState.FAIL,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltJob:
    data = make_data(tmp_path_factory.mktemp("export-data"))
    return build_job(tmp_path_factory.mktemp("export") / "state", data, promote=True)


def load(path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(path))))


def test_each_models_study_holds_the_logged_trials_params_values_and_intermediate_values(
    built: BuiltJob, tmp_path: Path
) -> None:
    out = tmp_path / "fraud.journal"
    counts = export_optuna(built.state_dir, JOB, out)
    assert counts == {f"{JOB}/xgboost": 3, f"{JOB}/lightgbm": 3}
    names = optuna.get_all_study_names(JournalStorage(JournalFileBackend(str(out))))
    assert sorted(names) == sorted(counts)
    for model in ("xgboost", "lightgbm"):
        study = load(out, study_name(JOB, model))
        assert study.direction is optuna.study.StudyDirection.MAXIMIZE
        assert study.user_attrs["sentinel_job_id"] == JOB
        expected = [n for n in sorted(built.trials) if MODELS[n] == model]
        assert [t.user_attrs[TRIAL_ATTR] for t in study.trials] == expected
        for trial in study.trials:
            logged = built.trials[trial.user_attrs[TRIAL_ATTR]]
            assert trial.state is STATES[logged["outcome"]]
            assert trial.params == logged["params"]
            assert set(trial.distributions) == set(logged["params"])
            assert trial.value == logged.get("value")
            assert trial.intermediate_values == dict(logged.get("intermediate", ()))
            assert trial.datetime_start is not None and trial.datetime_complete is not None
        saved = {n: t for n, t in built.trials.items() if t["outcome"] == "saved"}
        best = max((n for n in saved if MODELS[n] == model), key=lambda n: saved[n]["value"])
        assert study.best_trial.user_attrs[TRIAL_ATTR] == best


def test_the_objective_is_named_and_trial_numbers_map_both_ways(
    built: BuiltJob, tmp_path: Path
) -> None:
    out = tmp_path / "fraud.journal"
    export_optuna(built.state_dir, JOB, out)
    numbers = optuna_numbers(read_history(built.state_dir, JOB))
    assert sorted(numbers) == sorted(built.trials)
    for model in ("xgboost", "lightgbm"):
        study = load(out, study_name(JOB, model))
        assert study.metric_names == [METRIC_NAME] == ["valid_roc_auc"]
        for trial in study.trials:
            # Optuna -> Sentinel: the user attribute; Sentinel -> Optuna: what the report shows.
            assert numbers[trial.user_attrs[TRIAL_ATTR]] == trial.number


def test_the_values_match_the_log_record_for_record(built: BuiltJob, tmp_path: Path) -> None:
    out = tmp_path / "fraud.journal"
    export_optuna(built.state_dir, JOB, out)
    by_number: dict[int, Any] = {}
    for model in ("xgboost", "lightgbm"):
        for t in load(out, study_name(JOB, model)).trials:
            by_number[t.user_attrs[TRIAL_ATTR]] = t
    for record in LogScan(built.state_dir / EVENTS_DIR):
        p = record.payload
        if p["type"] == "trial.started":
            assert by_number[p["trial"]].params == p["params"]
        elif p["type"] == "trial.saved":
            t = by_number[p["trial"]]
            assert (t.value, t.user_attrs["sha256"]) == (p["value"], p["sha256"])
            assert [[s, v] for s, v in sorted(t.intermediate_values.items())] == p["intermediate"]
        elif p["type"] == "trial.pruned":
            t = by_number[p["trial"]]
            assert t.value == p["value"] and max(t.intermediate_values) == p["step"]


def test_an_existing_file_is_kept_unless_forced(built: BuiltJob, tmp_path: Path) -> None:
    out = tmp_path / "fraud.journal"
    out.write_text("mine\n")
    with pytest.raises(ExportError, match="--force"):
        export_optuna(built.state_dir, JOB, out)
    assert out.read_text() == "mine\n"
    export_optuna(built.state_dir, JOB, out, force=True)
    assert len(load(out, study_name(JOB, "xgboost")).trials) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fraud.journal"]  # no temporaries


def test_a_v1_log_exports_with_no_intermediate_values(tmp_path: Path) -> None:
    # golden/v1 holds parameters outside today's default space (reg_alpha 0.0 on a log
    # scale, say): the distributions widen to hold them instead of failing.
    job = "ieee-fraud-87a58110"
    out = tmp_path / "v1.journal"
    assert export_optuna(GOLDEN_V1, job, out) == {f"{job}/xgboost": 3, f"{job}/lightgbm": 3}
    study = load(out, study_name(job, "lightgbm"))
    assert [t.value for t in study.trials] == [0.9241, 0.9187, 0.9219]
    assert all(t.intermediate_values == {} for t in study.trials)
    assert [t.user_attrs["attempts"] for t in study.trials] == [2, 1, 1]
    xgb = load(out, study_name(job, "xgboost"))
    assert [t.state.name for t in xgb.trials] == ["COMPLETE", "PRUNED", "FAIL"]
    assert "out of memory" in xgb.trials[2].user_attrs["error"]


def test_sentinel_export_optuna_writes_the_file_and_refuses_to_overwrite_it(
    built: BuiltJob,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The CLI points structlog at sys.stdout, here the capture that closes after the test.
    monkeypatch.setattr("sentinel_daemon.cli.configure_logging", lambda *args: None)
    out = tmp_path / "job.journal"
    args = ["export-optuna", "--state-dir", str(built.state_dir), JOB, "--out", str(out)]
    assert cli_main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {
        "job_id": JOB,
        "out": str(out),
        "studies": {f"{JOB}/xgboost": 3, f"{JOB}/lightgbm": 3},
    }
    assert cli_main(args) == 1
    assert "exists" in capsys.readouterr().err
    assert cli_main([*args, "--force"]) == 0
    assert f"optuna-dashboard {out}" in capsys.readouterr().out
    assert cli_main(["export-optuna", "--state-dir", str(built.state_dir), "nope", "--out",
                     str(tmp_path / "x")]) == 1  # fmt: skip
    assert "no job 'nope'" in capsys.readouterr().err


def test_a_running_jobs_trial_in_flight_is_running_and_one_its_cancelled_job_left_failed(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    spec = job_spec((tmp_path / "t.csv", tmp_path / "i.csv"))
    params = {"n_estimators": 20, "max_depth": 3, "learning_rate": 0.2}
    store = Store.open(state_dir)
    try:
        store.append(
            [
                JobSubmitted(job_id=JOB, name="fraud-report", spec=spec, file="f", file_sha256="0"),
                TrialStarted(job_id=JOB, trial=0, model="xgboost", params=params, attempt=1),
            ]
        )
        export_optuna(state_dir, JOB, tmp_path / "running.journal")
        store.append([JobCancelled(job_id=JOB, reason="cancelled by operator")])
        export_optuna(state_dir, JOB, tmp_path / "cancelled.journal")
    finally:
        store.close(snapshot=False)
    (running,) = load(tmp_path / "running.journal", study_name(JOB, "xgboost")).trials
    assert running.state is optuna.trial.TrialState.RUNNING and running.params == params
    (left,) = load(tmp_path / "cancelled.journal", study_name(JOB, "xgboost")).trials
    assert left.state is optuna.trial.TrialState.FAIL
    assert left.user_attrs["error"] == "never ended: the job cancelled first"
    assert load(tmp_path / "cancelled.journal", study_name(JOB, "lightgbm")).trials == []
