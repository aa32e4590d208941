"""The report of an ended job: ``STATE/jobs/<job>/report/index.html``, one self-contained file.

Plain HTML and CSS with every chart inline (``data:`` URIs), no script and nothing
fetched from a network: the file alone opens from disk, from a copy, or from a ticket
attachment. It shows, from the event log and the job's models:

- the optimisation history of each model (trial value against trial number, running best);
- each model's parameter importances (fANOVA, on an Optuna study rebuilt from the
  recorded trials), once at least two of its trials completed;
- each model's best trial on the held-out test split, ROC AUC and PR AUC with bootstrap
  intervals, its operating point at 1% false-positive rate (threshold, recall, precision,
  confusion matrix), and whether the validation margin that chose the winner is within
  noise (:mod:`~sentinel_daemon.tools.families`);
- the promoted model's ROC and precision-recall curves on the test split (the data
  prepared again through the job's cache) and its top features by gain;
- a table of the best trials, with each one's number in the Optuna export.

A job that ended without a promoted model gets everything but the curves and features,
with a note saying why. :func:`write_report` builds the folder under a temporary name and
renames it into place, under a lock, so ``report/`` is absent or complete and two writers
(the daemon's child and an operator's ``sentinel report --force``) take turns. It only
reads the state directory besides, takes no daemon lock, and may run in any process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from sentinel_daemon.errors import SentinelError
from sentinel_daemon.fsutil import atomic_write_bytes, fsync_dir
from sentinel_daemon.layout import JOBS_DIR, REPORT_DIR, REPORT_INDEX, report_index
from sentinel_daemon.tools import families, plots
from sentinel_daemon.tools import reportkit as rk
from sentinel_daemon.tools.export import optuna_numbers
from sentinel_daemon.tools.history import (
    JobHistory,
    Outcome,
    TrialRecord,
    frozen_trials,
    optuna_quiet,
    parse_ts,
    read_history,
)

REPORT_LOCK = ".report.lock"
TOP_TRIALS = 10
TOP_FEATURES = 30
KEY_PARAMS = 5
#: fANOVA needs variation to explain: with fewer completed trials there is none.
MIN_TRIALS_FOR_IMPORTANCE = 2
_LEFTOVER = re.compile(r"^\.report\.[0-9]+\.(tmp|old)$")


class ReportError(SentinelError):
    """No report can be written for ``job_id`` (it is still running, say)."""

    def __init__(self, job_id: str, reason: str) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(f"job {job_id}: {reason}")


def write_report(state_dir: Path, job_id: str) -> Path:
    """Write (or rewrite) the report of an ended job; return its ``index.html``.

    Raises :class:`~sentinel_daemon.errors.UnknownJob` for a job not in the log and
    :class:`ReportError` for one still running (its report would go stale at once).
    """
    state_dir = Path(state_dir)
    history = read_history(state_dir, job_id)
    if history.status == "running":
        raise ReportError(
            job_id,
            "is still running; its report is written once it has ended "
            "(`sentinel status JOB` shows its progress meanwhile)",
        )
    files = build_report(state_dir, history)
    job_dir = state_dir / JOBS_DIR / job_id
    job_dir.mkdir(parents=True, exist_ok=True)
    with _locked(job_dir / REPORT_LOCK):
        _remove_leftovers(job_dir)  # of writers that died: the lock says none is at work
        tmp = job_dir / f".report.{os.getpid()}.tmp"
        tmp.mkdir()
        try:
            for name, data in files.items():
                atomic_write_bytes(tmp / name, data, mode=0o644)
            fsync_dir(tmp)
            _replace_dir(tmp, job_dir / REPORT_DIR)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return report_index(state_dir, job_id)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel drops it if this process dies
        yield
    finally:
        os.close(fd)


def _remove_leftovers(job_dir: Path) -> None:
    for entry in job_dir.iterdir():
        if _LEFTOVER.match(entry.name):
            shutil.rmtree(entry, ignore_errors=True)


def _replace_dir(new: Path, final: Path) -> None:
    """Put ``new`` at ``final``; an old ``final`` is moved aside first, then removed.

    Between the two renames ``final`` is absent for an instant (a reader sees no report,
    never half of one); a crash there leaves the old one aside, cleared on the next write.
    """
    old = None
    if final.exists():
        old = new.with_name(new.name.removesuffix(".tmp") + ".old")
        os.rename(final, old)
    os.rename(new, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---- content ---------------------------------------------------------------------------


@dataclass
class _Page:
    """What the HTML page shows, section by section (already escaped HTML fragments)."""

    sections: list[str] = field(default_factory=list)
    #: Sentinel's trial number -> its number in the Optuna export.
    optuna: dict[int, int] = field(default_factory=dict)


@dataclass
class _Data:
    """The job's data and the candidates' scores, or why they are missing."""

    prepared: Any = None
    scoring: families.Scoring | None = None
    problem: str = ""


def build_report(state_dir: Path, history: JobHistory) -> dict[str, bytes]:
    """The report's files by name: ``index.html`` alone (its charts are inline)."""
    page = _Page(optuna=optuna_numbers(history))
    data = _score(state_dir, history)
    importances: dict[str, dict[str, float]] = {}
    page.sections.append(_section("Summary", _summary(history)))
    history_html = []
    importance_html = []
    for model in history.models:
        history_html.append(_history_figure(history, model))
        html_part, found = _importance_figure(history, model)
        importance_html.append(html_part)
        importances[model] = found
    page.sections.append(_section("Optimisation history", "".join(history_html)))
    page.sections.append(_section("Parameter importances", "".join(importance_html)))
    page.sections.append(_section("Models on the test split", _families(history, data, page)))
    page.sections.append(_section("Promoted model", _promoted(state_dir, history, data)))
    page.sections.append(_section("Best trials", _best_trials(history, importances, page)))
    return {REPORT_INDEX: _page(history, page.sections).encode("utf-8")}


