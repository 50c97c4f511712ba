"""R1-Zero reinforcement learning: GRPO with rule-based rewards, as ../shared/r1-reference.md §2 states it.

Each step: take `prompts_per_step` training questions; sample a group of G completions for each from the current
policy; score them with the task's verifier through the reward functions; advantages (r - mean)/std within each
group; then `train_on_rollout` (algo/grpo.py): μ epochs over mini-batches of the clipped objective plus β·k3 KL to a
reference policy that is reset to the current policy every `ref_reset_every` steps.

Departures from the paper, all settings: G, batch, lengths and lr are scaled to the model; old log-probs for
off-policy mini-batches come from the sampler (the same weights) instead of an extra forward pass.

Randomness is derived from (seed, step, rank, round), never carried in a global generator, so `--resume` from a
checkpoint replays the remaining steps exactly. Under `torchrun` each rank samples and scores its share of the
questions with its full inference copy of the policy, trains its FSDP2 shard, and gathers the new weights into
that copy after the step (parallel/fsdp.py); checkpoints are DCP shards plus a gathered export
(parallel/checkpoint.py). Device and precision: `parallel` (parallel/engine.py).

    torchrun --nproc-per-node 8 $(which r1kit) rl --model DIR --out runs/rl --config recipe.toml

    r1kit rl --model runs/base-tiny --task arithmetic --out runs/rl --config recipes/tiny-r1-zero.toml
"""

from __future__ import annotations

import copy
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from r1kit.algo.doctor import Doctor, DoctorStop
from r1kit.algo.rewards import combine
from r1kit.algo.rl_config import RLConfig
from r1kit.algo.rl_step import learning_rate, samples_of, step_metrics, train_groups
from r1kit.algo.rollouts import QuestionStream, collect_groups
from r1kit.config import to_dict
from r1kit.cost.ledger import read_ledger, spent_flops
from r1kit.cost.preflight import check_memory_before_launch
from r1kit.errors import UserError
from r1kit.evaluation.evaluate import evaluate, finish_model
from r1kit.models.checkpoint import checkpoint_to_resume, latest_checkpoint, step_of
from r1kit.models.lora import load_for_training, merged_copy
from r1kit.models.modeling import eos_ids, load_model
from r1kit.parallel import dist
from r1kit.parallel.checkpoint import load_training_checkpoint, save_training_checkpoint
from r1kit.parallel.engine import Engine, resolve_engine
from r1kit.parallel.fsdp import (
    copy_sharded,
    full_state_dict,
    inference_copy,
    load_sharded,
    prepare_training_model,
    sync_weights,
)
from r1kit.reporting.runlog import MetricsLog, progress_bar, write_json
from r1kit.rollout import make_engine, resolve_backend
from r1kit.rollout.overlap import BackgroundRollout
from r1kit.tasks import get_task, task_options
from r1kit.tasks.prompting import format_warnings, make_prompter
from r1kit.tools import ToolBox, make_toolbox

BUDGET_FILE = "budget_reached.json"
SAMPLES_FILE = "samples.jsonl"  # per logged step: one group's completions, as text, with their rewards


def run_rl(cfg: RLConfig, *, resume: bool = False, progress: bool = True, ledger_factory=None,
           stop_after: int | None = None) -> dict:
    """Run GRPO as configured; returns a summary (held-out before/after, steps, seconds, run dir).

    `stop_after` ends the process's work after that many steps (as if killed), for tests of --resume.
    """
    run = _setup(cfg, resume, progress, ledger_factory)
    if run.start == 0 and cfg.eval_every:  # every rank evaluates its share
        run.history["before"] = _evaluate(run, progress)
        if run.info.main:
            run.log.log(0, {f"eval/{k}": v for k, v in run.history["before"].items() if isinstance(v, (int, float))})
    dist.barrier()
    bar = progress_bar(range(run.start, cfg.steps), desc="GRPO", disable=not (progress and run.info.main),
                       initial=run.start, total=cfg.steps)
    t_run = time.perf_counter()
    for step in bar:
        if (stop_after is not None and step >= run.start + stop_after) or dist.broadcast_object(
                (run.out / BUDGET_FILE).is_file()):  # rank 0's view: a shared file system may lag on the others
            break
        t0 = time.perf_counter()
        lr = _begin_step(run, step)
        kept, seen, times = _sample_and_score(run, step)
        stats = _train_and_sync(run, step, kept)
        m = step_metrics(seen, stats, times, lr, time.perf_counter() - t0, run.info, run.engine.peak_memory_mib())
        done = step + 1
        warnings = run.doctor.check_step(done, m) + _evaluate_during(run, done, m)
        _log_step(run, bar, done, m, kept, warnings)
        over_budget = _budget_reached(run, done, bar)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or over_budget:
            _checkpoint(run, done)
        if over_budget:
            break
    return _finish(run, time.perf_counter() - t_run, progress)


