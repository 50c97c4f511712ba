"""The fast decoding path for Llama-family models (Llama, Mistral, Qwen2, Qwen3): RMSNorm, rotary, GQA, SwiGLU.

It runs the model's own weights through a plain functional forward with a preallocated KV cache, skipping the
per-step work of `generate` (cache objects, mask building, logits processors, stopping criteria), and:

- **one decoding step is one compiled graph** (`torch.compile`, inductor: fused elementwise kernels around the
  matmuls, no Python between them). The cache is allocated for the whole call; a step gets views of the slots
  written so far and an additive bias (-inf on padding), so its shapes are fixed by two sizes, the rows and the
  slots, which are marked dynamic: one graph serves every batch, prompt length and step of a model (inductor's
  cache also keeps it on disk across processes; a dynamic batch costs ~4% against a graph per batch size,
  measured on the tiny model at batch 64 and 24). On CUDA the graph is captured
  as a CUDA graph (`mode="reduce-overhead"`: finished rows are not dropped there, so a call keeps its shapes).
  `compile=False` runs the same step eagerly;
- **shared prompts are prefilled once**: identical prompts (the G completions of a GRPO group, the k samples of
  an evaluation) share one row of prefill, and the prefix every prompt starts with (a chat template's system
  prompt) is prefilled once for all of them; their keys and values are copied to every row. Rotary positions
  are applied before keys enter the cache, so a key depends on its position, not on its slot: the cache is laid
  out [common prefix | left-padded rest of each prompt | completion];
- **finished rows are dropped** (on the CPU), once a quarter of the rows have finished.

Small models (under ~1B parameters) get fused weights (q/k/v in one matrix, gate/up in one matrix, residual adds
in the output matmuls); larger ones use their weights in place (no copies). Qwen3 normalises each head's queries
and keys before the rotation (`q_norm`, `k_norm`).

`tests/test_sampler.py` checks the logits against the model's own forward at every step, eager and compiled.
"""

from __future__ import annotations

import os
import shutil
import threading

import torch
import torch.nn.functional as F

from r1kit.models.lora import effective_bias, effective_weight

MIN_SHARED_PREFIX = 8  # tokens: a shorter common prefix is not worth a prefill of its own
MIN_ROWS = 2  # a compiled step's batch dimension is dynamic, and torch.compile specialises a size of 1


def compile_available(device: torch.device) -> bool:
    """Whether torch.compile can build kernels here: a C++ compiler on the CPU, Triton on CUDA."""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return device.type == "cpu" and (shutil.which("g++") or shutil.which("c++")) is not None


def compile_wanted(explicit: bool | None, device: torch.device, pays: bool = True) -> bool:
    """Whether to compile: an explicit True/False wins, then R1KIT_COMPILE=1/0, then `pays` (the work is large
    enough for the seconds of compilation); only where torch.compile can build kernels."""
    flag = os.environ.get("R1KIT_COMPILE", "")
    if explicit is None and flag in ("0", "1"):
        explicit = flag == "1"
    if explicit is False:
        return False
    return (bool(explicit) or pays) and compile_available(device)


# On a CPU, compiling the training forward/backward removes per-operation overhead, which matters for narrow models
# only: hidden size 192 (the tiny preset) trains 1.4x faster per step compiled; SmolLM2-135M (576) trained no
# faster after ~190 s of compilation (BENCHMARKS.md, GRPO levers). Above this width `auto` trains eagerly on a CPU.
CPU_TRAIN_COMPILE_MAX_HIDDEN = 256


def training_compile_pays(model, device: torch.device) -> bool:
    """Whether compiling the training forward/backward is worth its seconds (`auto`): on GPUs yes, on a CPU only
    for narrow models (CPU_TRAIN_COMPILE_MAX_HIDDEN)."""
    if device.type != "cpu":
        return True
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    return hidden is None or hidden <= CPU_TRAIN_COMPILE_MAX_HIDDEN


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    xf = x.float()  # half precision: normalise in fp32, as the model's own RMSNorm does
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


