"""The layers of segcl: every module imports, and no module imports from a floor above its own.

Imports are read with ``ast`` (function-level imports count too: a late import is still a
dependency), so the test needs no optional extra installed.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "segcl"
MODULES = sorted(
    ".".join(("segcl", *p.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
    for p in ROOT.rglob("*.py")
)

#: module prefix -> the segcl packages it must not import (what sits on a floor above it)
FORBIDDEN = {
    "segcl.errors": ("segcl.",),
    "segcl.fileio": ("segcl.checkpoint", "segcl.hub", "segcl.config", "segcl.data",
                     "segcl.models", "segcl.losses", "segcl.methods", "segcl.engine",
                     "segcl.cli"),
    "segcl.checkpoint": ("segcl.hub", "segcl.config", "segcl.data", "segcl.models",
                         "segcl.losses", "segcl.methods", "segcl.engine", "segcl.loggers",
                         "segcl.cli"),
    "segcl.hub": ("segcl.config", "segcl.data", "segcl.models", "segcl.losses", "segcl.methods",
                  "segcl.engine", "segcl.loggers", "segcl.cli"),
    "segcl.models": ("segcl.engine", "segcl.methods", "segcl.cli"),
    "segcl.config": ("segcl.engine", "segcl.cli"),
}


def imports(module: str) -> set[str]:
    """The absolute ``segcl.*`` modules that ``module``'s source imports, anywhere in it."""
    parts = module.split(".")[1:]
    path = ROOT.joinpath(*parts)
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in found if name == "segcl" or name.startswith("segcl.")}


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports(module: str) -> None:
    importlib.import_module(module)


def test_no_import_from_a_higher_floor() -> None:
    wrong = []
    for module in MODULES:
        for owner, above in FORBIDDEN.items():
            if module == owner or module.startswith(owner + "."):
                for name in sorted(imports(module)):
                    hits = [p for p in above if name.startswith(p) and not name.startswith(owner)]
                    if hits:
                        wrong.append(f"{module} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_checkpoint_and_hub_have_no_import_cycle() -> None:
    """The format and the Hub modules form an acyclic graph (hub.refs and hub.remote imported
    each other before segcl.checkpoint owned the format)."""
    nodes = [m for m in MODULES if m.startswith(("segcl.checkpoint", "segcl.hub"))]
    graph = {m: {n for n in imports(m) if n in nodes and n != m} for m in nodes}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in nodes:
        if node not in state:
            visit(node, [])


def test_only_the_checkpoint_package_opens_safetensors_files() -> None:
    users = sorted(m for m in MODULES
                   if not m.startswith("segcl.checkpoint")
                   and any(n.startswith("safetensors") for n in _all_imports(m)))
    assert users == []


def _all_imports(module: str) -> set[str]:
    parts = module.split(".")[1:]
    path = ROOT.joinpath(*parts)
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_checkpoint_and_hub_import_without_torch() -> None:
    """``segcl hub`` commands (push, pull, list) start without loading torch."""
    import subprocess
    import sys

    code = ("import sys, segcl.checkpoint, segcl.hub.refs, segcl.hub.remote; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
