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


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if m == "recap" or n == "recap":
                continue
            if state.get(m) == 1:
                cycle = stack[stack.index(m) :] + [m]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


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
