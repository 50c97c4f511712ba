"""End to end on a micro model: pre-train a few dozen steps, save, reload with the real `from_pretrained`, evaluate,
and the `eval` command on the result. About ten seconds on one thread."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from r1kit.cli.main import main
from r1kit.config import EvalConfig
from r1kit.errors import UserError
from r1kit.evaluation.evaluate import evaluate
from r1kit.loops.base import BaseConfig, run_base
from r1kit.models.modeling import load_model
from r1kit.tasks import get_task

pytestmark = pytest.mark.slow

EVAL = EvalConfig(n=20, k=2, max_new_tokens=48)


def _config(out, steps: int, **kw) -> BaseConfig:
    return BaseConfig(
        task="arithmetic",
        size="micro",
        out=str(out),
        seed=0,
        corpus=2000,
        steps=steps,
        batch_size=16,
        warmup=5,
        log_every=10,
        **kw,
    )


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, torch_threads):
    out = tmp_path_factory.mktemp("base") / "m"
    summary = run_base(_config(out, 30, eval=EVAL), progress=False)
    return out, summary


def test_base_writes_a_model_directory(base_run):
    out, summary = base_run
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert {"eval.json", "metrics.jsonl", "run.json", "summary.json"} <= names
    assert not any(n.startswith(".") for n in names)  # no temp files left
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 10, 20, 29]
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0  # it learnt something
    assert json.loads((out / "run.json").read_text())["config"]["steps"] == 30
    assert summary["params"] > 0 and summary["tokens_trained"] > 0
    saved = json.loads((out / "eval.json").read_text())
    assert saved["metrics"]["problems"] == 20


def test_reload_and_evaluate(base_run):
    out, summary = base_run
    model, tokenizer = load_model(out)
    result = evaluate(model, tokenizer, get_task("arithmetic"), EVAL, progress=False)
    m = result["metrics"]
    for key in ("pass@1", "pass@1_ci95", "pass@2", "cons@2", "format_rate", "truncation_rate"):
        assert key in m
    for key in ("pass@1", "pass@2", "cons@2", "format_rate", "truncation_rate"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["pass@1"] <= m["pass@2"]
    assert m["problems"] == 20 and m["samples"] == 40
    assert 0 < m["mean_completion_tokens"] <= 48
    assert result["examples"] and all("completion" in e for e in result["examples"])
    # the reloaded weights are the trained ones: the same seeded evaluation gives the same numbers
    before = summary["eval"]["metrics"]
    for key in ("pass@1", "pass@2", "cons@2", "format_rate", "mean_completion_tokens", "generated_tokens"):
        assert m[key] == before[key], key


def test_cli_eval_on_the_model(base_run, tmp_path, capsys):
    out, _ = base_run
    path = tmp_path / "e.json"
    argv = ["eval", "--model", str(out), "--task", "arithmetic", "--n", "10", "--k", "2"]
    assert main([*argv, "--max-new-tokens", "48", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["metrics"]["problems"] == 10 and result["settings"]["k"] == 2
    assert result["model"] == str(out)
    assert "pass@1" in capsys.readouterr().out


def test_same_seed_same_weights(tmp_path, torch_threads):
    quick = EvalConfig(n=2, k=1, max_new_tokens=4)
    for name in ("a", "b"):
        run_base(_config(tmp_path / name, 10, eval=quick), progress=False)
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()


@pytest.mark.parametrize("kw", [{"size": "huge"}, {"steps": 0}, {"corpus": 0}, {"lr": 0.0}])
def test_base_config_is_checked_before_step_one(kw):
    with pytest.raises(UserError):
        BaseConfig(**kw)
