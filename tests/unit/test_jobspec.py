"""Job files: what is accepted, and every class of bad input rejected with a named field."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel_daemon.core.jobspec import JobSpec, JobSpecError, ParsedJob, job_id
from sentinel_daemon.errors import SentinelError
from sentinel_daemon.jobfile import MAX_DEPTH, parse_job_file

VALID_YAML = """\
name: ieee-fraud
data:
  transactions: data/train_transaction.csv
  identity: data/train_identity.parquet
models: [xgboost, lightgbm]
search:
  n_trials: 50
  parallelism: 2
  sampler: tpe
  pruner: median
  seed: 42
  space:
    xgboost: {n_estimators: [50, 400], max_depth: [3, 10]}
    lightgbm: {num_leaves: [15, 63], learning_rate: [0.01, 0.3]}
validation:
  test_fraction: 0.2
  valid_fraction: 0.2
quality_gate:
  min_test_auc: 0.7
  allow_regression: true
"""


class Workspace:
    """A data root with two data files, a folder outside it, and a place for job files."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.data = self.root / "data"
        self.outside = base / "outside"
        self.jobs = base / "jobs"
        for folder in (self.data, self.outside, self.jobs):
            folder.mkdir(parents=True)
        (self.data / "train_transaction.csv").write_text("TransactionID\n1\n")
        (self.data / "train_identity.parquet").write_bytes(b"PAR1")
        (self.outside / "secret.csv").write_text("x\n")

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.jobs / name
        if isinstance(content, str):
            content = content.encode("utf-8")
        path.write_bytes(content)
        return path

    def parse(self, path: Path, **kwargs: Any) -> ParsedJob:
        return parse_job_file(path, data_roots=[self.root], base_dir=self.root, **kwargs)

    def parse_text(self, content: str | bytes, name: str = "job.yaml") -> ParsedJob:
        return self.parse(self.write(name, content))


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


@pytest.fixture(scope="module")
def shared_ws() -> Iterator[Workspace]:
    """One workspace for Hypothesis tests (function-scoped fixtures do not reset per example)."""
    with tempfile.TemporaryDirectory() as tmp:
        yield Workspace(Path(tmp))


