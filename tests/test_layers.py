"""Each module imports only from its own layer or below (shared/STYLE.md), and loops never import each other."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "r1kit"

# 0 pure Python | 1 torch ops | 2 model I/O | 3 evaluation | 4 loops | 5 entry
LAYERS = {
    "errors": 0, "config": 0, "tasks": 0, "rewards": 0, "ledger": 0, "cost_paper": 0, "metrics": 0,
    "doctor": 0, "rl_config": 0, "memplan": 0,
    "sandbox": 0,  # runs model-written programs in bubblewrap (subprocesses; no torch)
    "losses": 1, "devices": 1, "packing": 1, "logprobs": 1,
    "parallel": 2,  # device and precision, process groups, FSDP2, sharded checkpoints (over checkpoint.py)
    "modeling": 2, "lora": 2, "prompting": 2, "importer": 2, "sft": 2, "rollout": 2, "shared_prompts": 2, "checkpoint": 2, "grpo": 2, "runlog": 2, "modelcard": 2, "estimate": 4, "costview": 4, "calibration": 4,
    "evaluate": 3, "report": 4, "pipeline": 4, "recipe": 4, "summary": 4, "preflight": 4,
    "loops": 4,
    "cli": 5, "commands": 5, "__main__": 5, "__init__": 0,
}
PURE = {name for name, layer in LAYERS.items() if layer == 0}


def _module_key(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    return rel.parts[0]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


FILES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(SRC)) for p in FILES])
def test_imports_respect_layers(path):
    key = _module_key(path)
    assert key in LAYERS, f"{key} has no layer in tests/test_layers.py: add it"
    layer = LAYERS[key]
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] == "r1kit" and len(parts) > 1:
            target = parts[1]
            assert LAYERS.get(target, 0) <= layer, f"{path.name} (layer {layer}) imports {name}"
            if key == "loops" and target == "loops":
                assert parts[2:3] == [path.stem] or len(parts) == 2, f"loop {path.name} imports {name}"
        if key in PURE:
            assert parts[0] not in ("torch", "transformers"), f"pure module {path.name} imports {name}"
