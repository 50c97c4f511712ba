"""One GRPO step on the groups a rank kept: advantages, π_old and reference log-probs, the update (grpo.py), and the
step's metrics reduced over ranks; the learning-rate schedule; the samples a run logs. Layer 2.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from r1kit.algo.grpo import UpdateSettings, build_rollout, rollout_logprobs, train_on_rollout
from r1kit.algo.losses import ADVANTAGES
from r1kit.models.lora import unwrap
from r1kit.parallel import dist
from r1kit.rollout.fast import compile_wanted, training_compile_pays
from r1kit.rollout.multiturn import tool_counts, tool_rates


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


def train_groups(step, policy, ref, optimizer, tokenizer, kept, cfg, ledger, engine, exact_sampler: bool):
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
    masks = [e.mask for e in kept["episodes"]] if n and kept.get("episodes") else None  # tools: model tokens only
    rollout = build_rollout(prompts, toks, pad, advantages, loss_rows, masks)
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


def step_metrics(seen, stats, times, lr, t_step, info, peak_memory_mib: float) -> dict:
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
    if seen.get("episodes"):
        m.update(tool_rates(dist.all_reduce_sum(tool_counts(seen["episodes"]))))
    m["peak_memory_mib"] = dist.all_reduce_max([peak_memory_mib])[0]  # the fullest rank's
    return m


SAMPLES_FILE = "samples.jsonl"  # per logged step: one group's completions, as text, with their rewards
SAMPLES_PER_STEP = 4


def samples_of(kept: dict, tokenizer, G: int) -> dict:
    """The first group of the step (this rank's): its question, reference answer and a few completions."""
    if not kept["problems"]:
        return {"samples": []}
    problem = kept["problems"][0]
    rows = range(min(G, SAMPLES_PER_STEP))
    episodes = kept.get("episodes") or []
    samples = [{"completion": tokenizer.decode(kept["toks"][i], skip_special_tokens=True),
                "reward": kept["rewards"][i], "finished": bool(kept["fins"][i])} for i in rows]
    for i, sample in zip(rows, samples):  # tools: the whole conversation above, and how each call went
        if episodes:
            sample.update(stop=episodes[i].stop, turns=episodes[i].turns, calls=episodes[i].calls)
    return {"question": problem.question, "answer": problem.answer, "samples": samples}
