"""The layering docs/architecture.md promises, checked on the code: every import of the
package (function-level ones too) is read from its source, and the graph has no cycle,
only the engine imports llama.cpp, the serving layer never reaches the engine's
llama.cpp side, and no module keeps mutable state of its own outside the app."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "warmloop"
LLAMA_MODULES = {"warmloop.engine.backend", "warmloop.engine.sampling"}
# the engine's llama.cpp side: what serving and the layers under it must not reach
ENGINE_SIDE = {"warmloop.engine.engine", *LLAMA_MODULES}
# Process-wide by nature, each with its reason (the test fails on any other).
PROCESS_STATE = {
    # llama.cpp's backend is initialised once per process, whatever app runs
    ("warmloop.engine.backend", "_cpu_choice"),
}
MUTABLE = (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)
MUTABLE_CALLS = {"dict", "list", "set", "defaultdict", "Counter", "OrderedDict", "deque"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> Iterator[tuple[str, int]]:
    """Every module `name` imports, anywhere in its body, with the line."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if full in MODULES else base), node.lineno


def graph() -> dict[str, set[str]]:
    return {name: {m for m, _ in imports(name) if m in MODULES and m != name} for name in MODULES}


def reach(start: str, edges: dict[str, set[str]]) -> dict[str, str]:
    """Every module `start` imports, directly or not, with the module that imports it."""
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        here = todo.pop()
        for nxt in edges[here]:
            if nxt not in seen and nxt != start:
                seen[nxt] = here
                todo.append(nxt)
    return seen


def test_the_imports_have_no_cycle() -> None:
    edges = graph()
    cycles = []
    for name in MODULES:
        found = reach(name, edges)
        for other in sorted(found):
            if name in edges[other] or (name in reach(other, edges)):
                if name < other:
                    cycles.append((name, other))
                break
    assert not cycles, f"import cycles through: {cycles}"


def test_only_the_engine_imports_llama_cpp() -> None:
    offenders = [
        f"{name}:{line}"
        for name in MODULES
        for imported, line in imports(name)
        if imported.split(".")[0] == "llama_cpp" and name not in LLAMA_MODULES
    ]
    assert not offenders


@pytest.mark.parametrize(
    "layer",
    ["warmloop.serving", "warmloop.session", "warmloop.protocol", "warmloop.transport"],
)
def test_serving_and_below_never_reach_the_engines_llama_cpp_side(layer: str) -> None:
    edges = graph()
    offenders = []
    for name in MODULES:
        if name != layer and not name.startswith(layer + "."):
            continue
        via = reach(name, edges)
        for bad in sorted(ENGINE_SIDE & via.keys()):
            chain = [bad]
            while chain[-1] != name and via.get(chain[-1]):
                chain.append(via[chain[-1]])
                if chain[-1] == name:
                    break
            offenders.append(" <- ".join(chain))
    assert not offenders


def test_no_module_keeps_mutable_state_of_its_own() -> None:
    """State belongs to the app (or to an object the app owns): a module-level name
    bound to a container that is not a constant (UPPER_CASE), or a `global`, is state
    every app in the process would share."""
    found = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            targets: list[ast.expr] = []
            value = None
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            mutable = isinstance(value, MUTABLE) or (
                isinstance(value, ast.Call)
                and isinstance(value.func, ast.Name)
                and value.func.id in MUTABLE_CALLS
            )
            for t in targets:
                if mutable and isinstance(t, ast.Name) and not _constant(t.id):
                    found.append((name, t.id))
        for node in ast.walk(tree):
            if isinstance(node, ast.Global):
                found += [(name, n) for n in node.names if (name, n) not in PROCESS_STATE]
    assert not found


def test_the_checks_see_what_they_check() -> None:
    """The walker finds function-level imports and relative ones (so the tests above
    cannot pass by reading nothing)."""
    launcher = dict(imports("warmloop.launcher"))
    assert "warmloop.app" in launcher
    doctor = {m for m, _ in imports("warmloop.doctor")}
    assert "warmloop.engine.backend" in doctor  # imported inside a function
    assert "warmloop.engine.backend" in reach("warmloop.app", graph())
    assert len(MODULES) > 80


def _constant(name: str) -> bool:
    return name.lstrip("_").isupper() or (name.startswith("__") and name.endswith("__"))