def _project_qkv(w: dict, x: torch.Tensor, dims: tuple):
    """q (..., H, D), k and v (..., Hkv, D) from normed hidden states x (..., C); q/k rotated later."""
    n_heads, n_kv, d, _ = dims
    if "qkv" in w:
        out = F.linear(x, w["qkv"], w["qkv_b"])  # (..., (H + 2 Hkv) D)
        q, k, v = out.split([n_heads * d, n_kv * d, n_kv * d], -1)
    else:
        q, k, v = (F.linear(x, w[n], w[n + "_b"]) for n in ("q", "k", "v"))
    lead = x.shape[:-1]
    return q.view(*lead, n_heads, d), k.view(*lead, n_kv, d), v.view(*lead, n_kv, d)


def _mlp_residual(w: dict, h: torch.Tensor, eps: float) -> torch.Tensor:
    """h + down(silu(gate(x)) * up(x)), x = norm(h); h (N, C)."""
    x = _rms_norm(h, w["ln2"], eps)
    if "gate_up" in w:
        gate, up = F.linear(x, w["gate_up"]).chunk(2, -1)
    else:
        gate, up = F.linear(x, w["gate"]), F.linear(x, w["up"])
    return torch.addmm(h, F.silu(gate) * up, w["down_t"])


def _decode_step(tok, pos, slot, bias, k_caches, v_caches, layers, shared, dims):
    """One token per row. tok, pos (B,); slot (1,) the cache slot every row writes; bias (B, S) additive;
    k_caches/v_caches: per layer (B, Hkv, S, D), written in place. Returns the next-token logits (B, V), float32."""
    n_heads, n_kv, d, eps = dims
    B = tok.shape[0]
    rep = n_heads // n_kv
    h = F.embedding(tok, shared["embed"])  # (B, C)
    cos, sin = shared["cos"][pos][:, None], shared["sin"][pos][:, None]  # (B, 1, D)
    for w, k_cache, v_cache in zip(layers, k_caches, v_caches):
        q, k, v = _project_qkv(w, _rms_norm(h, w["ln1"], eps), dims)  # (B, H, D), (B, Hkv, D) x2
        if w["q_norm"] is not None:  # Qwen3: per-head RMSNorm before the rotation
            q, k = _rms_norm(q, w["q_norm"], eps), _rms_norm(k, w["k_norm"], eps)
        q = _rotate(q, cos, sin) * d**-0.5
        k = _rotate(k, cos, sin)
        k_cache.index_copy_(2, slot, k[:, :, None])  # (B, Hkv, 1, D) into slot
        v_cache.index_copy_(2, slot, v[:, :, None])
        scores = torch.matmul(q.view(B, n_kv, rep, d), k_cache.transpose(-1, -2))  # (B, Hkv, rep, S)
        probs = (scores + bias[:, None, None, :]).softmax(-1)
        o = torch.matmul(probs, v_cache).reshape(B, n_heads * d)  # (B, H*D)
        h = torch.addmm(h, o, w["o_t"])
        if w["o_b"] is not None:
            h = h + w["o_b"]
        h = _mlp_residual(w, h, eps)
    h = _rms_norm(h, shared["norm"], eps)
    return F.linear(h, shared["head"], shared["head_b"]).float()  # (B, V)


_COMPILED: dict[str, object] = {}
SHORTLIST = 32  # top-p first looks at this many most likely tokens (sampler.choose_tokens)
ATTEMPTS = 2  # draws per row and step of the compiled token choice (`_pick_nucleus`)


