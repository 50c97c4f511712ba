"""One GRPO update on a scored rollout: mini-batches × μ epochs of the clipped objective with a k3 KL penalty.

The rollout engine's own log-probabilities of the sampled tokens (`behaviour_logprobs`: vLLM's, a bf16 sampler's,
or a one-step-stale policy's with rollout overlap) differ from what the trainer computes. Truncated importance
sampling (TIS, Yao et al. 2025; TRL's `vllm_importance_sampling_correction`, verl's `rollout_is`) weights each
token's loss by min(π_old/π_rollout, cap), π_old being the trainer's log-probs before the update; the mismatch is
reported per step as `mismatch_kl`, the k3 estimate of KL(π_rollout || π_old) per completion token.

`train_on_rollout` is the whole optimisation half of an RL step, a plain function of (policy, optimiser,
rollout, settings), so tests can feed it a fixed rollout: one process and two gloo processes holding halves of
the same rollout take the same step (losses.py explains the global denominators that make that exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from r1kit.algo.logprobs import completion_logprobs
from r1kit.algo.losses import AGGREGATIONS, clipped_surrogate, denominator_counts, kl_k3, truncated_is_weights
from r1kit.algo.shared_prompts import can_share_prompts, shared_prompt_logprobs
from r1kit.parallel import dist
from r1kit.parallel.engine import Engine
from r1kit.parallel.fsdp import grad_norm, is_sharded


def _logprobs_fn(model, max_len: int, compiled: bool = False, share: bool = True):
    """How a micro-batch's completion log-probs are computed: each distinct prompt once (shared_prompts.py;
    compiled when asked) where that is exact for `model` (rows of up to `max_len` tokens), else the model's own
    forward over every row."""
    if share and not is_sharded(model) and can_share_prompts(model, max_len):  # FSDP2 gathers in module hooks
        return lambda m, ids, attn, width, temperature, chunk: shared_prompt_logprobs(
            m, ids, attn, width, temperature, chunk, compiled=compiled)
    return completion_logprobs


@dataclass
class Rollout:
    """Token layout: [left-padded prompt | right-padded completion]; completion positions are the last T."""

    input_ids: torch.Tensor  # (N, P+T)
    attention_mask: torch.Tensor  # (N, P+T), 1 on real tokens
    completion_mask: torch.Tensor  # (N, T), 1 on completion tokens that carry loss
    advantages: torch.Tensor  # (N,)
    old_logprobs: torch.Tensor | None = None  # (N, T) log π_old, when the update is off-policy
    behaviour_logprobs: torch.Tensor | None = None  # (N, T) the rollout engine's log-probs of the sampled tokens
    ref_logprobs: torch.Tensor | None = None  # (N, T) log π_ref, when β > 0
    mini_batch: torch.Tensor | None = None  # (N,) index of the global mini-batch each row belongs to

    @property
    def completion_len(self) -> int:
        return self.completion_mask.shape[1]

    def to(self, device: torch.device) -> Rollout:
        """The same rollout with every tensor on `device` (one copy per tensor, not per row)."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return Rollout(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()})


def build_rollout(prompts: list[list[int]], completions: list[list[int]], pad_id: int,
                  advantages: torch.Tensor, loss_rows: list[bool] | None = None,
                  loss_masks: list[list[int]] | None = None) -> Rollout:
    """Pack token lists into a Rollout. `loss_rows[i] = False` gives row i no loss (e.g. a masked truncation);
    `loss_masks[i][t] = 0` gives completion token t of row i no loss (a tool's observation inside a multi-turn
    trajectory: only the model's own tokens are trained, and every aggregation counts only them)."""
    n = len(prompts)
    p_len = max(len(p) for p in prompts)
    t_len = max(1, max(len(c) for c in completions))
    ids = torch.full((n, p_len + t_len), pad_id, dtype=torch.long)
    attn = torch.zeros((n, p_len + t_len), dtype=torch.long)
    cmask = torch.zeros((n, t_len), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, p_len - len(p): p_len] = torch.tensor(p)
        attn[i, p_len - len(p): p_len] = 1
        if c:
            ids[i, p_len: p_len + len(c)] = torch.tensor(c)
            attn[i, p_len: p_len + len(c)] = 1
            if loss_rows is None or loss_rows[i]:
                cmask[i, : len(c)] = 1 if loss_masks is None else torch.tensor(loss_masks[i], dtype=torch.float32)
    return Rollout(ids, attn, cmask, advantages.float())


