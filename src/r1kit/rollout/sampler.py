"""Batched sampling with a KV cache: temperature, top-p, max new tokens, stop at EOS, seeded, left-padded prompts.

Two paths, one contract:

- a fast path for Llama-family decoders (Llama, Mistral, Qwen2, Qwen3), in rollout/fast.py: a functional forward
  over the model's weights with a preallocated KV cache, one compiled decoding step (dynamic rows), shared prompts
  prefilled once, finished rows dropped. It attends to the whole sequence, so a model with a sliding window takes
  it only when the window covers prompt + completion;
- the generic path for any other causal LM (GPT-2, Gemma, Phi-3, OLMo-2, ...): the model's own forward with its
  own cache, exact for whatever the architecture does (absolute positions, soft-capping, sliding windows).

Tokens are drawn by the exponential race (Gumbel-max): argmax_i log p_i - log E_i with E_i ~ Exp(1) picks i with
probability p_i, so one elementwise pass replaces `multinomial`; top-p first looks at a shortlist of the most
likely tokens (exact when they hold top_p of the mass, else the whole row is sorted). The compiled fast path
draws from the same distribution without sorting (rollout/fast.py `_pick_nucleus`: CDF inversion, then a
nucleus-membership test of the draw).

Compilation (`compile=None`): on when torch.compile can build kernels here (a C++ compiler on the CPU, Triton on
CUDA) and the call decodes at least `COMPILE_MIN_WORK` row-steps; the environment variable R1KIT_COMPILE=0
turns it off for every call that does not ask for it, R1KIT_COMPILE=1 on.

`tests/test_sampler.py` checks that the fast path's logits match the model's forward (eager and compiled), and
the invariants (same seed, same output; temperature 0 is greedy; max tokens respected; EOS stops a row but not
its neighbours; shared prompts); `tests/test_architectures.py` that both equal transformers' greedy `generate` on
ten architectures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from r1kit.models.lora import unwrap
from r1kit.models.packing import sliding_window
from r1kit.rollout.fast import (
    ATTEMPTS,
    MIN_ROWS,
    MIN_SHARED_PREFIX,
    SHORTLIST,
    FastDecoder,
    compile_wanted,
    compiled_pick,
)

FAST_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
COMPILE_MIN_WORK = 2048  # rows x new tokens below which a compiled step does not pay for its compilation


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


def _race(logprobs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Index i with probability exp(logprobs_i) per row (-inf excluded): argmax(logprobs - log E), E ~ Exp(1)."""
    noise = torch.empty_like(logprobs).exponential_(generator=generator)
    return (logprobs - noise.log()).argmax(-1)


def choose_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None, shortlist: int = SHORTLIST
) -> torch.Tensor:
    """Next tokens from logits (B, V) by temperature and top-p; greedy at temperature 0. Returns (B,).

    Top-p keeps the smallest set of most likely tokens whose mass reaches top_p, renormalised. It looks first at
    the `shortlist` most likely tokens (a partial sort): when they already hold top_p of the mass in every row,
    the nucleus lies inside them and the result is exact; otherwise it sorts the whole row.
    """
    if params.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / params.temperature  # (B, V)
    if params.top_p >= 1.0:
        return _race(logits, generator)  # (B,): softmax(logits) needs no normalising for the race
    k = min(shortlist, logits.shape[-1])
    top, order = logits.topk(k, -1)  # (B, k), sorted descending
    probs = (top - logits.logsumexp(-1, keepdim=True)).exp()  # (B, k)
    if k < logits.shape[-1] and bool((probs.sum(-1) < params.top_p).any()):
        top, order = logits.sort(-1, descending=True)  # (B, V): some row's nucleus is wider than the shortlist
        probs = top.softmax(-1)
    keep = probs.cumsum(-1) - probs <= params.top_p  # mass before this token has not yet reached top_p
    pick = _race(top.masked_fill(~keep, float("-inf")), generator)  # (B,) index into the sorted list
    return order.gather(-1, pick[:, None]).squeeze(-1)  # (B,)


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


