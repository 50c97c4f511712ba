"""Estimate an RL run's hours and dollars before launch, and compare the estimate with the ledger afterwards.

Per phase of the ledger (`r1kit.cost.ledger`), with C = steps x prompts_per_step x G x (completions sampled per
nominal completion: > 1 when dynamic sampling refills) and F(s) = `flops_per_token` at sequence length s:

    rollout        C x (prompt_len + completion_len) tokens x F           at the rollout FLOP/s
    scoring        C x seconds per completion                                (measured; no FLOPs)
    training       C_trained x (prompt_len + completion_len) x (μ x 3F + F if β > 0, the reference forward)
                                                                             at the training FLOP/s
    evaluation     evals x n x k x (prompt_len + eval completion_len) x F   at the evaluation FLOP/s
    checkpointing  saves x seconds per save                                  (measured)

evals = the final one, plus one before step 1 and one every `eval_every` steps when eval_every > 0 (as
`run_rl` does); saves = the checkpoints plus the final model. FLOPs are counted exactly as the ledger counts
them, so a predicted FLOP/s and a measured one mean the same thing.

Rates come from a *calibration*: the same config run for a few steps (`calibrate`, into a temporary directory,
no periodic evaluation, a one-batch final evaluation) on the machine at hand; its ledger gives each phase's
achieved FLOP/s, and its metrics the completion and prompt lengths. Per-phase rates matter on a CPU, where
sampling runs at a fraction of the training rate. For another device (`--gpu H100 --count 8`) a phase runs at
the table peak x MFU: the MFU given, else `ASSUMED_MFU` (an assumption, and the output says so).

Limits: the completion length is the one of the first steps (RL changes it: on the tiny recipe it grows by about
a third over 120 steps; pass expected_completion_len if you know better); time outside the ledger's phases
(loading, building the problem pool, logging) is not predicted; the first calibration step is excluded from the
rates (warm-up) when there are more. A calibration sharing the CPU with other jobs measures rates far too low
(`r1kit.cost.calibration.ContentionProbe` watches for that, and the estimate then carries a warning). Layer 1: torch
only enters through `devices` and the run function.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from r1kit.algo.rl_config import RLConfig
from r1kit.cost.calibration import calibrate
from r1kit.cost.hardware import DEVICE_PEAKS, device_power_w, peak_flops, resolve_price
from r1kit.cost.ledger import flops_per_token, param_count
from r1kit.errors import UserError

ESTIMATE_FILE = "estimate.json"
PHASES = ("rollout_engine_startup", "rollout", "scoring", "training", "weight_sync", "evaluation",
          "checkpointing")
FLOP_PHASES = ("rollout", "training", "evaluation")

# MFU assumed on a datacenter GPU when no calibration on it is possible here: an assumption, not a measurement.
# Training: well-tuned bf16 training reaches 40-55% on large models (PaLM 46%, Megatron-LM ~50%); RL trainers
# with small micro-batches and activation checkpointing do less, so 30%. Sampling is memory-bound decoding: an
# inference engine (vLLM/SGLang) at RL batch sizes reaches roughly 5-15% of the matmul peak, so 10%.
ASSUMED_MFU: dict[str, float] = {"rollout": 0.10, "training": 0.30, "evaluation": 0.10}


# ---- The estimate ----------------------------------------------------------------------------------------


def load_model_config(model_dir: str | Path) -> dict:
    """The model's config.json (what FLOPs are counted from)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise UserError(
            f"{str(model_dir)!r} has no config.json: give a Hugging Face model directory (--model)"
        )
    return json.loads(path.read_text())