def completion_logits(model, ids: torch.Tensor, attn: torch.Tensor, t_len: int) -> torch.Tensor:
    """Logits predicting the last `t_len` tokens of each row. Returns (B, T, V)."""
    positions = (attn.cumsum(-1) - 1).clamp(min=0)  # (B, L)
    out = model(input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=t_len + 1)
    return out.logits[:, :-1]  # (B, T, V): position j predicts token j+1


PASS_COST_TOKENS = 256  # what one more forward/backward pass costs beyond its tokens, in padded tokens


def split_sorted(prompts: list[int], completions: list[int], max_tokens: int,
                 pass_cost: int = PASS_COST_TOKENS) -> list[int]:
    """Where to cut rows (sorted by total length) into micro-batches: the ends of the cheapest split, a
    micro-batch [i, j) costing (j - i) x (its longest prompt + its longest completion), padding included, plus
    `pass_cost`, within `max_tokens` unless it is a single row. Dynamic programming over the cuts, O(n²)."""
    n = len(prompts)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest split of rows [0, j)
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        prompt_w = comp_w = 0
        for i in range(j - 1, -1, -1):  # the last micro-batch is rows [i, j)
            prompt_w, comp_w = max(prompt_w, prompts[i]), max(comp_w, completions[i])
            tokens = (j - i) * (prompt_w + comp_w)
            if tokens > max_tokens and j - i > 1:
                break  # taking more rows only widens it
            cost = best[i] + tokens + pass_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    ends, j = [], n
    while j > 0:
        ends.append(j)
        j = cut[j]
    return ends[::-1]


def micro_batches(rollout: Rollout, rows: torch.Tensor, max_tokens: int):
    """Split `rows` into micro-batches of similar length, each trimmed to the columns its rows use.

    Yields (rows, first column, completion width): the micro-batch's tensors are
    `input_ids[rows, first:P + width]` and `completion_mask[rows, :width]`. Rows are sorted by length and cut
    where the padded tokens plus a per-pass cost are smallest (`split_sorted`), within `max_tokens` per pass, so
    the forward and backward passes cost about the real tokens, not the widest row.
    """
    if len(rows) == 0:
        return
    p_len = rollout.input_ids.shape[1] - rollout.completion_len
    attn = rollout.attention_mask[rows]  # (b, P+T)
    prompt_len = attn[:, :p_len].sum(-1)  # (b,)
    comp_len = attn[:, p_len:].sum(-1).clamp(min=1)
    order = torch.argsort(prompt_len + comp_len, stable=True)
    start = 0
    for end in split_sorted(prompt_len[order].tolist(), comp_len[order].tolist(), max_tokens):
        chunk = order[start:end]
        yield rows[chunk], int(p_len - prompt_len[chunk].max()), int(comp_len[chunk].max())
        start = end


@torch.no_grad()
def rollout_logprobs(model, rollout: Rollout, temperature: float, max_tokens: int = 8192,
                     engine: Engine | None = None, compiled: bool = False, share: bool = True) -> torch.Tensor:
    """log π(completion tokens) under `model` (e.g. the reference), no grad. Returns (N, T), 0 past the ends."""
    engine = engine or Engine(torch.device("cpu"), "fp32")
    rollout = rollout.to(engine.device)
    p_len = rollout.input_ids.shape[1] - rollout.completion_len
    out = torch.zeros(rollout.completion_mask.shape, device=engine.device)
    rows_all = torch.arange(rollout.input_ids.shape[0], device=engine.device)
    passes = list(micro_batches(rollout, rows_all, max_tokens))
    padding = _padding_passes(len(passes))  # a sharded model's forward is a collective: as many on every rank
    for _ in range(padding):
        _padding_pass(model, engine, backward=False)
    logprobs_of = _logprobs_fn(model, rollout.input_ids.shape[1], compiled, share)
    for rows, first, width in passes:
        ids = rollout.input_ids[rows, first: p_len + width]
        with engine.autocast():
            logprobs, _ = logprobs_of(model, ids, rollout.attention_mask[rows, first: p_len + width], width,
                                      temperature, engine.logits_chunk)
        out[rows, :width] = logprobs.float()
    return out


