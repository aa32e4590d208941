"""The report of an ended job: ``STATE/jobs/<job>/report/index.html`` and its PNG charts.

One self-contained folder: plain HTML and CSS, charts as PNG files beside it linked by
relative path, no script and nothing fetched from a network, so it opens from disk, from
a copy, or from a ticket attachment. It shows, from the event log:

- the optimisation history of each model (trial value against trial number, running best);
- each model's parameter importances (fANOVA, on an Optuna study rebuilt from the
  recorded trials), once at least two of its trials completed;
- the promoted model's ROC and precision-recall curves on the held-out test split (the
  data prepared again through the job's cache) and its top features by gain;
- a table of the best trials.

A job that ended without a promoted model gets everything but the curves and features,
with a note saying why. :func:`write_report` builds the folder under a temporary name and
renames it into place, under a lock, so ``report/`` is absent or complete and two writers
(the daemon's child and an operator's ``sentinel report --force``) take turns. It only
reads the state directory besides, takes no daemon lock, and may run in any process.
"""

from __future__ import annotations

import contextlib
import fcntl
import html
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
from sentinel_daemon.layout import CACHE_DIR, JOBS_DIR, REPORT_DIR, REPORT_INDEX, report_index
from sentinel_daemon.tools import plots
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

    files: dict[str, bytes] = field(default_factory=dict)
    sections: list[str] = field(default_factory=list)


def build_report(state_dir: Path, history: JobHistory) -> dict[str, bytes]:
    """The report's files by name: ``index.html`` and the PNGs it links."""
    page = _Page()
    importances: dict[str, dict[str, float]] = {}
    page.sections.append(_section("Summary", _summary(history)))
    history_html = []
    importance_html = []
    for model in history.models:
        history_html.append(_history_figure(page, history, model))
        html_part, found = _importance_figure(page, history, model)
        importance_html.append(html_part)
        importances[model] = found
    page.sections.append(_section("Optimisation history", "".join(history_html)))
    page.sections.append(_section("Parameter importances", "".join(importance_html)))
    page.sections.append(_section("Promoted model", _promoted(page, state_dir, history)))
    page.sections.append(_section("Best trials", _best_trials(history, importances)))
    page.files[REPORT_INDEX] = _page(history, page.sections).encode("utf-8")
    return page.files


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _section(title: str, body: str) -> str:
    return f"<section>\n<h2>{_esc(title)}</h2>\n{body}\n</section>\n"


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>\n'


def _figure(page: _Page, name: str, png: bytes, alt: str, caption: str = "") -> str:
    page.files[name] = png
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{_esc(name)}" alt="{_esc(alt)}">{cap}</figure>\n'


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
    test: dict[str, dict[str, float]] = outputs.get("test") or {}
    names = sorted({k for metrics in test.values() for k in metrics})
    head = "".join(f"<th>{_esc(n)}</th>" for n in names)
    rows = [f"<tr><th>model (its best trial)</th>{head}</tr>"]
    for model, metrics in test.items():
        cells = "".join(f"<td>{_esc(_fmt(metrics.get(n, '-')))}</td>" for n in names)
        rows.append(f"<tr><td>{_esc(model)}</td>{cells}</tr>")
    winner = outputs.get("winner") or {}
    gate = outputs.get("gate") or {}
    lines = [f"<h3>Test split</h3>\n<table>{''.join(rows)}</table>\n"]
    if winner:
        lines.append(
            f"<p>Winner on validation: trial {_esc(winner.get('trial'))} "
            f"({_esc(winner.get('model'))}).</p>\n"
        )
    if gate:
        verdict = "passed" if gate.get("passed") else "refused"
        lines.append(f"<p>Quality gate {verdict}: {_esc(gate.get('reason', ''))}</p>\n")
    return "".join(lines)


def _history_figure(page: _Page, h: JobHistory, model: str) -> str:
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
    return f"<h3>{_esc(model)}</h3>\n" + _figure(
        page, f"history-{model}.png", png, f"{model} optimisation history", caption
    )