def minimal(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": "job", "data": {"transactions": "data/train_transaction.csv"}}
    doc.update(changes)
    return doc


def rejected(ws: Workspace, doc: Any, name: str = "job.yaml") -> JobSpecError:
    text = json.dumps(doc) if name.endswith(".json") else yaml.safe_dump(doc)
    with pytest.raises(JobSpecError) as info:
        ws.parse_text(text, name)
    return info.value


# ---- accepted -------------------------------------------------------------------------


def test_a_valid_yaml_job_is_accepted_with_data_paths_resolved(ws: Workspace) -> None:
    job = ws.parse_text(VALID_YAML)
    spec = job.spec
    assert spec.name == "ieee-fraud"
    assert spec.models == ("xgboost", "lightgbm")
    assert spec.search.space is not None
    assert spec.search.space.for_model("xgboost") == {
        "n_estimators": (50, 400),
        "max_depth": (3, 10),
    }
    assert spec.search.space.for_model("lightgbm")["num_leaves"] == (15, 63)
    assert spec.quality_gate.min_test_auc == 0.7 and spec.quality_gate.allow_regression
    real_data = os.path.realpath(ws.data)
    assert spec.data.transactions == f"{real_data}/train_transaction.csv"
    assert job.raw["data"]["identity"] == f"{real_data}/train_identity.parquet"
    assert json.loads(json.dumps(job.raw)) == job.raw  # JSON-ready


def test_a_valid_json_job_is_accepted_and_defaults_are_filled_in(ws: Workspace) -> None:
    job = ws.parse_text(json.dumps(minimal()), "job.json")
    assert job.spec.models == ("xgboost", "lightgbm")
    assert job.raw["search"] == {
        "n_trials": 50,
        "parallelism": 2,
        "sampler": "tpe",
        "pruner": "median",
        "seed": 42,
    }
    assert job.raw["validation"] == {"test_fraction": 0.2, "valid_fraction": 0.2}
    assert job.raw["quality_gate"] == {"min_test_auc": 0.5, "allow_regression": False}
    assert "identity" not in job.raw["data"]


def test_raw_spec_rebuilds_the_same_spec(ws: Workspace) -> None:
    job = ws.parse_text(VALID_YAML)
    assert JobSpec.from_raw(job.raw) == job.spec


def test_the_same_file_twice_gets_the_same_job_id(ws: Workspace) -> None:
    first = ws.parse(ws.write("a.yaml", VALID_YAML))
    second = ws.parse(ws.write("b.yaml", VALID_YAML))
    changed = ws.parse(ws.write("c.yaml", VALID_YAML + "# edited\n"))
    assert first.job_id == second.job_id == f"ieee-fraud-{first.sha256[:8]}"
    assert changed.job_id != first.job_id
    assert job_id(first.spec, first.sha256) == first.job_id


def test_job_id_refuses_something_that_is_not_a_sha256(ws: Workspace) -> None:
    job = ws.parse_text(VALID_YAML)
    with pytest.raises(ValueError):
        job_id(job.spec, "not-a-hash")


def test_absolute_data_paths_and_symlinks_within_the_roots_are_accepted(ws: Workspace) -> None:
    (ws.root / "link.csv").symlink_to(ws.data / "train_transaction.csv")
    absolute = str(ws.data / "train_transaction.csv")
    assert ws.parse_text(yaml.safe_dump(minimal(data={"transactions": absolute}))).spec
    job = ws.parse_text(yaml.safe_dump(minimal(data={"transactions": "link.csv"})))
    assert job.spec.data.transactions == os.path.realpath(ws.data / "train_transaction.csv")


def test_the_error_names_the_file_and_the_field(ws: Workspace) -> None:
    err = rejected(ws, minimal(search={"n_trials": 0}))
    assert isinstance(err, SentinelError)
    assert err.field == "search.n_trials"
    assert str(ws.jobs / "job.yaml") in str(err) and "search.n_trials" in str(err)


# ---- schema ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (minimal(extra=1), "extra"),
        (
            minimal(data={"transactions": "data/train_transaction.csv", "labels": "x.csv"}),
            "data.labels",
        ),
        (minimal(search={"n_trails": 10}), "search.n_trails"),
        (minimal(quality_gate={"min_auc": 0.6}), "quality_gate.min_auc"),
        (minimal(search={"space": {"xgboost": {"depth": [1, 2]}}}), "search.space.xgboost.depth"),
    ],
)
def test_unknown_keys_are_rejected(ws: Workspace, doc: dict[str, Any], field: str) -> None:
    err = rejected(ws, doc)
    assert err.field == field
    assert "unknown key" in err.reason


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (minimal(name=5), "name"),
        (minimal(data="data/train_transaction.csv"), "data"),
        (minimal(data={"transactions": 3}), "data.transactions"),
        (minimal(models="xgboost"), "models"),
        (minimal(search={"n_trials": "50"}), "search.n_trials"),
        (minimal(search={"n_trials": 5.0}), "search.n_trials"),
        (minimal(search={"seed": True}), "search.seed"),
        (minimal(validation={"test_fraction": "0.2"}), "validation.test_fraction"),
        (minimal(quality_gate={"allow_regression": "yes"}), "quality_gate.allow_regression"),
        (minimal(quality_gate={"allow_regression": 1}), "quality_gate.allow_regression"),
        ({"data": {"transactions": "data/train_transaction.csv"}}, "name"),
        ({"name": "job"}, "data"),
    ],
)
def test_wrong_types_and_missing_keys_are_rejected(
    ws: Workspace, doc: dict[str, Any], field: str
) -> None:
    assert rejected(ws, doc).field == field
    assert rejected(ws, doc, "job.json").field == field


@pytest.mark.parametrize(
    "name",
    ["a/b", "..", "../etc", "a\x00b", "Fraud", "", "-x", "a" * 64, "job\n", "a b", "a_b", "é"],
)
def test_unsafe_or_malformed_names_are_rejected(ws: Workspace, name: str) -> None:
    err = rejected(ws, minimal(name=name), "job.json")
    assert err.field == "name"


def test_a_63_character_name_is_accepted(ws: Workspace) -> None:
    assert ws.parse_text(json.dumps(minimal(name="a" * 63)), "job.json").spec.name == "a" * 63


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("search", "n_trials", 0),
        ("search", "n_trials", 10_001),
        ("search", "parallelism", 0),
        ("search", "parallelism", 65),
        ("search", "seed", -1),
        ("search", "seed", 2**32),
        ("validation", "test_fraction", 0),
        ("validation", "test_fraction", 0.51),
        ("validation", "valid_fraction", -0.1),
        ("quality_gate", "min_test_auc", 1.5),
        ("quality_gate", "min_test_auc", -0.1),
        ("search", "sampler", "grid"),
        ("search", "pruner", "always"),
    ],
)
def test_out_of_range_values_are_rejected(
    ws: Workspace, section: str, key: str, value: Any
) -> None:
    assert rejected(ws, minimal(**{section: {key: value}})).field == f"{section}.{key}"