@dataclass
class UpdateSettings:
    temperature: float
    loss_aggregation: str
    beta: float
    eps_low: float
    eps_high: float
    mu: int
    mini_batches: int
    max_len: int  # the completion budget (Dr. GRPO's constant normaliser)
    grad_clip: float
    micro_batch_tokens: int = 8192  # padded tokens per forward/backward pass (gradients accumulate)
    skip_zero_advantage: bool = True  # β = 0: no forward/backward for rows whose advantage is exactly 0
    tis_cap: float = 2.0  # truncated importance sampling against behaviour_logprobs; 0: off
    compiled: bool = False  # the shared-prompt forward/backward compiled (torch.compile; shared_prompts.py)
    share_prompts: bool = True  # each distinct prompt computed once per micro-batch where that is exact


def _padding_passes(n_local: int) -> int:
    """Forward/backward passes this rank must add so that every rank makes as many (FSDP2's collectives run
    inside each pass: a rank with fewer micro-batches would leave the others waiting)."""
    return int(dist.all_reduce_max([float(n_local)])[0]) - n_local if dist.active() else 0


def _padding_pass(model, engine: Engine, backward: bool) -> None:
    """A one-token forward (and backward of zero): joins the collectives, changes no gradient."""
    ids = torch.zeros(1, 2, dtype=torch.long, device=engine.device)
    with engine.autocast():
        logprobs, _ = completion_logprobs(model, ids, torch.ones_like(ids), 1, 1.0, engine.logits_chunk)
    if backward:
        (logprobs.sum() * 0.0).backward()


