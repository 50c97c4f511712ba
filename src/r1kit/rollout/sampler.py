"""Batched sampling with a KV cache: temperature, top-p, max new tokens, stop at EOS, seeded, left-padded prompts.

Two paths, one contract:

- a fast path for Llama-family decoders (Llama, Mistral, Qwen2, Qwen3: RMSNorm, rotary, GQA, SwiGLU; Qwen3's
  per-head q/k norms). It runs the model's own weights through a plain functional forward with a preallocated KV
  cache, and drops finished rows from the batch as it goes. It skips the per-step work of `generate` (cache
  objects, mask building, logits processors, stopping criteria), which dominates on small models. It attends to
  the whole sequence, so a model with a sliding window takes it only when the window covers prompt + completion;
- the generic path for any other causal LM (GPT-2, Gemma, Phi-3, OLMo-2, ...): the model's own forward with its
  own cache, exact for whatever the architecture does (absolute positions, soft-capping, sliding windows).

`tests/test_sampler.py` checks that the fast path's logits match the model's forward, and the invariants
(same seed, same output; temperature 0 is greedy; max tokens respected; EOS stops a row but not its neighbours);
`tests/test_architectures.py` that both equal transformers' greedy `generate` on ten architectures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from r1kit.lora import effective_bias, effective_weight, unwrap
from r1kit.packing import sliding_window

FAST_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


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
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None, shortlist: int = 32
) -> torch.Tensor:
    """Next tokens from logits (B, V) by temperature and top-p; greedy at temperature 0. Returns (B,).

    Top-p looks first at the `shortlist` most likely tokens (a partial sort): when they already hold top_p of the
    mass in every row, the nucleus lies inside them and the result is exact; otherwise it sorts the whole row.
    """
    if params.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / params.temperature  # (B, V)
    if params.top_p >= 1.0:
        return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)  # (B,)
    probs = logits.softmax(-1)  # (B, V)
    k = min(shortlist, probs.shape[-1])
    top, order = probs.topk(k, -1)  # (B, k), sorted descending
    if k < probs.shape[-1] and bool((top.sum(-1) < params.top_p).any()):
        top, order = probs.sort(-1, descending=True)  # (B, V): some row's nucleus is wider than the shortlist
    keep = top.cumsum(-1) - top <= params.top_p  # mass before this token has not yet reached top_p
    pick = torch.multinomial(top * keep, 1, generator=generator)  # (B, 1) index into the sorted list
    return order.gather(-1, pick).squeeze(-1)  # (B,)


def left_pad(prompts: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (B, P), prompts aligned to the right; built on the host, moved to `device` once."""
    width = max(len(p) for p in prompts)
    rows = [[pad_id] * (width - len(p)) + list(p) for p in prompts]
    ids = torch.tensor(rows, dtype=torch.long)  # (B, P)
    mask = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts])  # (B, P)
    return ids.to(device), mask.to(device)