@dataclass
class _Run:
    """What every step of a run uses, built once by `_setup`."""

    cfg: RLConfig
    engine: Engine  # device, precision, ranks
    out: Path
    task: object
    policy: torch.nn.Module  # the trained model (FSDP2 shards under torchrun)
    sampler_model: torch.nn.Module  # what r1kit's sampler and the evaluation run: the policy or an inference copy
    ref: torch.nn.Module | None  # the KL reference (None when β = 0)
    tokenizer: object
    optimizer: torch.optim.Optimizer
    doctor: Doctor
    prompter: object
    log: MetricsLog
    samples: MetricsLog
    ledger: object | None  # rank 0's cost ledger
    rollout_engine: object
    rollout: object  # rollout(step, ledger) -> (kept, seen, times): sample and score this rank's groups
    exact_sampler: bool  # the engine's log-probs are the trainer's own (π_old needs no extra forward)
    background: BackgroundRollout | None  # rollout.overlap
    start: int = 0
    history: dict = field(default_factory=dict)
    tools: ToolBox | None = None  # the tools rollouts may call (multi-turn), None: single-turn completions

    @property
    def info(self):
        return self.engine.info


def _setup(cfg: RLConfig, resume: bool, progress: bool, ledger_factory) -> _Run:
    """Ranks, device, models (from a checkpoint when resuming), optimiser, doctor, logs, ledger, rollout engine."""
    info = dist.init_distributed(cfg.parallel.device)
    cfg.resolve(info.world)
    engine = resolve_engine(cfg.parallel, info, rl=True)
    if engine.sharded and cfg.lora.enabled:
        raise UserError("LoRA under torchrun (several ranks) is not supported yet: run LoRA on one process, or "
                        "full fine-tuning on several")
    if cfg.rollout.overlap and info.world > 1:
        raise UserError("rollout.overlap runs on one process (its background rollout would interleave collectives "
                        "with training): drop it under torchrun")
    if cfg.max_flops and ledger_factory is None:
        raise UserError("max_flops (a compute budget) is measured by the cost ledger: run with a ledger")
    out = Path(cfg.out)
    task = get_task(cfg.task, **cfg.prompt.overrides())
    ckpt = checkpoint_to_resume(out, resume)
    if ckpt is None:  # will it fit? Before any weight is loaded (the plan needs only config.json and prompts)
        check_memory_before_launch(cfg, task, engine)
    policy, sampler_model, ref, tokenizer = _load_models(cfg, engine, ckpt)
    o = cfg.optim
    optimizer = torch.optim.AdamW(policy.parameters(), lr=o.lr, betas=(o.beta1, o.beta2),
                                  weight_decay=o.weight_decay)
    d = cfg.doctor
    doctor = Doctor(d.strict, d.truncation_limit, d.zero_variance_limit, d.patience, d.hacking_drop, d.mismatch_limit)
    start, history, state = 0, {}, {}
    if ckpt is not None:
        state = load_training_checkpoint(ckpt, policy, optimizer, ref, engine)
        doctor.load(state["doctor"])
        sync_weights(policy, sampler_model)
        start, history = state["step"], state["history"]
    prompter = make_prompter(task, tokenizer)
    tools = make_toolbox(cfg.tools, cfg.tool_use, chat=prompter.chat, tokenizer=tokenizer, system=prompter.system)
    if tools is not None:
        tools.attach(prompter)  # a chat prompt lists the tools
    log = MetricsLog(out, enabled=info.main, log=cfg.log, config=to_dict(cfg), resumed=start > 0)
    samples = log.table_log(SAMPLES_FILE)  # its lines go to the trackers as tables
    if info.main:
        log.truncate_after(start)  # the line of step `start` belongs to its checkpoint
        samples.truncate_after(start)
        write_json(out / "run.json", {"stage": "rl", "config": to_dict(cfg), "task_options": task_options(task),
                                      "formats": prompter.settings(), "world_size": info.world,
                                      "engine": engine.describe(), "resumed_from": start or None})
        if progress:
            print(f"rl {task.name}: {prompter.describe()}; {engine.describe()}", flush=True)
        for w in format_warnings(prompter, cfg.model) + (tools.notes() if tools else []):
            print(f"r1kit doctor: {w}", flush=True)
    ledger = ledger_factory(out, "rl", policy.config.to_dict()) if (ledger_factory and info.main) else None
    stream = QuestionStream(task.problems("train", cfg.train_problems, seed=cfg.seed), cfg.seed)
    with ledger.phase("rollout_engine_startup") if ledger else nullcontext():
        rollout_engine = _rollout_engine(cfg, policy, sampler_model, tokenizer, prompter, task, stream.pool, engine,
                                         tools)
    exact_sampler = (rollout_engine.name == "r1kit" and _rollout_dtype(cfg, engine) == engine.compute_dtype
                     and not cfg.rollout.overlap)  # overlapped rollouts are one step stale
    reward_fn, eos = combine(cfg.reward.weights), eos_ids(policy, tokenizer)

    def rollout(step: int, ledger):
        return collect_groups(step, rollout_engine, tokenizer, prompter, stream, reward_fn, cfg, engine, ledger, eos,
                              tools)

    background = BackgroundRollout(cfg, rollout, state.get("prefetched")) if cfg.rollout.overlap else None
    return _Run(cfg, engine, out, task, policy, sampler_model, ref, tokenizer, optimizer, doctor, prompter, log,
                samples, ledger, rollout_engine, rollout, exact_sampler, background, start, history, tools)