def train_on_rollout(model, optimizer, rollout: Rollout, s: UpdateSettings, engine: Engine | None = None) -> dict:
    """mu epochs × mini_batches optimiser steps on the rollout; returns averaged statistics.

    Every rank calls this with its share of the global rollout and the same number of mini-batches; the loss of
    each mini-batch is divided by a count over the global mini-batch, and FSDP2 sums the gradients over ranks
    (parallel/fsdp.py). Several ranks need a sharded model.
    """
    engine = engine or Engine(torch.device("cpu"), "fp32")
    if dist.active() and not is_sharded(model):
        raise ValueError("train_on_rollout on several ranks needs an FSDP2-sharded model (parallel.fsdp.shard)")
    numerator, count_key = AGGREGATIONS[s.loss_aggregation]
    rollout = rollout.to(engine.device)
    n = rollout.input_ids.shape[0]
    p_len = rollout.input_ids.shape[1] - rollout.completion_len
    groups = rollout.mini_batch if rollout.mini_batch is not None else torch.arange(n) * s.mini_batches // max(n, 1)
    groups = groups.to(engine.device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # AdamW steps every parameter, also in a mini-batch whose rows all have zero advantage
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    stats = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0, "grad_norm": 0.0, "mismatch_kl": 0.0,
             "tis_weight": 0.0, "tis_clip_fraction": 0.0}
    tokens_trained, rows_trained, skipped, updates = 0, 0, 0, 0
    logprobs_of = _logprobs_fn(model, rollout.input_ids.shape[1], s.compiled, s.share_prompts)
    for epoch in range(s.mu):
        for mb in range(s.mini_batches):
            rows = (groups == mb).nonzero().squeeze(-1)
            mask = rollout.completion_mask[rows]  # (b, T)
            local = denominator_counts(mask, s.max_len)
            keys = sorted(local)
            totals = dict(zip(keys, dist.all_reduce_sum([local[k] for k in keys])))
            if totals["tokens"] == 0:  # nothing to learn from on any rank: no step (no stray momentum or decay)
                continue
            denom = totals[count_key]
            optimizer.zero_grad(set_to_none=False)
            # kl, clipped tokens, entropy, tokens, mismatch k3, TIS weight, TIS-capped tokens (summed below)
            local_stats = torch.zeros(7, device=engine.device)
            # With β = 0 a row whose advantage is exactly 0 has a loss of exactly 0 and no gradient (the
            # surrogate is -min(ρA, clip(ρ)A)): it is left out of the forward/backward. Its tokens still count in
            # the denominator above, and the optimiser still steps, so the update is the same.
            trained = rows[rollout.advantages[rows] != 0] if s.beta == 0 and s.skip_zero_advantage else rows
            if epoch == 0:
                rows_trained += len(trained)  # completions that go through the backward (once per epoch)
            passes = list(micro_batches(rollout, trained, s.micro_batch_tokens))
            padding = _padding_passes(len(passes))  # agreed before any pass: each pass runs FSDP2 collectives
            for micro, first, width in passes:
                ids = rollout.input_ids[micro, first: p_len + width]  # (m, L)
                attn = rollout.attention_mask[micro, first: p_len + width]  # (m, L)
                with engine.autocast():
                    logprobs, ent = logprobs_of(model, ids, attn, width, s.temperature,
                                                engine.logits_chunk)  # (m, W) each
                logprobs = logprobs.float()
                cmask = rollout.completion_mask[micro, :width]  # (m, W)
                old = rollout.old_logprobs[micro, :width] if rollout.old_logprobs is not None else logprobs.detach()
                per_token, clipped = clipped_surrogate(logprobs, old, rollout.advantages[micro], s.eps_low,
                                                       s.eps_high)
                if rollout.behaviour_logprobs is not None:
                    log_ratio = old.detach() - rollout.behaviour_logprobs[micro, :width]  # (m, W) log π_old/π_rollout
                    weight, capped = truncated_is_weights(log_ratio, s.tis_cap)
                    if s.tis_cap > 0:
                        per_token = per_token * weight
                    with torch.no_grad():
                        local_stats[4] += (kl_k3(rollout.behaviour_logprobs[micro, :width], old) * cmask).sum()
                        local_stats[5] += (weight * cmask).sum()
                        local_stats[6] += (capped.float() * cmask).sum()
                if s.beta > 0:
                    kl = kl_k3(logprobs, rollout.ref_logprobs[micro, :width])  # (m, W)
                    per_token = per_token + s.beta * kl
                    local_stats[0] += (kl.detach() * cmask).sum()
                loss = numerator(per_token, cmask) / denom  # the global denominator: micro-batch losses add up
                loss.backward()
                with torch.no_grad():
                    local_stats[1] += (clipped.float() * cmask).sum()
                    local_stats[2] += (ent.float() * cmask).sum()
                    local_stats[3] += cmask.sum()
                stats["loss"] += loss.item()
                tokens_trained += int(attn.sum())
            for _ in range(padding):
                _padding_pass(model, engine, backward=True)
            norm = _grad_norm(params, s.grad_clip)
            kl_sum, clip_sum, ent_sum, tok_sum, mis_sum, w_sum, cap_sum = dist.all_reduce_sum(local_stats.tolist())
            tok_sum = max(tok_sum, 1.0)
            stats["kl"] += kl_sum / tok_sum
            stats["clip_fraction"] += clip_sum / tok_sum
            stats["entropy"] += ent_sum / tok_sum
            stats["mismatch_kl"] += mis_sum / tok_sum
            stats["tis_weight"] += w_sum / tok_sum
            stats["tis_clip_fraction"] += cap_sum / tok_sum
            if not math.isfinite(norm):
                skipped += 1  # never step on NaN/inf gradients
                optimizer.zero_grad(set_to_none=False)
                continue
            stats["grad_norm"] += norm
            optimizer.step()
            updates += 1
    n_updates = s.mu * s.mini_batches
    out = {k: v / n_updates for k, v in stats.items()}
    out["grad_norm"] = stats["grad_norm"] / max(updates, 1)
    out["loss"] = dist.all_reduce_sum([stats["loss"]])[0] / n_updates
    out.update(updates=updates, skipped_updates=skipped, tokens_trained=tokens_trained, rows_trained=rows_trained)
    return out


def _grad_norm(params: list[torch.Tensor], clip: float) -> float:
    """The global gradient norm (over every rank's shards); clips the gradients to `clip` when clip > 0."""
    total = grad_norm(params)
    if clip > 0 and any(p.grad is not None for p in params):
        torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], clip, total)
    return float(total)
