"""The SFT and distillation loops (loops/sft.py, loops/distill.py, sft.py) in-process on 40 arithmetic rows and
fresh micro students: what a run writes, `--resume` ending with bit-identical weights, data errors naming
`file:line`, the first step's KL recomputed by hand for both distillation methods (so the direction of each KL
is checked, not only that weights move), and the shared-tokenizer check. A few seconds in all."""

import json
import math
import random
import re

import pytest
import torch
from safetensors.torch import load_file

from r1kit.algo.losses import forward_kl_per_token, reverse_kl_per_token
from r1kit.algo.sft import cosine_lr, encode_rows, make_student, packed_batches, read_rows
from r1kit.config import EvalConfig
from r1kit.errors import UserError
from r1kit.loops.distill import DistillConfig, _on_policy_examples, check_shared_tokenizer, run_distill
from r1kit.loops.sft import SFTConfig, run_sft
from r1kit.models.modeling import load_model, load_tokenizer, new_model, save_model, train_tokenizer
from r1kit.models.packing import packed_logits
from r1kit.tasks import get_task
from r1kit.tasks.arithmetic import ArithmeticTask
from r1kit.tasks.prompting import make_prompter

pytestmark = pytest.mark.slow

N_ROWS = 40


# -- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tok")
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """40 (prompt, worked solution) rows whose provenance names the task (as r1kit generate's rows do)."""
    task = ArithmeticTask()
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "rows.jsonl"
    with path.open("w") as f:
        for p in task.problems("train", N_ROWS, seed=0):
            row = {"prompt": task.prompt(p), "completion": " " + task.solution(p, rng),
                   "provenance": {"task": "arithmetic"}}
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tokenizer, tiny_config):
    """A teacher on the same tokenizer, different from any fresh micro student, and confident: its final norm is
    scaled up 8x, so its next-token distributions are peaked where a fresh student's are near uniform. (Between
    two near-uniform distributions forward and reverse KL agree to second order, and the tests below could not
    tell them apart.)"""
    model = new_model(tiny_config, tokenizer, seed=1)
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
    return save_model(model, tokenizer, tmp_path_factory.mktemp("teacher") / "model")


def _weights(model_dir) -> dict:
    return load_file(str(model_dir / "model.safetensors"))


def _fresh_micro_weights(tokenizer) -> dict:
    return {k: v.detach().clone() for k, v in new_model("micro", tokenizer, seed=0).state_dict().items()}


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_moved(model_dir, tokenizer):
    init, now = _fresh_micro_weights(tokenizer), _weights(model_dir)
    assert any(not torch.equal(init[k], now[k]) for k in now)
    assert all(torch.isfinite(v).all() for v in now.values())


# -- SFT ------------------------------------------------------------------------------------------------------


def sft_cfg(data, tok_dir, out, **kw) -> SFTConfig:
    """2 epochs of 40 rows, 10 per step: 8 steps, a checkpoint every 2."""
    base = dict(data=str(data), out=str(out), student_size="micro", tokenizer=str(tok_dir), epochs=2,
                batch_size=10, max_len=128, lr=1e-3, warmup_steps=1, checkpoint_every=2, log_every=1,
                final_eval=False)
    return SFTConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, data, tok_dir, torch_threads):
    """The uninterrupted run, with a tiny held-out evaluation at the end (task inferred from the rows)."""
    out = tmp_path_factory.mktemp("sft") / "A"
    cfg = sft_cfg(data, tok_dir, out, final_eval=True, eval=EvalConfig(n=4, k=1, max_new_tokens=16))
    return out, run_sft(cfg, progress=False)


