"""GRPO with tools through the RL loop (loops/rl.py): a scripted policy (tests/tools_helpers.py) that calls the
python tool, calls it wrongly, or never calls, on a tiny saved model the trainer scores. Checks the step's tool
metrics, samples.jsonl's whole conversations, the ledger's tools phase, the held-out evaluation with tools, and
that `--resume` after a stop ends with the same weights as an uninterrupted run."""

import json

import pytest
import torch
from safetensors.torch import load_file

from r1kit.algo.rl_config import RLConfig
from r1kit.config import build
from r1kit.cost.ledger import Ledger
from r1kit.loops import rl
from r1kit.loops.rl import run_rl
from r1kit.models.modeling import new_model, save_model
from sandbox_helpers import requires_sandbox
from tools_helpers import DrawnScriptEngine

pytestmark = [pytest.mark.slow, requires_sandbox]

OPTIONS = [["<think> add\n```python\nprint(2 + 2)\n```", " so 4 </think> <answer>4</answer>"],
           ["<think> divide\n```python\nprint(1 / 0)\n```", " hmm </think> answer 0"],  # badly formatted too
           ["<think> 7 </think> <answer>7</answer>"]]  # never calls


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, tokenizer, tiny_config):
    path = tmp_path_factory.mktemp("base") / "model"
    save_model(new_model(tiny_config, tokenizer, seed=0), tokenizer, path)
    return path


@pytest.fixture(scope="module")
def scripted(tokenizer):
    return lambda *a, **k: DrawnScriptEngine(tokenizer, OPTIONS, tokenizer.eos_token_id)


def _cfg(base_model, out, **extra) -> RLConfig:
    data = {"model": str(base_model), "out": str(out), "task": "arithmetic", "steps": 4, "seed": 0,
            "train_problems": 64, "checkpoint_every": 2, "eval_every": 2, "tools": ["python"],
            "tool_use": {"call_wall_s": 3.0},
            "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 48, "batch_size": 4},
            "algo": {"mini_batches": 2, "beta": 0.01},
            "optim": {"lr": 1e-3},
            "reward": {"weights": {"accuracy": 1.0, "format": 1.0}},
            "eval": {"n": 4, "k": 2, "max_new_tokens": 48}}
    data.update(extra)
    return build(RLConfig, data)


def _ledger(out, stage, model_config):
    return Ledger(out, stage, "cpu", 1, None, None, None, model_config=model_config)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, base_model, scripted, torch_threads):
    mp = pytest.MonkeyPatch()
    mp.setattr(rl, "_rollout_engine", scripted)
    out = tmp_path_factory.mktemp("tools-rl") / "A"
    summary = run_rl(_cfg(base_model, out), progress=False, ledger_factory=_ledger)
    mp.undo()
    return out, summary


def test_steps_report_tool_use(run_a):
    out, summary = run_a
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "tool_calls_per_trajectory" in m]
    assert len(steps) == 4
    for m in steps:
        assert 0 < m["tool_use_share"] < 1 and 0 < m["tool_error_rate"] < 1 and m["tool_timeout_rate"] == 0
        assert m["observation_tokens_mean"] > 0 and 1 <= m["turns_mean"] <= 2
        assert m["completion_len_mean"] < 48  # model tokens only
    assert summary["after"]["tool_calls_per_trajectory"] > 0  # the final held-out eval ran with tools
    assert "eval/tool_use_share" in metrics[0]


def test_samples_show_whole_conversations(run_a):
    out, _ = run_a
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    samples = [s for r in rows for s in r["samples"]]
    called = [s for s in samples if s["calls"]]
    assert called and all("```output" in s["completion"] for s in called)
    assert {c["status"] for s in called for c in s["calls"]} <= {"ok", "error"}
    assert all(s["stop"] == "answer" and s["turns"] == 1 + len(s["calls"]) for s in samples)


def test_the_ledger_bills_tools_as_their_own_phase(run_a):
    out, _ = run_a
    records = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    phases = {r["phase"] for r in records}
    assert {"rollout", "tools", "training"} <= phases
    tools = [r for r in records if r["phase"] == "tools"]
    assert sum(r["tool_calls"] for r in tools) > 0 and all(r["flops"] == 0 for r in tools)


