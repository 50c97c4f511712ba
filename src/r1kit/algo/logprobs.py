"""Log-probabilities and entropies of completion tokens without materialising (tokens, vocab) float32 logits.

A 150K-vocabulary model scoring 8K positions would hold 8K x 150K x 4 B = 4.9 GB of float32 logits, several
times over (the logits, their log-softmax, its gradient). Here the output head is applied `chunk` positions at a
time, inside the model's own forward (so an FSDP2 root has its lm_head gathered), and each chunk is
checkpointed: the backward recomputes that chunk's logits instead of keeping them. Peak memory of the head is
then about chunk x vocab x 4 B x a few, whatever the sequence length (tests/test_logprobs.py measures it).

    log π(y_t) = z_{y_t}/T - logsumexp(z/T)        H_t = logsumexp(z/T) - Σ_v softmax(z/T)_v · z_v/T

Other models (any whose forward might post-process the head's output, or whose head is LoRA-adapted) take the
plain path: the model's logits, then the same formulas.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from r1kit.algo.losses import entropy, token_logprobs

# Architectures whose causal-LM forward returns its lm_head's output untouched (read in transformers' code;
# tests/test_logprobs.py and test_architectures.py run them): an allow-list, because a forward that scales its
# logits (Falcon-H1's lm_head_multiplier, Gemma-2's soft-capping, Cohere's logit_scale) would go unnoticed.
CHUNKED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# config fields that change the logits after the lm_head, and the value at which they do nothing
_HEAD_POSTPROCESSING = {"final_logit_softcapping": None, "logit_scale": None, "logits_scaling": 1.0}


def chunkable(model) -> bool:
    """Whether the model's logits are exactly a plain linear head's output (nothing applied after it; not a
    LoRA-adapted head, whose adapter the chunks would miss)."""
    cfg = model.config
    head = model.get_output_embeddings()
    return (getattr(cfg, "model_type", None) in CHUNKED_MODEL_TYPES and type(head) is torch.nn.Linear
            and all(getattr(cfg, k, neutral) in (neutral, None) for k, neutral in _HEAD_POSTPROCESSING.items()))


def _chunk(h: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor, temperature: float):
    """One chunk: h (n, H), targets (n,) -> (log-probs (n,), entropies (n,))."""
    logits = F.linear(h, weight, bias).float() / temperature  # (n, V)
    logz = torch.logsumexp(logits, -1)  # (n,)
    logprobs = logits.gather(-1, targets[:, None]).squeeze(-1) - logz  # (n,)
    with torch.no_grad():
        ent = logz - (logits.softmax(-1) * logits).sum(-1)  # (n,)
    return logprobs, ent


def _head_logprobs(head, h, targets, temperature: float, chunk: int) -> torch.Tensor:
    """h (B, W+1, H): the last W+1 positions; position j predicts targets[:, j]. Returns (B, W+1, 2)."""
    B, W = targets.shape
    flat_h = h[:, :-1].reshape(B * W, -1)  # (B*W, H)
    flat_t = targets.reshape(B * W)  # (B*W,)
    lps, ents = [], []
    for s in range(0, B * W, chunk):
        args = (flat_h[s: s + chunk], head.weight, head.bias, flat_t[s: s + chunk], temperature)
        lp, ent = checkpoint(_chunk, *args, use_reentrant=False) if torch.is_grad_enabled() else _chunk(*args)
        lps.append(lp)
        ents.append(ent)
    out = torch.stack([torch.cat(lps), torch.cat(ents)], -1).view(B, W, 2)  # (B, W, 2)
    return F.pad(out, (0, 0, 0, 1))  # (B, W+1, 2): the last position predicts nothing


@contextmanager
def _head_computes(model, fn):
    """Make the output head's forward `fn(head, hidden)` for the duration (an instance attribute, then removed)."""
    head = model.get_output_embeddings()
    head.forward = lambda hidden: fn(head, hidden)
    try:
        yield
    finally:
        del head.forward


def completion_logprobs(model, ids: torch.Tensor, attn: torch.Tensor, width: int, temperature: float = 1.0,
                        chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """log π and entropy (at `temperature`) of the last `width` tokens of each row. ids, attn (B, L) -> 2 x (B, W)."""
    positions = (attn.cumsum(-1) - 1).clamp(min=0)  # (B, L)
    targets = ids[:, -width:]  # (B, W)
    if not chunkable(model):
        out = model(input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=width + 1,
                    use_cache=False)
        logits = out.logits[:, :-1]  # (B, W, V): position j predicts token j+1
        return token_logprobs(logits, targets, temperature), entropy(logits.detach(), temperature)
    with _head_computes(model, lambda head, h: _head_logprobs(head, h, targets, temperature, chunk)):
        out = model(input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=width + 1,
                    use_cache=False)
    both = out.logits[:, :-1]  # (B, W, 2)
    return both[..., 0], both[..., 1].detach()