def _pick_nucleus(logits: torch.Tensor, uniform: torch.Tensor, temperature: float, top_p: float):
    """Top-p sampling without sorting, for a compiled step: (tokens (B,), their log-probs under the temperature
    (B,), whether every row got one). Each of the `uniform` (B, R) draws picks a token from the whole distribution
    by inverting its CDF (vocabulary order); a token is in the nucleus iff the mass of the tokens more likely than
    it is at most top_p, and the first draw that lands in it is taken: a draw from the distribution restricted to
    the nucleus and renormalised, as top-p defines it. A row whose R draws all miss (probability (1 - nucleus
    mass)^R) is redone by the caller."""
    scaled = logits.float() / temperature  # (B, V)
    lse = scaled.logsumexp(-1, keepdim=True)  # (B, 1)
    probs = (scaled - lse).exp()  # (B, V)
    cdf = probs.cumsum(-1)
    drawn = torch.searchsorted(cdf, uniform * cdf[:, -1:]).clamp(max=logits.shape[-1] - 1)  # (B, R)
    if top_p >= 1.0:
        tok = drawn[:, :1]
        return tok.squeeze(-1), (scaled.gather(-1, tok) - lse).squeeze(-1), torch.ones((), dtype=torch.bool)
    p_drawn = probs.gather(-1, drawn)  # (B, R)
    above = torch.where(probs[:, None, :] > p_drawn[..., None], probs[:, None, :], 0.0).sum(-1)  # (B, R)
    inside = above <= top_p
    tok = drawn.gather(-1, inside.int().argmax(-1, keepdim=True))  # (B, 1): the first draw inside
    return tok.squeeze(-1), (scaled.gather(-1, tok) - lse).squeeze(-1), inside.any(-1).all()


def compiled_pick(device: torch.device):
    """`_pick_nucleus` compiled for this device (rows dynamic; one graph per temperature and top-p)."""
    key = f"pick-{device.type}"
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(_pick_nucleus, fullgraph=True, dynamic=False)
    return _COMPILED[key]


class _Buffers:
    """Two sets of KV-cache buffers (one per layer, keys and values) that rows are compacted between, kept from
    one call to the next: a fresh multi-megabyte buffer costs its page faults on first touch (milliseconds per
    8 MB on this machine), which a decode loop that compacts rows would pay again and again. One pool per cache
    shape; a call that finds it in use (another thread sampling) gets buffers of its own."""

    _pool: dict[tuple, _Buffers] = {}
    _lock = threading.Lock()

    def __init__(self, layers: int, rows: int, n_kv: int, slots: int, d: int, dtype, device):
        self.key, self.rows, self.slots = (layers, n_kv, d, dtype, str(device)), rows, slots
        shape = (rows, n_kv, slots, d)  # a slot is written before it is read
        self.sets = [[torch.empty(shape, dtype=dtype, device=device) for _ in range(2 * layers)], None]
        self.current, self.busy = 0, True

    @classmethod
    def take(cls, layers, rows, n_kv, slots, d, dtype, device) -> _Buffers:
        key = (layers, n_kv, d, dtype, str(device))
        with cls._lock:
            pooled = cls._pool.get(key)
            if pooled is not None and not pooled.busy and pooled.rows >= rows and pooled.slots >= slots:
                pooled.busy, pooled.current = True, 0
                return pooled
        rows, slots = -(-rows // 8) * 8, -(-slots // 64) * 64  # a little room, so the next call likely fits
        made = cls(layers, rows, n_kv, slots, d, dtype, device)
        with cls._lock:
            if pooled is None or not pooled.busy:
                cls._pool[key] = made
        return made

    def view(self, which: int, rows: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self.sets[which] is None:
            self.sets[which] = [torch.empty_like(b) for b in self.sets[0]]
        bufs = [b[:rows] for b in self.sets[which]]
        half = len(bufs) // 2
        return bufs[:half], bufs[half:]

    def release(self) -> None:
        with self._lock:
            self.busy = False


def compiled_step(name: str, device: torch.device):
    """`_decode_step` or `_prefill_step` compiled for this device type (one wrapper per process)."""
    key = f"{name}-{device.type}"
    if key not in _COMPILED:
        import torch._dynamo

        for limit in ("recompile_limit", "cache_size_limit"):  # a graph per model shape, dtype and device
            if hasattr(torch._dynamo.config, limit):
                setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 64))
        mode = "reduce-overhead" if device.type == "cuda" and name == "decode" else None  # CUDA graphs on a GPU
        fn = _decode_step if name == "decode" else _prefill_step
        _COMPILED[key] = torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)
    return _COMPILED[key]


