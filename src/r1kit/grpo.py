"""One GRPO update on a scored rollout: mini-batches × μ epochs of the clipped objective with a k3 KL penalty.

`train_on_rollout` is the whole optimisation half of an RL step, a plain function of (policy, optimiser,
rollout, settings), so tests can feed it a fixed rollout: one process and two gloo processes holding halves of
the same rollout take the same step (losses.py explains the global denominators that make that exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from r1kit.parallel import dist
from r1kit.losses import AGGREGATIONS, clipped_surrogate, denominator_counts, entropy, kl_k3, token_logprobs


@dataclass
class Rollout:
    """Token layout: [left-padded prompt | right-padded completion]; completion positions are the last T."""

    input_ids: torch.Tensor  # (N, P+T)
    attention_mask: torch.Tensor  # (N, P+T), 1 on real tokens
    completion_mask: torch.Tensor  # (N, T), 1 on completion tokens that carry loss
    advantages: torch.Tensor  # (N,)
    old_logprobs: torch.Tensor | None = None  # (N, T) log π_old, when the update is off-policy
    ref_logprobs: torch.Tensor | None = None  # (N, T) log π_ref, when β > 0
    mini_batch: torch.Tensor | None = None  # (N,) index of the global mini-batch each row belongs to

    @property
    def completion_len(self) -> int:
        return self.completion_mask.shape[1]


def build_rollout(prompts: list[list[int]], completions: list[list[int]], pad_id: int,
                  advantages: torch.Tensor, loss_rows: list[bool] | None = None) -> Rollout:
    """Pack token lists into a Rollout. `loss_rows[i] = False` gives row i no loss (e.g. a masked truncation)."""
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
                cmask[i, : len(c)] = 1
    return Rollout(ids, attn, cmask, advantages.float())


def completion_logits(model, ids: torch.Tensor, attn: torch.Tensor, t_len: int) -> torch.Tensor:
    """Logits predicting the last `t_len` tokens of each row. Returns (B, T, V)."""
    positions = (attn.cumsum(-1) - 1).clamp(min=0)  # (B, L)
    out = model(input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=t_len + 1)
    return out.logits[:, :-1]  # (B, T, V): position j predicts token j+1


def micro_batches(rollout: Rollout, rows: torch.Tensor, max_tokens: int):
    """Split `rows` into micro-batches of similar length, each trimmed to the columns its rows use.

    Yields (rows, first column, completion width): the micro-batch's tensors are
    `input_ids[rows, first:P + width]` and `completion_mask[rows, :width]`. Sorting by length and trimming
    removes most padding, so the forward and backward passes cost about the real tokens, not the widest row.
    """
    if len(rows) == 0:
        return
    p_len = rollout.input_ids.shape[1] - rollout.completion_len
    attn = rollout.attention_mask[rows]  # (b, P+T)
    prompt_len = attn[:, :p_len].sum(-1)  # (b,)
    comp_len = attn[:, p_len:].sum(-1).clamp(min=1)
    order = torch.argsort(prompt_len + comp_len, stable=True)
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order):  # grow while the padded micro-batch stays within the token budget
            chunk = order[start: end + 1]
            width = int(prompt_len[chunk].max() + comp_len[chunk].max())
            if width * len(chunk) > max_tokens:
                break
            end += 1
        chunk = order[start:end]
        yield rows[chunk], int(p_len - prompt_len[chunk].max()), int(comp_len[chunk].max())
        start = end


@torch.no_grad()
def rollout_logprobs(model, rollout: Rollout, temperature: float, max_tokens: int = 8192) -> torch.Tensor:
    """log π(completion tokens) under `model` (e.g. the reference), no grad. Returns (N, T), 0 past the ends."""
    p_len = rollout.input_ids.shape[1] - rollout.completion_len
    out = torch.zeros(rollout.completion_mask.shape)
    for rows, first, width in micro_batches(rollout, torch.arange(rollout.input_ids.shape[0]), max_tokens):
        ids = rollout.input_ids[rows, first: p_len + width]
        logits = completion_logits(model, ids, rollout.attention_mask[rows, first: p_len + width], width)
        out[rows, :width] = token_logprobs(logits, ids[:, -width:], temperature)
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


def train_on_rollout(model, optimizer, rollout: Rollout, s: UpdateSettings) -> dict:
    """mu epochs × mini_batches optimiser steps on the rollout; returns averaged statistics.

    Every rank calls this with its share of the global rollout and the same number of mini-batches; the loss of
    each mini-batch is divided by a count over the global mini-batch and gradients are summed over ranks.
    """
    numerator, count_key = AGGREGATIONS[s.loss_aggregation]
    n = rollout.input_ids.shape[0]
    p_len = rollout.input_ids.shape[1] - rollout.completion_len
    groups = rollout.mini_batch if rollout.mini_batch is not None else torch.arange(n) * s.mini_batches // max(n, 1)
    model.train()
    for p in model.parameters():  # every rank all-reduces the same buffers, even with an empty share
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
    stats = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0, "grad_norm": 0.0}
    tokens_trained, rows_trained, skipped, updates = 0, 0, 0, 0
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
            local_stats = torch.zeros(4)  # kl, clipped tokens, entropy, tokens (summed over ranks below)
            # With β = 0 a row whose advantage is exactly 0 has a loss of exactly 0 and no gradient (the
            # surrogate is -min(ρA, clip(ρ)A)): it is left out of the forward/backward. Its tokens still count in
            # the denominator above, and the optimiser still steps, so the update is the same.
            trained = rows[rollout.advantages[rows] != 0] if s.beta == 0 and s.skip_zero_advantage else rows
            if epoch == 0:
                rows_trained += len(trained)  # completions that go through the backward (once per epoch)
            for micro, first, width in micro_batches(rollout, trained, s.micro_batch_tokens):
                ids = rollout.input_ids[micro, first: p_len + width]  # (m, L)
                logits = completion_logits(model, ids, rollout.attention_mask[micro, first: p_len + width], width)
                logprobs = token_logprobs(logits, ids[:, -width:], s.temperature)  # (m, W)
                cmask = rollout.completion_mask[micro, :width]  # (m, W)
                old = rollout.old_logprobs[micro, :width] if rollout.old_logprobs is not None else logprobs.detach()
                per_token, clipped = clipped_surrogate(logprobs, old, rollout.advantages[micro], s.eps_low,
                                                       s.eps_high)
                if s.beta > 0:
                    kl = kl_k3(logprobs, rollout.ref_logprobs[micro, :width])  # (m, W)
                    per_token = per_token + s.beta * kl
                    local_stats[0] += (kl.detach() * cmask).sum()
                loss = numerator(per_token, cmask) / denom  # the global denominator: micro-batch losses add up
                loss.backward()
                with torch.no_grad():
                    local_stats[1] += (clipped.float() * cmask).sum()
                    local_stats[2] += (entropy(logits.detach(), s.temperature) * cmask).sum()
                    local_stats[3] += cmask.sum()
                stats["loss"] += loss.item()
                tokens_trained += int(rollout.attention_mask[micro].sum())
            dist.all_reduce_grads(model)
            grad_norm = _grad_norm(model, s.grad_clip)
            kl_sum, clip_sum, ent_sum, tok_sum = dist.all_reduce_sum(local_stats.tolist())
            tok_sum = max(tok_sum, 1.0)
            stats["kl"] += kl_sum / tok_sum
            stats["clip_fraction"] += clip_sum / tok_sum
            stats["entropy"] += ent_sum / tok_sum
            if not math.isfinite(grad_norm):
                skipped += 1  # never step on NaN/inf gradients
                optimizer.zero_grad(set_to_none=False)
                continue
            stats["grad_norm"] += grad_norm
            optimizer.step()
            updates += 1
    n_updates = s.mu * s.mini_batches
    out = {k: v / n_updates for k, v in stats.items()}
    out["grad_norm"] = stats["grad_norm"] / max(updates, 1)
    out["loss"] = dist.all_reduce_sum([stats["loss"]])[0] / n_updates
    out.update(updates=updates, skipped_updates=skipped, tokens_trained=tokens_trained, rows_trained=rows_trained)
    return out


def _grad_norm(model, clip: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if clip > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, clip))
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))) if params else 0.0