def _score(state_dir: Path, h: JobHistory) -> _Data:
    """Prepare the job's data and score the candidates, once for every section."""
    from sentinel_daemon import ml  # the ML stack is heavy; only the scored sections need it

    if families.best_saved(h.trials.values()) is None:
        return _Data(problem="no trial was saved")
    try:
        prepared = families.prepare(state_dir, h)
    except (ml.MLError, OSError, ValueError) as exc:
        return _Data(problem=f"the job's data could not be prepared again ({exc})")
    try:
        return _Data(prepared, families.score(state_dir, h, prepared))
    except (ml.MLError, OSError, ValueError) as exc:
        return _Data(prepared, problem=f"a candidate's model could not score the data ({exc})")


_esc = rk.esc
_section = rk.section
_note = rk.note


def _families(h: JobHistory, data: _Data, page: _Page) -> str:
    if data.scoring is None:
        return _note(f"Not scored: {data.problem}.") + _recorded_test(h)
    return families.families_html(data.scoring, page.optuna)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _summary(h: JobHistory) -> str:
    rows = [
        ("job", h.job_id),
        ("name", h.name),
        ("status", h.status + (f": {h.reason}" if h.reason else "")),
        ("submitted", h.submitted),
        ("ended", h.ended or "-"),
    ]
    if h.ended is not None:
        took = (parse_ts(h.ended) - parse_ts(h.submitted)).total_seconds()
        rows.append(("took", _duration(took)))
    search = h.spec.get("search", {})
    trials, sampler, pruner = (search.get(k) for k in ("n_trials", "sampler", "pruner"))
    rows.append(("search", f"{trials} trials per model, sampler {sampler}, pruner {pruner}"))
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    counts = ["<tr><th>model</th><th>saved</th><th>pruned</th><th>failed</th><th>best</th></tr>"]
    for model in h.models:
        trials = h.trials_of(model)
        n = {o: sum(1 for t in trials if t.outcome is o) for o in Outcome}
        saved = [t for t in trials if t.outcome is Outcome.SAVED and t.value is not None]
        best = max(saved, key=lambda t: t.value or 0.0, default=None)
        best_text = "-" if best is None else f"{best.value:.4f} (trial {best.number})"
        failed = n[Outcome.FAILED] + n[Outcome.RUNNING]
        counts.append(
            f"<tr><td>{_esc(model)}</td><td>{n[Outcome.SAVED]}</td>"
            f"<td>{n[Outcome.PRUNED]}</td><td>{failed}</td><td>{_esc(best_text)}</td></tr>"
        )
    return (
        f'<table class="facts">{body}</table>\n'
        f"<h3>Trials</h3>\n<table>{''.join(counts)}</table>\n"
        f"{_validation(h)}"
    )


def _validation(h: JobHistory) -> str:
    outputs = h.stages.get("validate")
    if not outputs:
        return ""
    winner = outputs.get("winner") or {}
    gate = outputs.get("gate") or {}
    lines = []
    if winner:
        lines.append(
            f"<p>Winner on validation: trial {_esc(winner.get('trial'))} "
            f"({_esc(winner.get('model'))}).</p>\n"
        )
    if gate:
        verdict = "passed" if gate.get("passed") else "refused"
        lines.append(f"<p>Quality gate {verdict}: {_esc(gate.get('reason', ''))}</p>\n")
    return "".join(lines)


