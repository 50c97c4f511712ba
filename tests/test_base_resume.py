"""Pre-training resumes exactly: a base run stopped after a checkpoint and resumed ends with the same weights."""

import json

import torch
from safetensors.torch import load_file

from r1kit.loops.base import BaseConfig, run_base


def _cfg(out, **kw):
    return BaseConfig(task="arithmetic", size="micro", out=str(out), corpus=200, steps=8, batch_size=4, warmup=2,
                      log_every=1, checkpoint_every=3, final_eval=False, **kw)


def test_resumed_base_matches_an_uninterrupted_one(tmp_path):
    whole = run_base(_cfg(tmp_path / "whole"), progress=False)
    assert whole["finished"]
    part = run_base(_cfg(tmp_path / "part"), progress=False, stop_after=4)  # killed after step 4 (checkpoint at 3)
    assert not part["finished"]
    assert (tmp_path / "part" / "checkpoints" / "latest").read_text().strip() == "step_000003"
    again = run_base(_cfg(tmp_path / "part"), progress=False, resume=True)
    assert again["finished"] and again["tokens_trained"] == whole["tokens_trained"]
    a = load_file(tmp_path / "whole" / "model.safetensors")
    b = load_file(tmp_path / "part" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "part" / "checkpoints").exists()  # spent once the model is saved
    steps = [json.loads(line)["step"] for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(8))  # the steps after the checkpoint were logged once, not twice
    assert json.loads((tmp_path / "part" / "run.json").read_text())["resumed_from"] == 3


def test_fresh_start_ignores_old_checkpoints_without_resume(tmp_path):
    run_base(_cfg(tmp_path / "b"), progress=False, stop_after=4)
    again = run_base(_cfg(tmp_path / "b"), progress=False)  # no resume: starts over
    run_base(_cfg(tmp_path / "w"), progress=False)
    a = load_file(tmp_path / "b" / "model.safetensors")
    b = load_file(tmp_path / "w" / "model.safetensors")
    assert again["finished"] and all(torch.equal(a[k], b[k]) for k in a)
