"""R1-Zero reinforcement learning: GRPO with rule-based rewards, as ../shared/r1-reference.md §2 states it.

Each step: take `prompts_per_step` training questions; sample a group of G completions for each from the current
policy; score them with the task's verifier through the reward functions; advantages (r - mean)/std within each
group; then `train_on_rollout` (grpo.py): μ epochs over mini-batches of the clipped objective plus β·k3 KL to a
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
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from r1kit.algo.doctor import Doctor, DoctorStop
from r1kit.algo.grpo import UpdateSettings, build_rollout, rollout_logprobs, train_on_rollout
from r1kit.algo.losses import ADVANTAGES
from r1kit.algo.rewards import combine
from r1kit.algo.rl_config import RLConfig
from r1kit.config import to_dict
from r1kit.cost.ledger import read_ledger, spent_flops
from r1kit.cost.preflight import check_memory_before_launch
from r1kit.errors import UserError
from r1kit.evaluation.evaluate import evaluate, finish_model
from r1kit.models.checkpoint import checkpoint_to_resume, latest_checkpoint, step_of
from r1kit.models.lora import load_for_training, merged_copy, unwrap
from r1kit.models.modeling import eos_ids, load_model
from r1kit.parallel import dist
from r1kit.parallel.checkpoint import load_training_checkpoint, save_training_checkpoint
from r1kit.parallel.engine import resolve_engine
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
from r1kit.rollout.fast import compile_wanted, training_compile_pays
from r1kit.rollout.overlap import BackgroundRollout
from r1kit.rollout.sampler import SamplingParams
from r1kit.tasks import get_task, task_options
from r1kit.tasks.base import sandbox_usage, score_all
from r1kit.tasks.prompting import format_warnings, make_prompter


def learning_rate(step: int, cfg) -> float:
    """Linear warmup, then constant, cosine or linear decay to lr * min_lr_ratio at the last step."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = min(1.0, (step - o.warmup_steps) / max(1, cfg.steps - 1 - o.warmup_steps))
    floor = o.lr * o.min_lr_ratio
    if o.schedule == "cosine":
        return floor + (o.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if o.schedule == "linear":
        return o.lr - (o.lr - floor) * progress
    return o.lr


def _seed(*parts: int) -> int:
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p + 0x9E3779B9)) * 1099511628211) % (2**63)
    return h


class _Stream:
    """Training questions in a fresh seeded permutation per epoch; question j of step s is fixed by (seed, s, j)."""

    def __init__(self, pool: list, seed: int):
        self.pool, self.seed, self._perms = pool, seed, {}

    def __getitem__(self, j: int):
        epoch, i = divmod(j, len(self.pool))
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(len(self.pool), generator=torch.Generator().manual_seed(
                _seed(self.seed, epoch)))}
        return self.pool[int(self._perms[epoch][i])]

    def extra(self, n: int, *key: int) -> list:
        g = torch.Generator().manual_seed(_seed(self.seed, *key))
        return [self.pool[int(i)] for i in torch.randint(len(self.pool), (n,), generator=g)]


def _sample_groups(rollout_engine, tokenizer, prompter, problems, keys, step, rnd, cfg, eos, engine):
    """G completions per problem, with the rollout engine's log-probs of them. Returns per-completion lists.

    Each sampling batch draws from a generator seeded by (seed, step, key of its first problem, round), where a
    problem's key is its index in the step's global list. With one group per batch (rollout.batch_size =
    group_size) a question gets the same completions whichever rank samples it, so one process and N processes
    take the same step (tests/test_torchrun.py); with larger batches the rows of a batch share one random stream,
    and the runs agree in distribution only."""
    r, G = cfg.rollout, cfg.rollout.group_size
    params = SamplingParams(r.temperature, r.top_p, r.max_new_tokens)
    prompts = prompter.encode(problems)
    rows = [i for i in range(len(problems)) for _ in range(G)]
    toks, fins, lps = [], [], []
    for s in range(0, len(rows), r.batch_size):
        chunk = rows[s: s + r.batch_size]
        gen = torch.Generator().manual_seed(_seed(cfg.seed, step, keys[chunk[0]], rnd))
        with engine.autocast():
            out = rollout_engine.sample([prompts[i] for i in chunk], params, eos_ids=eos,
                                        pad_id=tokenizer.pad_token_id, generator=gen, return_logprobs=True)
        toks += out.tokens
        fins += out.finished
        lps += out.logprobs
    return prompts, rows, toks, fins, lps