def test_sft_run_writes_model_card_metrics_checkpoints(sft_run, tokenizer):
    out, summary = sft_run
    assert summary["finished"] and summary["steps"] == 8 and summary["examples"] == N_ROWS
    model_dir = out / "model"
    for name in ("config.json", "model.safetensors", "README.md", "tokenizer.json"):
        assert (model_dir / name).is_file(), name
    assert "SFT" in (model_dir / "README.md").read_text()
    _assert_moved(model_dir, tokenizer)
    run = json.loads((out / "run.json").read_text())
    assert run["stage"] == "sft" and run["steps"] == 8 and run["examples"] == N_ROWS
    assert run["config"]["student_size"] == "micro" and run["resumed_from"] is None
    rows = _metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all(math.isfinite(r["loss"]) and r["loss_tokens"] > 0 and not r["skipped_update"] for r in rows)
    assert [r["epoch"] for r in rows] == [0] * 4 + [1] * 4
    for r in rows:  # the logged learning rate is the schedule's
        assert r["lr"] == pytest.approx(cosine_lr(r["step"] - 1, 8, 1e-3, 1, 0.1))
    assert rows[-1]["loss"] < rows[0]["loss"]  # lr 1e-3 on 40 rows: the loss goes down
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000008"
    assert (out / "summary.json").is_file()
    result = json.loads((out / "eval.json").read_text())
    assert result["metrics"]["problems"] == 4 and summary["eval"] == result


def test_sft_resume_after_stop_gives_identical_weights(sft_run, data, tok_dir, tmp_path):
    ref, _ = sft_run
    out = tmp_path / "B"
    part = run_sft(sft_cfg(data, tok_dir, out), progress=False, stop_after=2)
    assert not part["finished"] and not (out / "model").exists()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000002"
    with pytest.raises(UserError, match="--resume"):  # an existing run is not overwritten
        run_sft(sft_cfg(data, tok_dir, out), progress=False)
    done = run_sft(sft_cfg(data, tok_dir, out), progress=False, resume=True)  # crosses the epoch boundary
    assert done["finished"]
    a, b = _weights(ref / "model"), _weights(out / "model")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss"] for r in _metrics(out)] == [r["loss"] for r in _metrics(ref)]
    assert json.loads((out / "run.json").read_text())["resumed_from"] == 2


def test_sft_without_packing_learns_the_same_first_step(sft_run, data, tok_dir, tmp_path):
    """Packing changes the layout, not the loss: step 1's loss is the same with one example per row. (The rows
    here name their teacher, as r1kit generate's do, and no --tokenizer is given: the student gets the
    teacher's tokenizer.)"""
    ref, _ = sft_run
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    named = tmp_path / "named.jsonl"
    named.write_text("".join(json.dumps({**r, "provenance": {"teacher": str(tok_dir), "task": "arithmetic"}})
                             + "\n" for r in rows))
    out = tmp_path / "nopack"
    run_sft(sft_cfg(named, "", out, packing=False, epochs=1), progress=False, stop_after=1)
    assert _metrics(out)[0]["loss"] == pytest.approx(_metrics(ref)[0]["loss"], rel=1e-5)
    assert _metrics(out)[0]["loss_tokens"] == _metrics(ref)[0]["loss_tokens"]


