"""Hostile job files: a hand-made corpus and Hypothesis fuzzing against the job-file reader,
and a sample of them dropped into a real daemon's inbox.

Job files are untrusted (DESIGN.md, "Rules"). Every file here must be rejected with a
:class:`~sentinel_daemon.core.jobspec.JobSpecError` whose message names the file and, where one
field is at fault, that field; nothing but the job file itself may be opened, nothing
outside the data roots may even be ``stat``-ed, and the reader's memory stays bounded
(tracemalloc). Two traps make a forbidden open visible even where the spies would miss
it: ``outside/secret.csv`` is a FIFO without a writer (opening it blocks for ever) and so
is ``data/fifo.csv`` inside the root (data files are only ``stat``-ed, never opened).

tests/unit/test_jobspec.py checks each rule on its own; this file is the sweep, with the
counts for the fault table: the corpus (about 150 files in classes), three fuzzers that
the unit tests do not have (mutations of a valid file, arbitrary names, arbitrary data
paths), and the daemon: about thirty hostile files dropped into its inbox, each rejected
with a ``.reason`` while its memory stays flat, then a valid job that completes.
"""

# ruff: noqa: E501 - the corpus is a table, one hostile file a line
from __future__ import annotations

import builtins
import contextlib
import errno
import json
import os
import re
import socket
import stat
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import psutil
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from sentinel_daemon.core.jobspec import JobSpecError, ParsedJob
from sentinel_daemon.jobfile import MAX_DEPTH, parse_job_file
from tests.daemonkit import job_doc, of_type, write_job
from tests.faults import faultkit
from tests.faults.faultkit import FAULT_SETTINGS, MakeDaemon, violations
from tests.faults.record import full, record
from tests.helpers import wait_for

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
MAX_BYTES = 64 * 1024
#: Peak of memory the reader may allocate for one file (the file is at most 64 KiB).
PEAK_LIMIT = 8 << 20
#: Tighter, for the files built to blow up (alias bombs, deep nesting, huge files).
BOMB_PEAK_LIMIT = 2 << 20
FUZZ_EXAMPLES = 400 if full() else 40


# ---- the lab: a data root, traps outside it, and a place for job files -------------------


class Lab:
    """A data root with data files and traps, folders outside it, and a folder of job files."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.data = self.root / "data"
        self.outside = base / "outside"
        self.evil = base / "root-evil"  # shares the root's name as a prefix
        self.jobs = base / "jobs"
        self.pwned = base / "PWNED"
        for folder in (self.data, self.outside, self.evil, self.jobs):
            folder.mkdir(parents=True)
        (self.data / "train_transaction.csv").write_text("TransactionID\n1\n")
        (self.data / "train_identity.csv").write_text("TransactionID\n1\n")
        (self.evil / "x.csv").write_text("x\n")
        (self.outside / "real.csv").write_text("x\n")
        os.mkfifo(self.outside / "secret.csv")  # opening it blocks: the trap
        os.mkfifo(self.data / "fifo.csv")  # inside the root, but data files are never opened
        (self.data / "dir.csv").mkdir()
        (self.data / "link-out.csv").symlink_to(self.outside / "secret.csv")
        (self.data / "dangling.csv").symlink_to(self.outside / "nothing.csv")
        (self.data / "loop.csv").symlink_to(self.data / "loop.csv")
        (self.data / "zero.csv").symlink_to("/dev/zero")
        (self.data / "inner.csv").symlink_to(self.data / "train_transaction.csv")
        (self.root / "door").symlink_to(self.outside)
        self.has_device = True
        try:
            os.mknod(self.data / "null.csv", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        except (PermissionError, OSError):
            self.has_device = False
        self.real_root = os.path.realpath(self.root)
        self._n = 0

    def path(self, name: str) -> Path:
        self._n += 1
        return self.jobs / f"{self._n:04d}-{name}"

    def write(self, name: str, content: bytes) -> Path:
        path = self.path(name)
        path.write_bytes(content)
        return path

    def parse(self, path: Path) -> ParsedJob:
        return parse_job_file(path, data_roots=[self.root], base_dir=self.root, max_bytes=MAX_BYTES)

    def inside(self, p: str) -> bool:
        return p == self.real_root or p.startswith(self.real_root + os.sep)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Lab(Path(tmp))


class Spy:
    """Every ``open`` (any flavour) and following ``stat`` while a job file is parsed."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.stated: list[str] = []

    @contextlib.contextmanager
    def watching(self) -> Iterator[Spy]:
        real_open, real_os_open, real_stat = builtins.open, os.open, os.stat

        def spy_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            if not isinstance(file, int):
                self.opened.append(os.path.abspath(os.fsdecode(file)))
            return real_open(file, *args, **kwargs)

        def spy_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            self.opened.append(os.path.abspath(os.fsdecode(path)))
            return real_os_open(path, flags, *args, **kwargs)

        def spy_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            if not isinstance(path, int) and kwargs.get("follow_symlinks", True):
                self.stated.append(os.fsdecode(path))
            return real_stat(path, *args, **kwargs)

        with (
            mock.patch("builtins.open", spy_open),
            mock.patch("io.open", spy_open),
            mock.patch("os.open", spy_os_open),
            mock.patch("os.stat", spy_stat),
        ):
            yield self

    def problems(self, lab: Lab, job: Path) -> list[str]:
        found = [f"opened {p}" for p in self.opened if p != os.path.abspath(job)]
        found += [f"stat() outside the data root: {p}" for p in self.stated if not lab.inside(p)]
        return found


# ---- the corpus ---------------------------------------------------------------------------


def doc(**changes: Any) -> dict[str, Any]:
    """A valid minimal job as data; ``changes`` set dotted keys (``search.n_trials``)."""
    d: dict[str, Any] = {"name": "job", "data": {"transactions": "data/train_transaction.csv"}}
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        into = d
        for key in parents:
            into = into.setdefault(key, {})
        into[last] = value
    return d


def as_yaml(d: Any) -> bytes:
    return yaml.safe_dump(d, sort_keys=False, allow_unicode=True).encode()