def _score(prompter, tokenizer, reward_fn, cfg, problems, rows, toks, fins):
    texts = [prompter.completion(tokenizer.decode(t, skip_special_tokens=True)) for t in toks]
    scores = score_all(prompter.task, [problems[i] for i in rows], texts)  # a code task: in parallel, sandboxed
    rewards, parts_all = [], []
    for i, t, fin, text, score in zip(rows, toks, fins, texts, scores):
        ctx = {"max_new_tokens": cfg.rollout.max_new_tokens, "length": len(t), "truncated": not fin,
               "language": cfg.reward.language, "overlong_buffer": cfg.reward.overlong_buffer}
        total, parts = reward_fn(problems[i], text, score, ctx)
        rewards.append(total)
        parts_all.append(parts)
    return rewards, parts_all, scores


def _rollout_step(step, rollout_engine, tokenizer, prompter, stream, reward_fn, cfg, engine, ledger, eos):
    """Sample, score and (with dynamic sampling) refill this rank's groups. Returns the kept data + stats."""
    info = engine.info
    G, local_n = cfg.rollout.group_size, cfg.rollout.prompts_per_step // info.world
    P = cfg.rollout.prompts_per_step
    keys = [j for j in range(P) if j % info.world == info.rank]  # this rank's share of the step's questions
    first = [stream[step * P + j] for j in keys]
    kept = {"prompts": [], "toks": [], "fins": [], "lps": [], "rewards": [], "problems": [], "keys": []}
    seen = {"rewards": [], "parts": [], "scores": [], "lengths": [], "fins": [], "zero_var": 0, "groups": 0}
    problems, t_roll, t_score, n_prompt_tok, n_gen, longest_prompt = first, 0.0, 0.0, 0, 0, 0
    for rnd in range(cfg.rollout.max_refill_rounds + 1):
        t0 = time.perf_counter()
        with ledger.phase("rollout") if ledger else nullcontext() as ph:
            prompts, rows, toks, fins, lps = _sample_groups(rollout_engine, tokenizer, prompter, problems, keys, step,
                                                            rnd, cfg, eos, engine)
            # the ledger (rank 0's) bills every rank's tokens: all ranks are in this round (see `missing` below)
            n_p, n_g = dist.all_reduce_sum([sum(len(prompts[i]) for i in rows), sum(map(len, toks))])
            longest = dist.all_reduce_max([max(map(len, prompts), default=0)])[0]
            if ph is not None:
                ph.add(prompt_tokens=int(n_p), generated_tokens=int(n_g),
                       seq_len=int(longest) + cfg.rollout.max_new_tokens)
        t1 = time.perf_counter()
        with ledger.phase("sandbox" if getattr(prompter.task, "executes_code", False) else "scoring") if ledger \
                else nullcontext() as ph:
            rewards, parts, scores = _score(prompter, tokenizer, reward_fn, cfg, problems, rows, toks, fins)
            if ph is not None:
                ph.add(**sandbox_usage(scores))
        t_roll, t_score = t_roll + t1 - t0, t_score + time.perf_counter() - t1
        n_prompt_tok += sum(len(prompts[i]) for i in rows)
        n_gen += sum(map(len, toks))
        longest_prompt = max(longest_prompt, max(map(len, prompts), default=0))
        seen["rewards"] += rewards
        seen["parts"] += parts
        seen["scores"] += scores
        seen["lengths"] += [len(t) for t in toks]
        seen["fins"] += fins
        for g in range(len(problems)):
            sl = slice(g * G, (g + 1) * G)
            flat = max(rewards[sl]) - min(rewards[sl]) < 1e-9
            seen["groups"] += 1
            seen["zero_var"] += flat
            if (flat and cfg.rollout.dynamic_sampling) or len(kept["problems"]) >= local_n:
                continue
            kept["problems"].append(problems[g])
            kept["keys"].append(keys[g])
            kept["prompts"] += [prompts[g]] * G
            kept["toks"] += toks[sl]
            kept["fins"] += fins[sl]
            kept["lps"] += lps[sl]
            kept["rewards"] += rewards[sl]
        missing = local_n - len(kept["problems"])
        # every rank takes part in as many rounds as the rank that refills longest (an empty one if it is done)
        if not cfg.rollout.dynamic_sampling or dist.all_reduce_max([missing])[0] <= 0:
            break
        problems = stream.extra(missing, step, info.rank, rnd + 1) if missing > 0 else []
        keys = [info.rank + P * i for i in range(max(missing, 0))]  # refills are drawn per rank: keyed by it
    return kept, seen, {"rollout": t_roll, "scoring": t_score, "prompt_tokens": n_prompt_tok, "generated": n_gen,
                        "longest_prompt": longest_prompt}