def _load_models(cfg: RLConfig, engine: Engine, ckpt):
    """(policy ready to train, the sampler's model, the reference or None, tokenizer), from `ckpt` when resuming."""
    if engine.sharded:  # rank 0 reads the weights; every rank holds its shards and one inference copy
        policy, sampler_model, ref, tokenizer = load_sharded(ckpt or cfg.model, engine, cfg.algo.beta > 0)
        return policy, sampler_model, ref, tokenizer
    policy, tokenizer = load_for_training(
        lambda: load_model(cfg.model, dtype=engine.master_dtype, trainable=True), ckpt, cfg.lora, cfg.seed)
    ref = None
    if cfg.algo.beta > 0:  # β = 0 loads no reference model at all
        ref = copy.deepcopy(merged_copy(policy)).eval().requires_grad_(False)
        ref = prepare_training_model(ref, engine, frozen=True)
    sampler_model = policy  # vLLM holds its own copy; r1kit's sampler runs the policy or a copy of it
    if resolve_backend(cfg.rollout.backend, engine.device) == "r1kit":  # the policy itself when dtypes agree
        sampler_model = inference_copy(policy, engine, _rollout_dtype(cfg, engine),
                                       separate=cfg.rollout.overlap)  # overlap: samples while it trains
    return prepare_training_model(policy, engine), sampler_model, ref, tokenizer


def _begin_step(run: _Run, step: int) -> float:
    """The step's learning rate, set; the reference reset when due; the peak-memory counter restarted."""
    run.engine.reset_peak_memory()  # peak_memory_mib is this step's
    lr = learning_rate(step, run.cfg)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    every = run.cfg.algo.ref_reset_every
    if run.ref is not None and every and step > 0 and step % every == 0:
        if run.engine.sharded:
            copy_sharded(run.policy, run.ref)
        else:
            run.ref.load_state_dict(merged_copy(run.policy).state_dict())
    return lr