def _common_prefix(prompts: list[tuple]) -> int:
    """Length of the prefix all prompts share, leaving each at least one token of its own."""
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for other in prompts[1:]:
        i = 0
        while i < n and other[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


@dataclass
class _Layout:
    """How a batch of prompts sits in the fast path's cache: [common prefix | left-padded rest | completion]."""

    owner: list[int]  # row -> its distinct prompt
    distinct: list[tuple]  # the distinct prompts
    prefix: int  # tokens every distinct prompt starts with (prefilled once), 0 if too few to bother
    suffix_ids: torch.Tensor  # (U, Ps) the rest of each distinct prompt, left-padded
    suffix_mask: torch.Tensor  # (U, Ps)

    @classmethod
    def of(cls, prompts: list[list[int]], device) -> _Layout:
        unique: dict[tuple, int] = {}
        owner = [unique.setdefault(tuple(p), len(unique)) for p in prompts]
        distinct = list(unique)
        c = _common_prefix(distinct) if len(distinct) > 1 else 0
        c = c if c >= MIN_SHARED_PREFIX else 0
        ids, mask = left_pad([p[c:] for p in distinct], 0, device)
        return cls(owner, distinct, c, ids, mask)

    @property
    def width(self) -> int:
        return self.prefix + self.suffix_ids.shape[1]


def _pick(logits, params, generator, want_logprobs: bool, compiled: bool):
    """(next tokens, their log-probs under the sampling temperature or None) from logits (B, V): compiled, one
    fused graph without sorting (rollout/fast.py `_pick_nucleus`; a step where a row's draws all missed its
    nucleus is redone here); else `choose_tokens` and a log-softmax. Both draw from the same distribution."""
    if compiled and params.temperature > 0:
        from torch._dynamo import mark_dynamic

        uniform = torch.rand(logits.shape[0], ATTEMPTS, device=logits.device, generator=generator)
        for t in (logits, uniform):
            mark_dynamic(t, 0)
        tok, lp, done = compiled_pick(logits.device)(logits, uniform, params.temperature, params.top_p)
        if bool(done):
            return tok, lp
    tok = choose_tokens(logits, params, generator)  # (B,)
    if not want_logprobs:
        return tok, None
    scaled = logits / (params.temperature or 1.0)
    return tok, scaled.gather(-1, tok[:, None]).squeeze(-1) - scaled.logsumexp(-1)


def _sample_fast(model, prompts, params, eos, generator, want_logprobs, compiled):
    """The fast path (rollout/fast.py): shared prompts prefilled once, one compiled step, finished rows dropped."""
    layout = _Layout.of(prompts, next(model.parameters()).device)
    n = max(len(prompts), MIN_ROWS) if compiled else len(prompts)  # cache rows (a filler row when compiled)
    dec = FastDecoder(model, len(layout.distinct), layout.width + params.max_new_tokens, capacity=n)
    try:
        return _decode(dec, layout, n, params, eos, generator, want_logprobs, compiled)
    finally:
        dec.release()


def _decode(dec, layout: _Layout, n: int, params, eos, generator, want_logprobs, compiled) -> Samples:
    B, T = len(layout.owner), params.max_new_tokens
    owner, distinct, c = layout.owner, layout.distinct, layout.prefix
    suffix_ids, suffix_mask = layout.suffix_ids, layout.suffix_mask
    dev = suffix_ids.device
    U, Ps = suffix_ids.shape
    P = c + Ps
    if c:  # the shared prefix: one row of prefill, copied to the others
        causal = torch.ones(c, c, dtype=torch.bool, device=dev).tril()[None]  # (1, c, c)
        dec.prefill(torch.tensor([distinct[0][:c]], device=dev), torch.arange(c, device=dev)[None], 0, causal,
                    rows=slice(0, 1), compiled=compiled)
        for cache in dec.k + dec.v:
            cache[1:, :, :c] = cache[:1, :, :c]
    positions = c + (suffix_mask.long().cumsum(-1) - 1).clamp(min=0)  # (U, Ps)
    causal = torch.ones(Ps, Ps, dtype=torch.bool, device=dev).tril()
    own = (causal[None] & suffix_mask[:, None, :]) | torch.eye(Ps, dtype=torch.bool, device=dev)[None]
    sees = torch.cat([torch.ones(U, Ps, c, dtype=torch.bool, device=dev), own], -1)  # (U, Ps, c + Ps)
    logits = dec.prefill(suffix_ids, positions, c, sees, compiled=compiled)  # (U, V)
    # Rows: the B prompts' rows, then (compiled, one prompt) a copy of row 0 as filler, never recorded.
    on_cuda = dev.type == "cuda"
    index = torch.tensor(owner + [owner[0]] * (n - B), device=dev)  # (n,) unique prompt of each row
    dec.select_rows(index, P)
    logits = logits[index]  # (n, V)
    bias = torch.full((n, P + T), float("-inf"), dtype=dec.dtype, device=dev)  # additive: -inf = not visible
    bias[:, :c] = 0
    bias[:, c:P].masked_fill_(suffix_mask[index], 0.0)
    next_pos = positions[index, -1] + 1  # (n,)
    rows = torch.cat([torch.arange(B, device=dev), torch.full((n - B,), -1, device=dev)])  # original row, -1: filler
    alive = rows >= 0
    segments: list[tuple[torch.Tensor, list, list]] = [(rows, [], [])]  # per stretch of fixed rows: tokens, lps
    eos_t = torch.tensor(eos, dtype=torch.long, device=dev)
    for t in range(T):
        tok, lp = _pick(logits, params, generator, want_logprobs, compiled)  # (n,) each
        segments[-1][1].append(tok)
        if want_logprobs:
            segments[-1][2].append(lp)
        done = torch.isin(tok, eos_t) & alive
        if done.any():
            alive &= ~done
            n_alive = int(alive.sum())
            if n_alive == 0:
                break
            if n_alive <= 0.75 * len(rows) and not on_cuda:  # drop finished rows (a CUDA graph keeps its batch)
                keep = alive.nonzero().squeeze(-1)
                width = max(n_alive, MIN_ROWS) if compiled else n_alive
                keep = torch.cat([keep, keep[:1].expand(width - n_alive)])  # fillers: copies of a live row
                rows, tok, next_pos, bias = rows[keep], tok[keep], next_pos[keep], bias[keep]
                rows[n_alive:] = -1
                alive = rows >= 0
                dec.select_rows(keep, P + t)
                segments.append((rows, [], []))
        if t + 1 == T:
            break
        bias[:, P + t] = 0
        logits = dec.decode(tok, next_pos, P + t, bias, compiled)
        next_pos = next_pos + 1
    # Reassemble by original row (tokens a row sampled after its EOS are cut off below).
    pad = eos[0] if eos else 0
    tokens = torch.full((B, T), pad, dtype=torch.long, device=dev)
    logprobs = torch.zeros(B, T, device=dev) if want_logprobs else None
    t0 = 0
    for seg_rows, toks, lps in segments:
        if toks:
            real = seg_rows >= 0
            tokens[seg_rows[real], t0: t0 + len(toks)] = torch.stack(toks, 1)[real]
            if want_logprobs:
                logprobs[seg_rows[real], t0: t0 + len(toks)] = torch.stack(lps, 1)[real].float()
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
        tok, lp = _pick(logits, params, generator, want_logprobs, False)
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
    compile: bool | None = None,
) -> Samples:
    """Sample one completion per prompt (token id lists). `fast=None` picks the fast path when supported;
    `compile=None` compiles its decoding step when that pays (module docstring)."""
    if not prompts:
        return Samples([], [], [] if return_logprobs else None)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    model = unwrap(model)  # a PeftModel samples through its transformers model (LoRA layers included)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        if generator is not None and generator.device != device:  # draw on the device that holds the logits
            seed = int(torch.randint(2**62, (1,), generator=generator))
            generator = torch.Generator(device=device).manual_seed(seed)
        longest = max(len(p) for p in prompts) + params.max_new_tokens
        use_fast = supports_fast_path(model, longest) if fast is None else fast
        if use_fast:
            compiled = compile_wanted(compile, device, len(prompts) * params.max_new_tokens >= COMPILE_MIN_WORK)
            return _sample_fast(model, prompts, params, eos_ids, generator, return_logprobs, compiled)
        ids, mask = left_pad(prompts, pad_id, device)
        return _sample_generic(model, ids, mask, params, eos_ids, generator, return_logprobs, pad_id)
    finally:
        model.train(was_training)
