"""GPU check: what r1kit does on one GPU, in one call of about 8 minutes (an H200), written to one JSON file.

Parts, each a subprocess with its own timeout under one overall deadline, so that one failing or hanging part
still leaves the others' results (bench/gpu_check.sh installs r1kit and the carried wheels first):

  env       torch, CUDA, the device, the packages r1kit needs
  pytest    `pytest -m cuda tests/test_cuda.py` (GRPO in bf16 on CUDA, sampler CUDA = CPU, ledger's GPU kind)
  base      `r1kit base --task arithmetic --size small --device cuda --dtype bf16`: the 24M Llama from scratch
  r1zero    30 R1-Zero steps on that base (recipes/tiny-r1-zero.toml in bf16), held-out pass@1 before and after
  timing    GRPO steps of random-initialised Qwen2.5-0.5B- and 1.5B-shaped models (the real Qwen2 shapes, the
            151,936-token vocabulary, a tiny arithmetic tokenizer: ids it lacks decode to nothing): `r1kit rl`
            with G=8 x 32 prompts x 512 new tokens; from metrics.jsonl the seconds per phase and peak memory,
            from ledger.jsonl the FLOPs, hence MFU against the bf16 peak of r1kit.cost.hardware.DEVICE_PEAKS

The first step of a timing run is a warm-up (CUDA kernels, allocator) and is left out of its means. A random
model almost never samples EOS, so every completion runs the full 512 tokens: the step is the worst case.

    bench/gpu_check.sh [OUT.json]           # on the GPU machine (default bench/results/gpu_check.json)
    .venv/bin/python bench/gpu_check.py --cpu-smoke --out /tmp/smoke.json   # the same parts, tiny, on the CPU

`--cpu-smoke` runs every part at tiny sizes for 2 steps on the CPU (fp32): it tests this script, not the GPU.
The models are built here rather than by `r1kit.models.modeling.new_model`, which makes a Llama sized to the tokenizer's
vocabulary; the timing needs Qwen2's architecture and its full vocabulary (a quarter of the 0.5B's parameters and
most of its logits' cost). Layer: a bench script; it imports torch only in its `--build-model`/`--probe-env` modes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))  # the working tree's r1kit, installed or not

from r1kit.cost.hardware import DEVICE_PEAKS  # noqa: E402  (pure Python: no torch)
from r1kit.cost.ledger import param_count  # noqa: E402  (pure Python: no torch)

DEFAULT_OUT = ROOT / "bench" / "results" / "gpu_check.json"

# Qwen2.5's published shapes (Hugging Face config.json of Qwen/Qwen2.5-0.5B and Qwen/Qwen2.5-1.5B): q/k/v biases
# (Qwen2), tied embedding. Parameter counts as Qwen reports them: 0.49B and 1.54B.
_QWEN = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=151936, tie_word_embeddings=True,
             max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu")
SHAPES: dict[str, dict] = {
    "qwen2.5-0.5b": dict(_QWEN, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, intermediate_size=4864),
    "qwen2.5-1.5b": dict(_QWEN, hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, intermediate_size=8960),
    # --cpu-smoke: the same architecture, tiny; its vocabulary still exceeds the tokenizer's, as the real ones do
    "qwen2-smoke": dict(_QWEN, vocab_size=4096, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=1024),
}
PUBLISHED_PARAMS = {"qwen2.5-0.5b": 0.49e9, "qwen2.5-1.5b": 1.54e9}


# ---- Settings of the two modes ------------------------------------------------------------------------------


def settings(smoke: bool) -> dict:
    """Sizes, steps and per-part timeouts (seconds) of a GPU run, or of the CPU smoke run."""
    if smoke:
        return {
            "device": "cpu", "dtype": "fp32",
            "base": {"size": "micro", "extra": ["--steps", "20", "--eval-n", "8", "--eval-k", "1"]},
            "r1zero": {"steps": 2, "eval_every": 1, "extra": ["--eval.n=8", "--eval.k=1", "--rollout.group_size=4",
                                                             "--rollout.prompts_per_step=4",
                                                             "--rollout.max_new_tokens=32"]},
            "timing": {"shapes": ["qwen2-smoke"], "steps": 2, "prompts": 4, "group": 4, "max_new_tokens": 16},
            "timeouts": {"env": 60, "pytest": 120, "base": 120, "r1zero": 180, "timing": 180},
        }
    return {
        "device": "cuda", "dtype": "bf16",
        "base": {"size": "small", "extra": ["--eval-n", "200", "--eval-k", "4"]},
        "r1zero": {"steps": 30, "eval_every": 15, "extra": ["--eval.n=200", "--eval.k=4"]},
        "timing": {"shapes": ["qwen2.5-0.5b", "qwen2.5-1.5b"], "steps": 3, "prompts": 32, "group": 8,
                   "max_new_tokens": 512},
        # 7 minutes in all (the install before it at most 1 more); the overall deadline (--budget-s) cuts the
        # last part short first
        "timeouts": {"env": 20, "pytest": 60, "base": 70, "r1zero": 90, "timing:qwen2.5-0.5b": 75,
                     "timing:qwen2.5-1.5b": 120},
    }


# ---- Model shapes -------------------------------------------------------------------------------------------


def shape_config(name: str, eos_token_id: int | None = None, pad_token_id: int | None = None) -> dict:
    """The Hugging Face config fields of a named shape (Qwen2 architecture), with the tokenizer's special ids."""
    if name not in SHAPES:
        raise SystemExit(f"gpu_check: unknown shape {name!r}: use one of {', '.join(SHAPES)}")
    return dict(SHAPES[name], eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=None)


