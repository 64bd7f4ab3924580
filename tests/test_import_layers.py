"""The layers of implicit_reg/ (README "Architecture"): no module imports a layer above its
own, and no import circle anywhere, found by parsing every module's imports (ast)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "implicit_reg"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node of the module except those under ``if TYPE_CHECKING:`` (imports for
    annotations only, never executed)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = getattr(child, "test", None)
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports when it runs, at any depth of the file
    (function-level imports count: a circle through a lazy import is still a circle
    in the design; ``if TYPE_CHECKING:`` imports, which never run, do not)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # a name imported from a module: its module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, modules) for p in files}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as a path [a, b, ..., a], or None (depth-first search).

    A package's ``__init__`` re-exporting its own submodules is not a circle: the
    edge from a package to a module inside it is left out.
    """
    state: dict[str, int] = {}
    stack: list[str] = []

    def inside(pkg: str, mod: str) -> bool:
        return mod.startswith(pkg + ".")

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if inside(node, nxt):
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


# The layers, bottom first (README "Architecture", DESIGN): a module may import its own layer
# and the layers before it, never one after it. ``stats`` (numpy/scipy only) is below
# everything; ``integrations`` (callbacks for other people's training) sits below the CLI.
LAYERS = (
    "stats",
    "core",
    "probes",
    "ensemble",
    "workloads",
    "engine",
    "report",
    "experiments",
    "integrations",
    "cli",
)


def layer_of(module: str) -> int:
    """The rank of ``module``'s layer in :data:`LAYERS`. The package ``implicit_reg`` itself is
    the public face, which re-exports ``core`` and so ranks as ``core``; ``python -m
    implicit_reg`` (``__main__``) runs the command line and ranks as ``cli``. A module in no
    layer (a new top-level module, a re-export left behind) is an error: give it a layer."""
    parts = module.split(".")
    if len(parts) == 1:
        return LAYERS.index("core")
    if parts[1] == "__main__":
        return LAYERS.index("cli")
    if parts[1] not in LAYERS:
        raise ValueError(f"{module} is in no layer; put it in one of {', '.join(LAYERS)}")
    return LAYERS.index(parts[1])


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """Every import of a layer above the importer's own, as 'a (layer) -> b (layer)'."""
    found = []
    for a, targets in sorted(edges.items()):
        for b in sorted(targets):
            if layer_of(b) > layer_of(a):
                found.append(f"{a} ({LAYERS[layer_of(a)]}) -> {b} ({LAYERS[layer_of(b)]})")
    return found


def test_the_layer_check_finds_a_planted_upward_import():
    edges = {
        "implicit_reg.core.optim": {"implicit_reg.core.hvp", "implicit_reg.engine.config"},
        "implicit_reg.engine.train": {"implicit_reg.core.optim", "implicit_reg.stats"},
        "implicit_reg.cli.train": {"implicit_reg.engine.train", "implicit_reg"},
        "implicit_reg.__main__": {"implicit_reg.cli"},
    }
    assert upward_imports(edges) == [
        "implicit_reg.core.optim (core) -> implicit_reg.engine.config (engine)"
    ]
    # stats is the bottom: even the public face (which pulls in torch through core) is above it
    assert upward_imports({"implicit_reg.stats": {"implicit_reg"}}) == [
        "implicit_reg.stats (stats) -> implicit_reg (core)"
    ]
    # the face re-exports core only; the experiments sit below the CLI, not beside it
    assert len(upward_imports({"implicit_reg": {"implicit_reg.engine.train"}})) == 1
    assert len(upward_imports({"implicit_reg.experiments.x": {"implicit_reg.cli.train"}})) == 1
    with pytest.raises(ValueError, match="in no layer"):
        layer_of("implicit_reg.optim")  # a top-level module outside every layer


def test_a_planted_upward_import_in_source_is_found(tmp_path):
    """The whole path: a relative, function-level import two levels up, parsed from source."""
    pkg = tmp_path / "implicit_reg"
    (pkg / "core").mkdir(parents=True)
    (pkg / "core" / "optim.py").write_text("def f():\n    from ..report.plots import plot\n")
    modules = {"implicit_reg.core.optim", "implicit_reg.report.plots"}
    global PACKAGE
    saved, PACKAGE = PACKAGE, pkg
    try:
        edges = {"implicit_reg.core.optim": imports_of(pkg / "core" / "optim.py", modules)}
    finally:
        PACKAGE = saved
    assert upward_imports(edges) == [
        "implicit_reg.core.optim (core) -> implicit_reg.report.plots (report)"
    ]


def test_every_module_imports_only_its_layer_and_those_below():
    up = upward_imports(graph())
    assert not up, f"{len(up)} upward import(s):\n" + "\n".join(up)


def test_the_cycle_finder_finds_a_planted_circle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert find_cycle({"p": {"p.x"}, "p.x": {"p"}}) is None  # a package re-exporting its module


def test_relative_imports_resolve_to_package_modules(tmp_path):
    edges = graph()
    assert "implicit_reg.engine.config" in edges["implicit_reg.engine.train"]
    assert "implicit_reg.core.optim" in edges["implicit_reg.engine.optimizers"]
    assert "implicit_reg.engine.plan" in edges["implicit_reg.engine.train"]  # a lazy import


def test_type_checking_imports_are_not_edges(tmp_path):
    pkg = tmp_path / "implicit_reg"
    pkg.mkdir()
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .b import B\n"
        "def f():\n    from .c import C\n"
    )
    (pkg / "a.py").write_text(source)
    modules = {"implicit_reg.a", "implicit_reg.b", "implicit_reg.c"}
    global PACKAGE
    saved, PACKAGE = PACKAGE, pkg
    try:
        assert imports_of(pkg / "a.py", modules) == {"implicit_reg.c"}
    finally:
        PACKAGE = saved


def test_no_import_circle_in_the_package():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)