def supports_fast_path(model, max_len: int | None = None) -> bool:
    """Whether the fast path computes exactly what the model does, for sequences of up to `max_len` tokens (None:
    of any length). A sliding window only allows sequences it covers whole."""
    cfg = model.config
    rope = getattr(cfg, "rope_scaling", None) or getattr(cfg, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    window = sliding_window(cfg)
    return (
        getattr(cfg, "model_type", None) in FAST_MODEL_TYPES
        and getattr(cfg, "hidden_act", "silu") == "silu"
        and not getattr(cfg, "mlp_bias", False)
        and (window is None or (max_len is not None and max_len <= window))
        and rope_type in ("default", "linear", "llama3", "yarn")
        and hasattr(getattr(model, "model", None), "rotary_emb")
    )


class _FastDecoder:
    """Functional Llama-family forward over a model's weights, with a preallocated KV cache.

    Small models (under ~1B parameters) are overhead-bound on a CPU, so for them the weights are rearranged once
    per call to `sample` to save operations per step: q/k/v in one matrix, with the 1/sqrt(d) attention scale and
    the rotary `rotate_half` folded in as extra rows (rope becomes qk*cos + qk_rot*sin), gate/up in one matrix,
    and residual adds fused into the output matmuls. Larger models use their weights in place (no copies).
    Qwen3 normalises each head's queries and keys before the rotation (`q_norm`, `k_norm`): there the rotation and
    the scale are applied after the norm, and only q/k/v share a matrix.
    """

    def __init__(self, model, batch: int, max_len: int, fuse: bool | None = None):
        self.m = model.model
        self.lm_head = model.lm_head
        cfg = model.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        inv_freq = self.m.rotary_emb.inv_freq.float()  # (D/2,)
        rope_scale = float(getattr(self.m.rotary_emb, "attention_scaling", 1.0))
        dtype = self.m.embed_tokens.weight.dtype
        device = self.m.embed_tokens.weight.device
        shape = (len(self.m.layers), batch, self.n_kv, max_len, self.head_dim)
        # (L, B, Hkv, S, D); a slot is written before it is read
        self.k_cache = torch.empty(shape, dtype=dtype, device=device)
        self.v_cache = torch.empty(shape, dtype=dtype, device=device)
        if fuse is None:
            fuse = sum(p.numel() for p in model.parameters()) < 1_000_000_000
        self.fused = fuse
        self.layers = [self._fused_weights(layer) if fuse else self._layer_weights(layer) for layer in self.m.layers]
        for w, layer in zip(self.layers, self.m.layers):  # Qwen3: RMSNorm over each head's queries and keys
            att = layer.self_attn
            w["qk_norm"] = (att.q_norm.weight, att.k_norm.weight) if hasattr(att, "q_norm") else None
        freqs = torch.arange(max_len + 1, dtype=torch.float32, device=device)[:, None] * inv_freq  # (S, D/2)
        emb = torch.cat((freqs, freqs), -1)  # (S, D): rotary angles of every position, computed once
        self.cos_table = (emb.cos() * rope_scale).to(dtype)
        self.sin_table = (emb.sin() * rope_scale).to(dtype)

    @staticmethod
    def _layer_weights(layer) -> dict:
        att, mlp = layer.self_attn, layer.mlp
        return {"ln1": layer.input_layernorm.weight, "ln2": layer.post_attention_layernorm.weight,
                "q": att.q_proj, "k": att.k_proj, "v": att.v_proj, "o": att.o_proj,
                "gate": effective_weight(mlp.gate_proj), "up": effective_weight(mlp.up_proj),
                "down": effective_weight(mlp.down_proj)}

    def _fused_weights(self, layer) -> dict:
        att, mlp = layer.self_attn, layer.mlp
        d, half = self.head_dim, self.head_dim // 2

        def rotated(t: torch.Tensor, heads: int) -> torch.Tensor:  # rows of rotate_half(W x): [-W2; W1] per head
            t = t.view(heads, d, *t.shape[1:])
            return torch.cat((-t[:, half:], t[:, :half]), 1).reshape(heads * d, *t.shape[2:])

        scale = d**-0.5
        w_of = effective_weight  # W, or W + s*BA for a LoRA layer: rollouts come from the current adapters
        projections = (att.q_proj, att.k_proj, att.v_proj)
        if hasattr(att, "q_norm"):  # Qwen3: the norm comes between projection and rotation, so plain [Wq; Wk; Wv]
            biases = [effective_bias(m) for m in projections]
            qkv = torch.cat([w_of(m) for m in projections])
            bias = torch.cat(biases) if biases[0] is not None else None
        else:
            wq, wk, wv = w_of(att.q_proj) * scale, w_of(att.k_proj), w_of(att.v_proj)
            qkv = torch.cat((wq, wk, rotated(wq, self.n_heads), rotated(wk, self.n_kv), wv))
            bias = None
            if effective_bias(att.q_proj) is not None:
                bq, bk, bv = effective_bias(att.q_proj) * scale, effective_bias(att.k_proj), effective_bias(att.v_proj)
                bias = torch.cat((bq, bk, rotated(bq, self.n_heads), rotated(bk, self.n_kv), bv))
        return {"ln1": layer.input_layernorm.weight, "ln2": layer.post_attention_layernorm.weight,
                "qkv": qkv, "qkv_b": bias, "o_t": w_of(att.o_proj).t(), "o_b": effective_bias(att.o_proj),
                "gate_up": torch.cat((w_of(mlp.gate_proj), w_of(mlp.up_proj))), "down_t": w_of(mlp.down_proj).t()}

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.k_cache = self.k_cache[:, rows]
        self.v_cache = self.v_cache[:, rows]

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, weight.shape, weight, self.eps)
        xf = x.float()  # half precision: normalise in fp32, as the model's own RMSNorm does
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * xf.to(x.dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin

    def _qkv(self, w: dict, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Rotated, scaled queries (B, H, T, D), rotated keys and values (B, Hkv, T, D)."""
        B, T, _ = x.shape
        n_qk, d = self.n_heads + self.n_kv, self.head_dim
        if w["qk_norm"] is not None:
            return self._qkv_normed(w, x, cos, sin)
        if self.fused:
            out = F.linear(x, w["qkv"], w["qkv_b"])  # (B, T, (2*(H+Hkv)+Hkv)*D)
            qk = out[..., : n_qk * d].view(B, T, n_qk, d) * cos + out[..., n_qk * d: 2 * n_qk * d].view(
                B, T, n_qk, d) * sin  # (B, T, H+Hkv, D)
            v = out[..., 2 * n_qk * d:]
        else:
            q = w["q"](x) * d**-0.5
            qk = self._rotate(torch.cat((q, w["k"](x)), -1).view(B, T, n_qk, d), cos, sin)
            v = w["v"](x)
        qk = qk.transpose(1, 2)  # (B, H+Hkv, T, D)
        return qk[:, : self.n_heads], qk[:, self.n_heads:], v.view(B, T, self.n_kv, d).transpose(1, 2)

    def _qkv_normed(self, w: dict, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """`_qkv` for Qwen3: q/k projected, RMS-normed per head, rotated, then q scaled."""
        B, T, _ = x.shape
        H, d = self.n_heads, self.head_dim
        if self.fused:
            out = F.linear(x, w["qkv"], w["qkv_b"])  # (B, T, (H+2*Hkv)*D)
            q, k, v = out.split([H * d, self.n_kv * d, self.n_kv * d], -1)
        else:
            q, k, v = w["q"](x), w["k"](x), w["v"](x)
        q_norm, k_norm = w["qk_norm"]
        q = self._rotate(self._norm(q.view(B, T, H, d), q_norm), cos, sin) * d**-0.5  # (B, T, H, D)
        k = self._rotate(self._norm(k.view(B, T, self.n_kv, d), k_norm), cos, sin)  # (B, T, Hkv, D)
        return q.transpose(1, 2), k.transpose(1, 2), v.view(B, T, self.n_kv, d).transpose(1, 2)

    def _residual(self, h: torch.Tensor, x: torch.Tensor, w_t: torch.Tensor, bias) -> torch.Tensor:
        """h + x @ w_t (+ bias), as one addmm on (B*T, C)."""
        out = torch.addmm(h.reshape(-1, h.shape[-1]), x.reshape(-1, x.shape[-1]), w_t).view(h.shape)
        return out if bias is None else out + bias

    def _attend_one(self, q: torch.Tensor, i: int, end: int, bias: torch.Tensor) -> torch.Tensor:
        """One new (pre-scaled) query per row; q (B, H, 1, D), bias (B*Hkv, rep, S) additive. Returns (B, H, 1, D)."""
        B, rep, d = q.shape[0], self.n_heads // self.n_kv, self.head_dim
        k = self.k_cache[i, :, :, :end].reshape(B * self.n_kv, end, d)  # (B*Hkv, S, D)
        v = self.v_cache[i, :, :, :end].reshape(B * self.n_kv, end, d)
        qg = q.reshape(B * self.n_kv, rep, d)  # (B*Hkv, rep, D): query heads grouped by KV head
        scores = torch.baddbmm(bias, qg, k.transpose(1, 2))  # (B*Hkv, rep, S)
        return torch.bmm(scores.softmax(-1), v).view(B, self.n_heads, 1, d)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, start: int, mask: torch.Tensor) -> torch.Tensor:
        """Logits of the last position. ids/positions (B, T) are written to cache slots [start, start+T).
        mask: for a prefill, (B, T, start+T) booleans (which cached keys each query may see); for one decoding
        step, (B, 1, start+1) additive biases (0 or -inf)."""
        B, T = ids.shape
        h = self.m.embed_tokens(ids)  # (B, T, C)
        cos, sin = self.cos_table[positions][:, :, None], self.sin_table[positions][:, :, None]  # (B, T, 1, D)
        end = start + T
        if T == 1:  # decoding: one additive bias for every layer, laid out for batched matmuls
            rep = self.n_heads // self.n_kv
            bias = mask[:, None].expand(B, self.n_kv, rep, end).reshape(B * self.n_kv, rep, end)
        for i, w in enumerate(self.layers):
            q, k, v = self._qkv(w, self._norm(h, w["ln1"]), cos, sin)
            self.k_cache[i, :, :, start:end] = k
            self.v_cache[i, :, :, start:end] = v
            if T == 1:  # decoding: an additive bias and two matmuls beat SDPA's masked path for one query
                o = self._attend_one(q, i, end, bias)
            else:
                o = F.scaled_dot_product_attention(
                    q, self.k_cache[i, :, :, :end], self.v_cache[i, :, :, :end], attn_mask=mask[:, None],
                    enable_gqa=self.n_kv != self.n_heads, scale=1.0,  # queries are pre-scaled
                )  # (B, H, T, D)
            o = o.transpose(1, 2).reshape(B, T, -1)  # (B, T, H*D)
            if self.fused:
                h = self._residual(h, o, w["o_t"], w["o_b"])
                gate, up = F.linear(self._norm(h, w["ln2"]), w["gate_up"]).chunk(2, -1)
                h = self._residual(h, F.silu(gate) * up, w["down_t"], None)
            else:
                h = h + w["o"](o)
                x = self._norm(h, w["ln2"])
                h = h + F.linear(F.silu(F.linear(x, w["gate"])) * F.linear(x, w["up"]), w["down"])
        h = self._norm(h[:, -1], self.m.norm.weight)  # (B, C)
        return self.lm_head(h).float()  # (B, V)


def _sample_fast(model, ids, mask, params, eos, generator, want_logprobs):
    B, P, T = *ids.shape, params.max_new_tokens
    dec = _FastDecoder(model, B, P + T)
    dev = ids.device
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, P)
    causal = torch.ones(P, P, dtype=torch.bool, device=dev).tril()
    prefill_mask = (causal[None] & mask[:, None, :]) | torch.eye(P, dtype=torch.bool, device=dev)[None]  # (B, P, P)
    logits = dec.forward(ids, positions, 0, prefill_mask)
    valid = torch.zeros(B, P + T, dtype=dec.k_cache.dtype, device=dev)  # additive key bias: -inf on pads
    valid[:, :P].masked_fill_(~mask, float("-inf"))
    next_pos = positions[:, -1] + 1  # (B,)
    rows = torch.arange(B, device=dev)  # original row of each cache row
    alive = torch.ones(B, dtype=torch.bool, device=dev)  # cache rows still generating (finished ones linger)
    segments: list[tuple[torch.Tensor, list, list]] = [(rows, [], [])]  # per stretch of fixed rows: tokens, lps
    eos_t = torch.tensor(eos, dtype=torch.long, device=dev)
    for t in range(T):
        tok = choose_tokens(logits, params, generator)  # (b,)
        segments[-1][1].append(tok)
        if want_logprobs:
            lp = (logits / (params.temperature or 1.0)).log_softmax(-1).gather(-1, tok[:, None]).squeeze(-1)
            segments[-1][2].append(lp)
        done = torch.isin(tok, eos_t) & alive
        if done.any():
            alive &= ~done
            n_alive = int(alive.sum())
            if n_alive == 0:
                break
            if n_alive <= 0.75 * len(rows):  # drop finished rows once enough of them pile up
                keep = alive.nonzero().squeeze(-1)
                rows, tok, next_pos, valid, alive = rows[keep], tok[keep], next_pos[keep], valid[keep], alive[keep]
                dec.keep_rows(keep)
                segments.append((rows, [], []))
        if t + 1 == T:
            break
        logits = dec.forward(tok[:, None], next_pos[:, None], P + t, valid[:, None, : P + t + 1])
        next_pos = next_pos + 1
    # Reassemble by original row (tokens a row sampled after its EOS are cut off below).
    pad = eos[0] if eos else 0
    tokens = torch.full((B, T), pad, dtype=torch.long, device=dev)
    logprobs = torch.zeros(B, T, device=dev) if want_logprobs else None
    t0 = 0
    for seg_rows, toks, lps in segments:
        if toks:
            tokens[seg_rows, t0: t0 + len(toks)] = torch.stack(toks, 1)
            if want_logprobs:
                logprobs[seg_rows, t0: t0 + len(toks)] = torch.stack(lps, 1)
        t0 += len(toks)
    is_eos = torch.isin(tokens[:, :t0], eos_t)  # (B, t0)
    finished = is_eos.any(-1)
    lengths = torch.where(finished, is_eos.int().argmax(-1) + 1, torch.full((B,), t0, device=dev)).tolist()
    out = [row[:k] for row, k in zip(tokens.tolist(), lengths)]
    lps = [row[:k] for row, k in zip(logprobs.tolist(), lengths)] if want_logprobs else None
    return Samples(out, finished.tolist(), lps)


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
    eos_t = torch.tensor(eos, dtype=torch.long, device=ids.device)
    for t in range(params.max_new_tokens):
        tok = choose_tokens(logits, params, generator)
        if want_logprobs:
            lp = (logits / (params.temperature or 1.0)).log_softmax(-1).gather(-1, tok[:, None]).squeeze(-1)
        tok_list = tok.tolist()  # one device-to-host copy per step, not one per row
        lp_list = lp.tolist() if want_logprobs else None
        for r in range(B):
            if not finished[r]:
                out[r].append(tok_list[r])
                if want_logprobs:
                    lps[r].append(lp_list[r])
        finished = [f or bool(d) for f, d in zip(finished, torch.isin(tok, eos_t).tolist())]
        if all(finished) or t + 1 == params.max_new_tokens:
            break
        tok = torch.where(torch.tensor(finished, device=ids.device), torch.full_like(tok, pad_id), tok)
        attn = torch.cat([attn, attn.new_ones(B, 1)], -1)
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


@torch.inference_mode()
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
    model = unwrap(model)  # a PeftModel samples through its transformers model (LoRA layers included)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        ids, mask = left_pad(prompts, pad_id, device)
        if generator is not None and generator.device != device:  # draw on the device that holds the logits
            seed = int(torch.randint(2**62, (1,), generator=generator))
            generator = torch.Generator(device=device).manual_seed(seed)
        use_fast = supports_fast_path(model, ids.shape[1] + params.max_new_tokens) if fast is None else fast
        if use_fast:
            return _sample_fast(model, ids, mask, params, eos_ids, generator, return_logprobs)
        return _sample_generic(model, ids, mask, params, eos_ids, generator, return_logprobs, pad_id)
    finally:
        model.train(was_training)