def _recorded_test(h: JobHistory) -> str:
    """The test metrics the validate stage recorded (when the report cannot score again)."""
    test: dict[str, dict[str, float]] = (h.stages.get("validate") or {}).get("test") or {}
    if not test:
        return ""
    names = sorted({k for metrics in test.values() for k in metrics})
    rows = [
        [_esc(model), *(rk.nowrap(_fmt(metrics.get(n, "-"))) for n in names)]
        for model, metrics in test.items()
    ]
    return "<h3>As recorded by the validate stage</h3>\n" + rk.table(
        ["model (its best trial)", *names], rows
    )


def _history_figure(h: JobHistory, model: str) -> str:
    trials = h.trials_of(model)
    completed = [(t.number, t.value) for t in trials if t.outcome is Outcome.SAVED]
    pruned = [(t.number, v) for t in trials if (v := _pruned_value(t)) is not None]
    if not trials:
        return f"<h3>{_esc(model)}</h3>\n" + _note("No trial of this model was started.")
    png = plots.history(
        f"{model}: optimisation history",
        [(n, v) for n, v in completed if v is not None],
        pruned,
    )
    caption = f"{len(completed)} completed, {len(pruned)} pruned of {len(trials)} trials"
    return f"<h3>{_esc(model)}</h3>\n" + rk.figure(png, f"{model} optimisation history", caption)


def _pruned_value(t: TrialRecord) -> float | None:
    if t.outcome is not Outcome.PRUNED:
        return None
    if t.value is not None:
        return t.value
    return t.intermediate[-1][1] if t.intermediate else None


def _importance_figure(h: JobHistory, model: str) -> tuple[str, dict[str, float]]:
    head = f"<h3>{_esc(model)}</h3>\n"
    done = sum(1 for t in h.trials_of(model) if t.outcome is Outcome.SAVED)
    if done < MIN_TRIALS_FOR_IMPORTANCE:
        return head + _note(
            f"Not enough trials: {done} completed, {MIN_TRIALS_FOR_IMPORTANCE} needed "
            f"for parameter importances."
        ), {}
    try:
        found = param_importances(h, model)
    except (ValueError, RuntimeError) as exc:  # Optuna's word on a space it cannot judge
        return head + _note(f"Parameter importances could not be computed: {exc}"), {}
    if not found:
        return head + _note("No parameter was searched (every range is a single value)."), {}
    items = list(found.items())
    png = plots.bars(f"{model}: parameter importances (fANOVA)", items, "importance")
    alt = f"{model} parameter importances"
    caption = f"from {done} completed trials; importances sum to 1"
    return head + rk.figure(png, alt, caption), found


def param_importances(h: JobHistory, model: str) -> dict[str, float]:
    """fANOVA importances of ``model``'s parameters, most important first."""
    with optuna_quiet():  # no "A new study created" line
        study = optuna.create_study(direction="maximize")
    study.add_trials(frozen_trials(h, model))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return {str(k): float(v) for k, v in found.items()}


def _promoted(state_dir: Path, h: JobHistory, data: _Data) -> str:
    p = h.promoted
    if p is None:
        if h.status == "completed":
            why = f"No model was promoted: {h.reason or 'the quality gate refused it'}."
        else:
            why = f"The job {h.status}" + (f": {h.reason}" if h.reason else "") + "."
        return _note(why + " Curves and feature importances are drawn for a promoted model.")
    from sentinel_daemon import ml  # the ML stack is heavy; only this section needs it

    lines = [
        f"<p>Trial {_esc(p.trial)} ({_esc(p.model)}), validation ROC AUC "
        f"{p.value:.4f}; model file <code>{_esc(p.artifact)}</code>, "
        f'sha256 <code class="hash">{_esc(p.sha256)}</code>.</p>\n'
    ]
    try:
        loaded = ml.load_model(state_dir / p.artifact, p.sha256)  # refuses a changed file
    except ml.MLError as exc:
        return "".join(lines) + _note(f"The promoted model cannot be loaded: {exc}")
    names = loaded.meta.get("feature_names")
    if data.prepared is None:
        lines.append(_note(f"No curves: {data.problem}."))
    else:
        try:
            X, y = data.prepared.rows("test")
            scores = loaded.predict(X)
            if names is None:
                names = list(data.prepared.feature_names)
            lines.append(_curves(y, scores, f"trial {p.trial} ({p.model})"))
        except (ml.MLError, OSError, ValueError) as exc:
            lines.append(_note(f"No curves: the test split could not be scored ({exc})."))
    lines.append(_features(loaded, names))
    return "".join(lines)