def _prefill_step(ids, cos, sin, mask, past, layers, shared, dims):
    """The prompt tokens ids (b, T) through every layer, attending to `past` (per layer keys and values (b, Hkv,
    P, D) of the slots before, or None) and to each other as `mask` (b, T, P+T) allows. Returns the logits of the
    last position (b, V), float32, and the new keys and values (per layer (b, Hkv, T, D)) for the cache."""
    n_heads, n_kv, d, eps = dims
    b, T = ids.shape
    h = F.embedding(ids, shared["embed"])  # (b, T, C)
    new_k, new_v = [], []
    for i, w in enumerate(layers):
        q, k, v = _project_qkv(w, _rms_norm(h, w["ln1"], eps), dims)  # (b, T, H|Hkv, D)
        if w["q_norm"] is not None:
            q, k = _rms_norm(q, w["q_norm"], eps), _rms_norm(k, w["k_norm"], eps)
        q = _rotate(q, cos, sin).transpose(1, 2)  # (b, H, T, D)
        k, v = _rotate(k, cos, sin).transpose(1, 2), v.transpose(1, 2)  # (b, Hkv, T, D)
        new_k.append(k)
        new_v.append(v)
        keys, values = (torch.cat((past[0][i], k), 2), torch.cat((past[1][i], v), 2)) if past else (k, v)
        o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None],
                                           enable_gqa=n_kv != n_heads)  # (b, H, T, D)
        h = torch.addmm(h.reshape(b * T, -1), o.transpose(1, 2).reshape(b * T, -1), w["o_t"])
        if w["o_b"] is not None:
            h = h + w["o_b"]
        h = _mlp_residual(w, h, eps).view(b, T, -1)
    last = _rms_norm(h[:, -1], shared["norm"], eps)  # (b, C)
    return F.linear(last, shared["head"], shared["head_b"]).float(), new_k, new_v


