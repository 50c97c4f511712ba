"""bench/gpu_check.py, the parts that run without a GPU: the Qwen2.5 shapes (their parameter counts, and that
transformers builds them with that many), the summaries of a run directory (worked out by hand on fake files),
the part runner's timeout, the overall deadline, and the timing part end to end at `--cpu-smoke` sizes."""

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import gpu_check  # noqa: E402


@pytest.mark.parametrize("shape,published", [("qwen2.5-0.5b", 0.49e9), ("qwen2.5-1.5b", 1.54e9)])
def test_shapes_have_qwens_parameter_counts(shape, published):
    n = gpu_check.shape_params(shape)
    assert abs(n - published) / published < 0.03
    assert n == {"qwen2.5-0.5b": 494_032_768, "qwen2.5-1.5b": 1_543_714_304}[shape]  # Qwen's model cards, exact


@pytest.mark.slow
def test_transformers_builds_the_shapes_with_those_counts():
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    for shape in ("qwen2.5-0.5b", "qwen2.5-1.5b"):
        fields = gpu_check.shape_config(shape, eos_token_id=0, pad_token_id=1)
        fields.pop("model_type")
        with torch.device("meta"):  # shapes only, no memory
            model = Qwen2ForCausalLM(Qwen2Config(**fields))
        params = {id(p): p for p in model.parameters()}.values()  # the tied head once
        assert sum(p.numel() for p in params) == gpu_check.shape_params(shape)
        assert model.config.vocab_size == 151936 and model.config.tie_word_embeddings


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _record(phase, wall_s, flops, peak=1e12, count=1, **kw) -> dict:
    return {"phase": phase, "wall_s": wall_s, "flops": flops, "peak_flops": peak, "device_kind": "H200",
            "device_count": count, **kw}


def test_summarize_timing_drops_the_warmup_step(tmp_path):
    _jsonl(tmp_path / "metrics.jsonl", [
        {"step": i, "time_rollout": r, "time_training": t, "time_step": r + t, "tokens_per_s": 100.0 * i,
         "completion_len_mean": 512.0, "peak_memory_mib": m}
        for i, r, t, m in [(1, 9.0, 5.0, 1000.0), (2, 3.0, 1.0, 1500.0), (3, 5.0, 3.0, 1200.0)]
    ])
    _jsonl(tmp_path / "ledger.jsonl", [
        _record("rollout", 9.0, 1e12, generated_tokens=100), _record("training", 5.0, 1e12),
        _record("rollout", 3.0, 0.3e12, generated_tokens=300), _record("training", 1.0, 0.5e12),
        _record("rollout", 5.0, 0.5e12, generated_tokens=500), _record("training", 3.0, 1.5e12),
        _record("checkpointing", 2.0, 0.0),
    ])
    s = gpu_check.summarize_timing(tmp_path)
    assert s["steps"] == 3 and s["steps_measured"] == 2 and s["warmup_dropped"]
    assert s["time_rollout"] == 4.0 and s["time_training"] == 2.0 and s["time_step"] == 6.0
    assert s["peak_memory_mib"] == 1500.0  # the peak over every step, the warm-up's too
    roll, train = s["phases"]["rollout"], s["phases"]["training"]
    assert roll["entries"] == 2 and roll["wall_s"] == 8.0 and roll["flops"] == pytest.approx(0.8e12)
    assert roll["mfu"] == pytest.approx(0.8e12 / (8.0 * 1e12)) and roll["generated_tokens_per_s"] == 100.0
    assert train["mfu"] == pytest.approx(2e12 / (4.0 * 1e12))
    assert s["device_kind"] == "H200" and s["peak_flops"] == 1e12
    # against a given peak (e.g. DEVICE_PEAKS' bf16 row) instead of the records' own
    assert gpu_check.summarize_timing(tmp_path, peak=2e12)["phases"]["training"]["mfu"] == pytest.approx(0.25)


def test_summarize_timing_of_one_step_and_of_nothing(tmp_path):
    _jsonl(tmp_path / "metrics.jsonl", [{"step": 0, "eval/pass@1": 0.1}, {"step": 1, "time_step": 2.0}])
    _jsonl(tmp_path / "ledger.jsonl", [_record("training", 2.0, 1e12, count=2)])
    one = gpu_check.summarize_timing(tmp_path)
    assert one["steps_measured"] == 1 and not one["warmup_dropped"] and one["peak_memory_mib"] is None
    assert one["phases"]["training"]["mfu"] == pytest.approx(0.25)  # 1e12 / (2 s x 1e12 x 2 devices)
    empty = gpu_check.summarize_timing(tmp_path / "missing")
    assert empty["steps"] == 0 and empty["phases"] == {} and empty["time_step"] is None


