"""The package's layout (issue 23): no import cycle anywhere in ``recap/`` (module-level and deferred
imports alike), no import from a lower layer back up, and every module opens with a line saying what it
holds."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "recap"
# Lower layers may not import higher ones: util < inference < (data, rewards, toy) < (train, eval) < (report)
# < (demo, cli). A module of layer L imports only from layers ≤ L.
LAYERS = {
    "util": 0,
    "inference": 1,
    "data": 2,
    "rewards": 2,
    "toy": 2,
    "train": 3,
    "eval": 3,
    "report": 4,
    "demo": 5,
    "experiment": 5,
    "cli": 6,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The recap modules ``name`` imports (anywhere in the file, deferred imports included)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("recap"):
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {n: _imports(n, p, set(mods)) for n, p in mods.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """The first import cycle found in ``graph`` (``[a, b, ..., a]``), or None; the package root's
    ``recap/__init__.py`` is left out (it is imported on the way to every module)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if m == "recap" or n == "recap":
                continue
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycle():
    graph = _graph()
    assert len(graph) > 20 and sum(map(len, graph.values())) > len(graph)  # the walk found modules and imports
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checks_see_deferred_relative_imports_and_cycles(tmp_path):
    """The walker and the cycle search can fail: an import inside a function, written relative, is an edge,
    and two modules importing each other are a cycle."""
    module = tmp_path / "a.py"
    module.write_text("def f():\n    from ..data import mixture\n    from . import b\n")
    known = {"recap.train.a", "recap.train.b", "recap.data.mixture"}
    assert _imports("recap.train.a", module, known) == {"recap.data.mixture", "recap.train.b"}
    assert _cycle({"recap.x": {"recap.y"}, "recap.y": {"recap.x"}}) == ["recap.x", "recap.y", "recap.x"]
    assert _cycle({"recap.x": {"recap.y"}, "recap.y": set()}) is None


def _layer(name: str) -> int | None:
    top = name.split(".")[1] if name.count(".") else None
    return LAYERS.get(top) if top else None


def test_no_import_runs_from_a_lower_layer_up():
    upward = []
    for n, deps in _graph().items():
        for m in deps:
            if _layer(n) is not None and _layer(m) is not None and _layer(m) > _layer(n):
                upward.append(f"{n} -> {m}")
    assert not upward, "imports from a lower layer up: " + ", ".join(sorted(upward))


def test_every_module_says_what_it_holds():
    for name, path in _modules().items():
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if path.name == "__init__.py" and not path.read_text(encoding="utf-8").strip():
            continue
        assert doc and doc.strip().splitlines()[0].strip(), f"{path.relative_to(ROOT.parent)}: no first docstring line"


def test_the_top_level_listing_is_the_layers():
    """``ls recap/`` shows the pipeline: one package or module per layer, nothing else."""
    listed = {p.stem for p in ROOT.iterdir() if not p.name.startswith(("_", ".")) and p.name != "py.typed"}
    assert listed == set(LAYERS), f"recap/ lists {sorted(listed)}; the layers are {sorted(LAYERS)}"