def shape_params(name: str) -> int:
    """All parameters of a shape, counted as r1kit's ledger counts them (tied embedding once, Qwen2's biases)."""
    return param_count(shape_config(name))


def build_model(name: str, out: Path, seed: int = 0, device: str = "cpu") -> dict:
    """A random-initialised model of shape `name` with r1kit's tiny arithmetic tokenizer, saved to `out` (bf16)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1kit.loops.base import build_corpus
    from r1kit.models.modeling import count_params, save_model, train_tokenizer
    from r1kit.tasks import get_task

    tokenizer = train_tokenizer(build_corpus(get_task("arithmetic"), 2000, seed), vocab_size=512)
    fields = shape_config(name, tokenizer.eos_token_id, tokenizer.pad_token_id)
    fields.pop("model_type")
    config = Qwen2Config(**fields)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):  # initialising 1.5B parameters on the GPU takes a second, on a CPU ~20
            model = Qwen2ForCausalLM(config)
    model.to(torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    save_model(model, tokenizer, out)
    return {"shape": name, "params": count_params(model), "tokenizer_vocab": len(tokenizer),
            "model_vocab": config.vocab_size}


# ---- Reading a run ------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def summarize_timing(run_dir: str | Path, peak: float | None = None) -> dict:
    """Per-step means of an RL run's metrics.jsonl and per-phase FLOPs, FLOP/s and MFU from its ledger.jsonl.

    The first step (and its ledger records) is a warm-up, left out when there are more. MFU is against each
    record's own peak_flops (the ledger's, from DEVICE_PEAKS) unless `peak` is given.
    """
    run_dir = Path(run_dir)
    steps = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("step", 0) >= 1 and "time_step" in r]
    warmup = len(steps) > 1
    measured = steps[1:] if warmup else steps
    out: dict = {"steps": len(steps), "steps_measured": len(measured), "warmup_dropped": warmup}
    for key in ("time_rollout", "time_scoring", "time_training", "time_step", "tokens_per_s",
                "completion_len_mean", "completions_sampled", "completions_trained"):
        out[key] = _mean([r.get(key) for r in measured])
    memory = [r["peak_memory_mib"] for r in steps if r.get("peak_memory_mib") is not None]
    out["peak_memory_mib"] = max(memory) if memory else None

    records = read_jsonl(run_dir / "ledger.jsonl")
    out["device_kind"] = records[0].get("device_kind") if records else None
    out["device_count"] = records[0].get("device_count") if records else None
    phases = {}
    for phase in ("rollout", "training", "scoring", "evaluation", "checkpointing"):
        recs = [r for r in records if r.get("phase") == phase]
        if phase in ("rollout", "training") and warmup and len(recs) > 1:
            recs = recs[1:]  # the first step's
        if not recs:
            continue
        wall = sum(r.get("wall_s") or 0.0 for r in recs)
        flops = sum(r.get("flops") or 0.0 for r in recs)
        budget = sum((r.get("wall_s") or 0.0) * (peak or r.get("peak_flops") or 0.0) * (r.get("device_count") or 1)
                     for r in recs)
        generated = sum(r.get("generated_tokens") or 0 for r in recs)
        phases[phase] = {
            "entries": len(recs), "wall_s": wall, "flops": flops,
            "flops_per_s": flops / wall if wall > 0 else None,
            "mfu": flops / budget if budget > 0 else None,
            "generated_tokens_per_s": generated / wall if generated and wall > 0 else None,
        }
    out["phases"] = phases
    out["peak_flops"] = peak or (records[0].get("peak_flops") if records else None)
    return out


def summarize_rl(run_dir: str | Path) -> dict:
    """Held-out pass@1 before and after an RL run (summary.json), the steps and their wall time."""
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    before, after = summary.get("before") or {}, summary.get("after") or {}
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "reward_mean" in r]
    memory = [r["peak_memory_mib"] for r in rows if r.get("peak_memory_mib") is not None]
    return {
        "finished": summary.get("finished"), "steps": summary.get("steps"),
        "seconds": summary.get("seconds_this_process"),
        "pass@1_before": before.get("pass@1"), "pass@1_after": after.get("pass@1"),
        "format_rate_after": after.get("format_rate"),
        "reward_first": rows[0]["reward_mean"] if rows else None,
        "reward_last": rows[-1]["reward_mean"] if rows else None,
        "peak_memory_mib": max(memory) if memory else None,
    }


def summarize_base(model_dir: str | Path) -> dict:
    model_dir = Path(model_dir)
    summary = json.loads((model_dir / "summary.json").read_text()) if (model_dir / "summary.json").is_file() else {}
    ev = json.loads((model_dir / "eval.json").read_text()) if (model_dir / "eval.json").is_file() else {}
    return {"params": summary.get("params"), "train_seconds": summary.get("train_seconds"),
            "final_loss": summary.get("final_loss"), "pass@1": (ev.get("metrics") or {}).get("pass@1")}


# ---- Running the parts --------------------------------------------------------------------------------------


class Deadline:
    """One overall time budget; each part gets min(its own timeout, what is left)."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_part(name: str, commands: list[list[str]], timeout: float, logs: Path, env: dict | None = None) -> dict:
    """Run `commands` one after another (each in its own process group) within `timeout` seconds in all.

    Output goes to logs/NAME.log; a command past the time left is killed with its children. Never raises."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name.replace(':', '-')}.log"
    start, rc, timed_out = time.monotonic(), 0, False
    with open(log, "w") as f:
        for cmd in commands:
            left = timeout - (time.monotonic() - start)
            if left <= 1:
                rc, timed_out = None, True
                break
            f.write(f"$ {shlex.join(cmd)}\n")
            f.flush()
            try:
                proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                        start_new_session=True)
            except OSError as e:
                f.write(f"gpu_check: cannot start: {e}\n")
                rc = 127
                break
            try:
                rc = proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the process group this call started
                proc.wait()
                rc, timed_out = None, True
                f.write(f"\ngpu_check: {name} killed after {timeout:.0f} s\n")
            if rc != 0:
                break
    return {"ok": rc == 0, "rc": rc, "timed_out": timed_out, "timeout_s": round(timeout, 1),
            "seconds": round(time.monotonic() - start, 2), "commands": [shlex.join(c) for c in commands],
            "log": str(log), "tail": "" if rc == 0 else _tail(log)}


def _attach(part: dict, read) -> dict:
    """Add what a finished (or half-finished) part left on disk; a reader that fails only adds its error."""
    try:
        part["result"] = read()
    except Exception as e:  # a part that died early leaves partial files
        part["result_error"] = f"{type(e).__name__}: {e}"
    return part


def probe_env() -> dict:
    """Versions and the device, as this process sees them (run in a subprocess by the `env` part)."""
    import importlib.metadata as md

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "packages": {}}
    for name in ("transformers", "tokenizers", "safetensors", "math-verify", "latex2sympy2_extended",
                 "antlr4-python3-runtime", "tensorboard", "tqdm", "accelerate", "peft", "pytest", "r1kit"):
        try:
            info["packages"][name] = md.version(name)
        except md.PackageNotFoundError:
            info["packages"][name] = None
    import r1kit

    info["r1kit_path"] = str(Path(r1kit.__file__).parent)
    if torch.cuda.is_available():
        from r1kit.cost.devices import gpu_kind

        props = torch.cuda.get_device_properties(0)
        kind = gpu_kind(props.name)
        info.update(device=props.name, kind=kind, count=torch.cuda.device_count(),
                    memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}",
                    bf16_peak_flops=DEVICE_PEAKS.get(kind, {}).get("bf16"))
    return info


def check(out_json: Path, work: Path, smoke: bool, budget_s: float, parts: set[str] | None = None,
          install: dict | None = None) -> dict:
    """Run the parts (all, or those named in `parts`) and write the JSON; returns it."""
    s = settings(smoke)
    py, dev = sys.executable, ["--parallel.device=" + s["device"], "--parallel.dtype=" + s["dtype"]]
    r1kit = [py, "-m", "r1kit"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if smoke:
        env.setdefault("OMP_NUM_THREADS", "1")
    logs, deadline, t0 = work / "logs", Deadline(budget_s), time.monotonic()
    result: dict = {"schema": 1, "mode": "cpu-smoke" if smoke else "gpu",
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), "budget_s": budget_s,
                    "install": install, "parts": {}}

    def wanted(name: str) -> bool:
        return parts is None or name.split(":")[0] in parts

    def part(name: str, commands: list[list[str]], read=None):
        if not wanted(name):
            return None
        own = s["timeouts"].get(name, s["timeouts"].get(name.split(":")[0], 60))
        left = deadline.left()
        if left < 10:
            result["parts"][name] = {"ok": False, "skipped": f"out of time ({budget_s:.0f} s budget spent)"}
        else:
            print(f"gpu_check: {name} (at most {min(own, left):.0f} s) ...", flush=True)
            result["parts"][name] = run_part(name, commands, min(own, left), logs, env)
            if read is not None:
                _attach(result["parts"][name], read)
        _write(out_json, result)  # after every part: a later hang or kill keeps what came before
        return result["parts"][name]

    env_part = part("env", [[py, str(Path(__file__).resolve()), "--probe-env", "--out", str(work / "env.json")]],
                    read=lambda: json.loads((work / "env.json").read_text()))
    if env_part:
        result["env"] = env_part.pop("result", None)
    part("pytest", [[py, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-rs", "-p", "no:cacheprovider"]])

    base = work / "base"
    shutil.rmtree(base, ignore_errors=True)
    part("base", [[*r1kit, "base", "--task", "arithmetic", "--size", s["base"]["size"], "--out", str(base),
                   "--device", s["device"], "--dtype", s["dtype"], *s["base"]["extra"]]],
         read=lambda: summarize_base(base))
    rz, rz_dir = s["r1zero"], work / "r1zero"
    shutil.rmtree(rz_dir, ignore_errors=True)
    part("r1zero", [[*r1kit, "rl", "--config", "recipes/tiny-r1-zero.toml", "--model", str(base), "--out",
                     str(rz_dir), f"--steps={rz['steps']}", f"--eval_every={rz['eval_every']}",
                     f"--checkpoint_every={rz['steps']}", *dev, *rz["extra"]]],
         read=lambda: summarize_rl(rz_dir))

    t = s["timing"]
    for shape in t["shapes"]:
        model_dir, run_dir = work / f"model-{shape}", work / f"rl-{shape}"
        for d in (model_dir, run_dir):
            shutil.rmtree(d, ignore_errors=True)
        build = [py, str(Path(__file__).resolve()), "--build-model", shape, "--model-out", str(model_dir),
                 "--device", s["device"]]
        rl = [*r1kit, "rl", "--model", str(model_dir), "--task", "arithmetic", "--out", str(run_dir),
              f"--steps={t['steps']}", f"--rollout.prompts_per_step={t['prompts']}",
              f"--rollout.group_size={t['group']}", f"--rollout.max_new_tokens={t['max_new_tokens']}",
              "--rollout.batch_size=256", "--rollout.temperature=1.0", "--algo.beta=0.001", "--algo.mini_batches=1",
              "--train_problems=512", "--eval_every=0", "--final_eval=false", f"--checkpoint_every={t['steps']}",
              "--keep_checkpoints=1", *dev]

        def read_timing(run_dir=run_dir, model_dir=model_dir, shape=shape, rl=rl):
            out = summarize_timing(run_dir)
            out["memory_plan"] = plan_against(model_dir, rl, out.get("device_kind"), out.get("peak_memory_mib"))
            out.update(params=shape_params(shape), prompts=t["prompts"], group=t["group"],
                       max_new_tokens=t["max_new_tokens"])
            built = model_dir / "built.json"
            if built.is_file():
                out["built"] = json.loads(built.read_text())
            return out

        part(f"timing:{shape}", [build, rl], read=read_timing)
        for d in (model_dir, run_dir / "checkpoints", run_dir / "model"):  # GBs each: free the disk
            shutil.rmtree(d, ignore_errors=True)

    result["wall_s"] = round(time.monotonic() - t0, 1)
    result["ok"] = all(p.get("ok") for p in result["parts"].values()) and bool(result["parts"])
    _write(out_json, result)
    return result


def plan_against(model_dir: Path, rl_command: list[str], device_kind: str | None,
                 measured_mib: float | None, prompt_len: int = 64) -> dict:
    """`r1kit plan`'s total for the run `rl_command` made, beside its measured peak (max_memory_allocated on a
    GPU; on a CPU the peak RSS, which also holds the runtime the plan allows for separately)."""
    import types

    from r1kit.cli.train import rl_config_from
    from r1kit.cost.hardware import DEVICE_MEMORY_BYTES
    from r1kit.cost.memplan import memory_plan

    overrides = [a for a in rl_command if a.startswith("--") and "=" in a]
    flags = types.SimpleNamespace(config=None, model=str(model_dir), task="arithmetic", out="unused",
                                  strict=False, device=None, dtype=None)
    cfg = rl_config_from(flags, overrides)
    gpu = device_kind if device_kind in DEVICE_MEMORY_BYTES else None
    plan = memory_plan(json.loads((model_dir / "config.json").read_text()), cfg, 1, gpu, prompt_len=prompt_len)
    planned_mib = plan.total / 2**20
    return {"planned_mib": round(planned_mib, 1), "measured_mib": measured_mib, "device": plan.device,
            "measured_over_planned": round(measured_mib / planned_mib, 3) if measured_mib else None,
            "fits": plan.fits}


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def format_summary(result: dict) -> str:
    """A few lines per part: ok or why not, and its numbers."""
    lines = [f"gpu_check ({result['mode']}): {result.get('wall_s', '?')} s of a {result['budget_s']:.0f} s budget"]
    env = result.get("env") or {}
    if env:
        device = f"{env['device']} ({env.get('memory_gib')} GiB)" if env.get("device") else "no GPU"
        missing = [k for k, v in env.get("packages", {}).items() if v is None]
        lines.append(f"  env: torch {env.get('torch')} (CUDA {env.get('cuda')}), {device}; packages missing: "
                     + (", ".join(missing) or "none"))
    for name, p in result["parts"].items():
        failed = "timed out" if p.get("timed_out") else f"rc {p.get('rc')}"
        status = "ok" if p.get("ok") else p.get("skipped") or failed
        line = f"  {name}: {status} ({p.get('seconds', 0):.0f} s)"
        r = p.get("result") or {}
        if name == "base" and r.get("params"):
            line += f"; {_num((r.get('params') or 0) / 1e6)}M params, held-out pass@1 {_pct(r.get('pass@1'))}"
        elif name == "r1zero" and r.get("steps"):
            line += (f"; held-out pass@1 {_pct(r.get('pass@1_before'))} -> {_pct(r.get('pass@1_after'))} in "
                     f"{r.get('steps')} steps, {_num(r.get('seconds'), '{:.0f}')} s")
        elif name.startswith("timing:") and r.get("steps"):
            ph = r.get("phases", {})
            line += (f"; step {_num(r.get('time_step'), '{:.2f}')} s (rollout {_num(r.get('time_rollout'), '{:.2f}')}"
                     f" s, training {_num(r.get('time_training'), '{:.2f}')} s), "
                     f"{_num((ph.get('rollout') or {}).get('generated_tokens_per_s'), '{:,.0f}')} tokens/s, MFU "
                     f"rollout {_pct((ph.get('rollout') or {}).get('mfu'))} training "
                     f"{_pct((ph.get('training') or {}).get('mfu'))}, "
                     f"peak {_num(r.get('peak_memory_mib'), '{:,.0f}')} MiB (planned "
                     f"{_num((r.get('memory_plan') or {}).get('planned_mib'), '{:,.0f}')} MiB)")
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(DEFAULT_OUT), help="the JSON to write")
    p.add_argument("--work", default=str(ROOT / "runs" / "gpu_check"), help="scratch folder for models, runs and logs")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, 2 steps, on the CPU: tests the script")
    p.add_argument("--budget-s", type=float, default=None, help="overall deadline (default 420 GPU, 600 smoke)")
    p.add_argument("--parts", default=None, help="comma list of parts to run (env,pytest,base,r1zero,timing)")
    p.add_argument("--install-json", default=None, help="the install step's result (written by gpu_check.sh)")
    # internal modes, each run in a subprocess by `check`
    p.add_argument("--probe-env", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--build-model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.probe_env:
        _write(Path(args.out), probe_env())
        return 0
    if args.build_model:
        info = build_model(args.build_model, Path(args.model_out), device=args.device)
        (Path(args.model_out) / "built.json").write_text(json.dumps(info) + "\n")
        print(json.dumps(info))
        return 0
    out = Path(args.out)
    work = Path(args.work)
    install = None
    if args.install_json and Path(args.install_json).is_file():
        install = json.loads(Path(args.install_json).read_text())
    parts = set(args.parts.split(",")) if args.parts else None
    budget = args.budget_s or (600.0 if args.cpu_smoke else 420.0)
    result = check(out, work, args.cpu_smoke, budget, parts, install)
    print(format_summary(result))
    print(f"written to {out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
