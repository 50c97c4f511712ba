"""Log-probabilities of completions whose prompts repeat (GRPO's G completions per question), the prompt computed
once per distinct prompt, for Llama-family models (Llama, Mistral, Qwen2, Qwen3).

A GRPO micro-batch holds G rows per question, each [left-padded prompt | completion]. The plain forward runs every
row's prompt through every layer, forward and backward, G times over. Here each distinct prompt runs once; its
keys and values (after the rotary rotation, which depends on the position only) are copied to its rows, and the
completions attend to [their prompt's keys | their own causal keys]. The gradient that flows into a shared
prompt's keys and values is the sum over its rows (index_select's backward), which is what the plain forward
computes row by row: the same loss and the same gradient, up to float summation order
(tests/test_shared_prompts.py checks both against the model's own forward). The work saved is the prompt's share
of the tokens times (G-1)/G: a third of the training FLOPs for the tiny arithmetic recipe (prompts of ~24 tokens,
completions of ~50), more for chat models whose system prompt is long.

The forward is functional over the model's own parameters (as the sampler's fast path, rollout/fast.py), so it
covers plain (not FSDP-sharded) models of the fast path's architectures, LoRA adapters without dropout included
(their effective weight W + s·BA is differentiable); everything else takes the model's own forward.

    log π(y_0) from the prompt's last position;  log π(y_t) from completion position t-1, t >= 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from r1kit.algo.logprobs import _head_logprobs, chunkable
from r1kit.algo.losses import entropy, token_logprobs
from r1kit.models.lora import is_lora, unwrap
from r1kit.rollout.fast import FastDecoder, _mlp_residual, _project_qkv, _rms_norm, _rotate
from r1kit.rollout.sampler import supports_fast_path


def can_share_prompts(model, max_len: int | None = None) -> bool:
    """Whether `shared_prompt_logprobs` computes exactly what `model` does for sequences of up to `max_len` tokens
    (a sliding window must cover them; see the module docstring)."""
    inner = unwrap(model)
    if any(type(p).__name__ == "DTensor" for p in inner.parameters()):
        return False  # FSDP2: the parameters are gathered by the modules' own forward hooks
    if getattr(inner.config, "attention_dropout", 0.0):
        return False  # dropout in attention: the model's own forward draws it
    checkpointing = "is_activation_checkpointing" if hasattr(type(inner), "is_activation_checkpointing") else \
        "is_gradient_checkpointing"
    if getattr(inner, checkpointing, False):
        return False  # activation checkpointing asked for: the model's own forward recomputes its layers
    if is_lora(model):
        dropouts = [m.p for n, m in model.named_modules() if "lora_dropout" in n and hasattr(m, "p")]
        if any(p > 0 for p in dropouts):
            return False
    return supports_fast_path(inner, max_len)


def _layer(w: dict, h: torch.Tensor, cos, sin, dims, past: tuple | None, mask: torch.Tensor):
    """One decoder layer over h (b, T, C); keys/values of `past` (b, Hkv, Tp, D) come before this block's.
    Returns (h, (k, v) of this block)."""
    n_heads, n_kv, d, eps = dims
    b, T, _ = h.shape
    q, k, v = _project_qkv(w, _rms_norm(h, w["ln1"], eps), dims)  # (b, T, H|Hkv, D)
    if w["q_norm"] is not None:
        q, k = _rms_norm(q, w["q_norm"], eps), _rms_norm(k, w["k_norm"], eps)
    q = _rotate(q, cos, sin).transpose(1, 2)  # (b, H, T, D)
    k = _rotate(k, cos, sin).transpose(1, 2)  # (b, Hkv, T, D)
    v = v.transpose(1, 2)
    keys, values = (torch.cat((past[0], k), 2), torch.cat((past[1], v), 2)) if past is not None else (k, v)
    o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None], enable_gqa=n_kv != n_heads)
    flat = h.reshape(b * T, -1)
    h = torch.addmm(flat, o.transpose(1, 2).reshape(b * T, -1), w["o_t"])
    if w["o_b"] is not None:
        h = h + w["o_b"]
    return _mlp_residual(w, h, eps).view(b, T, -1), (k, v)


def _forward(weights: dict, u_ids, c_ids, owner, angles: tuple, p_mask, c_mask, dims) -> torch.Tensor:
    """The final hidden states that predict each completion token (B, W, C): the distinct prompts u_ids (U, Lp)
    through every layer, then the completions c_ids (B, W) attending to their prompt's keys (`owner`: row ->
    distinct prompt) and their own."""
    cos_p, sin_p, cos_c, sin_c = angles
    h_p = F.embedding(u_ids, weights["embed"])  # (U, Lp, C)
    h_c = F.embedding(c_ids, weights["embed"])  # (B, W, C)
    for w in weights["layers"]:
        h_p, (k_p, v_p) = _layer(w, h_p, cos_p, sin_p, dims, None, p_mask)
        h_c, _ = _layer(w, h_c, cos_c, sin_c, dims, (k_p[owner], v_p[owner]), c_mask)
    eps = dims[3]
    last = _rms_norm(h_p[:, -1], weights["norm"], eps)[owner][:, None]  # (B, 1, C): predicts completion token 0
    return torch.cat([last, _rms_norm(h_c[:, :-1], weights["norm"], eps)], 1)  # (B, W, C)


_COMPILED = {}


def _compiled_forward(dims: tuple):
    """`_forward` compiled with dynamic sizes, the model's dimensions fixed (constants of a closure)."""
    if dims not in _COMPILED:
        def forward(weights, u_ids, c_ids, owner, angles, p_mask, c_mask):
            return _forward(weights, u_ids, c_ids, owner, angles, p_mask, c_mask, dims)

        _COMPILED[dims] = torch.compile(forward, dynamic=False)
    return _COMPILED[dims]