def _sample_and_score(run: _Run, step: int):
    """This step's rollout: sampled now, or (rollout.overlap) the one sampled while the last step trained, with
    the next step's started in the background."""
    if run.background is None:
        return run.rollout(step, run.ledger)
    result = run.background.take(step, run.ledger)
    if step + 1 < run.cfg.steps:
        run.background.start(step + 1)
    return result


def _train_and_sync(run: _Run, step: int, kept: dict) -> dict:
    """The GRPO update on this rank's kept groups, then the new weights into the rollout engine."""
    t1 = time.perf_counter()
    with run.background.main_threads() if run.background else nullcontext():
        stats = train_groups(step, run.policy, run.ref, run.optimizer, run.tokenizer, kept, run.cfg, run.ledger,
                             run.engine, run.exact_sampler)
    stats["time_training"] = time.perf_counter() - t1
    if run.background is not None:
        run.background.wait(run.ledger)  # the sampler's copy is free again: it can take the new weights
    t2 = time.perf_counter()
    if run.rollout_engine.name != "r1kit" or run.sampler_model is not run.policy:  # the engine gets the new weights
        with run.ledger.phase("weight_sync") if run.ledger else nullcontext():  # (sharded: an all-gather each)
            run.rollout_engine.update_weights(run.policy)
    stats["time_weight_sync"] = time.perf_counter() - t2
    return stats


def _evaluate(run: _Run, progress: bool) -> dict:
    """The held-out evaluation's metrics; under torchrun every rank samples its share (no rank waits on a long one)."""
    with run.engine.autocast():
        result = evaluate(run.sampler_model, run.tokenizer, run.task, run.cfg.eval,
                          progress=progress and run.info.main, ledger=run.ledger, shard=True,
                          engine=run.rollout_engine, tools=run.tools)
    run.sampler_model.train()
    return result["metrics"]


def _evaluate_during(run: _Run, done: int, m: dict) -> list[str]:
    """Every `eval_every` steps: the held-out evaluation into `m`, and the doctor's reward-hacking check on it."""
    if not run.cfg.eval_every or done % run.cfg.eval_every or done >= run.cfg.steps:
        return []
    warnings, stop = [], None
    ev = _evaluate(run, False)  # every rank
    if run.info.main:
        m.update({f"eval/{k}": v for k, v in ev.items() if isinstance(v, (int, float))})
        try:
            warnings = run.doctor.check_eval(done, ev["pass@1"])
        except DoctorStop as e:
            stop = str(e)
    stop = dist.broadcast_object(stop)  # every rank stops together, or none does
    if stop:
        raise DoctorStop(stop)
    return warnings


def _log_step(run: _Run, bar, done: int, m: dict, kept: dict, warnings: list[str]) -> None:
    if not run.info.main:
        return
    if done % run.cfg.log_every == 0 or done == run.cfg.steps:
        run.log.log(done, m)
        run.samples.log(done, samples_of(kept, run.tokenizer, G=run.cfg.rollout.group_size))
    for w in warnings:
        bar.write(f"r1kit doctor: {w}")
    bar.set_postfix(reward=f"{m['reward_mean']:.2f}", acc=f"{m['accuracy']:.2f}",
                    len=f"{m['completion_len_mean']:.0f}", refresh=False)


def _budget_reached(run: _Run, done: int, bar) -> bool:
    """max_flops: whether the rollout + scoring + training FLOPs in the ledger reached the budget (rank 0 decides,
    and writes BUDGET_FILE so a resumed run stops too)."""
    cfg = run.cfg
    spent = 0.0
    if cfg.max_flops and run.info.main and (run.out / "ledger.jsonl").is_file():
        spent = spent_flops(read_ledger(run.out / "ledger.jsonl"))  # evaluation excluded
    over = dist.broadcast_object(bool(cfg.max_flops) and spent >= cfg.max_flops)
    if over and run.info.main:
        write_json(run.out / BUDGET_FILE, {"step": done, "max_flops": cfg.max_flops, "flops": spent})
        bar.write(f"compute budget reached after step {done}: {spent:.3g} FLOPs >= max_flops {cfg.max_flops:.3g}")
    return over


