"""The layering ARCHITECTURE.md draws, checked on the source: no import circles between modules (imports
inside functions included), and the lower layers never import the upper ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "llmrl"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports() -> dict[str, set[str]]:
    """module -> the llmrl modules it imports anywhere in its body (a package's own parent packages left
    out: `from llmrl.envs.text import ...` runs llmrl/envs/__init__.py, which is not a dependency)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in modules:  # `from pkg import name`: the module is pkg
                    target = target.rpartition(".")[0]
                if target.startswith("llmrl") and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert _cycles(_imports()) == []


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("llmrl.envs", ("llmrl.llm", "llmrl.agents", "llmrl.roles", "llmrl.experiments", "llmrl.nets")),
        ("llmrl.llm", ("llmrl.envs", "llmrl.agents", "llmrl.roles", "llmrl.experiments")),
        ("llmrl.agents", ("llmrl.roles", "llmrl.experiments", "llmrl.llm")),
        ("llmrl.roles", ("llmrl.agents", "llmrl.experiments", "llmrl.cli")),
        ("llmrl.experiments", ("llmrl.cli",)),
    ],
)
def test_lower_layers_never_import_upper_ones(lower, upper):
    bad = {
        (m, t)
        for m, targets in _imports().items()
        if m == lower or m.startswith(lower + ".")
        for t in targets
        if any(t == u or t.startswith(u + ".") for u in upper)
    }
    assert not bad


def test_envs_never_import_torch():
    users = set()
    for name, path in _modules().items():
        if name.startswith("llmrl.envs"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                if any(n == "torch" or n.startswith("torch.") for n in names):
                    users.add(name)
    assert not users