def _pruned_value(t: TrialRecord) -> float | None:
    if t.outcome is not Outcome.PRUNED:
        return None
    if t.value is not None:
        return t.value
    return t.intermediate[-1][1] if t.intermediate else None


def _importance_figure(page: _Page, h: JobHistory, model: str) -> tuple[str, dict[str, float]]:
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
    return head + _figure(page, f"importance-{model}.png", png, alt, caption), found


def param_importances(h: JobHistory, model: str) -> dict[str, float]:
    """fANOVA importances of ``model``'s parameters, most important first."""
    with optuna_quiet():  # no "A new study created" line
        study = optuna.create_study(direction="maximize")
    study.add_trials(frozen_trials(h, model))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return {str(k): float(v) for k, v in found.items()}


def _promoted(page: _Page, state_dir: Path, h: JobHistory) -> str:
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
        f"sha256 <code>{_esc(p.sha256)}</code>.</p>\n"
    ]
    try:
        loaded = ml.load_model(state_dir / p.artifact, p.sha256)  # refuses a changed file
    except ml.MLError as exc:
        return "".join(lines) + _note(f"The promoted model cannot be loaded: {exc}")
    names = loaded.meta.get("feature_names")
    try:
        prepared = _prepare(state_dir, h)
        X, y = prepared.rows("test")
        scores = loaded.predict(X)
        if names is None:
            names = list(prepared.feature_names)
        lines.append(_curves(page, y, scores, f"trial {p.trial} ({p.model})"))
    except (ml.MLError, OSError, ValueError) as exc:
        lines.append(_note(f"No curves: the test split could not be scored ({exc})."))
    lines.append(_features(page, loaded, names))
    return "".join(lines)


def _prepare(state_dir: Path, h: JobHistory) -> Any:
    """The job's data prepared as its trials saw it (a cache hit after the job's prepare)."""
    from sentinel_daemon import ml

    spec = h.job_spec()
    identity = spec.data.identity
    return ml.prepare(
        state_dir / spec.data.transactions,  # an absolute path wins over the state dir
        state_dir / identity if identity else None,
        state_dir / CACHE_DIR,
        test_fraction=spec.validation.test_fraction,
        valid_fraction=spec.validation.valid_fraction,
    )


def _curves(page: _Page, y: Any, scores: Any, what: str) -> str:
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
        + _figure(page, "roc.png", roc_png, "ROC curve on the test split", caption)
        + _figure(page, "precision-recall.png", pr_png, "precision-recall curve", caption)
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


def _features(page: _Page, loaded: Any, names: list[str] | None) -> str:
    top = feature_gains(loaded, names)[:TOP_FEATURES]
    if not top:
        return _note("The model used no feature (a single leaf): no importances to show.")
    png = plots.bars(f"Top {len(top)} features by gain", top, "gain")
    return "<h3>Features</h3>\n" + _figure(
        page, "features.png", png, "top features by gain", "total gain of each feature's splits"
    )


def _best_trials(h: JobHistory, importances: dict[str, dict[str, float]]) -> str:
    saved = [t for t in h.trials.values() if t.outcome is Outcome.SAVED and t.value is not None]
    saved.sort(key=lambda t: (-(t.value or 0.0), t.number))
    if not saved:
        return _note("No trial completed.")
    head = "<tr><th>trial</th><th>model</th><th>value</th><th>key params</th><th>duration</th></tr>"
    rows = [head]
    for t in saved[:TOP_TRIALS]:
        rank = list(importances.get(t.model, {})) or list(t.params)
        shown = [n for n in rank if n in t.params][:KEY_PARAMS]
        params = ", ".join(f"{n}={_fmt(t.params[n])}" for n in shown)
        rows.append(
            f"<tr><td>{t.number}</td><td>{_esc(t.model)}</td><td>{t.value:.4f}</td>"
            f"<td><code>{_esc(params)}</code></td><td>{_esc(_duration(t.duration_s))}</td></tr>"
        )
    note = "Validation ROC AUC; key params are the most important ones (or the first) of each."
    return f'<table>{"".join(rows)}</table>\n<p class="hint">{_esc(note)}</p>\n'


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
code { font-size: .9em; word-break: break-all; }
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