def as_json(d: Any) -> bytes:
    return json.dumps(d).encode()


Make = Callable[[Lab, Path], None]
Patch = Callable[[Lab, Path], contextlib.AbstractContextManager[Any]]


@dataclass(frozen=True)
class Case:
    """One hostile job file: how it is made, and what its rejection must say."""

    kind: str
    name: str
    suffix: str = ".yaml"
    content: bytes = b""
    #: The field the error must name: exact, or a prefix ending in "*"; None: not checked.
    where: str | None = "-"
    #: Fragments, one of which the reason must contain (case-insensitive).
    reason: tuple[str, ...] = ()
    make: Make | None = None
    patch: Patch | None = None
    bomb: bool = False
    needs_device: bool = False


def _c(
    kind: str, name: str, content: bytes | str, fld: str | None, *reason: str, **kw: Any
) -> Case:
    data = content.encode() if isinstance(content, str) else content
    return Case(kind, name, content=data, where=fld, reason=reason, **kw)


BAD_YAML = "malformed YAML or JSON, bad encodings"
TAGS = "YAML tags that build objects"
BOMBS = "alias bombs, deep nesting, huge files"
SCHEMA = "unknown keys, wrong types, bad values"
NAMES = "names with /, .., NUL, control characters"
PATHS = "data paths outside data_roots (direct, .., symlinks)"
FILES = "symlinked, FIFO, device, vanishing job files"


def _billion_laughs() -> bytes:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return ("\n".join(lines) + "\n").encode()


def _quadratic() -> bytes:
    return b'a: &a "' + b"x" * 20_000 + b'"\nb: [' + b",".join([b"*a"] * 5_000) + b"]\n"


def _block_nesting(depth: int) -> bytes:
    return "".join("  " * i + "a:\n" for i in range(depth)).encode() + b"  " * depth + b"1\n"


def _symlink_to(target: Callable[[Lab], Path | str]) -> Make:
    def make(lab: Lab, path: Path) -> None:
        path.symlink_to(target(lab))

    return make


def _make_fifo(lab: Lab, path: Path) -> None:
    os.mkfifo(path)


def _make_dir(lab: Lab, path: Path) -> None:
    path.mkdir()


def _make_socket(lab: Lab, path: Path) -> None:
    # A socket file stays after its socket is closed.
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