def test_summarize_rl_and_base(tmp_path):
    rl, base = tmp_path / "rl", tmp_path / "base"
    rl.mkdir()
    base.mkdir()
    (rl / "summary.json").write_text(json.dumps({"finished": True, "steps": 30, "seconds_this_process": 61.0,
                                                 "before": {"pass@1": 0.3}, "after": {"pass@1": 0.5,
                                                                                      "format_rate": 1.0}}))
    _jsonl(rl / "metrics.jsonl", [{"step": 0, "eval/pass@1": 0.3}, {"step": 1, "reward_mean": 0.8,
                                                                    "peak_memory_mib": 10.0},
                                  {"step": 2, "reward_mean": 1.2, "peak_memory_mib": 12.0}])
    assert gpu_check.summarize_rl(rl) == {
        "finished": True, "steps": 30, "seconds": 61.0, "pass@1_before": 0.3, "pass@1_after": 0.5,
        "format_rate_after": 1.0, "reward_first": 0.8, "reward_last": 1.2, "peak_memory_mib": 12.0}
    (base / "summary.json").write_text(json.dumps({"params": 24e6, "train_seconds": 20.0, "final_loss": 0.7}))
    (base / "eval.json").write_text(json.dumps({"metrics": {"pass@1": 0.35}}))
    assert gpu_check.summarize_base(base)["pass@1"] == 0.35
    assert gpu_check.summarize_base(tmp_path / "none")["params"] is None  # a base that died: no numbers, no error


def test_run_part_kills_a_part_past_its_timeout(tmp_path):
    start = time.monotonic()
    slow = gpu_check.run_part("slow", [[sys.executable, "-c", "import time; print('started', flush=True); "
                                                              "time.sleep(60)"]], 1.5, tmp_path)
    assert time.monotonic() - start < 10
    assert slow["timed_out"] and not slow["ok"] and slow["rc"] is None and "started" in slow["tail"]
    failed = gpu_check.run_part("two", [[sys.executable, "-c", "raise SystemExit(3)"],
                                        [sys.executable, "-c", "print('never')"]], 30, tmp_path)
    assert failed["rc"] == 3 and not failed["timed_out"] and "never" not in Path(failed["log"]).read_text()
    ok = gpu_check.run_part("ok", [[sys.executable, "-c", "print(1)"]], 30, tmp_path)
    assert ok["ok"] and ok["tail"] == ""


def test_a_spent_budget_skips_parts_and_still_writes_the_json(tmp_path):
    out = tmp_path / "check.json"
    result = gpu_check.check(out, tmp_path / "work", smoke=True, budget_s=0, parts={"env", "pytest"})
    assert set(result["parts"]) == {"env", "pytest"} and not result["ok"]
    assert all("out of time" in p["skipped"] for p in result["parts"].values())
    assert json.loads(out.read_text())["parts"].keys() == result["parts"].keys()
    assert "out of time" in gpu_check.format_summary(result)


@pytest.mark.slow
def test_cpu_smoke_timing_part(tmp_path):
    """The timing part at --cpu-smoke sizes: builds the Qwen2-shaped model, runs `r1kit rl` 2 steps on the CPU,
    reads its metrics and ledger (about 15 s)."""
    out = tmp_path / "smoke.json"
    result = gpu_check.check(out, tmp_path / "work", smoke=True, budget_s=300, parts={"timing"})
    part = result["parts"]["timing:qwen2-smoke"]
    assert part["ok"], part["tail"]
    r = part["result"]
    assert r["steps"] == 2 and r["steps_measured"] == 1 and r["device_kind"] == "cpu"
    assert r["built"]["model_vocab"] > r["built"]["tokenizer_vocab"]  # ids the tokenizer lacks decode to nothing
    assert r["params"] == r["built"]["params"] == gpu_check.shape_params("qwen2-smoke")
    assert r["completion_len_mean"] > 0 and r["phases"]["rollout"]["mfu"] > 0 and r["phases"]["training"]["mfu"] > 0
    plan = r["memory_plan"]  # the plan beside the measured peak (here the RSS, which also holds the runtime)
    assert plan["device"] == "cpu" and plan["planned_mib"] > 0 and plan["measured_mib"] > 0
    assert not (tmp_path / "work" / "model-qwen2-smoke").exists()  # the models are removed after timing
    assert json.loads(out.read_text())["ok"] == result["ok"]