@pytest.mark.parametrize(
    ("models", "field"),
    [(["catboost"], "models.0"), (["xgboost", "xgboost"], "models"), ([], "models")],
)
def test_unknown_duplicate_or_no_models_are_rejected(
    ws: Workspace, models: list[str], field: str
) -> None:
    assert rejected(ws, minimal(models=models)).field == field


@pytest.mark.parametrize(
    ("space", "field"),
    [
        ({"catboost": {"depth": [1, 2]}}, "search.space.catboost"),
        ({"xgboost": {"num_leaves": [15, 31]}}, "search.space.xgboost.num_leaves"),
        ({"lightgbm": {"gamma": [0, 1]}}, "search.space.lightgbm.gamma"),
        ({"xgboost": {"max_depth": [10, 3]}}, "search.space.xgboost.max_depth"),
        ({"xgboost": {"max_depth": []}}, "search.space.xgboost.max_depth"),
        ({"xgboost": {"max_depth": 5}}, "search.space.xgboost.max_depth"),
        ({"xgboost": {"max_depth": "3..10"}}, "search.space.xgboost.max_depth"),
        ({"xgboost": {"max_depth": [True, 3]}}, "search.space.xgboost.max_depth"),
        ({"xgboost": {"max_depth": ["3", "10"]}}, "search.space.xgboost.max_depth"),
        ({"xgboost": {"max_depth": [3, 5, 5]}}, "search.space.xgboost.max_depth"),
        ({"xgboost": {"max_depth": {"low": 3}}}, "search.space.xgboost.max_depth"),
        ({"xgboost": [1, 2]}, "search.space.xgboost"),
        (
            {"xgboost": {"learning_rate": [0.01, float("inf")]}},
            "search.space.xgboost.learning_rate.1",
        ),
    ],
)
def test_bad_search_space_shapes_are_rejected(
    ws: Workspace, space: dict[str, Any], field: str
) -> None:
    assert rejected(ws, minimal(search={"space": space})).field == field


def test_a_space_for_a_model_the_job_does_not_train_is_rejected(ws: Workspace) -> None:
    doc = minimal(models=["xgboost"], search={"space": {"lightgbm": {"num_leaves": [15, 31]}}})
    err = rejected(ws, doc)
    assert err.field == "search.space.lightgbm"
    assert "models" in err.reason


# ---- data paths -----------------------------------------------------------------------


def test_a_data_path_outside_the_roots_is_rejected(ws: Workspace) -> None:
    err = rejected(ws, minimal(data={"transactions": str(ws.outside / "secret.csv")}))
    assert err.field == "data.transactions" and "outside the data roots" in err.reason


def test_a_data_path_escaping_through_dotdot_is_rejected(ws: Workspace) -> None:
    err = rejected(ws, minimal(data={"transactions": "data/../../outside/secret.csv"}))
    assert err.field == "data.transactions" and "outside the data roots" in err.reason


def test_a_data_path_escaping_through_a_symlink_is_rejected(ws: Workspace) -> None:
    (ws.data / "innocent.csv").symlink_to(ws.outside / "secret.csv")
    (ws.root / "door").symlink_to(ws.outside)
    for path in ("data/innocent.csv", "door/secret.csv"):
        err = rejected(ws, minimal(data={"transactions": path}))
        assert err.field == "data.transactions" and "outside the data roots" in err.reason


def test_a_sibling_folder_sharing_the_roots_prefix_is_outside(ws: Workspace) -> None:
    evil = ws.base / "root-evil"
    evil.mkdir()
    (evil / "x.csv").write_text("x\n")
    err = rejected(ws, minimal(data={"transactions": "../root-evil/x.csv"}))
    assert "outside the data roots" in err.reason


def test_an_identity_path_outside_the_roots_is_rejected(ws: Workspace) -> None:
    doc = minimal(
        data={"transactions": "data/train_transaction.csv", "identity": "../outside/secret.csv"}
    )
    assert rejected(ws, doc).field == "data.identity"


def test_a_missing_data_file_is_rejected(ws: Workspace) -> None:
    err = rejected(ws, minimal(data={"transactions": "data/nope.csv"}))
    assert err.field == "data.transactions" and "does not exist" in err.reason


def test_a_data_path_that_is_a_folder_is_rejected(ws: Workspace) -> None:
    (ws.data / "folder.csv").mkdir()
    err = rejected(ws, minimal(data={"transactions": "data/folder.csv"}))
    assert "not a regular file" in err.reason