class FastDecoder:
    """A model's weights arranged for decoding, and its KV cache: per layer (B, Hkv, S, D)."""

    def __init__(self, model, rows: int, max_len: int, fuse: bool | None = None, capacity: int | None = None):
        m = model.model
        cfg = model.config
        n_heads = cfg.num_attention_heads
        n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
        d = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
        self.dims = (n_heads, n_kv, d, float(cfg.rms_norm_eps))
        self.max_len = max_len
        if fuse is None:
            fuse = sum(p.numel() for p in model.parameters()) < 1_000_000_000
        self.layers = [self._weights(layer, fuse) for layer in m.layers]
        weight = m.embed_tokens.weight
        self.dtype, self.device = weight.dtype, weight.device
        inv_freq = m.rotary_emb.inv_freq.float()  # (D/2,)
        scale = float(getattr(m.rotary_emb, "attention_scaling", 1.0))
        angles = torch.arange(max_len + 1, dtype=torch.float32, device=self.device)[:, None] * inv_freq
        emb = torch.cat((angles, angles), -1)  # (S, D): rotary angles of every position, computed once
        head = model.lm_head
        self.shared = {"embed": weight, "norm": m.norm.weight, "head": effective_weight(head),
                       "head_b": effective_bias(head), "cos": (emb.cos() * scale).to(self.dtype),
                       "sin": (emb.sin() * scale).to(self.dtype)}
        self.allocate(rows, capacity)

    @staticmethod
    def _weights(layer, fuse: bool) -> dict:
        att, mlp = layer.self_attn, layer.mlp
        w = {"ln1": layer.input_layernorm.weight, "ln2": layer.post_attention_layernorm.weight,
             "o_t": effective_weight(att.o_proj).t(), "o_b": effective_bias(att.o_proj),
             "down_t": effective_weight(mlp.down_proj).t(),
             "q_norm": att.q_norm.weight if hasattr(att, "q_norm") else None,
             "k_norm": att.k_norm.weight if hasattr(att, "k_norm") else None}
        projections = (att.q_proj, att.k_proj, att.v_proj)
        if fuse:  # W, or W + s*BA for a LoRA layer: rollouts come from the current adapters
            biases = [effective_bias(p) for p in projections]
            w["qkv"] = torch.cat([effective_weight(p) for p in projections])
            w["qkv_b"] = torch.cat(biases) if biases[0] is not None else None
            w["gate_up"] = torch.cat((effective_weight(mlp.gate_proj), effective_weight(mlp.up_proj)))
        else:
            for name, proj in zip("qkv", projections):
                w[name], w[name + "_b"] = effective_weight(proj), effective_bias(proj)
            w["gate"], w["up"] = effective_weight(mlp.gate_proj), effective_weight(mlp.up_proj)
        return w

    def allocate(self, rows: int, capacity: int | None = None) -> None:
        """A cache of `rows` rows in buffers of `capacity` rows (kept for the next call: see `_Buffers`)."""
        _, n_kv, d, _ = self.dims
        self.buffers = _Buffers.take(len(self.layers), max(rows, capacity or rows), n_kv, self.max_len, d,
                                     self.dtype, self.device)
        self.k, self.v = self.buffers.view(0, rows)

    def select_rows(self, index: torch.Tensor, written: int) -> None:
        """Cache row i := cache row index[i] (dropping finished rows, or copying a shared prompt to its rows),
        copying only the `written` slots (the others are never read) into the spare buffers."""
        rows = len(index)
        src_k, src_v = self.k, self.v
        dst_k, dst_v = self.buffers.view(1 - self.buffers.current, rows)
        for src, dst in zip(src_k + src_v, dst_k + dst_v):
            torch.index_select(src[:, :, :written], 0, index, out=dst[:, :, :written])
        self.buffers.current = 1 - self.buffers.current
        self.k, self.v = dst_k, dst_v

    def release(self) -> None:
        """Give the buffers back for the next call."""
        self.buffers.release()

    def prefill(self, ids: torch.Tensor, positions: torch.Tensor, start: int, mask: torch.Tensor,
                rows: slice = slice(None), compiled: bool = False) -> torch.Tensor:
        """Write ids (b, T) at positions (b, T) into slots [start, start+T) of cache rows `rows`; mask (b, T,
        start+T) says which slots each query sees. Returns the logits of the last position (b, V), float32."""
        b, T = ids.shape
        end = start + T
        cos = self.shared["cos"][positions][:, :, None]  # (b, T, 1, D)
        sin = self.shared["sin"][positions][:, :, None]
        past = ([c[rows, :, :start] for c in self.k], [c[rows, :, :start] for c in self.v]) if start else None
        args = (ids, cos, sin, mask, past, self.layers, self.shared, self.dims)
        if compiled and min(b, T) >= 2 and start != 1:  # sizes of 1 would be specialised: eager for those
            from torch._dynamo import mark_dynamic

            for t, dims in ((ids, (0, 1)), (cos, (0, 1)), (sin, (0, 1)), (mask, (0, 1, 2))):
                for dim in dims:
                    mark_dynamic(t, dim)
            for t in past[0] + past[1] if past else ():
                mark_dynamic(t, 0)
                mark_dynamic(t, 2)
            logits, new_k, new_v = compiled_step("prefill", self.device)(*args)
        else:
            logits, new_k, new_v = _prefill_step(*args)
        for cache, new in zip(self.k + self.v, new_k + new_v):
            cache[rows, :, start:end] = new
        return logits

    def decode(self, tok: torch.Tensor, pos: torch.Tensor, slot: int, bias: torch.Tensor,
               compiled: bool) -> torch.Tensor:
        """One decoding step over every cache row, writing `slot` and attending to slots [0, slot] (see
        `_decode_step`); bias (B, S) covers the whole cache."""
        end = slot + 1
        k = [c[:, :, :end] for c in self.k]  # views: the step reads only the slots written so far
        v = [c[:, :, :end] for c in self.v]
        bias = bias[:, :end]
        at = torch.full((1,), slot, dtype=torch.long, device=self.device)
        if not compiled:
            return _decode_step(tok, pos, at, bias, k, v, self.layers, self.shared, self.dims)
        from torch._dynamo import mark_dynamic

        for t in (tok, pos, bias, *k, *v):  # rows
            mark_dynamic(t, 0)
        for t in (*k, *v):  # slots
            mark_dynamic(t, 2)
        for t in (bias, self.shared["cos"], self.shared["sin"]):  # slots; positions of this call's longest row
            mark_dynamic(t, 1 if t is bias else 0)
        step = compiled_step("decode", self.device)
        return step(tok, pos, at, bias, k, v, self.layers, self.shared, self.dims)
