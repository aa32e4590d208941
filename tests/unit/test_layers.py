"""The package's layers import downwards only (DESIGN.md's table, with one addition).

The addition: ``ml`` may import ``core``. The search space (parameters, bounds, overrides:
:mod:`sentinel_daemon.core.space`) is part of the job-file contract, so the job check in the
core validates it; the trainer and the samplers in ``ml`` must use that same definition, or
a job accepted at submission could be refused mid-search.

An AST walk over every module of ``sentinel_daemon/``: each ``import`` of a project module,
wherever it stands (top level, inside a function, under ``TYPE_CHECKING``), must name a layer
that the importing layer may use. A test plants an upward import in a copy of the tree to
prove that the check can fail.
"""

from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

PACKAGE = "sentinel_daemon"
BASE_MODULES = frozenset(
    {
        "__init__",
        "errors",
        "fsutil",
        "jobfile",
        "logs",
        "settings",
        "layout",
        "sdnotify",
        "signals",
        "printable",
    }
)
#: layer -> the layers it may import (besides itself).
ALLOWED: dict[str, frozenset[str]] = {
    "base": frozenset(),
    "core": frozenset({"base"}),
    "log": frozenset({"core", "base"}),
    "queue": frozenset({"core", "base"}),
    "ml": frozenset({"core", "base"}),  # core.space: see the module docstring
    "worker": frozenset({"core", "queue", "ml", "base"}),
    "daemon": frozenset({"core", "log", "queue", "ml", "worker", "base"}),
    "tools": frozenset({"core", "log", "queue", "ml", "base"}),
    "cli": frozenset({"core", "log", "queue", "ml", "worker", "daemon", "tools", "base"}),
}
#: Single base modules allowed more than the rest of the base: the readers of the two files
#: operators write (settings, job files) validate them with the core's schemas, so the core
#: itself stays pure (it reads no file).
EXCEPTIONS: dict[str, frozenset[str]] = {
    "settings": frozenset({"core"}),
    "jobfile": frozenset({"core"}),
}


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    imported: str
    why: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.imported}: {self.why}"


def layer_of(dotted: str) -> str:
    """The layer of a module named ``sentinel_daemon.x.y`` (or of the package itself)."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        raise ValueError(dotted)
    if len(parts) == 1:
        return "base"
    head = parts[1]
    if head == "cli":
        return "cli"
    if head in ALLOWED and head not in ("base", "cli"):
        return head
    if head in BASE_MODULES:
        return "base"
    raise ValueError(f"{dotted} belongs to no layer; add it to the table")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(tree: ast.AST, package: str, root: Path) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every project module an AST imports (found under ``root``)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name.split(".")[0] != PACKAGE:
                continue
            # `from sentinel_daemon import y` imports the module y, or a name of the package.
            for alias in node.names:
                sub = root / PACKAGE / alias.name
                is_module = sub.is_dir() or sub.with_suffix(".py").is_file()
                found.append(
                    (node.lineno, f"{name}.{alias.name}" if name == PACKAGE and is_module else name)
                )
    return found


def violations(root: Path) -> list[Violation]:
    """Every import in ``root/sentinel_daemon`` that points up (or sideways across layers)."""
    out: list[Violation] = []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        me = module_name(root, path)
        try:
            mine = layer_of(me)
        except ValueError as exc:
            out.append(Violation(me, 1, me, str(exc)))
            continue
        leaf = me.split(".")[-1] if mine == "base" else ""
        allowed = ALLOWED[mine] | EXCEPTIONS.get(leaf, frozenset()) | {mine}
        package = me if path.name == "__init__.py" else me.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, name in imported_modules(tree, package, root):
            try:
                theirs = layer_of(name)
            except ValueError as exc:
                out.append(Violation(me, line, name, str(exc)))
                continue
            if theirs not in allowed:
                out.append(
                    Violation(me, line, name, f"layer {mine!r} may not import layer {theirs!r}")
                )
    return out


def test_every_import_points_down_a_layer() -> None:
    found = violations(REPO)
    assert not found, "\n".join(map(str, found))


def test_a_planted_upward_import_is_found(tmp_path: Path) -> None:
    shutil.copytree(REPO / PACKAGE, tmp_path / PACKAGE)
    state = tmp_path / PACKAGE / "core" / "state.py"
    state.write_text(
        state.read_text() + "\n\ndef _late() -> None:\n"
        "    from sentinel_daemon.daemon.metrics import DaemonMetrics  # noqa: F401\n"
    )
    queue = tmp_path / PACKAGE / "queue" / "maildir.py"
    queue.write_text(queue.read_text() + "\nimport sentinel_daemon.log.store\n")

    found = {(v.module, v.imported) for v in violations(tmp_path)}

    assert found == {
        ("sentinel_daemon.core.state", "sentinel_daemon.daemon.metrics"),
        ("sentinel_daemon.queue.maildir", "sentinel_daemon.log.store"),
    }


def test_a_module_outside_every_layer_is_reported(tmp_path: Path) -> None:
    shutil.copytree(REPO / PACKAGE, tmp_path / PACKAGE)
    (tmp_path / PACKAGE / "utils.py").write_text('"""A grab-bag."""\n')

    found = violations(tmp_path)

    assert [(v.module, v.why) for v in found] == [
        ("sentinel_daemon.utils", "sentinel_daemon.utils belongs to no layer; add it to the table")
    ]