def measure_prompt_len(model_dir: str | Path, task_spec: str, n: int = 64, seed: int = 0,
                       overrides: dict | None = None) -> float:
    """Mean tokens of `n` training prompts of the task under the model's tokenizer and prompt format."""
    from r1kit.models.modeling import load_tokenizer
    from r1kit.tasks import get_task
    from r1kit.tasks.prompting import make_prompter

    task = get_task(task_spec, **(overrides or {}))
    ids = make_prompter(task, load_tokenizer(model_dir)).encode(task.problems("train", n, seed=seed))
    return sum(map(len, ids)) / max(len(ids), 1)


def count_evals(steps: int, eval_every: int, final: bool = True) -> int:
    """Evaluations `run_rl` makes: before step 1 and every eval_every steps before the last (if eval_every > 0),
    and the final one."""
    return int(final) + (1 + (steps - 1) // eval_every if eval_every else 0)


def count_saves(steps: int, checkpoint_every: int) -> int:
    """Checkpoints (every checkpoint_every steps and at the last) plus the final model directory."""
    return steps // checkpoint_every + (1 if steps % checkpoint_every else 0) + 1


def _target_peak(kind: str, dtype: str, calibration: Mapping | None, peak: float | None) -> float:
    if peak is not None:
        return float(peak)
    if calibration and calibration["device_kind"] == kind and calibration.get("peak_flops"):
        return float(calibration["peak_flops"])
    if kind == "cpu":
        from r1kit.cost.devices import cpu_peak_flops, detect_device

        return cpu_peak_flops(dtype="fp32") / detect_device()[1]  # per thread, as the ledger counts a CPU
    value = peak_flops(kind, dtype)
    if value is None:
        raise UserError(f"no peak FLOP/s for {kind!r} ({dtype}): use one of {', '.join(DEVICE_PEAKS)} or cpu")
    return value


def estimate_rl(
    cfg: RLConfig,
    model_config: Mapping[str, Any],
    device_kind: str,
    device_count: int,
    mfu: float | None = None,
    price: float | None = None,
    expected_completion_len: float | None = None,
    prompt_len: float | None = None,
    *,
    calibration: Mapping[str, Any] | None = None,
    dtype: str | None = None,
    peak: float | None = None,
) -> dict:
    """Predict each phase's tokens, FLOPs, seconds, device-hours, dollars and energy of the RL run `cfg`.

    Rates: `mfu` (one MFU for every phase) if given; else the calibration's per-phase MFU if it ran on
    `device_kind`; else ASSUMED_MFU (GPUs only; a CPU needs a calibration or an MFU). `expected_completion_len`
    overrides the measured completion length (rollout, training and evaluation); without a calibration it
    defaults to the budget max_new_tokens, an upper bound. `prompt_len` defaults to the calibration's.
    """
    cfg = copy.deepcopy(cfg)
    cfg.model, cfg.out = cfg.model or "-", cfg.out or "-"
    cfg.resolve()
    r, a, ev = cfg.rollout, cfg.algo, cfg.eval
    cal = calibration or {}
    dtype = dtype or ("fp32" if device_kind == "cpu" else "bf16")
    notes: list[str] = []
    same_device = bool(cal) and cal["device_kind"] == device_kind
    if mfu is not None:
        basis, mfus = "given", dict.fromkeys(FLOP_PHASES, float(mfu))
        notes.append(f"MFU {100 * mfu:.1f}% given, for every phase")
    elif same_device:
        basis = "calibrated"
        mfus = {p: cal["mfu"].get(p) for p in FLOP_PHASES}
        mfus["evaluation"] = mfus["evaluation"] or mfus["rollout"]  # sampling either way
        notes.append(
            f"rates measured by a {cal['steps']}-step calibration on {cal['device_kind']} x "
            f"{cal['device_count']}"
        )
        if (cal.get("other_runnable") or 0) > 0.5:
            notes.append(
                f"WARNING: other jobs ran during the calibration ({cal['other_runnable']:.1f} runnable threads on "
                f"average besides it, on {cal.get('cpu_count')} CPUs): its rates are low, the predicted time too "
                "long; calibrate again on a quiet machine"
            )
    elif device_kind == "cpu":
        raise UserError("a CPU estimate needs a calibration run (--calibrate-steps N) or an MFU (--mfu M)")
    else:
        basis, mfus = "assumed", dict(ASSUMED_MFU)
        notes.append(
            "ASSUMPTION: no calibration on "
            + device_kind
            + " is possible here; MFU assumed "
            + ", ".join(f"{p} {100 * v:.0f}%" for p, v in mfus.items())
            + " (give --mfu to override)"
        )
    peak_each = _target_peak(device_kind, dtype, cal if same_device else None, peak)

    if expected_completion_len is not None:
        completion = eval_completion = float(expected_completion_len)
        notes.append(f"completion length {completion:.1f} tokens given")
    elif cal:
        completion = cal["completion_len"]
        eval_completion = cal.get("eval_completion_len", completion)
        notes.append(f"completion length {completion:.1f} tokens measured in the calibration's first steps")
    else:
        completion = eval_completion = float(r.max_new_tokens)
        notes.append(
            f"ASSUMPTION: completions use their whole budget ({r.max_new_tokens} tokens): an upper bound"
        )
    if prompt_len is None:
        if not cal:
            raise UserError("estimate_rl needs prompt_len or a calibration")
        prompt_len = cal["prompt_len"]
    eval_prompt = cal.get("eval_prompt_len", prompt_len)

    fwd_roll = flops_per_token(model_config, int(prompt_len + r.max_new_tokens), training=False)
    fwd_train = flops_per_token(model_config, int(prompt_len + completion), training=False)
    fwd_eval = flops_per_token(model_config, int(eval_prompt + ev.max_new_tokens), training=False)
    seq = prompt_len + completion
    per_step = r.prompts_per_step * r.group_size * seq  # completion tokens (with prompts) per step, nominal
    step_flops = per_step * (cal.get("sampled_share", 1.0) * fwd_roll
                             + cal.get("trained_share", 1.0) * (a.mu * 3 + (1 if a.beta > 0 else 0)) * fwd_train)
    steps = cfg.steps
    if cfg.max_flops:  # the run stops after the step where its rollout + training FLOPs reach the budget
        steps = min(cfg.steps, max(1, math.ceil(cfg.max_flops / step_flops)))
        notes.append(f"compute budget {cfg.max_flops:.3g} FLOPs: about {steps} of at most {cfg.steps} steps")
    nominal = steps * r.prompts_per_step * r.group_size
    sampled = nominal * cal.get("sampled_share", 1.0)
    trained = nominal * cal.get("trained_share", 1.0)
    evals, saves = count_evals(steps, cfg.eval_every, cfg.final_eval), count_saves(steps, cfg.checkpoint_every)
    tokens = {
        "rollout": sampled * seq,
        "training": trained * seq * a.mu,
        "evaluation": evals * ev.n * ev.k * (eval_prompt + eval_completion),
    }
    flops = {
        "rollout": tokens["rollout"] * fwd_roll,
        "training": trained * seq * (a.mu * 3 + (1 if a.beta > 0 else 0)) * fwd_train,
        "evaluation": tokens["evaluation"] * fwd_eval,
    }
    seconds = {p: flops[p] / (peak_each * device_count * mfus[p]) for p in FLOP_PHASES}
    seconds["scoring"] = sampled * cal.get("scoring_s_per_completion", 0.0)
    seconds["checkpointing"] = saves * (cal.get("seconds_per_save") or 0.0)
    seconds["rollout_engine_startup"] = cal.get("engine_startup_s", 0.0)  # once per run (vLLM's: seconds)
    seconds["weight_sync"] = steps * cal.get("weight_sync_s_per_step", 0.0)  # a separate engine or copy
    if not cal:
        notes.append("scoring and checkpointing time not predicted without a calibration (counted as 0)")

    price_each = resolve_price(device_kind, price)
    power = device_power_w(device_kind)
    phases = {}
    for p in PHASES:
        s = seconds[p]
        dh = s * device_count / 3600
        phases[p] = {
            "tokens": tokens.get(p, 0.0),
            "flops": flops.get(p, 0.0),
            "mfu": mfus.get(p),
            "flops_per_s": flops[p] / s if p in flops and s > 0 else None,
            "wall_s": s,
            "device_hours": dh,
            "usd": dh * price_each if price_each is not None else None,
            "energy_j": power * s * device_count if power is not None else None,
        }
    total = {k: sum(ph[k] for ph in phases.values()) for k in ("tokens", "flops", "wall_s", "device_hours")}
    total["usd"] = None if price_each is None else sum(ph["usd"] for ph in phases.values())
    total["energy_j"] = None if power is None else sum(ph["energy_j"] for ph in phases.values())
    total["mfu"] = total["flops"] / (total["wall_s"] * peak_each * device_count) if total["wall_s"] else None
    return {
        "schema": 1,
        "stage": "rl",
        "basis": basis,
        "notes": notes,
        "device_kind": device_kind,
        "device_count": device_count,
        "dtype": dtype,
        "peak_flops": peak_each,
        "price_per_hour": price_each,
        "power_w": power,
        "inputs": {
            "model": cfg.model,
            "params": param_count(model_config),
            "steps": steps,
            "prompts_per_step": r.prompts_per_step,
            "group_size": r.group_size,
            "completion_len": completion,
            "prompt_len": prompt_len,
            "eval_completion_len": eval_completion,
            "completions_sampled": sampled,
            "completions_trained": trained,
            "mu": a.mu,
            "beta": a.beta,
            "evals": evals,
            "eval_samples": ev.n * ev.k,
            "saves": saves,
        },
        "phases": phases,
        "total": total,
        "calibration": dict(cal) if cal else None,
    }


def estimate_from_config(
    cfg: RLConfig,
    run: Callable[..., dict] | None = None,
    *,
    device_kind: str | None = None,
    device_count: int | None = None,
    mfu: float | None = None,
    price: float | None = None,
    calibrate_steps: int = 3,
    expected_completion_len: float | None = None,
    ledger_factory: Callable | None = None,
    prompt_len: float | None = None,
) -> dict:
    """The whole recipe: read the model's config, calibrate with `run` (e.g. run_rl) unless calibrate_steps is
    0 or no run is given, and estimate for `device_kind` x `device_count` (default: this machine).

    `prompt_len` (mean prompt tokens) replaces the calibration's or, without one, the measurement under the
    model's tokenizer: with it and `expected_completion_len` a bare config.json is enough (a model too large to
    have here, e.g. recipes/models/deepseek-v3-active-37b)."""
    if not cfg.model:
        raise UserError("the estimate needs the policy's model directory (--model DIR)")
    model_config = load_model_config(cfg.model)
    calibration = calibrate(cfg, run, calibrate_steps, ledger_factory) if run and calibrate_steps else None
    if device_kind is None:
        if calibration:
            device_kind, count = calibration["device_kind"], calibration["device_count"]
        else:
            from r1kit.cost.devices import detect_device

            device_kind, count = detect_device()
        device_count = device_count or count
    if prompt_len is None and not calibration:
        prompt_len = measure_prompt_len(cfg.model, cfg.task, seed=cfg.seed, overrides=cfg.prompt.overrides())
    return estimate_rl(
        cfg,
        model_config,
        device_kind,
        device_count or 1,
        mfu,
        price,
        expected_completion_len,
        prompt_len,
        calibration=calibration,
    )


def write_estimate(run_dir: str | Path, estimate: Mapping[str, Any]) -> Path:
    """Write RUN_DIR/estimate.json (atomically); `r1kit cost RUN_DIR` then shows it beside the measured cost."""
    path = Path(run_dir) / ESTIMATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(estimate, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_estimate(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / ESTIMATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None
