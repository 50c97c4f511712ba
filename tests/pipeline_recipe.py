"""The small pipeline recipe and helpers shared by tests/test_recipe.py and tests/test_pipeline.py."""

import contextlib
import io
import json
import random

from r1kit.cli.main import main

EVAL_N = 4

HEAD = f"""\
[run]
task = "arithmetic"
seed = 0

[eval]
n = {EVAL_N}
k = 1
max_new_tokens = 16
"""

BASE = """
[[stage]]
name = "base"
kind = "base"
size = "micro"
steps = 10
corpus = 300
batch_size = 8
"""

SFT = """
[[stage]]
name = "sft"
kind = "sft"
model = "base"
data = "{rows}"
epochs = 1
batch_size = 4
"""

ZERO = """
[[stage]]
name = "zero"
kind = "rl"
model = "base"
steps = 2
checkpoint_every = 1
final_eval = true
[stage.rollout]
prompts_per_step = 2
group_size = 2
max_new_tokens = 16
"""

MATCHED = """
[[stage]]
name = "matched"
kind = "rl"
model = "base"
match_compute = ["zero"]
steps = 4
checkpoint_every = 1
[stage.rollout]
prompts_per_step = 2
group_size = 2
max_new_tokens = 16
"""

EVAL = """
[[stage]]
name = "eval"
kind = "eval"
"""

STAGES = ["base", "sft", "zero", "matched", "eval"]
MODEL_STAGES = ["base", "sft", "zero", "matched"]


def write_rows(path, n: int = 8):
    """SFT rows in `r1kit generate`'s format: arithmetic prompts with worked solutions."""
    from r1kit.tasks import get_task

    task = get_task("arithmetic")
    rng = random.Random(0)
    with open(path, "w") as f:
        for p in task.problems("train", n, seed=0):
            f.write(json.dumps({"prompt": task.prompt(p), "completion": " " + task.solution(p, rng),
                                "provenance": {"task": "arithmetic", "teacher": "worked-solutions"}}) + "\n")
    return path


def line_of(text: str, snippet: str) -> int:
    """The 1-based line of the one line of `text` that is `snippet` (stripped)."""
    hits = [n for n, line in enumerate(text.splitlines(), 1) if line.strip() == snippet]
    assert len(hits) == 1, (snippet, hits)
    return hits[0]


def at(text: str, snippet: str) -> str:
    """`recipe.toml:LINE:`, the prefix of an error at the line that is `snippet`."""
    return f"recipe.toml:{line_of(text, snippet)}:"


def header_of(text: str, name: str) -> int:
    """The line of stage `name`'s [[stage]] header (the line above its `name = ...`)."""
    n = line_of(text, f'name = "{name}"')
    assert text.splitlines()[n - 2] == "[[stage]]"
    return n - 1


def ledger_factory(run_dir, stage, model_config=None):
    from r1kit.cost.devices import ledger_for

    return ledger_for(run_dir, stage, model_config=model_config)


def _no_probe(monkeypatch):
    """The CPU peak is a matmul benchmark when not cached: a constant keeps these tests fast and quiet."""
    monkeypatch.setattr("r1kit.cost.devices.cpu_peak_flops", lambda *a, **k: 1e10)


def _ledger_lines(folder) -> int:
    return len((folder / "ledger.jsonl").read_text().splitlines())


def _check_plan(recipe, out) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["run", str(recipe), "--out", str(out), "--check"]) == 0
    return buf.getvalue()
