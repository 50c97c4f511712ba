"""Each module imports only from its own layer or below (shared/STYLE.md), loops never import each other, and no
two modules or packages import each other, directly or around a longer circle."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "r1kit"

# 0 pure Python | 1 torch ops | 2 model I/O | 3 evaluation | 4 loops | 5 entry.
# A package's layer holds for its modules unless a module is named on its own (the longest name wins).
LAYERS = {
    "__init__": 0, "__main__": 5, "errors": 0, "config": 0,
    "tasks": 0,  # problem generators, datasets, verifiers, prompt and answer formats
    "sandbox": 0,  # runs model-written programs in bubblewrap (subprocesses; no torch)
    "tools": 0,  # tools a model calls (the python tool over the sandbox), call formats, tool-use budgets
    "algo": 0, "algo.losses": 1, "algo.logprobs": 1, "algo.grpo": 2, "algo.shared_prompts": 2, "algo.sft": 2,
    "algo.rollouts": 2, "algo.rl_step": 2,
    "models": 2, "models.packing": 1,
    "rollout": 2, "rollout.multiturn": 2,
    "parallel": 2,  # device and precision, process groups, FSDP2, sharded checkpoints (over models.checkpoint)
    "cost": 0, "cost.devices": 1, "cost.calibration": 4, "cost.estimate": 4, "cost.views": 4,
    "cost.preflight": 4,
    "evaluation": 0, "evaluation.evaluate": 3,
    "reporting": 2, "reporting.summary": 4, "reporting.report": 4,
    "loops": 4,
    "cli": 5, "cli.recipe": 4, "cli.pipeline": 4,
}
PURE_PACKAGES = ("tasks", "sandbox", "tools", "algo.rewards", "algo.rl_config", "algo.doctor", "cost.ledger", "cost.hardware", "cost.paper",
                 "cost.memplan", "evaluation.metrics", "config", "errors")


def _module(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _layer(module: str) -> int | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    return None


def _imports(path: Path) -> list[str]:
    """Every module this file imports (`from r1kit.x import y` counts as r1kit.x.y when y is a module)."""
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if candidate.startswith("r1kit.") and _exists(candidate[6:]):
                    names.append(candidate)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def _exists(module: str) -> bool:
    base = SRC.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


FILES = sorted(SRC.rglob("*.py"))
GRAPH = {_module(p): sorted({n[6:] for n in _imports(p) if n.startswith("r1kit.") and _exists(n[6:])}) for p in FILES}


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(SRC)) for p in FILES])
def test_imports_respect_layers(path):
    module = _module(path)
    layer = _layer(module)
    assert layer is not None, f"{module} has no layer in tests/test_layers.py: add it"
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] == "r1kit" and len(parts) > 1:
            target = ".".join(parts[1:])
            assert (_layer(target) or 0) <= layer, f"{module} (layer {layer}) imports {name} (layer {_layer(target)})"
            if parts[1] == "loops" and module.startswith("loops."):
                assert parts[2:3] == [module.split(".")[1]] or len(parts) == 2, f"loop {module} imports {name}"
        if module.startswith(PURE_PACKAGES) and (_layer(module) or 0) == 0:
            assert parts[0] not in ("torch", "transformers"), f"pure module {module} imports {name}"


def _cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One circle in a directed graph, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_imports_itself_around_a_circle():
    assert _cycle(GRAPH) is None, " -> ".join(_cycle(GRAPH))


def test_no_package_circles():
    """Package A importing package B and B importing A is a circle even when each module's imports go down."""
    packages: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        src = module.split(".")[0]
        packages.setdefault(src, set()).update(t.split(".")[0] for t in targets if t.split(".")[0] != src)
    found = _cycle({k: sorted(v) for k, v in packages.items()})
    assert found is None, " -> ".join(found)


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert _cycle({"a": ["b"], "b": ["c"], "c": []}) is None


def test_top_level_shows_the_architecture():
    """`ls src/r1kit/` shows about a dozen entries (issue 21: at most 14 besides __init__ and __main__)."""
    entries = [p.name for p in SRC.iterdir() if p.name not in ("__init__.py", "__main__.py", "__pycache__")]
    assert len(entries) <= 14, sorted(entries)
    for package in (p for p in SRC.iterdir() if p.is_dir() and p.name != "__pycache__"):
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc, f"{package.name}/__init__.py needs a docstring saying what it holds and its layer"
