"""The package's layering: no import cycle between thinkrec's modules (function-local imports included, since they
only hide a cycle), and the test tooling in ``thinkrec.testing`` is never imported by the runtime."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"


def _imports() -> dict[str, set[str]]:
    """module → thinkrec modules it imports anywhere in its body (``if TYPE_CHECKING:`` blocks left out)."""
    out: dict[str, set[str]] = {}
    for f in (SRC / "thinkrec").rglob("*.py"):
        name = ".".join(f.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(f.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                       for n in ast.walk(node)}
        deps = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("thinkrec"):
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("thinkrec")}
        out[name] = deps
    return {m: {d for d in deps if d in out and d != m} for m, deps in out.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        state[u] = 2
        stack.pop()

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_thinkrec_modules():
    graph = _imports()
    assert {"thinkrec.pipeline.run", "thinkrec.pipeline.stages.rerank", "thinkrec.serve.app"} <= set(graph)
    assert _cycles(graph) == []


def test_the_runtime_never_imports_the_test_tooling():
    graph = _imports()
    importers = sorted(m for m, deps in graph.items() if not m.startswith("thinkrec.testing")
                       and any(d.startswith("thinkrec.testing") for d in deps))
    assert importers == []
    code = ("import sys, thinkrec, thinkrec.cli, thinkrec.serve, thinkrec.pipeline.run\n"
            "print(sorted(m for m in sys.modules if m.startswith('thinkrec.testing')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
