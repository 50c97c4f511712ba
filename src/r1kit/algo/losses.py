"""GRPO's pieces as small functions: group advantages, the clipped surrogate, the k3 KL, loss aggregation.

    J(θ) = E[ 1/G Σ_i ( min(ρ_i A_i, clip(ρ_i, 1-ε_low, 1+ε_high) A_i) - β D_KL(π_θ || π_ref) ) ]
    A_i  = (r_i - mean(r)) / std(r)          (Dr. GRPO: r_i - mean(r))
    D_KL ≈ exp(ref - lp) - (ref - lp) - 1    (the "k3" estimator, per token, ≥ 0)

Variants differ in how the per-token losses are aggregated, and are chosen by name from explicit tables:
`seq_mean` (the paper: mean over each completion's tokens, then over completions), `token_mean` (DAPO: one mean
over every token of the batch) and `constant` (Dr. GRPO: sum over tokens divided by completions × max length).

Aggregation is written as `numerator / denominator` where the denominator is a count over the *global* batch, so
that summing gradients over data-parallel ranks gives exactly the single-process gradient.
"""

from __future__ import annotations

import torch


def advantages_std(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """(r - group mean) / (group std + eps); rewards (N,) ordered group by group. Returns (N,)."""
    r = rewards.view(-1, group_size)  # (N/G, G)
    return ((r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + eps)).view(-1)


def advantages_centered(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """r - group mean (Dr. GRPO: no division by the std). Returns (N,)."""
    r = rewards.view(-1, group_size)  # (N/G, G)
    return (r - r.mean(-1, keepdim=True)).view(-1)


ADVANTAGES = {"std": advantages_std, "none": advantages_centered}


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π_θ || π_ref) = exp(ref - lp) - (ref - lp) - 1 ≥ 0. Shapes (B, T)."""
    delta = (ref_logprobs - logprobs).clamp(-20, 20)  # (B, T)
    # Computed as written, e^δ - δ - 1 ≈ δ²/2 rounds to 0 in fp32 for |δ| < ~3e-4, which is where an engine's
    # log-probs sit against the trainer's: small δ take the series (error ~δ⁵/120), the rest expm1(δ) - δ.
    series = delta * delta * (0.5 + delta * (1 / 6 + delta / 24))
    return torch.where(delta.abs() < 1e-2, series, torch.expm1(delta) - delta)


def truncated_is_weights(log_ratio: torch.Tensor, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TIS: per-token weights min(exp(log_ratio), cap), no gradient, and where the cap bit. log_ratio (B, T) is
    log π_old - log π_rollout; cap <= 0 gives weights of exactly 1."""
    ratio = torch.exp(log_ratio.detach().clamp(max=20))  # (B, T)
    if cap <= 0:
        return torch.ones_like(ratio), torch.zeros_like(ratio, dtype=torch.bool)
    return ratio.clamp(max=cap), ratio > cap


def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      eps_low: float, eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss -min(ρA, clip(ρ)A) and where the clip was active. logprobs (B, T), advantages (B,)."""
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    adv = advantages[:, None]  # (B, 1)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped)  # (B, T)
    return loss, (clipped < unclipped)


def numerator_seq_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_i (Σ_t l_it m_it / |o_i|): each completion's token mean, summed. per_token, mask (B, T)."""
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum()


def numerator_token_sum(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_it l_it m_it."""
    return (per_token * mask).sum()


# name -> (numerator over the local batch, what the denominator counts over the global batch)
AGGREGATIONS = {
    "seq_mean": (numerator_seq_mean, "sequences"),
    "token_mean": (numerator_token_sum, "tokens"),
    "constant": (numerator_token_sum, "sequences_x_max_len"),
}


def denominator_counts(mask: torch.Tensor, max_len: int) -> dict[str, float]:
    """The local counts each aggregation divides by (summed over ranks by the caller)."""
    n_seq = float(mask.shape[0])
    return {"sequences": n_seq, "tokens": float(mask.sum()), "sequences_x_max_len": n_seq * max_len}


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(target) from logits (B, T, V) and targets (B, T), at a sampling temperature. Returns (B, T)."""
    logits = logits.float() / temperature
    return logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, -1)


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-position entropy of softmax(logits / T). (B, T, V) -> (B, T)."""
    logp = (logits.float() / temperature).log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


# ---- Supervised and distillation losses -------------------------------------------------------------------
#   SFT:        -log p_S(y_t | y_<t)                              per completion token t
#   forward KL: Σ_v p_T(v) (log p_T(v) - log p_S(v))              ("logit" KD on teacher-written text)
#   reverse KL: Σ_v p_S(v) (log p_S(v) - log p_T(v))              (on-policy KD on the student's own samples)
# Each returns per-token values (B, T) for next-token logits already aligned with their targets; the caller
# averages them over completion tokens (`masked_mean`, or a sum over a global token count when accumulating).


def nll_per_token(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log p(target) per position. (B, T, V), (B, T) -> (B, T); negative targets (ignored) give 0 there."""
    return -token_logprobs(logits, targets.clamp(min=0)) * (targets >= 0)


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p || q) = Σ_v p(v) (log p(v) - log q(v)) per position, from logits at `temperature`. -> (B, T)"""
    log_p = (p_logits.float() / temperature).log_softmax(-1)  # (B, T, V)
    log_q = (q_logits.float() / temperature).log_softmax(-1)  # (B, T, V)
    p = log_p.exp()  # (B, T, V)
    return torch.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)  # (B, T); 0·log 0 = 0


def forward_kl_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                         temperature: float = 1.0) -> torch.Tensor:
    """KL(p_T || p_S) at each position over the full vocabulary, at `temperature`. -> (B, T)"""
    return _kl(teacher_logits, student_logits, temperature)


def reverse_kl_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                         temperature: float = 1.0) -> torch.Tensor:
    """KL(p_S || p_T) at each position over the full vocabulary, at `temperature`. -> (B, T)"""
    return _kl(student_logits, teacher_logits, temperature)


# distillation method -> per-token loss between student and teacher logits
DISTILL_LOSSES = {"logit": forward_kl_per_token, "on-policy": reverse_kl_per_token}
