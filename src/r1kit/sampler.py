"""Batched sampling with a KV cache: temperature, top-p, max new tokens, stop at EOS, seeded, left-padded prompts.

Two paths, one contract:

- a fast path for Llama-family decoders (Llama, Mistral, Qwen2: RMSNorm, rotary, GQA, SwiGLU). It runs the
  model's own weights through a plain functional forward with a preallocated KV cache, and drops finished rows
  from the batch as it goes. It skips the per-step work of `generate` (cache objects, mask building, logits
  processors, stopping criteria), which dominates on small models;
- the generic path for any other causal LM: the model's own forward with its own cache.

`tests/test_sampler.py` checks that the fast path's logits match the model's forward, and the invariants
(same seed, same output; temperature 0 is greedy; max tokens respected; EOS stops a row but not its neighbours).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

FAST_MODEL_TYPES = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0  # nucleus sampling: keep the smallest set of tokens whose probability reaches top_p
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1 and max_new_tokens >= 1")


@dataclass
class Samples:
    tokens: list[list[int]]  # completion ids per row, the EOS included when the row stopped at one
    finished: list[bool]  # True: stopped at EOS; False: truncated at max_new_tokens
    logprobs: list[list[float]] | None = None  # log π(token) under the sampling temperature, before top-p

    @property
    def num_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)


def choose_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> torch.Tensor:
    """Next tokens from logits (B, V) by temperature and top-p; greedy at temperature 0. Returns (B,)."""
    if params.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / params.temperature  # (B, V)
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > params.top_p  # mass before this token already reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)  # (B,)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (B, P), prompts aligned to the right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = True
    return ids, mask


def supports_fast_path(model) -> bool:
    cfg = model.config
    rope = getattr(cfg, "rope_scaling", None) or getattr(cfg, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    return (
        getattr(cfg, "model_type", None) in FAST_MODEL_TYPES
        and getattr(cfg, "hidden_act", "silu") == "silu"
        and not getattr(cfg, "use_sliding_window", False)
        and rope_type in ("default", "linear", "llama3", "yarn")
        and hasattr(getattr(model, "model", None), "rotary_emb")
    )


class _FastDecoder:
    """Functional Llama-family forward over a model's weights, with a preallocated KV cache."""

    def __init__(self, model, batch: int, max_len: int):
        self.m = model.model
        self.lm_head = model.lm_head
        cfg = model.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        self.inv_freq = self.m.rotary_emb.inv_freq.float()  # (D/2,)
        self.rope_scale = float(getattr(self.m.rotary_emb, "attention_scaling", 1.0))
        dtype = self.m.embed_tokens.weight.dtype
        shape = (len(self.m.layers), batch, self.n_kv, max_len, self.head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype)  # (L, B, Hkv, S, D)
        self.v_cache = torch.zeros(shape, dtype=dtype)

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.k_cache = self.k_cache[:, rows]
        self.v_cache = self.v_cache[:, rows]

    def _norm(self, x: torch.Tensor, norm) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return norm.weight * xf.to(x.dtype)

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), -1)  # (B, T, D)
        cos = (emb.cos() * self.rope_scale).to(dtype)[:, None]  # (B, 1, T, D)
        sin = (emb.sin() * self.rope_scale).to(dtype)[:, None]
        return cos, sin

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin

    def forward(
        self, ids: torch.Tensor, positions: torch.Tensor, start: int, mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits of the last position. ids/positions (B, T) are written to cache slots [start, start+T);
        mask (B, T, start+T) says which cached keys each query may attend to."""
        B, T = ids.shape
        h = self.m.embed_tokens(ids)  # (B, T, C)
        cos, sin = self._rope(positions, h.dtype)
        attn_mask = mask[:, None]  # (B, 1, T, S)
        end = start + T
        for i, layer in enumerate(self.m.layers):
            att = layer.self_attn
            x = self._norm(h, layer.input_layernorm)
            q = att.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
            k = att.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
            v = att.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            self.k_cache[i, :, :, start:end] = k
            self.v_cache[i, :, :, start:end] = v
            o = F.scaled_dot_product_attention(
                q,
                self.k_cache[i, :, :, :end],
                self.v_cache[i, :, :, :end],
                attn_mask=attn_mask,
                enable_gqa=self.n_kv != self.n_heads,
            )  # (B, H, T, D)
            h = h + att.o_proj(o.transpose(1, 2).reshape(B, T, -1))
            x = self._norm(h, layer.post_attention_layernorm)
            mlp = layer.mlp
            h = h + mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
        h = self._norm(h[:, -1], self.m.norm)  # (B, C)
        return self.lm_head(h).float()  # (B, V)


def _sample_fast(model, ids, mask, params, eos, generator, want_logprobs):
    B, P = ids.shape
    dec = _FastDecoder(model, B, P + params.max_new_tokens)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, P)
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    prefill_mask = (causal[None] & mask[:, None, :]) | torch.eye(P, dtype=torch.bool)[None]  # (B, P, P)
    logits = dec.forward(ids, positions, 0, prefill_mask)
    valid = torch.ones(B, P + params.max_new_tokens, dtype=torch.bool)
    valid[:, :P] = mask
    next_pos = positions[:, -1] + 1  # (B,)
    rows = torch.arange(B)  # original row of each live row
    out: list[list[int]] = [[] for _ in range(B)]
    lps: list[list[float]] = [[] for _ in range(B)]
    finished = [False] * B
    eos_t = torch.tensor(eos, dtype=torch.long)
    for t in range(params.max_new_tokens):
        tok = choose_tokens(logits, params, generator)  # (b,)
        if want_logprobs:
            scale = params.temperature or 1.0
            lp = (logits / scale).log_softmax(-1).gather(-1, tok[:, None]).squeeze(-1).tolist()
        tok_list = tok.tolist()
        done = torch.isin(tok, eos_t)
        for j, r in enumerate(rows.tolist()):
            out[r].append(tok_list[j])
            if want_logprobs:
                lps[r].append(lp[j])
        if done.any():
            for r in rows[done].tolist():
                finished[r] = True
            keep = ~done
            if not keep.any():
                break
            rows, tok, next_pos = rows[keep], tok[keep], next_pos[keep]
            valid = valid[keep]
            dec.keep_rows(keep.nonzero().squeeze(-1))
        if t + 1 == params.max_new_tokens:
            break
        step_mask = valid[:, None, : P + t + 1]  # (b, 1, S)
        logits = dec.forward(tok[:, None], next_pos[:, None], P + t, step_mask)
        next_pos = next_pos + 1
    return Samples(out, finished, lps if want_logprobs else None)


def _cache_io(model):
    """The KV-cache keyword of this transformers version (`cache` since 5.x, `past_key_values` before)."""
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return name, (lambda res: getattr(res, name))


def _sample_generic(model, ids, mask, params, eos, generator, want_logprobs, pad_id):
    B, P = ids.shape
    attn = mask.long()
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    cache_kw, cache_of = _cache_io(model)
    res = model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=True)
    past, logits = cache_of(res), res.logits[:, -1].float()
    next_pos = positions[:, -1] + 1
    out: list[list[int]] = [[] for _ in range(B)]
    lps: list[list[float]] = [[] for _ in range(B)]
    finished = [False] * B
    eos_t = torch.tensor(eos, dtype=torch.long)
    for t in range(params.max_new_tokens):
        tok = choose_tokens(logits, params, generator)
        if want_logprobs:
            lp = (logits / (params.temperature or 1.0)).log_softmax(-1).gather(-1, tok[:, None]).squeeze(-1)
        for r in range(B):
            if not finished[r]:
                out[r].append(int(tok[r]))
                if want_logprobs:
                    lps[r].append(float(lp[r]))
        finished = [f or bool(d) for f, d in zip(finished, torch.isin(tok, eos_t).tolist())]
        if all(finished) or t + 1 == params.max_new_tokens:
            break
        tok = torch.where(torch.tensor(finished), torch.full_like(tok, pad_id), tok)
        attn = torch.cat([attn, torch.ones(B, 1, dtype=attn.dtype)], -1)
        res = model(
            input_ids=tok[:, None],
            attention_mask=attn,
            position_ids=next_pos[:, None],
            use_cache=True,
            **{cache_kw: past},
        )
        past, logits = cache_of(res), res.logits[:, -1].float()
        next_pos = next_pos + 1
    return Samples(out, finished, lps if want_logprobs else None)


@torch.no_grad()
def sample(
    model,
    prompts: list[list[int]],
    params: SamplingParams,
    *,
    eos_ids: list[int],
    pad_id: int,
    generator: torch.Generator | None = None,
    return_logprobs: bool = False,
    fast: bool | None = None,
) -> Samples:
    """Sample one completion per prompt (token id lists). `fast=None` picks the fast path when supported."""
    if not prompts:
        return Samples([], [], [] if return_logprobs else None)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    was_training = model.training
    model.eval()
    try:
        ids, mask = left_pad(prompts, pad_id)
        use_fast = supports_fast_path(model) if fast is None else fast
        if use_fast:
            return _sample_fast(model, ids, mask, params, eos_ids, generator, return_logprobs)
        return _sample_generic(model, ids, mask, params, eos_ids, generator, return_logprobs, pad_id)
    finally:
        model.train(was_training)