def _make_device(lab: Lab, path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # like /dev/zero


def _make_sparse(lab: Lab, path: Path) -> None:
    with open(path, "wb") as fh:
        fh.truncate(16 << 30)  # 16 GiB of holes: read it and the test runs out of memory


def _make_valid(lab: Lab, path: Path) -> None:
    path.write_bytes(as_yaml(doc()))


def _vanish_after_lstat(lab: Lab, path: Path) -> contextlib.AbstractContextManager[Any]:
    """The file is removed between the reader's first look (lstat) and its open."""
    real_lstat = os.lstat

    def lstat_then_vanish(p: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        result = real_lstat(p, *args, **kwargs)
        if os.fspath(p) == os.fspath(path):
            os.unlink(path)
        return result

    return mock.patch("os.lstat", lstat_then_vanish)


def _link_after_lstat(lab: Lab, path: Path) -> contextlib.AbstractContextManager[Any]:
    """The file is replaced by a link to /etc/shadow between the lstat and the open."""
    real_lstat = os.lstat
    swapped: list[bool] = []

    def lstat_then_swap(p: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        result = real_lstat(p, *args, **kwargs)
        if os.fspath(p) == os.fspath(path) and not swapped:
            swapped.append(True)
            os.unlink(path)
            os.symlink("/etc/shadow", path)
        return result

    return mock.patch("os.lstat", lstat_then_swap)


def _read_fails(lab: Lab, path: Path) -> contextlib.AbstractContextManager[Any]:
    """The file's storage goes away mid-read (a stale NFS handle, a yanked disk)."""

    def read(fd: int, n: int) -> bytes:
        raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))

    return mock.patch("os.read", read)


def _never_ends(lab: Lab, path: Path) -> contextlib.AbstractContextManager[Any]:
    """The file keeps growing while it is read (fstat said small; reads never hit EOF)."""

    def read(fd: int, n: int) -> bytes:
        return b"#" * min(n, 4096)

    return mock.patch("os.read", read)


def corpus(lab: Lab) -> list[Case]:
    """The hand-made hostile files, by class."""
    pwn = str(lab.pwned)
    secret = str(lab.outside / "secret.csv")
    # fmt: off
    cases = [
        # -- malformed YAML and JSON, bad encodings -----------------------------------------
        _c(BAD_YAML, "unclosed-flow", "name: [unclosed\n", "-", "not valid YAML"),
        _c(BAD_YAML, "bad-indent", "name: job\n  bad: indent\n", "-", "not valid YAML"),
        _c(BAD_YAML, "unterminated-quote", "name: 'job\n", "-", "not valid YAML"),
        _c(BAD_YAML, "tab-indent", "data:\n\ttransactions: x.csv\n", "-", "not valid YAML"),
        _c(BAD_YAML, "bad-escape", 'name: "\\xZZ"\n', "-", "not valid YAML"),
        _c(BAD_YAML, "nul-char", "name: job\x00\n", "-", "not valid YAML"),
        _c(BAD_YAML, "escape-char", "name: \x1b[31mjob\n", "-", "not valid YAML"),
        _c(BAD_YAML, "two-yaml-directives", "%YAML 1.1\n%YAML 1.1\n---\nname: job\n", "-", "YAML"),
        _c(BAD_YAML, "two-documents", "name: job\n---\nname: x\n", "-", "more than one"),
        _c(BAD_YAML, "complex-key", "? [a, b]\n: value\n", None, "YAML", "keys must be strings"),
        _c(BAD_YAML, "huge-int", "name: job\nsearch:\n  seed: 1" + "0" * 5000 + "\n", "-", "YAML"),
        _c(BAD_YAML, "bad-date", "name: job\nwhen: 2020-13-45\n", "-", "not valid YAML"),
        _c(BAD_YAML, "empty", "", "-", "empty"),
        _c(BAD_YAML, "whitespace", " \n\t\n", "-", "empty", "not valid YAML"),
        _c(BAD_YAML, "only-comments", "# nothing\n", "-", "only comments"),
        _c(BAD_YAML, "top-list", "- name: job\n", "-", "mapping"),
        _c(BAD_YAML, "top-scalar", "job\n", "-", "mapping"),
        _c(BAD_YAML, "latin-1", "name: caf\xe9\n".encode("latin-1"), "-", "UTF-8"),
        _c(BAD_YAML, "utf-16", "name: job\n".encode("utf-16"), "-", "UTF-8"),
        _c(BAD_YAML, "overlong-utf8", b"name: \xc0\xaf\n", "-", "UTF-8"),
        _c(BAD_YAML, "utf8-surrogate", b"name: \xed\xa0\x80\n", "-", "UTF-8"),
        _c(BAD_YAML, "json-trailing-comma", '{"name": "job",}', "-", "not valid JSON", suffix=".json"),
        _c(BAD_YAML, "json-single-quotes", "{'name': 'job'}", "-", "not valid JSON", suffix=".json"),
        _c(BAD_YAML, "json-comment", '{"name": "job" /* x */}', "-", "not valid JSON", suffix=".json"),
        _c(BAD_YAML, "json-infinity", '{"name": "job", "search": {"seed": Infinity}}', "search.seed", "Infinity", suffix=".json"),
        _c(BAD_YAML, "json-nan", '{"name": "job", "search": {"seed": NaN}}', "search.seed", "NaN", suffix=".json"),
        _c(BAD_YAML, "json-extra-data", '{"name": "job"} {"name": "x"}', "-", "not valid JSON", suffix=".json"),
        _c(BAD_YAML, "json-duplicate-key", '{"name": "job", "name": "job"}', "-", "twice", suffix=".json"),
        _c(BAD_YAML, "json-huge-int", '{"search": {"seed": 1' + "0" * 5000 + "}}", "-", "not valid JSON", suffix=".json"),
        _c(BAD_YAML, "json-bom", b'\xef\xbb\xbf{"name": "job"}', "-", "not valid JSON", suffix=".json"),
        _c(BAD_YAML, "json-null", "null", "-", "mapping", suffix=".json"),
        _c(BAD_YAML, "json-truncated", as_json(doc())[:-5], "-", "not valid JSON", suffix=".json"),
        # -- YAML tags that try to build objects ------------------------------------------------
        _c(TAGS, "python-apply", f"name: !!python/object/apply:os.system ['touch {pwn}']\n", "name", "tag"),
        _c(TAGS, "python-new", f"!!python/object/new:os.system ['touch {pwn}']\n", "-", "tag"),
        _c(TAGS, "python-object", "data: !!python/object:__main__.X {a: 1}\n", "data", "tag"),
        _c(TAGS, "python-name", "name: !!python/name:os.system\n", "name", "tag"),
        _c(TAGS, "python-module", "name: !!python/module:os\n", "name", "tag"),
        _c(TAGS, "python-tuple", "models: !!python/tuple [xgboost]\n", "models", "tag"),
        _c(TAGS, "verbatim-tag", f"name: !<tag:yaml.org,2002:python/object/apply:os.system> ['touch {pwn}']\n", "name", "tag"),
        _c(TAGS, "tag-directive", f"%TAG !p! tag:yaml.org,2002:python/\n---\nname: !p!object/apply:os.system ['touch {pwn}']\n", "name", "tag"),
        _c(TAGS, "set", "models: !!set {xgboost: null}\n", "models", "tag"),
        _c(TAGS, "binary", "name: !!binary aGVsbG8=\n", "name", "tag"),
        _c(TAGS, "timestamp", "name: !!timestamp 2020-01-01\n", "name", "tag"),
        _c(TAGS, "local-tag", "name: !custom job\n", "name", "tag"),
        _c(TAGS, "str-tag", "name: !!str job\n", "name", "tag"),
        _c(TAGS, "map-tag", "!!map {name: job}\n", "-", "tag"),
        _c(TAGS, "tag-on-key", "? !!python/name:os.system\n: x\n", None, "tag"),
        _c(TAGS, "tag-in-list", "models: [!!python/name:os.system]\n", "models.0", "tag"),
        # -- alias bombs, deep nesting, huge files ---------------------------------------------
        _c(BOMBS, "billion-laughs", _billion_laughs(), None, "anchor", "alias", bomb=True),
        _c(BOMBS, "quadratic-aliases", _quadratic(), None, "anchor", bomb=True),
        _c(BOMBS, "merge-key", "base: &b {n_trials: 1}\nsearch:\n  <<: *b\n", None, "anchor", bomb=True),
        _c(BOMBS, "recursive-alias", "a: &a [*a]\n", None, "anchor", bomb=True),
        _c(BOMBS, "undefined-alias", "name: *nothing\n", "name", "alias", bomb=True),
        _c(BOMBS, "yaml-flow-17", "a: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n", None, "nested deeper", bomb=True),
        _c(BOMBS, "yaml-flow-unbalanced", "[" * 60_000, None, "nested deeper", bomb=True),
        _c(BOMBS, "yaml-block-20", _block_nesting(20), None, "nested deeper", bomb=True),
        _c(BOMBS, "yaml-mapping-flow", "{a: " * 40 + "1" + "}" * 40, None, "nested deeper", bomb=True),
        _c(BOMBS, "json-arrays-60k", "[" * 60_000 + "]" * 4_000, "-", "nested deeper", "not valid JSON", suffix=".json", bomb=True),
        _c(BOMBS, "json-objects-10k", '{"a":' * 10_000 + "1" + "}" * 10_000, None, "nested deeper", suffix=".json", bomb=True),
        _c(BOMBS, "json-depth-17", '{"a": ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}", None, "nested deeper", suffix=".json", bomb=True),
        _c(BOMBS, "one-byte-over", as_yaml(doc()) + b"#" * (MAX_BYTES - len(as_yaml(doc())) + 1), "-", "over 65536 bytes", bomb=True),
        _c(BOMBS, "ten-mib", b"#" * (10 << 20), "-", "over 65536 bytes", bomb=True),
        Case(BOMBS, "sparse-16-gib", make=_make_sparse, reason=("over 65536 bytes",), bomb=True),
        Case(BOMBS, "grows-while-read", content=as_yaml(doc()), patch=_never_ends, reason=("over 65536 bytes",), bomb=True),
        _c(BOMBS, "long-string", as_json(doc(name="a" * 60_000)), "name", "must be 1 to 63", suffix=".json", bomb=True),
        _c(BOMBS, "wide-list", as_json(doc(models=["xgboost"] * 5_000)), "models", "more than once", suffix=".json", bomb=True),
        # -- unknown keys -------------------------------------------------------------------
        _c(SCHEMA, "unknown-top", as_yaml(doc(colour="blue")), "colour", "unknown key"),
        _c(SCHEMA, "unknown-proto", as_json(doc(__proto__={"admin": True})), "__proto__", "unknown key", suffix=".json"),
        _c(SCHEMA, "unknown-trailing-space", as_yaml(doc(**{"name ": "x"})), "name ", "unknown key"),
        _c(SCHEMA, "unknown-case", as_yaml(doc(Name="x")), "Name", "unknown key"),
        _c(SCHEMA, "unknown-data", as_yaml(doc(**{"data.labels": "x.csv"})), "data.labels", "unknown key"),
        _c(SCHEMA, "unknown-search", as_yaml(doc(**{"search.n_trial": 5})), "search.n_trial", "unknown key"),
        _c(SCHEMA, "unknown-param", as_yaml(doc(**{"search.space.xgboost.eta": [0.1, 0.3]})), "search.space.xgboost.eta", "unknown key"),
        _c(SCHEMA, "unknown-model-space", as_yaml(doc(**{"search.space.catboost": {}})), "search.space.catboost", "unknown key"),
        _c(SCHEMA, "unknown-validation", as_yaml(doc(**{"validation.holdout": 0.1})), "validation.holdout", "unknown key"),
        _c(SCHEMA, "unknown-gate", as_yaml(doc(**{"quality_gate.min_auc": 0.7})), "quality_gate.min_auc", "unknown key"),
        # -- wrong types and values -----------------------------------------------------------
        _c(SCHEMA, "name-int", as_yaml(doc(name=123)), "name", "string"),
        _c(SCHEMA, "name-bool", as_yaml(doc(name=True)), "name", "string"),
        _c(SCHEMA, "name-null", as_yaml(doc(name=None)), "name", "string"),
        _c(SCHEMA, "name-list", as_yaml(doc(name=["a"])), "name", "string"),
        _c(SCHEMA, "name-date", "name: 2020-01-01\ndata: {transactions: data/train_transaction.csv}\n", "name", "date"),
        _c(SCHEMA, "no-name", as_yaml({"data": {"transactions": "data/train_transaction.csv"}}), "name", "required"),
        _c(SCHEMA, "no-data", as_yaml({"name": "job"}), "data", "required"),
        _c(SCHEMA, "trials-string", as_yaml(doc(**{"search.n_trials": "50"})), "search.n_trials", "integer"),
        _c(SCHEMA, "trials-float", "name: job\ndata: {transactions: data/train_transaction.csv}\nsearch: {n_trials: 5.0}\n", "search.n_trials", "integer"),
        _c(SCHEMA, "trials-bool", as_yaml(doc(**{"search.n_trials": True})), "search.n_trials", "integer"),
        _c(SCHEMA, "trials-zero", as_yaml(doc(**{"search.n_trials": 0})), "search.n_trials", "greater than"),
        _c(SCHEMA, "trials-huge", as_yaml(doc(**{"search.n_trials": 10**12})), "search.n_trials", "less than"),
        _c(SCHEMA, "seed-negative", as_yaml(doc(**{"search.seed": -1})), "search.seed", "greater than"),
        _c(SCHEMA, "seed-2-32", as_yaml(doc(**{"search.seed": 2**32})), "search.seed", "less than"),
        _c(SCHEMA, "parallelism-65", as_yaml(doc(**{"search.parallelism": 65})), "search.parallelism", "less than"),
        _c(SCHEMA, "sampler-grid", as_yaml(doc(**{"search.sampler": "grid"})), "search.sampler", "tpe"),
        _c(SCHEMA, "pruner-int", as_yaml(doc(**{"search.pruner": 1})), "search.pruner", "median"),
        _c(SCHEMA, "models-string", as_yaml(doc(models="xgboost")), "models", "tuple", "list", "array"),
        _c(SCHEMA, "models-empty", as_yaml(doc(models=[])), "models", "at least 1"),
        _c(SCHEMA, "models-unknown", as_yaml(doc(models=["catboost"])), "models.0", "xgboost"),
        _c(SCHEMA, "data-string", as_yaml(doc(data="train.csv")), "data", "object", "dict", "DataSpec"),
        _c(SCHEMA, "transactions-int", as_yaml(doc(**{"data.transactions": 42})), "data.transactions", "string"),
        _c(SCHEMA, "transactions-list", as_yaml(doc(**{"data.transactions": ["a.csv"]})), "data.transactions", "string"),
        _c(SCHEMA, "fraction-high", as_yaml(doc(**{"validation.test_fraction": 0.9})), "validation.test_fraction", "less than"),
        _c(SCHEMA, "fraction-string", as_yaml(doc(**{"validation.test_fraction": "0.2"})), "validation.test_fraction", "number"),
        _c(SCHEMA, "fraction-nan", "name: job\ndata: {transactions: data/train_transaction.csv}\nvalidation: {test_fraction: .nan}\n", "validation.test_fraction", "finite"),
        _c(SCHEMA, "gate-string-bool", as_yaml(doc(**{"quality_gate.allow_regression": "true"})), "quality_gate.allow_regression", "boolean"),
        _c(SCHEMA, "gate-auc-high", as_yaml(doc(**{"quality_gate.min_test_auc": 1.5})), "quality_gate.min_test_auc", "less than"),
        _c(SCHEMA, "space-reversed", as_yaml(doc(**{"search.space.xgboost.max_depth": [10, 3]})), "search.space.xgboost.max_depth", "low <= high"),
        _c(SCHEMA, "space-scalar", as_yaml(doc(**{"search.space.xgboost.max_depth": 5})), "search.space.xgboost.max_depth", "[low, high]"),
        _c(SCHEMA, "space-bool", as_yaml(doc(**{"search.space.xgboost.max_depth": [True, 3]})), "search.space.xgboost.max_depth", "number"),
        _c(SCHEMA, "space-inf", "name: job\ndata: {transactions: data/train_transaction.csv}\nsearch: {space: {xgboost: {gamma: [.inf, 1]}}}\n", "search.space.xgboost.gamma.0", "finite"),
        _c(SCHEMA, "space-untrained", as_yaml(doc(models=["xgboost"], **{"search.space.lightgbm.num_leaves": [4, 8]})), "search.space.lightgbm", "does not train"),
        _c(SCHEMA, "int-key", "1: one\nname: job\n", "-", "keys must be strings"),
        _c(SCHEMA, "null-key", "~: x\nname: job\n", "-", "keys must be strings"),
    ]
    # fmt: on
    # -- names: each must be refused as the name, never become part of a path -------------
    hostile_names = {
        "slash": "a/b",
        "dotdot-slash": "../etc",
        "dotdot": "..",
        "dot": ".",
        "nul": "a\x00b",
        "newline": "a\nb",
        "trailing-newline": "job\n",
        "tab": "a\tb",
        "ansi-escape": "\x1b[31mred",
        "rtl-override": "\u202egnp.exe",
        "fullwidth": "\uff2a\uff2f\uff22",
        "accent": "café",
        "leading-dash": "-lead",
        "upper": "Job",
        "too-long": "x" * 64,
        "empty": "",
        "leading-space": " job",
        "space": "job name",
        "semicolon": "job;rm -rf",
        "subshell": "$(id)",
        "backticks": "`id`",
        "format": "%s%n",
        "backslash": "a\\b",
        "absolute": "/etc/passwd",
        "home": "~root",
        "glob": "job*",
        "del-char": "job\x7f",
    }  # fmt: skip
    cases += [
        _c(NAMES, f"name-{k}", as_json(doc(name=v)), "name", "must be 1 to 63", suffix=".json")
        for k, v in hostile_names.items()
    ]
    # -- data paths: outside the roots directly, through .., through symlinks ------------------
    paths: list[tuple[str, str, str, tuple[str, ...]]] = [
        ("absolute-fifo", secret, "data.transactions", ("outside the data roots",)),
        ("absolute-real", str(lab.outside / "real.csv"), "data.transactions", ("outside",)),
        ("etc-passwd", "/etc/passwd", "data.transactions", ("CSV or Parquet",)),
        ("etc-passwd-csv", "/etc/passwd.csv", "data.transactions", ("outside",)),
        ("dotdot", "../outside/secret.csv", "data.transactions", ("outside",)),
        ("dotdot-deep", "data/../../outside/secret.csv", "data.transactions", ("outside",)),
        ("dotdot-many", "../" * 30 + "etc/x.csv", "data.transactions", ("outside",)),
        ("symlink-file", "data/link-out.csv", "data.transactions", ("outside",)),
        ("symlink-dir", "door/secret.csv", "data.transactions", ("outside",)),
        ("symlink-dangling", "data/dangling.csv", "data.transactions", ("outside",)),
        ("symlink-dev-zero", "data/zero.csv", "data.transactions", ("outside",)),
        ("symlink-loop", "data/loop.csv", "data.transactions", ("cannot stat", "symbolic links")),
        ("proc-self-root", "/proc/self/root/etc/x.csv", "data.transactions", ("outside",)),
        ("proc-self-cwd", "/proc/self/cwd/x.csv", "data.transactions", ("outside",)),
        ("prefix-sibling", str(lab.evil / "x.csv"), "data.transactions", ("outside",)),
        ("fifo-in-root", "data/fifo.csv", "data.transactions", ("not a regular file",)),
        ("dir-in-root", "data/dir.csv", "data.transactions", ("not a regular file",)),
        ("missing", "data/missing.csv", "data.transactions", ("does not exist",)),
        ("tilde", "~/x.csv", "data.transactions", ("does not exist",)),
        ("nul-in-path", "data/train_transaction.csv\x00.txt", "data.transactions", ("NUL",)),
        ("empty-path", "", "data.transactions", ("non-empty",)),
        ("path-5000", "a/" * 2500 + "x.csv", "data.transactions", ("non-empty",)),
        ("no-suffix", "data/train_transaction", "data.transactions", ("CSV or Parquet",)),
    ]
    if lab.has_device:
        paths.append(("device-in-root", "data/null.csv", "data.transactions", ("not a regular",)))
    cases += [
        Case(PATHS, f"path-{k}", ".json", as_json(doc(**{"data.transactions": v})), f, r)
        for k, v, f, r in paths
    ]
    cases.append(
        Case(
            PATHS,
            "path-identity-outside",
            ".json",
            as_json(doc(**{"data.identity": "../outside/secret.csv"})),
            "data.identity",
            ("outside",),
        )
    )
    # -- the job file itself ----------------------------------------------------------------
    cases += [
        Case(FILES, "symlink-to-valid", make=_symlink_to(lambda lab: _valid_file(lab)), reason=("symbolic link",)),
        Case(FILES, "symlink-to-dev-zero", make=_symlink_to(lambda lab: "/dev/zero"), reason=("symbolic link",)),
        Case(FILES, "symlink-to-outside-fifo", make=_symlink_to(lambda lab: lab.outside / "secret.csv"), reason=("symbolic link",)),
        Case(FILES, "symlink-dangling", make=_symlink_to(lambda lab: lab.outside / "gone.yaml"), reason=("symbolic link",)),
        Case(FILES, "fifo", make=_make_fifo, reason=("FIFO",)),
        Case(FILES, "directory", make=_make_dir, reason=("directory",)),
        Case(FILES, "socket", make=_make_socket, reason=("socket",)),
        Case(FILES, "device", make=_make_device, reason=("device",), needs_device=True),
        Case(FILES, "vanishes-before-open", make=_make_valid, patch=_vanish_after_lstat, reason=("no such file", "does not exist")),
        Case(FILES, "link-swapped-in", make=_make_valid, patch=_link_after_lstat, reason=("symbolic link",)),
        Case(FILES, "read-fails", make=_make_valid, patch=_read_fails, reason=("cannot read",)),
        Case(FILES, "missing", reason=("does not exist",)),
        Case(FILES, "suffix-bak", ".yaml.bak", as_yaml(doc()), "-", ("must end in",)),
        Case(FILES, "suffix-none", "", as_yaml(doc()), "-", ("must end in",)),
        Case(FILES, "suffix-toml", ".toml", as_yaml(doc()), "-", ("must end in",)),
    ]  # fmt: skip
    return cases


def _valid_file(lab: Lab) -> Path:
    target = lab.jobs / "valid-target.yaml"
    if not target.exists():
        target.write_bytes(as_yaml(doc()))
    return target


# ---- running one case ------------------------------------------------------------------------


@dataclass
class Outcome:
    case: Case
    error: JobSpecError | None = None
    accepted: ParsedJob | None = None
    crashed: BaseException | None = None
    peak: int = 0
    problems: list[str] = field(default_factory=list)


def run_case(lab: Lab, case: Case) -> Outcome:
    path = lab.path(case.name + case.suffix)
    if case.make is not None:
        case.make(lab, path)
    elif case.name != "missing":
        path.write_bytes(case.content)
    out = Outcome(case)
    spy = Spy()
    patch = case.patch(lab, path) if case.patch else contextlib.nullcontext()
    tracemalloc.reset_peak()
    start = tracemalloc.get_traced_memory()[0]
    try:
        with patch, spy.watching():
            out.accepted = lab.parse(path)
    except JobSpecError as exc:
        out.error = exc
    except BaseException as exc:  # anything else escaping the reader is the finding
        out.crashed = exc
    out.peak = tracemalloc.get_traced_memory()[1] - start
    out.problems = spy.problems(lab, path) + _judge(lab, case, path, out)
    return out


def _judge(lab: Lab, case: Case, path: Path, out: Outcome) -> list[str]:
    if out.crashed is not None:
        return [f"raised {type(out.crashed).__name__}: {out.crashed}"]
    if out.error is None:
        return ["accepted"]
    found = []
    exc, message = out.error, str(out.error)
    if str(path) not in message:
        found.append(f"the message does not name the file: {message!r}")
    if case.where is not None:
        want = case.where
        ok = exc.field.startswith(want[:-1]) if want.endswith("*") else exc.field == want
        if not ok:
            found.append(f"field {exc.field!r}, expected {want!r} ({message!r})")
    if exc.field != "-" and repr(exc.field) not in message:
        found.append(f"the message does not name the field {exc.field!r}: {message!r}")
    if case.reason and not any(r.lower() in exc.reason.lower() for r in case.reason):
        found.append(f"reason {exc.reason!r} says none of {case.reason}")
    limit = BOMB_PEAK_LIMIT if case.bomb else PEAK_LIMIT
    if out.peak > limit:
        found.append(f"peak memory {out.peak} bytes, over {limit}")
    return found


@pytest.mark.timeout(120)  # a FIFO opened by mistake blocks: the timeout is the finding
def test_every_hostile_job_file_in_the_corpus_is_rejected_naming_file_and_field(lab: Lab) -> None:
    cases = [c for c in corpus(lab) if lab.has_device or not c.needs_device]
    tracemalloc.start()
    try:
        outcomes = [run_case(lab, case) for case in cases]
    finally:
        tracemalloc.stop()
    by_kind: dict[str, list[Outcome]] = {}
    for out in outcomes:
        by_kind.setdefault(out.case.kind, []).append(out)
    for kind, outs in by_kind.items():
        bad = [o for o in outs if o.problems]
        peak = max(o.peak for o in outs)
        record(
            "hostile input",
            f"{kind} (corpus, parse_job_file)",
            cases=len(outs),
            recovered=0,
            refused=len(outs) - len(bad),
            violations=len(bad),
            note=f"{kind}: largest tracemalloc peak {peak / 1024:.0f} KiB",
        )
    assert not lab.pwned.exists(), "a YAML tag ran a command"
    bad = [
        f"{o.case.kind} / {o.case.name}: {'; '.join(o.problems)}" for o in outcomes if o.problems
    ]
    assert not bad, "\n".join(bad)


# ---- fuzzing ----------------------------------------------------------------------------------

FRAGMENTS = [
    "!!python/object/apply:os.system ['true']", "&a ", "*a", "<<: *a", "!!binary aGk=",
    "\x00", "\x1b", "\t", "\r", "\ufeff", "[" * 20, "{" * 20, "../../", "/etc/passwd",
    "door/secret.csv", "data/link-out.csv", "data/fifo.csv", "%TAG ! tag:x\n", "---\n",
    "\n...\n", "? ", ": ", "- ", "'", '"', "\\", "1e999", ".nan", "2020-01-01", "~",
    "\n  colour: blue", "\nsearch: {n_trials: '5'}", "\nmodels: [xgboost, xgboost]",
]  # fmt: skip
_VALID_YAML = as_yaml(
    doc(
        models=["xgboost", "lightgbm"],
        **{
            "data.identity": "data/train_identity.csv",
            "search.n_trials": 5,
            "search.space.xgboost.max_depth": [2, 4],
        },
    )
).decode()
_VALID_JSON = json.dumps(json.loads(json.dumps(yaml.safe_load(_VALID_YAML))), indent=1)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid job file with one to four hostile edits (inserts, deletions, byte flips)."""
    suffix = draw(st.sampled_from([".yaml", ".json"]))
    text = bytearray((_VALID_YAML if suffix == ".yaml" else _VALID_JSON).encode())
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "flip", "duplicate"]))
        if op == "insert":
            text[pos:pos] = draw(st.sampled_from(FRAGMENTS)).encode()
        elif op == "delete":
            del text[pos : pos + draw(st.integers(1, 40))]
        elif op == "flip" and text:
            i = min(pos, len(text) - 1)
            text[i] ^= 1 << draw(st.integers(0, 7))
        else:
            end = min(len(text), pos + draw(st.integers(1, 80)))
            text[pos:pos] = text[pos:end] * draw(st.integers(2, 50))
    return suffix, bytes(text)


class Tally:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.problems: list[str] = []


def _check_fuzzed(
    lab: Lab, name: str, content: bytes, tally: Tally, field: str | None, must_accept: bool = False
) -> None:
    """Parse one fuzzed file: rejected naming the file (and ``field``, if given), or
    accepted and safe; ``must_accept``: it is a valid file and must be accepted."""
    path = lab.write(name, content)
    spy = Spy()
    try:
        with spy.watching():
            job = lab.parse(path)
    except JobSpecError as exc:
        tally.counts["rejected"] += 1
        problems = [] if str(path) in str(exc) else [f"message without the file: {exc}"]
        if field is not None and exc.field != field:
            problems.append(f"field {exc.field!r}, expected {field!r}: {exc}")
    except Exception as exc:  # anything else is the finding
        tally.counts["crashed"] += 1
        problems = [f"raised {type(exc).__name__}: {exc}"]
    else:
        tally.counts["accepted"] += 1
        problems = _accepted_problems(lab, job)
        must_accept = False
    if must_accept:
        problems.append("a valid file was rejected")
    problems += spy.problems(lab, path)
    path.unlink()
    if problems:
        tally.problems.append(f"{content[:200]!r}: {'; '.join(problems)}")


def _accepted_problems(lab: Lab, job: ParsedJob) -> list[str]:
    """What an accepted job must be: a safe name, data files that are regular and inside."""
    found = []
    if not NAME_RE.fullmatch(job.spec.name):
        found.append(f"accepted the name {job.spec.name!r}")
    for p in (job.spec.data.transactions, job.spec.data.identity):
        if p is None:
            continue
        if not lab.inside(os.path.realpath(p)) or not stat.S_ISREG(os.stat(p).st_mode):
            found.append(f"accepted the data path {p!r}")
    return found


def _fuzz(fn: Callable[..., None]) -> Callable[..., None]:
    """Hypothesis settings for the fuzzers, seeded from the fault suite's seed."""
    fn = settings(
        max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )(fn)
    return hypothesis_seed(faultkit.seed())(fn)


def test_mutations_of_a_valid_job_file_are_rejected_or_safe(lab: Lab) -> None:
    tally = Tally()

    @_fuzz
    @given(case=mutated())
    def check(case: tuple[str, bytes]) -> None:
        suffix, content = case
        _check_fuzzed(lab, f"mutant{suffix}", content, tally, None)

    check()
    _record_fuzz("mutations of a valid file (Hypothesis)", tally)


_name_text = st.text(
    alphabet=st.characters(codec="utf-8") | st.sampled_from("/.\x00\n\t-az09 \\$`~*"),
    max_size=70,
)


def test_arbitrary_names_are_accepted_only_when_safe_as_a_file_name(lab: Lab) -> None:
    tally = Tally()

    @_fuzz
    @given(name=_name_text | st.from_regex(NAME_RE, fullmatch=True))
    def check(name: str) -> None:
        safe = NAME_RE.fullmatch(name) is not None
        content = as_json(doc(name=name))
        _check_fuzzed(lab, "name.json", content, tally, "name", must_accept=safe)

    check()
    _record_fuzz("arbitrary names (Hypothesis)", tally)


_parts = st.lists(
    st.sampled_from(
        ["..", ".", "", "data", "door", "root", "outside", "secret.csv", "link-out.csv",
         "fifo.csv", "dir.csv", "loop.csv", "zero.csv", "inner.csv", "dangling.csv",
         "train_transaction.csv", "root-evil", "x.csv", "proc", "self", "cwd", "\x00", "é"]
    ),
    min_size=1,
    max_size=7,
)  # fmt: skip


#: Paths that do resolve to a data file inside the root, so that some examples are accepted.
_VALID_PARTS = [
    ["data", "train_transaction.csv"],
    ["data", "inner.csv"],
    ["data", ".", "", "train_transaction.csv"],
    ["door", "..", "root", "data", "train_transaction.csv"],
    ["data", "dir.csv", "..", "train_identity.csv"],
]


def test_arbitrary_data_paths_never_reach_outside_the_roots(lab: Lab) -> None:
    tally = Tally()

    @_fuzz
    @given(
        parts=_parts | st.sampled_from(_VALID_PARTS),
        prefix=st.sampled_from(["", "/", "BASE/", "ROOT/", "/proc/self/"]),
    )
    def check(parts: list[str], prefix: str) -> None:
        prefix = prefix.replace("BASE", str(lab.base)).replace("ROOT", str(lab.root))
        value = prefix + "/".join(parts)
        which = "data.identity" if len(parts) % 2 else "data.transactions"
        content = as_json(doc(**{which: value}))
        _check_fuzzed(lab, "path.json", content, tally, which)

    check()
    _record_fuzz("arbitrary data paths (Hypothesis)", tally)


def _record_fuzz(injected: str, tally: Tally) -> None:
    total = sum(tally.counts.values())
    record(
        "hostile input",
        injected,
        cases=total,
        recovered=tally.counts["accepted"] - min(tally.counts["accepted"], len(tally.problems)),
        refused=tally.counts["rejected"],
        violations=len(tally.problems),
        note=f"{injected}: {dict(tally.counts)} (accepted ones checked safe)",
    )
    assert not tally.problems, "\n".join(tally.problems[:20])


# ---- through a real daemon ----------------------------------------------------------------------


def _daemon_corpus(lab: Lab, trap: Path, cwd: Path) -> list[Case]:
    """About thirty files for the inbox: one or more of each class, data paths pointing at
    ``trap`` (a FIFO outside the daemon's roots) where a path is needed."""
    picked = {
        "unclosed-flow", "nul-char", "latin-1", "json-trailing-comma", "json-huge-int",
        "json-bom", "python-apply", "verbatim-tag", "tag-directive", "binary",
        "billion-laughs", "quadratic-aliases", "merge-key", "yaml-flow-unbalanced",
        "json-arrays-60k", "ten-mib", "sparse-16-gib", "unknown-top", "unknown-param",
        "trials-string", "models-unknown", "space-untrained", "name-slash",
        "name-dotdot-slash", "name-nul", "name-ansi-escape", "fifo", "socket",
    }  # fmt: skip
    chosen = [c for c in corpus(lab) if c.name in picked]
    escape = [
        ("outside-absolute", str(trap)),
        ("outside-dotdot", os.path.relpath(trap, cwd)),
        ("outside-symlink", "data/trap-link.csv"),
    ]
    chosen += [
        Case(PATHS, k, ".json", as_json(doc(**{"data.transactions": v})), "data.transactions")
        for k, v in escape
    ]
    chosen.append(Case(FILES, "symlink-to-job", make=_symlink_to(lambda lab: _valid_file(lab))))
    return chosen


def test_a_daemon_fed_hostile_files_rejects_each_stays_up_and_bounded_then_runs_a_job(
    daemons: MakeDaemon, workspace: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    trap_dir = tmp_path_factory.mktemp("outside-the-roots")
    trap = trap_dir / "secret.csv"
    os.mkfifo(trap)
    (workspace / "data" / "trap-link.csv").symlink_to(trap)
    lab = Lab(tmp_path_factory.mktemp("hostile-lab"))
    cases = _daemon_corpus(lab, trap, workspace)
    daemon = daemons(settings=FAULT_SETTINGS).start()
    daemon.wait_for_event(lambda e: e["type"] == "daemon.started", what="daemon.started")
    proc = psutil.Process(daemon.pid)
    time.sleep(1.0)  # let start-up allocations settle before the baseline
    baseline = proc.memory_info().rss
    inbox = daemon.state_dir / "inbox"
    names = []
    for i, case in enumerate(cases):
        name = f"{i:02d}-{case.name}{case.suffix if case.suffix.startswith('.') else '.yaml'}"
        names.append(name)
        tmp = inbox / f".{name}.tmp"
        if case.make is not None:
            case.make(lab, tmp)
        else:
            tmp.write_bytes(case.content)
        os.rename(tmp, inbox / name)
    peak = baseline

    def all_rejected() -> bool:
        nonlocal peak
        peak = max(peak, proc.memory_info().rss)
        return len(of_type(daemon.events(), "job.rejected")) >= len(cases) or not daemon.running()

    wait_for(all_rejected, timeout=120, what=f"{len(cases)} job.rejected events")
    rejected = {Path(e["file"]).name: e["reason"] for e in of_type(daemon.events(), "job.rejected")}
    folder = daemon.state_dir / "rejected"
    wait_for(
        lambda: all((folder / f"{n}.reason").exists() for n in rejected),
        timeout=30,
        what="a .reason beside each rejected file",
    )
    problems = [f"{n}: not rejected" for n in names if n not in rejected]
    for name, reason in rejected.items():
        if name not in reason:
            problems.append(f"{name}: the reason does not name the file: {reason!r}")
        if (folder / f"{name}.reason").read_text().strip() != reason.strip():
            problems.append(f"{name}: the .reason file differs from the event")
    grown = peak - baseline
    if grown > 64 << 20:
        problems.append(f"the daemon's RSS grew by {grown >> 20} MiB (baseline {baseline >> 20})")
    if not daemon.running():
        problems.append("the daemon exited")
    if full():  # and it still runs a job to the end
        job_id = daemon.submit(write_job(workspace / "jobs", "after-hostile", n_trials=1))
        end = daemon.wait_for_event(
            lambda e: e["type"] in ("job.completed", "job.failed") and e["job_id"] == job_id,
            timeout=120,
            what="the valid job to end",
        )
        if end["type"] != "job.completed":
            problems.append(f"the valid job did not complete: {end}")
    else:  # and it still serves: a last bad file is rejected too
        daemon.drop("last.yaml", b"name: [\n")
        daemon.wait_for_event(
            lambda e: e["type"] == "job.rejected" and e["file"].endswith("last.yaml"),
            what="the last file rejected",
        )
    assert daemon.stop() == 0
    problems += violations(daemon.state_dir)
    record(
        "hostile input",
        "dropped into a real daemon's inbox" + (" (then a valid job)" if full() else ""),
        cases=len(cases),
        recovered=0,
        refused=len(cases) - len([p for p in problems if "not rejected" in p]),
        violations=len(problems),
        note=f"daemon RSS {baseline >> 20} MiB at start, peak {peak >> 20} MiB while rejecting",
    )
    assert not problems, "\n".join(problems)


def test_hostile_job_doc_helpers_build_a_valid_job(lab: Lab) -> None:
    """The corpus starts from a job the reader accepts (else every rejection is trivial)."""
    for content, suffix in ((as_yaml(doc()), ".yaml"), (as_json(doc()), ".json")):
        job = lab.parse(lab.write(f"valid{suffix}", content))
        assert job.spec.name == "job"
    assert lab.parse(lab.write("valid-fuzz.yaml", _VALID_YAML.encode())).spec.name == "job"
    assert lab.parse(lab.write("valid-fuzz.json", _VALID_JSON.encode())).spec.name == "job"
    assert job_doc("x")["name"] == "x"