def _curves(y: Any, scores: Any, what: str) -> str:
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        roc_auc_score,
        roc_curve,
    )

    fpr, tpr, _ = roc_curve(y, scores)
    precision, recall, _ = precision_recall_curve(y, scores)
    auc = float(roc_auc_score(y, scores))
    ap = float(average_precision_score(y, scores))
    rate = float(y.mean())
    roc_png = plots.roc(fpr, tpr, auc, f"ROC on the test split: {what}")
    pr_png = plots.precision_recall(recall, precision, ap, rate, f"Precision-recall: {what}")
    caption = f"{len(y)} test rows, {int(y.sum())} fraud"
    return (
        '<div class="pair">\n'
        + rk.figure(roc_png, "ROC curve on the test split", caption)
        + rk.figure(pr_png, "precision-recall curve", caption)
        + "</div>\n"
    )


def feature_gains(loaded: Any, names: list[str] | None) -> list[tuple[str, float]]:
    """Total gain per feature of a loaded model, largest first, named from ``names``."""
    import xgboost as xgb

    booster = loaded.model
    gains: dict[str, float] = {}
    if isinstance(booster, xgb.Booster):
        known = set(names or ())
        for key, gain in booster.get_score(importance_type="gain").items():
            # Trained on arrays, XGBoost names features f0, f1, ...: map them back.
            if key not in known and names and re.fullmatch(r"f[0-9]+", key):
                index = int(key[1:])
                key = names[index] if index < len(names) else key
            gains[key] = float(gain) if not isinstance(gain, list) else float(sum(gain))
    else:
        values = booster.feature_importance(importance_type="gain")
        own = booster.feature_name()
        for i, gain in enumerate(values):
            if gain > 0:
                key = names[i] if names and i < len(names) else own[i]
                gains[key] = float(gain)
    return sorted(gains.items(), key=lambda kv: (-kv[1], kv[0]))


def _features(loaded: Any, names: list[str] | None) -> str:
    top = feature_gains(loaded, names)[:TOP_FEATURES]
    if not top:
        return _note("The model used no feature (a single leaf): no importances to show.")
    png = plots.bars(f"Top {len(top)} features by gain", top, "gain")
    return "<h3>Features</h3>\n" + rk.figure(
        png, "top features by gain", "total gain of each feature's splits"
    )


def _best_trials(h: JobHistory, importances: dict[str, dict[str, float]], page: _Page) -> str:
    saved = [t for t in h.trials.values() if t.outcome is Outcome.SAVED and t.value is not None]
    saved.sort(key=lambda t: (-(t.value or 0.0), t.number))
    if not saved:
        return _note("No trial completed.")
    rows = []
    for t in saved[:TOP_TRIALS]:
        rank = list(importances.get(t.model, {})) or list(t.params)
        shown = [n for n in rank if n in t.params][:KEY_PARAMS]
        # Each name=value is kept whole: a line may break between them, never inside one.
        params = ", ".join(rk.nowrap(f"{n}={_fmt(t.params[n])}") for n in shown)
        optuna_number = page.optuna.get(t.number)
        rows.append(
            [
                str(t.number),
                "-" if optuna_number is None else str(optuna_number),
                _esc(t.model),
                f"{t.value:.4f}",
                f'<span class="params">{params}</span>',
                rk.nowrap(_duration(t.duration_s)),
            ]
        )
    head = ["trial", "Optuna #", "model", "value", "key params", "duration"]
    return rk.table(head, rows, "trials") + rk.hint(
        "Validation ROC AUC; key params are the most important ones (or the first) of each. "
        "Optuna # is the trial's number in its model's study of sentinel export-optuna, "
        "whose user attribute sentinel_trial holds the trial number here."
    )


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 60em; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
table.facts th { background: #f6f6f6; }
figure { margin: .5em 0 1.5em; } figure img { max-width: 100%; height: auto; }
figcaption, .hint { color: #666; font-size: .9em; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .5em .8em; }
.pair { display: flex; flex-wrap: wrap; gap: 1em; }
code { font-size: .9em; }
code.hash { overflow-wrap: anywhere; }
.nb { white-space: nowrap; }
.params { font-family: ui-monospace, monospace; font-size: .9em; }
"""


def _page(h: JobHistory, sections: list[str]) -> str:
    title = f"Sentinel report: {h.name} ({h.job_id})"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{_esc(title)}</h1>\n" + "".join(sections) + "</body>\n</html>\n"
    )