def _train(step, policy, ref, optimizer, tokenizer, kept, cfg, ledger, engine, exact_sampler: bool):
    """Advantages, reference log-probs and the GRPO update on this rank's kept groups.

    The rollout engine's log-probs are the behaviour policy's (TIS weights and the mismatch KL compare the
    trainer's with them). Off-policy mini-batches (μ > 1 or several mini-batches) need π_old: taken from the
    engine when it computes exactly what the trainer does (`exact_sampler`: r1kit's sampler in the training
    precision, on the current weights), else from a trainer forward before the update, as TRL does."""
    G, a = cfg.rollout.group_size, cfg.algo
    n, pad = len(kept["toks"]), tokenizer.pad_token_id
    if n == 0:  # nothing kept on this rank: a one-row placeholder without loss keeps the collectives in step
        prompts, toks, advantages, loss_rows = [[pad]], [[pad]], torch.zeros(1), [False]
    else:
        rewards = torch.tensor(kept["rewards"], dtype=torch.float32)
        prompts, toks = kept["prompts"], kept["toks"]
        advantages = ADVANTAGES[a.advantage_scale](rewards, G)
        loss_rows = kept["fins"] if a.mask_truncated else None
    rollout = build_rollout(prompts, toks, pad, advantages, loss_rows)
    P, keys = cfg.rollout.prompts_per_step, kept["keys"]
    if keys and max(keys) < P:  # a group's mini-batch follows its global question index, as on one process
        rollout.mini_batch = torch.tensor([keys[i // G] * a.mini_batches // P for i in range(n)])
    else:  # refilled groups (dynamic sampling) or a placeholder: the g-th kept group sits at g * world + rank
        world, rank, groups = engine.info.world, engine.info.rank, max(n // G, 1)
        rollout.mini_batch = torch.tensor([((i // G) * world + rank) * a.mini_batches // (groups * world)
                                           for i in range(max(n, 1))])
    if kept["lps"]:
        behaviour = torch.zeros(n, rollout.completion_len)
        for i, lp in enumerate(kept["lps"]):
            behaviour[i, : len(lp)] = torch.tensor(lp)
        rollout.behaviour_logprobs = behaviour
    settings = UpdateSettings(cfg.rollout.temperature, a.loss_aggregation, a.beta, a.eps_low, a.eps_high, a.mu,
                              a.mini_batches, cfg.rollout.max_new_tokens, cfg.optim.grad_clip,
                              micro_batch_tokens=a.micro_batch_tokens, tis_cap=a.tis_cap,
                              compiled=compile_wanted(cfg.parallel.compile_flag, engine.device,
                                                      training_compile_pays(unwrap(policy), engine.device)),
                              share_prompts=a.share_prompts, skip_zero_advantage=a.skip_zero_advantage)
    off_policy = a.mu * a.mini_batches > 1
    with ledger.phase("training") if ledger else nullcontext() as ph:
        if off_policy and exact_sampler:
            rollout.old_logprobs = rollout.behaviour_logprobs
        elif off_policy:  # π_old from the trainer itself (every rank: a sharded forward is a collective)
            rollout.old_logprobs = rollout_logprobs(policy, rollout, cfg.rollout.temperature, a.micro_batch_tokens,
                                                    engine, settings.compiled, a.share_prompts)
        if a.beta > 0:  # also for a placeholder row: a sharded reference's forward is a collective
            rollout.ref_logprobs = rollout_logprobs(ref, rollout, cfg.rollout.temperature, a.micro_batch_tokens,
                                                    engine, settings.compiled, a.share_prompts)
        stats = train_on_rollout(policy, optimizer, rollout, settings, engine)
        ref_tokens = int(rollout.attention_mask.sum()) if a.beta > 0 and n else 0
        trained, forward = dist.all_reduce_sum([stats["tokens_trained"], ref_tokens])  # every rank's
        width = dist.all_reduce_max([rollout.input_ids.shape[1]])[0]
        if ph is not None:
            ph.add(trained_tokens=int(trained), forward_tokens=int(forward), seq_len=int(width))
    return stats


def _step_metrics(seen, stats, times, lr, t_step, info, peak_memory_mib: float) -> dict:
    """Reduce this step's numbers over ranks into the logged metrics."""
    n = len(seen["rewards"])
    rewards = seen["rewards"]
    sums = [n, sum(rewards), sum(r * r for r in rewards), sum(s.correct for s in seen["scores"]),
            sum(s.formatted for s in seen["scores"]), sum(seen["lengths"]), sum(not f for f in seen["fins"]),
            seen["zero_var"], seen["groups"], times["generated"], times["rollout"], times["scoring"],
            stats["rows_trained"]]  # not len(kept): with β = 0 rows of zero advantage skip the backward
    names = sorted({k for p in seen["parts"] for k in p})
    sums += [sum(p.get(k, 0.0) for p in seen["parts"]) for k in names]
    statuses = [getattr(s.execution, "status", None) for s in seen["scores"]]  # code tasks: the sandbox's verdicts
    sums += [statuses.count("timeout"), statuses.count("error")]  # last: read as tot[-2], tot[-1]
    tot = dist.all_reduce_sum(sums)
    max_len = dist.all_gather_objects(max(seen["lengths"], default=0))
    count = max(tot[0], 1)
    mean = tot[1] / count
    m = {
        "reward_mean": mean, "reward_std": math.sqrt(max(tot[2] / count - mean * mean, 0.0)),
        "accuracy": tot[3] / count, "format_rate": tot[4] / count, "completion_len_mean": tot[5] / count,
        "completion_len_max": max(max_len), "truncation_rate": tot[6] / count,
        "zero_variance_share": tot[7] / max(tot[8], 1), "completions_sampled": int(tot[0]),
        "completions_trained": int(tot[12]),
        **{k: stats[k] for k in ("loss", "kl", "clip_fraction", "entropy", "grad_norm", "skipped_updates",
                                 "mismatch_kl", "tis_weight", "tis_clip_fraction")},
        "lr": lr, "time_rollout": tot[10] / info.world, "time_scoring": tot[11] / info.world,
        **({"time_rollout_waited": times["waited"]} if "waited" in times else {}),
        "time_training": stats["time_training"], "time_weight_sync": stats["time_weight_sync"], "time_step": t_step,
        "tokens_per_s": tot[9] / max(tot[10] / info.world, 1e-9), "completions_per_s": tot[0] / max(t_step, 1e-9),
    }
    m.update({f"reward/{k}": v / count for k, v in zip(names, tot[13:])})
    if any(st is not None for st in statuses):
        m["execution_timeout_rate"], m["execution_crash_rate"] = tot[-2] / count, tot[-1] / count
    m["peak_memory_mib"] = dist.all_reduce_max([peak_memory_mib])[0]  # the fullest rank's
    return m


BUDGET_FILE = "budget_reached.json"


def _flops_spent(out: Path) -> float:
    """Rollout + scoring + training FLOPs this run has recorded in its ledger (evaluation excluded)."""
    ledger = out / "ledger.jsonl"
    return spent_flops(read_ledger(ledger)) if ledger.is_file() else 0.0


SAMPLES_FILE = "samples.jsonl"  # per logged step: one group's completions, as text, with their rewards
SAMPLES_PER_STEP = 4


def _samples_of(kept: dict, tokenizer, G: int) -> dict:
    """The first group of the step (this rank's): its question, reference answer and a few completions."""
    if not kept["problems"]:
        return {"samples": []}
    problem = kept["problems"][0]
    rows = range(min(G, SAMPLES_PER_STEP))
    return {"question": problem.question, "answer": problem.answer,
            "samples": [{"completion": tokenizer.decode(kept["toks"][i], skip_special_tokens=True),
                         "reward": kept["rewards"][i], "finished": bool(kept["fins"][i])} for i in rows]}


def _evaluate(policy, tokenizer, task, cfg, ledger, progress, engine, rollout_engine=None) -> dict:
    """The held-out evaluation; under torchrun every rank samples its share (no rank waits on a long one)."""
    with engine.autocast():
        result = evaluate(policy, tokenizer, task, cfg.eval, progress=progress and engine.info.main, ledger=ledger,
                          shard=True, engine=rollout_engine)
    policy.train()
    return result


def run_rl(cfg: RLConfig, *, resume: bool = False, progress: bool = True, ledger_factory=None,
           stop_after: int | None = None) -> dict:
    """Run GRPO as configured; returns a summary (held-out before/after, steps, seconds, run dir).

    `stop_after` ends the process's work after that many steps (as if killed), for tests of --resume.
    """
    info = dist.init_distributed(cfg.parallel.device)
    cfg.resolve(info.world)
    engine = resolve_engine(cfg.parallel, info, rl=True)
    if engine.sharded and cfg.lora.enabled:
        raise UserError("LoRA under torchrun (several ranks) is not supported yet: run LoRA on one process, or "
                        "full fine-tuning on several")
    out = Path(cfg.out)
    task = get_task(cfg.task, **cfg.prompt.overrides())
    ckpt = checkpoint_to_resume(out, resume)
    if ckpt is None:  # will it fit? Before any weight is loaded (the plan needs only config.json and prompts)
        check_memory_before_launch(cfg, task, engine)
    if engine.sharded:  # rank 0 reads the weights; every rank holds its shards and one inference copy
        policy, sampler_model, ref, tokenizer = load_sharded(ckpt or cfg.model, engine, cfg.algo.beta > 0)
    else:
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
        policy = prepare_training_model(policy, engine)
    o = cfg.optim
    optimizer = torch.optim.AdamW(policy.parameters(), lr=o.lr, betas=(o.beta1, o.beta2),
                                  weight_decay=o.weight_decay)
    doctor = Doctor(cfg.doctor.strict, cfg.doctor.truncation_limit, cfg.doctor.zero_variance_limit,
                    cfg.doctor.patience, cfg.doctor.hacking_drop, cfg.doctor.mismatch_limit)
    start, history, state = 0, {}, {}
    if ckpt is not None:
        state = load_training_checkpoint(ckpt, policy, optimizer, ref, engine)
        doctor.load(state["doctor"])
        sync_weights(policy, sampler_model)
        start, history = state["step"], state["history"]
    prompter = make_prompter(task, tokenizer)
    log = MetricsLog(out, enabled=info.main)
    samples = MetricsLog(out, enabled=info.main, tensorboard=False, name=SAMPLES_FILE)
    if info.main:
        log.truncate_after(start)  # the line of step `start` belongs to its checkpoint
        samples.truncate_after(start)
        write_json(out / "run.json", {"stage": "rl", "config": to_dict(cfg), "task_options": task_options(task),
                                      "formats": prompter.settings(), "world_size": info.world,
                                      "engine": engine.describe(),
                                      "resumed_from": start or None})
        if progress:
            print(f"rl {task.name}: {prompter.describe()}; {engine.describe()}", flush=True)
        for w in format_warnings(prompter, cfg.model):
            print(f"r1kit doctor: {w}", flush=True)
    ledger = ledger_factory(out, "rl", policy.config.to_dict()) if (ledger_factory and info.main) else None
    if cfg.max_flops and ledger_factory is None:
        raise UserError("max_flops (a compute budget) is measured by the cost ledger: run with a ledger")
    stream = _Stream(task.problems("train", cfg.train_problems, seed=cfg.seed), cfg.seed)
    reward_fn = combine(cfg.reward.weights)
    with ledger.phase("rollout_engine_startup") if ledger else nullcontext():
        rollout_engine = _rollout_engine(cfg, policy, sampler_model, tokenizer, prompter, task, stream.pool, engine)
    exact_sampler = (rollout_engine.name == "r1kit" and _rollout_dtype(cfg, engine) == engine.compute_dtype
                     and not cfg.rollout.overlap)  # overlapped rollouts are one step stale
    if cfg.rollout.overlap and info.world > 1:
        raise UserError("rollout.overlap runs on one process (its background rollout would interleave collectives "
                        "with training): drop it under torchrun")
    eos = eos_ids(policy, tokenizer)

    def rollout(step: int, ledger):
        return _rollout_step(step, rollout_engine, tokenizer, prompter, stream, reward_fn, cfg, engine, ledger, eos)

    background = BackgroundRollout(cfg, rollout, state.get("prefetched")) if cfg.rollout.overlap else None

    if start == 0 and cfg.eval_every:  # every rank evaluates its share
        history["before"] = _evaluate(sampler_model, tokenizer, task, cfg, ledger, progress, engine,
                                      rollout_engine)["metrics"]
        if info.main:
            log.log(0, {f"eval/{k}": v for k, v in history["before"].items() if isinstance(v, (int, float))})
    dist.barrier()
    bar = progress_bar(range(start, cfg.steps), desc="GRPO", disable=not (progress and info.main), initial=start,
               total=cfg.steps)
    t_run = time.perf_counter()
    for step in bar:
        if (stop_after is not None and step >= start + stop_after) or dist.broadcast_object(
                (out / BUDGET_FILE).is_file()):  # rank 0's view: a shared file system may lag on the others
            break
        t0 = time.perf_counter()
        engine.reset_peak_memory()  # peak_memory_mib is this step's
        lr = learning_rate(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        if ref is not None and cfg.algo.ref_reset_every and step > 0 and step % cfg.algo.ref_reset_every == 0:
            if engine.sharded:
                copy_sharded(policy, ref)
            else:
                ref.load_state_dict(merged_copy(policy).state_dict())
        if background is None:
            kept, seen, times = rollout(step, ledger)
        else:  # this step's rollout (sampled while the last step trained), then the next one's in the background
            kept, seen, times = background.take(step, ledger)
            if step + 1 < cfg.steps:
                background.start(step + 1)
        t1 = time.perf_counter()
        with background.main_threads() if background else nullcontext():
            stats = _train(step, policy, ref, optimizer, tokenizer, kept, cfg, ledger, engine, exact_sampler)
        stats["time_training"] = time.perf_counter() - t1
        if background is not None:
            background.wait(ledger)  # the sampler's copy is free again: it can take the new weights
        t2 = time.perf_counter()
        if rollout_engine.name != "r1kit" or sampler_model is not policy:  # the engine gets the new weights
            with ledger.phase("weight_sync") if ledger else nullcontext():  # (sharded: an all-gather each)
                rollout_engine.update_weights(policy)
        stats["time_weight_sync"] = time.perf_counter() - t2
        m = _step_metrics(seen, stats, times, lr, time.perf_counter() - t0, info, engine.peak_memory_mib())
        warnings = doctor.check_step(step + 1, m)
        done = step + 1
        if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
            stop = None
            ev = _evaluate(sampler_model, tokenizer, task, cfg, ledger, False, engine,
                           rollout_engine)["metrics"]  # every rank
            if info.main:
                m.update({f"eval/{k}": v for k, v in ev.items() if isinstance(v, (int, float))})
                try:
                    warnings += doctor.check_eval(done, ev["pass@1"])
                except DoctorStop as e:
                    stop = str(e)
            stop = dist.broadcast_object(stop)  # every rank stops together, or none does
            if stop:
                raise DoctorStop(stop)
        if info.main:
            if done % cfg.log_every == 0 or done == cfg.steps:
                log.log(done, m)
                samples.log(done, _samples_of(kept, tokenizer, G=cfg.rollout.group_size))
            for w in warnings:
                bar.write(f"r1kit doctor: {w}")
            bar.set_postfix(reward=f"{m['reward_mean']:.2f}", acc=f"{m['accuracy']:.2f}",
                            len=f"{m['completion_len_mean']:.0f}", refresh=False)
        spent = _flops_spent(out) if cfg.max_flops and info.main else 0.0
        over_budget = dist.broadcast_object(bool(cfg.max_flops) and spent >= cfg.max_flops)
        if over_budget and info.main:
            write_json(out / BUDGET_FILE, {"step": done, "max_flops": cfg.max_flops, "flops": spent})
            bar.write(f"compute budget reached after step {done}: {spent:.3g} FLOPs "
                      f">= max_flops {cfg.max_flops:.3g}")
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or over_budget:
            with ledger.phase("checkpointing") if ledger else nullcontext():
                save_training_checkpoint(out, done, policy, sampler_model, tokenizer, optimizer, ref,
                                         {"doctor": doctor.state(), "history": history,
                                          "prefetched": background.prefetched if background else None},
                                         cfg.keep_checkpoints, engine)
        if over_budget:
            break
    seconds = time.perf_counter() - t_run
    last_step, budget = dist.broadcast_object((  # rank 0's view of the files decides for every rank
        step_of(latest_checkpoint(out)),
        json.loads((out / BUDGET_FILE).read_text()) if (out / BUDGET_FILE).is_file() else None))
    finished = last_step > 0 and (last_step == cfg.steps or (budget is not None and budget["step"] == last_step))
    summary = {"run_dir": str(out), "steps": last_step if finished else cfg.steps, "seconds_this_process": seconds,
               "finished": finished, "stopped_by_budget": budget}
    sharded_end = finished and engine.sharded
    full = full_state_dict(policy) if sharded_end else None  # collective: every rank
    final = None
    if sharded_end and cfg.final_eval:  # every rank evaluates its share of the held-out set
        final = evaluate(sampler_model, tokenizer, task, cfg.eval, progress=progress and info.main, ledger=ledger,
                         shard=True, engine=rollout_engine)
    if finished and info.main:
        with engine.autocast():
            result = finish_model(sampler_model if engine.sharded else policy, tokenizer, out,
                                  title=f"{out.name}: R1-Zero RL on {task.name}", task_spec=task,
                                  eval_cfg=cfg.eval if cfg.final_eval and not engine.sharded else None,
                                  upstream=[cfg.model], ledger=ledger, progress=progress, state_dict=full,
                                  result=final, engine=rollout_engine)
        policy.train()
        summary.update(before=history.get("before"), after=result["metrics"] if result else None)
        if result is not None:
            summary["eval"] = result
        write_json(out / "summary.json", {k: v for k, v in summary.items() if k != "eval"})
    log.close()
    if background is not None:
        background.close()
    rollout_engine.close()
    return summary


def _rollout_dtype(cfg: RLConfig, engine) -> torch.dtype:
    """The rollout engine's precision: `rollout.dtype`, or the training compute dtype when auto."""
    return {"auto": engine.compute_dtype, "fp32": torch.float32, "bf16": torch.bfloat16}[cfg.rollout.dtype]


def _rollout_engine(cfg: RLConfig, policy, sampler_model, tokenizer, prompter, task, pool, engine):
    """The rollout engine of `cfg.rollout.backend`: r1kit's sampler over `sampler_model`, or vLLM built from the
    model directory and given `policy`'s current weights (room for the longest training or evaluation prompt)."""
    backend = resolve_backend(cfg.rollout.backend, engine.device)
    if backend == "r1kit":
        return make_engine(backend, sampler_model, device=engine.device, compile=cfg.parallel.compile_flag)
    problems = list(pool) + task.problems(cfg.eval.split, cfg.eval.n, seed=cfg.eval.seed)
    longest = max(len(p) for p in prompter.encode(problems))
    dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16"}[_rollout_dtype(cfg, engine)]
    options = {"max_num_seqs": max(cfg.rollout.batch_size, cfg.eval.batch_size), "dtype": dtype}
    return make_engine(backend, policy, source=cfg.model, tokenizer=tokenizer,
                       max_len=longest + max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens), seed=cfg.seed,
                       device=engine.device, options=options)