def test_resume_with_tools_ends_with_the_same_weights(run_a, tmp_path, base_model, scripted, monkeypatch,
                                                      torch_threads):
    monkeypatch.setattr(rl, "_rollout_engine", scripted)
    out = tmp_path / "B"
    run_rl(_cfg(base_model, out), progress=False, stop_after=2)
    run_rl(_cfg(base_model, out), resume=True, progress=False)
    a, b = load_file(str(run_a[0] / "model" / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- rejection sampling and evaluation with tools ----------------------------------------------------------------

def test_generate_keeps_verified_tool_using_traces_with_their_turns(base_model, tokenizer, tmp_path, monkeypatch,
                                                                    torch_threads):
    """`r1kit generate --tools python`: the scripted teacher answers 2+2 right with the tool (kept, with its
    turns), wrongly after a failed call (dropped) or without a call (dropped: wrong); SFT reads the rows back with
    the tool's turn carrying no loss."""
    from r1kit.algo.sft import encode_rows, read_rows
    from r1kit.loops import generate
    from r1kit.loops.generate import GenerateConfig, run_generate
    from r1kit.models.packing import IGNORE

    monkeypatch.setattr(generate, "make_engine", lambda *a, **k: DrawnScriptEngine(tokenizer, OPTIONS,
                                                                                  tokenizer.eos_token_id))
    out = tmp_path / "traces.jsonl"
    fours = tmp_path / "fours.jsonl"  # questions whose answer is 4 (what the scripted tool call computes)
    fours.write_text("".join(json.dumps({"prompt": f"{a}+{4 - a} (#{i})", "answer": "4"}) + "\n"
                             for i in range(40) for a in range(5)))
    cfg = GenerateConfig(model=str(base_model), task=f"jsonl:{fours}", out=str(out), n=8, k=4,
                         max_new_tokens=48, tools=["python"])
    summary = run_generate(cfg, progress=False)
    rows = read_rows(out)
    assert summary["kept"] == len(rows) > 0
    for row in rows:
        assert row["reference"] == "4" and row["tool_calls"] == 1 and row["provenance"]["tools"] == ["python"]
        assert [t["role"] for t in row["turns"]] == ["model", "tool", "model"]
        assert row["turns"][1]["text"] == "\n```output\n4\n```\n"
    (example,) = encode_rows(tokenizer, rows[:1], 512)
    tool_ids = tokenizer(rows[0]["turns"][1]["text"], add_special_tokens=False).input_ids
    assert example.labels().count(IGNORE) == example.n_prompt + len(tool_ids)


def test_eval_compares_with_and_without_tools(base_model, tokenizer, tmp_path, monkeypatch, capsys, torch_threads):
    import r1kit.rollout as rollout_pkg
    from r1kit.cli.main import main

    monkeypatch.setattr(rollout_pkg, "make_engine", lambda *a, **k: DrawnScriptEngine(tokenizer, OPTIONS,
                                                                                     tokenizer.eos_token_id))
    out = tmp_path / "eval.json"
    code = main(["eval", "--model", str(base_model), "--task", "arithmetic", "--n", "6",
                 "--k", "2", "--max-new-tokens", "48", "--tools", "python", "--compare-tools", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "with and without tools" in text and "with python" in text and "without tools" in text
    result = json.loads(out.read_text())
    assert result["metrics"]["tool_use_share"] > 0 and "tool_use_share" not in result["without_tools"]["metrics"]


def test_on_policy_distillation_trains_on_the_students_tokens_only(tokenizer, tiny_model, monkeypatch):
    """On-policy distillation with tools: the student's trajectories become examples whose observation tokens
    carry no loss (the reverse KL is taken at the student's own tokens only)."""
    from r1kit.loops import distill
    from r1kit.loops.distill import DistillConfig, _on_policy_examples
    from r1kit.models.packing import IGNORE
    from r1kit.tasks import get_task
    from r1kit.tasks.prompting import make_prompter
    from r1kit.tools import ToolConfig, make_toolbox

    monkeypatch.setattr(distill, "SamplerEngine", lambda model: DrawnScriptEngine(tokenizer, OPTIONS[:1],
                                                                                 tokenizer.eos_token_id))
    cfg = DistillConfig(teacher="t", out="o", method="on-policy", batch_size=4, max_new_tokens=48, tools=["python"])
    task = get_task("arithmetic")
    prompter = make_prompter(task, tokenizer)
    tools = make_toolbox(["python"], ToolConfig(), chat=False, tokenizer=tokenizer)
    examples, n = _on_policy_examples(tiny_model, tokenizer, prompter, task.problems("train", 8), 0, cfg, tools)
    observation = tokenizer("\n```output\n4\n```\n", add_special_tokens=False).input_ids
    assert len(examples) == 4 and n > 0
    for ex in examples:
        assert ex.mask.count(0) == len(observation)
        assert ex.labels().count(IGNORE) == ex.n_prompt + len(observation)