@pytest.mark.parametrize("path", ["data/train.txt", "data/train", "", "data/a\x00.csv"])
def test_a_data_path_without_a_data_suffix_is_rejected(ws: Workspace, path: str) -> None:
    assert rejected(ws, minimal(data={"transactions": path}), "job.json").field == (
        "data.transactions"
    )


def test_no_configured_data_root_rejects_every_path(ws: Workspace) -> None:
    path = ws.write("job.yaml", yaml.safe_dump(minimal()))
    with pytest.raises(JobSpecError) as info:
        parse_job_file(path, data_roots=[], base_dir=ws.root)
    assert "data_roots" in info.value.reason


# ---- the file itself ------------------------------------------------------------------


def test_an_oversized_file_is_rejected_unparsed(ws: Workspace) -> None:
    path = ws.write("big.yaml", VALID_YAML + "#" * 70_000 + "\n")
    with pytest.raises(JobSpecError) as info:
        ws.parse(path)
    assert "over 65536 bytes" in info.value.reason
    with pytest.raises(JobSpecError):
        ws.parse(ws.write("small.yaml", VALID_YAML), max_bytes=100)


@pytest.mark.timeout(10)
def test_a_fifo_is_rejected_without_blocking(ws: Workspace) -> None:
    fifo = ws.jobs / "job.yaml"
    os.mkfifo(fifo)
    with pytest.raises(JobSpecError) as info:
        ws.parse(fifo)
    assert "FIFO" in info.value.reason


@pytest.mark.timeout(10)
def test_a_fifo_swapped_in_after_the_first_check_is_rejected_without_blocking(
    ws: Workspace,
) -> None:
    fifo = ws.jobs / "job.yaml"
    os.mkfifo(fifo)
    real_lstat = os.lstat

    def lstat_seeing_a_regular_file(p: Any) -> os.stat_result:
        return os.stat_result((stat.S_IFREG | 0o644, *real_lstat(p)[1:]))

    # Pretend the first look saw a regular file: the open/fstat pair must still catch it.
    with (
        mock.patch("os.lstat", lstat_seeing_a_regular_file),
        pytest.raises(JobSpecError) as info,
    ):
        ws.parse(fifo)
    assert "FIFO" in info.value.reason


def test_a_symlinked_job_file_is_rejected(ws: Workspace) -> None:
    target = ws.write("real.yaml", VALID_YAML)
    link = ws.jobs / "link.yaml"
    link.symlink_to(target)
    with pytest.raises(JobSpecError) as info:
        ws.parse(link)
    assert "symbolic link" in info.value.reason


def test_a_folder_or_device_as_job_file_is_rejected(ws: Workspace) -> None:
    (ws.jobs / "dir.yaml").mkdir()
    with pytest.raises(JobSpecError, match="directory"):
        ws.parse(ws.jobs / "dir.yaml")
    device = ws.jobs / "dev.yaml"
    try:
        os.mknod(device, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # like /dev/null
    except (PermissionError, OSError):
        return  # no CAP_MKNOD here: the folder case covers the non-regular branch
    with pytest.raises(JobSpecError, match="device"):
        ws.parse(device)


def test_a_missing_job_file_is_rejected(ws: Workspace) -> None:
    with pytest.raises(JobSpecError, match="does not exist"):
        ws.parse(ws.jobs / "gone.yaml")


def test_an_unknown_job_file_suffix_is_rejected(ws: Workspace) -> None:
    with pytest.raises(JobSpecError, match="must end in"):
        ws.parse(ws.write("job.toml", VALID_YAML))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("name: !!python/object/apply:os.system ['true']\n", "tag"),
        ("name: !!python/name:os.system\n", "tag"),
        ("name: !!binary aGVsbG8=\n", "tag"),
        ("a: &a [1, 2]\nb: *a\n", "anchor"),
        ("name: job\nname: other\n", "twice"),
        ("name: job\n---\nname: other\n", "more than one"),
        ("name: [unclosed\n", "not valid YAML"),
        ("name: job\n  bad: indent\n", "not valid YAML"),
        ("name: job\nwhen: 2020-13-45\n", "not valid YAML"),
        ("", "empty"),
        ("   \n# only a comment\n", "only comments"),
        ("- name: job\n", "mapping"),
        ("just a string\n", "mapping"),
        ("42\n", "mapping"),
        ("name: job\nwhen: 2020-01-01\n", "date"),
        ("1: one\nname: job\n", "keys must be strings"),
        ("name: job\nsearch: {seed: .nan}\n", "finite"),
    ],
)
def test_bad_yaml_is_rejected(ws: Workspace, text: str, reason: str) -> None:
    with pytest.raises(JobSpecError) as info:
        ws.parse_text(text)
    assert reason in str(info.value)