def test_bad_data_line_names_file_and_line(data, tok_dir, tmp_path):
    lines = data.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], "", lines[1], "{not json", lines[2]]) + "\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(bad))}:4: not valid JSON"):
        run_sft(sft_cfg(bad, tok_dir, tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()  # refused before anything was written
    bad.write_text(lines[0] + "\n" + json.dumps({"prompt": "a", "completion": 3}) + "\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(bad))}:2: .*\"completion\""):
        read_rows(bad)
    bad.write_text(json.dumps(["prompt", "completion"]) + "\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(bad))}:1:"):
        read_rows(bad)
    bad.write_text("\n\n")
    with pytest.raises(UserError, match="no rows"):
        read_rows(bad)
    with pytest.raises(UserError, match="does not exist"):
        read_rows(tmp_path / "missing.jsonl")
    assert len(read_rows(data, limit=5)) == 5 and len(read_rows(data)) == N_ROWS


def test_make_student_errors(tok_dir):
    with pytest.raises(UserError, match="not both"):
        make_student("some/dir", "micro", str(tok_dir), 0)
    with pytest.raises(UserError, match="unknown student size"):
        make_student("", "huge", str(tok_dir), 0)
    with pytest.raises(UserError, match="tokenizer"):
        make_student("", "micro", None, 0)
    with pytest.raises(UserError, match="no student"):
        make_student("", "", str(tok_dir), 0)
    model, tok = make_student("", "micro", str(tok_dir), 0)
    assert model.training and tok.pad_token_id is not None


def test_cosine_lr_by_hand():
    # warmup 2 of peak 1: 0.5, 1.0; then cosine over steps 2..9 to 0.1
    assert [cosine_lr(s, 10, 1.0, 2, 0.1) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert cosine_lr(9, 10, 1.0, 2, 0.1) == pytest.approx(0.1)
    # no warmup, 5 steps: step 2 is half way: 0.1 + 0.9 · 0.5 · (1 + cos(π/2)) = 0.55
    assert cosine_lr(2, 5, 1.0, 0, 0.1) == pytest.approx(0.55)
    assert cosine_lr(0, 1, 2.0, 0, 0.1) == 2.0  # a one-step run uses the peak


def test_sft_config_is_checked(data, tmp_path):
    for bad in (dict(epochs=0), dict(lr=0.0), dict(min_lr_ratio=1.5), dict(data=""), dict(out="")):
        with pytest.raises(UserError):
            SFTConfig(**{"data": str(data), "out": str(tmp_path), **bad})


# -- distillation -------------------------------------------------------------------------------------------------


def distill_cfg(teacher, out, **kw) -> DistillConfig:
    base = dict(teacher=str(teacher), out=str(out), student_size="micro", lr=1e-3, max_len=128, log_every=1,
                final_eval=False)
    return DistillConfig(**{**base, **kw})


def _first_step_kl(teacher_dir, tokenizer, examples, idx, kl_fn) -> float:
    """Σ KL over the completion tokens of `examples[idx]` / their count, fresh student vs the teacher."""
    teacher_model, _ = load_model(teacher_dir)
    student = new_model("micro", tokenizer, seed=0)
    batches = packed_batches(examples, idx, 128, True, tokenizer.pad_token_id, 8192)
    total = sum(b.loss_tokens for b in batches)
    value = 0.0
    with torch.no_grad():
        for b in batches:
            s, t = packed_logits(student, b)[:, :-1], packed_logits(teacher_model, b)[:, :-1]
            v = min(s.shape[-1], t.shape[-1])
            value += float((kl_fn(s[..., :v], t[..., :v]) * b.target_mask()).sum())
    return value / total


def test_logit_distillation_minimises_forward_kl(teacher, data, tokenizer, tmp_path, torch_threads):
    out = tmp_path / "logit"
    cfg = distill_cfg(teacher, out, method="logit", data=str(data), epochs=1, batch_size=20)
    summary = run_distill(cfg, progress=False)
    assert summary["finished"] and summary["steps"] == 2 and summary["method"] == "logit"
    _assert_moved(out / "model", tokenizer)
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["kl"] > 0 and math.isfinite(r["kl"]) and r["loss_tokens"] > 0 for r in rows)
    # step 1's KL, by hand: the first 20 examples of epoch 0's order, forward KL(teacher || fresh student)
    examples = encode_rows(tokenizer, read_rows(data), 128)
    idx = torch.randperm(N_ROWS, generator=torch.Generator().manual_seed(0)).tolist()[:20]
    forward = _first_step_kl(teacher, tokenizer, examples, idx, forward_kl_per_token)
    reverse = _first_step_kl(teacher, tokenizer, examples, idx, reverse_kl_per_token)
    assert rows[0]["kl"] == pytest.approx(forward, rel=1e-4)
    assert abs(forward - reverse) > 0.1 * forward  # ... which is not the reverse KL
    assert json.loads((out / "run.json").read_text())["stage"] == "distill"
    assert (out / "model" / "README.md").is_file()


def test_on_policy_distillation_minimises_reverse_kl(teacher, tokenizer, tmp_path, torch_threads):
    out = tmp_path / "on-policy"
    cfg = distill_cfg(teacher, out, method="on-policy", steps=2, batch_size=4, samples_per_prompt=2,
                      max_new_tokens=12, train_problems=16)
    summary = run_distill(cfg, progress=False)
    assert summary["finished"] and summary["steps"] == 2 and summary["method"] == "on-policy"
    _assert_moved(out / "model", tokenizer)
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["kl"] > 0 and 0 < r["completion_len_mean"] <= 12 for r in rows)
    # step 1, by hand: the fresh student's own samples (same seeded generator), reverse KL(student || teacher)
    task = get_task("arithmetic")
    pool = task.problems("train", 16, seed=0)
    student = new_model("micro", tokenizer, seed=0)
    examples, n_gen = _on_policy_examples(student, tokenizer, make_prompter(task, tokenizer), pool, 0, cfg)
    assert len(examples) == 4 and all(e.n_prompt < len(e.ids) for e in examples)
    assert rows[0]["completion_len_mean"] == pytest.approx(n_gen / 4)
    idx = list(range(len(examples)))
    reverse = _first_step_kl(teacher, tokenizer, examples, idx, reverse_kl_per_token)
    forward = _first_step_kl(teacher, tokenizer, examples, idx, forward_kl_per_token)
    assert rows[0]["kl"] == pytest.approx(reverse, rel=1e-4)
    assert abs(forward - reverse) > 0.1 * reverse


@pytest.mark.parametrize("method", ["logit", "on-policy"])
def test_distill_resume_after_stop_gives_identical_weights(method, teacher, data, tmp_path, torch_threads):
    kw = dict(method=method, checkpoint_every=1, batch_size=4, samples_per_prompt=2, max_new_tokens=8,
              train_problems=16, steps=3)
    if method == "logit":
        kw.update(data=str(data), batch_size=14, epochs=1)  # 40 rows: 3 steps
    ref = run_distill(distill_cfg(teacher, tmp_path / "A", **kw), progress=False)
    assert ref["finished"] and ref["steps"] == 3
    part = run_distill(distill_cfg(teacher, tmp_path / "B", **kw), progress=False, stop_after=1)
    assert not part["finished"]
    with pytest.raises(UserError, match="--resume"):
        run_distill(distill_cfg(teacher, tmp_path / "B", **kw), progress=False)
    done = run_distill(distill_cfg(teacher, tmp_path / "B", **kw), progress=False, resume=True)
    assert done["finished"]
    a, b = _weights(tmp_path / "A" / "model"), _weights(tmp_path / "B" / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["kl"] for r in _metrics(tmp_path / "B")] == [r["kl"] for r in _metrics(tmp_path / "A")]


def test_distill_needs_a_shared_tokenizer(teacher, tokenizer, tmp_path):
    task = ArithmeticTask()
    other_tok = train_tokenizer([task.prompt(p) for p in task.problems("train", 60, seed=1)], vocab_size=300)
    assert other_tok.get_vocab() != tokenizer.get_vocab()
    student_dir = save_model(new_model("micro", other_tok, seed=0), other_tok, tmp_path / "student")
    out = tmp_path / "out"
    cfg = distill_cfg(teacher, out, student_size="", student=str(student_dir), method="on-policy", steps=1,
                      batch_size=2)
    with pytest.raises(UserError, match="tokenizers differ"):
        run_distill(cfg, progress=False)
    assert not (out / "checkpoints").exists()
    with pytest.raises(UserError, match="tokenizers differ"):
        check_shared_tokenizer(tokenizer, other_tok)
    check_shared_tokenizer(tokenizer, load_tokenizer(teacher))  # same vocabulary: fine


def test_distill_config_is_checked(teacher, tmp_path):
    with pytest.raises(UserError, match="sequence"):
        DistillConfig(teacher=str(teacher), out=str(tmp_path), method="sequence")
    with pytest.raises(UserError, match="--data"):
        DistillConfig(teacher=str(teacher), out=str(tmp_path), method="logit")
    with pytest.raises(UserError, match="multiple"):
        DistillConfig(teacher=str(teacher), out=str(tmp_path), method="on-policy", batch_size=5,
                      samples_per_prompt=2)
    with pytest.raises(UserError, match="--teacher"):
        DistillConfig(out=str(tmp_path), method="on-policy")