def _mark_sizes_dynamic(u_ids, c_ids, owner, angles, p_mask, c_mask) -> None:
    """Rows and lengths vary from micro-batch to micro-batch: one graph for all of them."""
    from torch._dynamo import mark_dynamic

    for t in (u_ids, c_ids, p_mask, c_mask, *angles):
        mark_dynamic(t, 0)
        mark_dynamic(t, 1)
    mark_dynamic(owner, 0)
    for t in (p_mask, c_mask):
        mark_dynamic(t, 2)


def shared_prompt_logprobs(model, ids: torch.Tensor, attn: torch.Tensor, width: int, temperature: float = 1.0,
                           chunk: int = 1024, compiled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """log π and entropy (at `temperature`) of the last `width` tokens of each row, prompts computed once each.
    ids, attn (B, L): [left-padded prompt | right-padded completion of `width` columns]. Returns 2 x (B, W)."""
    inner = unwrap(model)
    layers = [FastDecoder._weights(layer, fuse=False) for layer in inner.model.layers]  # the parameters in place
    cfg = inner.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    dims = (n_heads, n_kv, d, float(cfg.rms_norm_eps))
    B, L = ids.shape
    Lp = L - width
    prompt_ids, prompt_mask = ids[:, :Lp], attn[:, :Lp].bool()  # (B, Lp)
    key = torch.where(prompt_mask, prompt_ids, -1)  # pads compare equal whatever their id
    distinct, owner = torch.unique(key, dim=0, return_inverse=True)  # (U, Lp), (B,)
    U = distinct.shape[0]
    any_row = torch.zeros(U, dtype=torch.long, device=ids.device).scatter_(0, owner, torch.arange(B, device=ids.device))
    compiled = compiled and min(B, Lp, width) >= 2  # torch.compile specialises sizes of 1: eager for those
    if compiled and U == 1:
        any_row = torch.cat([any_row, any_row])  # a second copy of the one prompt, never read (`owner` is 0)
    u_ids, u_mask = prompt_ids[any_row], prompt_mask[any_row]  # (U, Lp): a row of each distinct prompt
    rotary = inner.model.rotary_emb
    u_pos = (u_mask.long().cumsum(-1) - 1).clamp(min=0)  # (U, Lp)
    c_pos = u_mask.long().sum(-1)[owner][:, None] + torch.arange(width, device=ids.device)  # (B, W)

    def angles(pos):
        cos, sin = rotary(inner.model.embed_tokens.weight[:1], pos)  # (b, T, D), in the weights' dtype
        return cos[:, :, None], sin[:, :, None]

    # the distinct prompts: causal over their own tokens, pads unseen (a pad query sees itself)
    causal = torch.ones(Lp, Lp, dtype=torch.bool, device=ids.device).tril()
    eye = torch.eye(Lp, dtype=torch.bool, device=ids.device)
    p_mask = (causal[None] & u_mask[:, None, :]) | eye[None]  # (U, Lp, Lp)
    c_ids = ids[:, Lp:]  # (B, W)
    c_causal = torch.ones(width, width, dtype=torch.bool, device=ids.device).tril()
    c_mask = torch.cat([prompt_mask[:, None, :].expand(B, width, Lp), c_causal[None].expand(B, width, width)], -1)
    cos_p, sin_p = angles(u_pos)
    cos_c, sin_c = angles(c_pos)
    weights = {"layers": layers, "embed": inner.model.embed_tokens.weight, "norm": inner.model.norm.weight}
    args = (weights, u_ids, c_ids, owner, (cos_p, sin_p, cos_c, sin_c), p_mask, c_mask)
    if compiled:
        _mark_sizes_dynamic(*args[1:])
        hidden = _compiled_forward(dims)(*args)
    else:
        hidden = _forward(*args, dims)
    if chunkable(inner):  # the head chunk by chunk, each checkpointed (logprobs.py)
        both = _head_logprobs(inner.lm_head, F.pad(hidden, (0, 0, 0, 1)), c_ids, temperature, chunk)  # (B, W+1, 2)
        return both[:, :width, 0], both[:, :width, 1].detach()
    logits = inner.lm_head(hidden)  # (B, W, V)
    return token_logprobs(logits, c_ids, temperature), entropy(logits.detach(), temperature)