def test_a_billion_laughs_alias_bomb_is_refused_before_expansion(ws: Workspace) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    with pytest.raises(JobSpecError) as info:
        ws.parse_text("\n".join(lines) + "\n")
    assert "anchor" in info.value.reason or "alias" in info.value.reason


@pytest.mark.parametrize("name", ["deep.yaml", "deep.json"])
def test_deep_nesting_is_refused(ws: Workspace, name: str) -> None:
    for depth in (MAX_DEPTH + 1, 5_000):
        text = "[" * depth + "]" * depth
        with pytest.raises(JobSpecError) as info:
            ws.parse_text(text, name)
        assert "nested deeper" in info.value.reason
    mapping = '{"a": ' * 30_000 + "1" + "}" * 30_000
    with pytest.raises(JobSpecError):
        ws.parse(ws.write(name, mapping), max_bytes=1 << 20)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"name": "job",', "not valid JSON"),
        ('{"name": "job", "name": "other"}', "twice"),
        ('{"name": "job", "search": {"seed": NaN}}', "NaN"),
        ("[1, 2]", "mapping"),
        ("null", "mapping"),
        ("", "empty"),
        ('\ufeff{"name": "job"}', "not valid JSON"),
    ],
)
def test_bad_json_is_rejected(ws: Workspace, text: str, reason: str) -> None:
    with pytest.raises(JobSpecError) as info:
        ws.parse_text(text, "job.json")
    assert reason in str(info.value)


def test_bytes_that_are_not_utf8_are_rejected(ws: Workspace) -> None:
    with pytest.raises(JobSpecError, match="UTF-8"):
        ws.parse_text(b"name: \xff\xfe\n")


# ---- properties -----------------------------------------------------------------------

_suffixes = st.sampled_from(["fuzz.yaml", "fuzz.json"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400), name=_suffixes)
def test_arbitrary_bytes_raise_only_job_spec_errors(
    shared_ws: Workspace, data: bytes, name: str
) -> None:
    with contextlib.suppress(JobSpecError):
        shared_ws.parse_text(data, name)


_keys = st.sampled_from(
    [
        "name",
        "data",
        "transactions",
        "identity",
        "models",
        "search",
        "n_trials",
        "space",
        "xgboost",
        "max_depth",
        "validation",
        "test_fraction",
        "quality_gate",
        "x",
    ]
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["job", "xgboost", "tpe", "data/train_transaction.csv", "../x.csv"])
)
_documents = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_documents, as_json=st.booleans())
def test_arbitrary_documents_raise_only_job_spec_errors(
    shared_ws: Workspace, doc: Any, as_json: bool
) -> None:
    if as_json:
        text, name = json.dumps(doc), "doc.json"
    else:
        text, name = yaml.safe_dump(doc), "doc.yaml"
    with contextlib.suppress(JobSpecError):
        shared_ws.parse_text(text, name)


_path_parts = st.lists(
    st.sampled_from(
        [
            "..",
            ".",
            "data",
            "outside",
            "door",
            "root",
            "secret.csv",
            "train_transaction.csv",
            "x.csv",
            "innocent.csv",
            "",
        ]
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=_path_parts, absolute=st.booleans())
def test_nothing_outside_the_data_roots_is_ever_stat_ed(
    shared_ws: Workspace, parts: list[str], absolute: bool
) -> None:
    ws = shared_ws
    if not (ws.root / "door").is_symlink():
        (ws.root / "door").symlink_to(ws.outside)
        (ws.data / "innocent.csv").symlink_to(ws.outside / "secret.csv")
    rel = "/".join(parts) + ".csv"
    value = str(ws.base / rel) if absolute else rel
    path = ws.write("stat.json", json.dumps(minimal(data={"transactions": value})))
    root = os.path.realpath(ws.root)
    seen: list[str] = []
    real_stat = os.stat

    def recording_stat(p: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        seen.append(os.fsdecode(p))
        return real_stat(p, *args, **kwargs)

    with mock.patch("os.stat", recording_stat):
        try:
            job = ws.parse(path)
        except JobSpecError:
            job = None
    for p in seen:
        assert p == root or p.startswith(root + os.sep), f"stat() outside the roots: {p}"
    if job is not None:
        assert job.spec.data.transactions.startswith(root + os.sep)