def _checkpoint(run: _Run, done: int) -> None:
    with run.ledger.phase("checkpointing") if run.ledger else nullcontext():
        save_training_checkpoint(run.out, done, run.policy, run.sampler_model, run.tokenizer, run.optimizer, run.ref,
                                 {"doctor": run.doctor.state(), "history": run.history,
                                  "prefetched": run.background.prefetched if run.background else None},
                                 run.cfg.keep_checkpoints, run.engine)


def _finish(run: _Run, seconds: float, progress: bool) -> dict:
    """The summary; when the run is complete, the final model saved with its held-out evaluation and model card."""
    cfg, out, info, engine = run.cfg, run.out, run.info, run.engine
    last_step, budget = dist.broadcast_object((  # rank 0's view of the files decides for every rank
        step_of(latest_checkpoint(out)),
        json.loads((out / BUDGET_FILE).read_text()) if (out / BUDGET_FILE).is_file() else None))
    finished = last_step > 0 and (last_step == cfg.steps or (budget is not None and budget["step"] == last_step))
    summary = {"run_dir": str(out), "steps": last_step if finished else cfg.steps, "seconds_this_process": seconds,
               "finished": finished, "stopped_by_budget": budget}
    sharded_end = finished and engine.sharded
    full = full_state_dict(run.policy) if sharded_end else None  # collective: every rank
    final = None
    if sharded_end and cfg.final_eval:  # every rank evaluates its share of the held-out set
        final = evaluate(run.sampler_model, run.tokenizer, run.task, cfg.eval, progress=progress and info.main,
                         ledger=run.ledger, shard=True, engine=run.rollout_engine, tools=run.tools)
    if finished and info.main:
        with engine.autocast():
            result = finish_model(run.sampler_model if engine.sharded else run.policy, run.tokenizer, out,
                                  title=f"{out.name}: R1-Zero RL on {run.task.name}", task_spec=run.task,
                                  eval_cfg=cfg.eval if cfg.final_eval and not engine.sharded else None,
                                  upstream=[cfg.model], ledger=run.ledger, progress=progress, state_dict=full,
                                  result=final, engine=run.rollout_engine, tools=run.tools)
        run.policy.train()
        summary.update(before=run.history.get("before"), after=result["metrics"] if result else None)
        if result is not None:
            summary["eval"] = result
        write_json(out / "summary.json", {k: v for k, v in summary.items() if k != "eval"})
        run.log.finish(last_step, result["metrics"] if result else None)
    run.log.close()
    if run.background is not None:
        run.background.close()
    run.rollout_engine.close()
    return summary


def _rollout_dtype(cfg: RLConfig, engine) -> torch.dtype:
    """The rollout engine's precision: `rollout.dtype`, or the training compute dtype when auto."""
    return {"auto": engine.compute_dtype, "fp32": torch.float32, "bf16": torch.bfloat16}[cfg.rollout.dtype]


def _rollout_engine(cfg: RLConfig, policy, sampler_model, tokenizer, prompter, task, pool, engine, tools=None):
    """The rollout engine of `cfg.rollout.backend`: r1kit's sampler over `sampler_model`, or vLLM built from the
    model directory and given `policy`'s current weights (room for the longest training or evaluation prompt)."""
    backend = resolve_backend(cfg.rollout.backend, engine.device)
    if backend == "r1kit":
        return make_engine(backend, sampler_model, device=engine.device, compile=cfg.parallel.compile_flag)
    problems = list(pool) + task.problems(cfg.eval.split, cfg.eval.n, seed=cfg.eval.seed)
    longest = max(len(p) for p in prompter.encode(problems))
    dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16"}[_rollout_dtype(cfg, engine)]
    options = {"max_num_seqs": max(cfg.rollout.batch_size, cfg.eval.batch_size), "dtype": dtype}
    budget = max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens)
    return make_engine(backend, policy, source=cfg.model, tokenizer=tokenizer,
                       max_len=longest + (tools.config.total_tokens(budget) if tools else budget), seed=cfg.seed,
                       device=engine.device, options=options)
