"""Will it fit? Memory per device of an RL (GRPO) run, planned from the model's config.json before launch.

N parameters (ledger.param_count), A LoRA adapter parameters, T trainable (A with LoRA, else N), W ranks, and
bytes per value m (master weights), g (gradients), o (AdamW's two moments), c (compute) from parallel.dtype
(`PRECISIONS`). Over several ranks FSDP2 shards parameters, gradients and optimiser state (ZeRO-3) and each rank
keeps a plain inference copy for the sampler (parallel/fsdp.py). Per device, in bytes:

    always          parameters (N + A)·m/W, gradients T·g/W, AdamW T·o/W, reference model N·m/W when β > 0,
                    inference copy N·c (several ranks, or one process in bf16), runtime (CUDA context,
                    NCCL/cuBLAS, allocator slack)
    training        gathered weights: (root + 3 layers)·c with reshard_after_forward (FSDP2 keeps the root, i.e.
                    embeddings, head and final norm, gathered; the current and the prefetched decoder layer; one
                    layer's unsharded gradients), N·c without it, N·c on one process in bf16 (autocast caches
                    every weight's cast for the forward), 0 on one process in one dtype
                    activations t·(L·a + e), with checkpointing t·(L·d·c + a + e): a decoder layer keeps
                    a = c·(2d + 3q + 2kv + 4ff) + 2·d·(4 + c) per token for its backward, the head e = d·(4 + 2c)
                    logits chunk·V·(c + 4·4): one chunk of compute-dtype logits and four fp32 copies
    optimiser step  foreach AdamW's sqrt(exp_avg_sq), T·m/W, on a GPU; on a CPU two copies of the largest tensor
    weight sync     the largest tensor in full (sync_weights gathers one parameter at a time; several ranks)
    rollout         KV cache B·(P + max_new_tokens)·L·2·kv·s; sampling transients max(prefill B·P·((4ff + 3d)·s
                    + P): the MLP over every prompt at once and the (B, P, P) mask, decoding's B·V·24 sort); the
                    fast sampler's fused q/k/v and gate/up matrices (models under 1B) L·d·(2q + 3kv + 2ff)·s

The total is `always` plus the largest other phase: phases follow one another and free their transients (the KV
cache is gone before training starts). t = tokens per micro-batch (whole rows of P + max_new_tokens up to
algo.micro_batch_tokens, at most a mini-batch's), B = rows per sampling batch (rollout.batch_size, at most one rank's completions),
chunk = min(parallel.logits_chunk, a micro-batch's completion positions), s = the sampler's bytes (c from the
inference copy, m when one process in one dtype samples from the policy itself), d, q = heads·head_dim, kv =
kv_heads·head_dim, ff, L, V from the config.

What a layer keeps for its backward (HF Llama/Qwen2 with SDPA, no dropout), per token: the normed input of q/k/v
(d), SDPA's q, k, v and output (2q + 2kv), o_proj's input (q), the normed input of gate/up (d), SiLU's input, its
output, up's output and down's input (4ff), and each RMSNorm its fp32 input and normalised output (d·(4 + c)).
Approximations: attention is memory-efficient (no (L, L) scores kept; a CPU's math path may keep them); small
tensors (rotary tables, masks, norms' rsqrt, the rollout's token tensors) are left out; dropping finished rows
copies the KV cache briefly; one process in bf16 keeps an fp32 residual stream under autocast (counted as c);
the checkpoint save and the evaluation are not planned; the GPU runtime allowance is a rule of thumb
(`GPU_RUNTIME_BYTES`, `ALLOCATOR_SLACK`), not a measurement. tests/test_memplan.py compares the plan with a
measured CPU run. Pure Python (layer 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from r1kit.algo.rl_config import RLConfig
from r1kit.cost.hardware import DEVICE_MEMORY_BYTES
from r1kit.cost.ledger import _shape, param_count
from r1kit.errors import UserError

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Precision:
    master: int  # bytes per sharded parameter (what the optimiser updates)
    grad: int  # bytes per sharded gradient
    adam: int  # bytes of AdamW's two moments per trainable parameter
    compute: int  # bytes per value in the forward and backward (gathered weights, activations, KV cache)


# parallel.dtype -> bytes; "bf16" is FSDP2's MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)
PRECISIONS: dict[str, Precision] = {
    "fp32": Precision(master=4, grad=4, adam=8, compute=4),
    "bf16": Precision(master=4, grad=4, adam=8, compute=2),
    "bf16-pure": Precision(master=2, grad=2, adam=4, compute=2),
}
LOGITS_FP32_COPIES = 4  # logprobs.py per chunk: fp32 logits / T, the entropy's softmax and product, the gradient
DECODE_BYTES_PER_LOGIT = 24  # one decoding step's (B, V): fp32 logits, probabilities, sorted values, int64 indices
GPU_RUNTIME_BYTES = 2 * GIB  # CUDA context (~0.5-1 GiB), cuBLAS and NCCL workspaces: a rule of thumb
ALLOCATOR_SLACK = 0.05  # the caching allocator's fragmentation, as a share of the planned tensors
CPU_RUNTIME_BYTES = 0.4 * GIB  # python + torch + transformers + r1kit imported: ~0.36 GiB RSS measured on a CPU
FUSED_SAMPLER_BELOW = 1_000_000_000  # sampler.py fuses q/k/v and gate/up into new matrices below this many params
PHASES = ("always", "training", "optimiser step", "weight sync", "rollout")


@dataclasses.dataclass
class Row:
    name: str
    bytes: float  # per device
    note: str
    phase: str  # one of PHASES


@dataclasses.dataclass
class MemoryPlan:
    rows: list[Row]
    total: float  # bytes per device: `always` + the largest other phase
    capacity: float | None  # bytes per device; None when unknown (a CPU)
    peak_phase: str  # the phase that sets the total
    device: str  # "H100", ... or "cpu"
    world: int
    dtype: str  # the resolved parallel.dtype
    checkpointing: bool  # activation checkpointing, resolved
    headline: str  # one line: what was planned

    @property
    def fits(self) -> bool | None:
        return None if self.capacity is None else self.total <= self.capacity

    def phase_bytes(self, phase: str) -> float:
        return sum(r.bytes for r in self.rows if r.phase == phase)

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def device_kind(gpu: str | None) -> str | None:
    """The DEVICE_MEMORY_BYTES key of `gpu` (any case); None for no GPU (None or "cpu"); a UserError otherwise."""
    if gpu is None or gpu.lower() == "cpu":
        return None
    for kind in DEVICE_MEMORY_BYTES:
        if kind.lower() == gpu.lower():
            return kind
    raise UserError(f"unknown --gpu {gpu!r}: use one of {', '.join(DEVICE_MEMORY_BYTES)} (or none for this CPU)")


def lora_param_count(model_config: Mapping[str, Any], rank: int, target_modules: str = "all-linear") -> int:
    """Adapter parameters: rank x (in + out) for every targeted linear of every decoder layer (no head)."""
    s = _shape(model_config)
    d, q, kv, ff = s["d"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"], s["ff"]
    shapes = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),  # (in, out)
              "gate_proj": (d, ff), "up_proj": (d, ff), "down_proj": (ff, d)}
    names = shapes if target_modules == "all-linear" else [t.strip() for t in target_modules.split(",")]
    return s["layers"] * sum(rank * sum(shapes[n]) for n in names if n in shapes)  # other names: counted 0


def activation_bytes_per_token(s: Mapping[str, Any], compute: int, checkpointing: bool) -> float:
    """Bytes the forward keeps for the backward per token of a micro-batch, over all layers (see the docstring)."""
    d, q, kv, ff, layers = s["d"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"], s["ff"], s["layers"]
    layer = compute * (2 * d + 3 * q + 2 * kv + 4 * ff) + 2 * d * (4 + compute)
    outside = d * (4 + 2 * compute)  # final norm and the head's input
    if checkpointing:  # each layer keeps its input; the backward recomputes one layer at a time
        return layers * d * compute + layer + outside
    return layers * layer + outside


def memory_plan(model_config: Mapping[str, Any], cfg: RLConfig, world: int = 1, gpu: str | None = None,
                capacity_bytes: float | None = None, prompt_len: int = 256) -> MemoryPlan:
    """Memory per device of the RL run `cfg` on `world` ranks of `gpu` (None: a CPU, capacity unknown)."""
    kind = device_kind(gpu)
    capacity = capacity_bytes if capacity_bytes is not None else DEVICE_MEMORY_BYTES.get(kind)
    par, r, a = cfg.parallel, cfg.rollout, cfg.algo
    if world < 1 or r.prompts_per_step % world:
        raise UserError(f"rollout.prompts_per_step ({r.prompts_per_step}) must be divisible by the number of "
                        f"ranks ({world})")
    dtype = par.dtype if par.dtype != "auto" else ("bf16" if kind else "fp32")
    checkpointing = par.activation_checkpointing == "on" or (par.activation_checkpointing == "auto" and bool(kind))
    p, c = PRECISIONS[dtype], PRECISIONS[dtype].compute
    s = _shape(model_config)
    d, layers, vocab, ff = s["d"], s["layers"], s["vocab"], s["ff"]
    q, kv = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    n = param_count(model_config)
    outer = vocab * d * (1 if s["tied"] else 2) + d  # embeddings, head (untied), final norm
    per_layer = (n - outer) / layers
    adapters = lora_param_count(model_config, cfg.lora.rank, cfg.lora.target_modules) if cfg.lora.enabled else 0
    trainable = adapters if adapters else n
    seq = prompt_len + r.max_new_tokens
    completions = r.prompts_per_step // world * r.group_size  # this rank's, per step
    mini_rows = max(1, completions // a.mini_batches)
    micro_rows = min(mini_rows, max(1, a.micro_batch_tokens // seq))  # whole rows up to the token budget
    tokens = micro_rows * seq
    chunk = min(par.logits_chunk, micro_rows * (r.max_new_tokens + 1))
    roll_rows = min(r.batch_size, completions)
    on = f"LoRA, {_count(adapters)} adapter parameters" if adapters else "full fine-tuning"

    sharded = world > 1  # FSDP2 (parallel/fsdp.py); one process trains the plain model
    copy = sharded or c != p.master  # parallel/fsdp.inference_copy: several ranks, or one process in bf16
    sampler_c = c if copy else p.master  # the sampler runs the inference copy, or the policy itself
    rows = [
        Row("parameters", (n + adapters) * p.master / world,
            f"{_count(n)} x {p.master} B / {world}{' + adapters' if adapters else ''}", "always"),
        Row("gradients", trainable * p.grad / world, f"{_count(trainable)} x {p.grad} B / {world}", "always"),
        Row("optimiser state", trainable * p.adam / world, f"AdamW's 2 moments: {_count(trainable)} x {p.adam} B / "
            f"{world}", "always"),
        Row("reference model", n * p.master / world if a.beta > 0 else 0.0,
            f"beta > 0: frozen, {_count(n)} x {p.master} B / {world}" if a.beta > 0 else "beta = 0: none loaded",
            "always"),
        Row("inference copy", n * c if copy else 0.0,
            f"the sampler's plain full copy, {c} B" if copy else "one process, one dtype: the sampler runs the "
            "policy", "always"),
    ]
    if sharded and par.reshard_after_forward:
        gathered, note = (outer + 3 * per_layer) * c, "FSDP2: root (embeddings, head) + 2 layers + 1 layer's grads"
    elif sharded:
        gathered, note = n * c, "reshard_after_forward = false: the whole model stays gathered"
    elif c != p.master:
        gathered, note = n * c, "torch.autocast caches each weight's bf16 cast for the forward"
    else:
        gathered, note = 0.0, "one process, one dtype: weights used in place"
    act = tokens * activation_bytes_per_token(s, c, checkpointing)
    other = tokens * activation_bytes_per_token(s, c, not checkpointing)
    largest = max(vocab, ff) * d  # the embedding (or an MLP matrix)
    largest_trained = cfg.lora.rank * max(ff, q) if adapters else largest
    rows += [
        Row("gathered weights", gathered, note, "training"),
        Row("activations", act, f"{tokens} tokens/micro-batch, checkpointing {'on' if checkpointing else 'off'} "
            f"({'off' if checkpointing else 'on'}: {other / GIB:.2f})", "training"),
        Row("logits", chunk * vocab * (c + 4 * LOGITS_FP32_COPIES),
            f"{chunk} positions x {vocab} vocab, fp32 log-softmax + backward", "training"),
        Row("optimiser temporaries", trainable * p.master / world if kind else 2 * largest_trained * p.master,
            "foreach AdamW's sqrt(exp_avg_sq)" if kind else "per-tensor AdamW: the largest tensor, twice",
            "optimiser step"),
        Row("weight sync", largest * p.master if sharded else 0.0,
            "one parameter gathered at a time" if sharded else "one process: nothing to sync", "weight sync"),
    ]
    fused = layers * d * (2 * q + 3 * kv + 2 * ff) * sampler_c if n < FUSED_SAMPLER_BELOW else 0.0
    if adapters and not fused:  # unfused LoRA: gate/up/down as W + s·BA
        fused = layers * 3 * d * ff * sampler_c
    prefill = roll_rows * prompt_len * ((4 * ff + 3 * d) * sampler_c + prompt_len)
    decode = roll_rows * vocab * DECODE_BYTES_PER_LOGIT
    rows += [
        Row("sampler weights", fused, "fused q/k/v and gate/up (models under 1B)" if n < FUSED_SAMPLER_BELOW
            else ("LoRA's effective gate/up/down" if fused else "used in place"), "rollout"),
        Row("KV cache", roll_rows * seq * layers * 2 * kv * sampler_c,
            f"{roll_rows} rows x {seq} positions x {layers} layers x K,V x {kv} x {sampler_c} B", "rollout"),
        Row("sampling transients", max(prefill, decode),
            f"prefill of {roll_rows} x {prompt_len} prompt tokens" if prefill >= decode else f"top-p over {vocab}",
            "rollout"),
    ]
    phases = {ph: sum(x.bytes for x in rows if x.phase == ph) for ph in PHASES[1:]}
    peak_phase = max(phases, key=phases.get)
    planned = sum(x.bytes for x in rows if x.phase == "always") + phases[peak_phase]
    if kind:
        runtime = GPU_RUNTIME_BYTES + ALLOCATOR_SLACK * planned
        note = f"CUDA context, NCCL/cuBLAS ({GPU_RUNTIME_BYTES / GIB:.0f} GiB) + {ALLOCATOR_SLACK:.0%} slack"
    else:
        runtime, note = CPU_RUNTIME_BYTES, "python + torch + transformers"
    rows.insert(5, Row("runtime", runtime, note, "always"))
    checks = "on" if checkpointing else "off"
    headline = (f"memory plan per device: {_count(n)} parameters ({on}), {dtype}, "
                f"{world} x {kind or 'cpu'}{' (FSDP2)' if world > 1 else ''}, activation checkpointing {checks}")
    return MemoryPlan(rows, planned + runtime, capacity, peak_phase, kind or "cpu", world, dtype, checkpointing,
                      headline)


def format_plan(plan: MemoryPlan) -> str:
    """The plan as a text table in GiB, ending with one line: fits: yes/NO (X of Y GiB, Z% headroom)."""
    width = max(len(r.name) for r in plan.rows)
    lines = [plan.headline, f"{'':{width}}  {'phase':<14} {'GiB':>7}  note"]
    for r in plan.rows:
        mark = "*" if r.phase == plan.peak_phase else " "
        lines.append(f"{r.name:<{width}}  {r.phase:<14} {r.bytes / GIB:>7.2f}{mark} {r.note}")
    always = plan.phase_bytes("always")
    lines.append(f"{'total':<{width}}  {'':<14} {plan.total / GIB:>7.2f}  always {always / GIB:.2f} + "
                 f"{plan.peak_phase} {(plan.total - always) / GIB:.2f} (*: the largest phase)")
    if plan.capacity is None:
        lines.append(f"fits: unknown ({plan.total / GIB:.2f} GiB per device; no capacity for {plan.device}: "
                     "give --gpu)")
    else:
        headroom = 100 * (plan.capacity - plan.total) / plan.capacity
        lines.append(f"fits: {'yes' if plan.fits else 'NO'} ({plan.total / GIB:.2f} of {plan.capacity / GIB:.2f} "
                     f"GiB, {headroom:.0f}% headroom)")
    return "\n".join(lines)


def check_memory(plan: MemoryPlan) -> str | None:
    """A one-line warning for the run doctor when the plan does not fit; None when it fits or is unknown."""
    if plan.fits is not False:
        return None
    knobs = "lower algo.micro_batch_tokens / rollout.batch_size, "
    knobs += "" if plan.checkpointing else "turn on parallel.activation_checkpointing, "
    unit = "GPU" if plan.device != "cpu" else "rank of this machine's RAM"
    return (f"the memory plan needs {plan.total / GIB:.1f} GiB per {unit} of {plan.capacity / GIB:.1f}: {knobs}"
            "or add GPUs")
