"""The code's shape, checked: no import cycle between any two modules (late
imports inside functions count too), no module past 600 lines, and the pure
core importable without Redis. The layer contracts themselves are import-linter's
(pyproject.toml, `lint-imports` in CI)."""

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: every group of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_module_imports_itself_back_through_others():
    graph = grimp.build_graph("engine", "api", include_external_packages=False)
    edges = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}
    assert strongly_connected(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_is_over_600_lines():
    long = {str(path.relative_to(ROOT)): n for folder in ("engine", "api", "benchmarks")
            for path in (ROOT / folder).rglob("*.py")
            if (n := len(path.read_text().splitlines())) > 600}
    assert long == {}


def test_the_pure_core_imports_without_redis_or_any_network_client():
    code = ("import sys\n"
            "import engine.decisions.decide, engine.decisions.person_view, engine.catalog.compile, "
            "engine.followups.transitions, engine.policy, engine.profile\n"
            "loaded = {m.split('.')[0] for m in sys.modules}\n"
            "print(sorted(loaded & {'redis', 'aiohttp', 'aiosmtplib', 'httpx', 'faust', 'aiokafka'}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"
