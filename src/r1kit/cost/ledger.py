"""The cost ledger: what a run spent, per stage and per phase, as plain JSONL.

Every run directory holds `ledger.jsonl`; each line is one entry into a phase (rollout, scoring, training,
evaluation, checkpointing; `sandbox` is the scoring of a code task, whose programs run in r1kit.sandbox) of one
stage, with wall seconds, devices, device-hours, tokens, FLOPs, MFU, energy and dollars; a sandbox entry adds the
sandboxes' own CPU-seconds (`sandbox_cpu_s`), `executions`, `timeouts` and `crashes` (an evaluation entry of a code
task carries the same fields: its sandbox time is inside its wall). A pipeline's ledger is the sum of its stages' files. Lines are self-describing JSON (`schema`
field), so any tool can read them without r1kit.

FLOPs follow Kaplan et al. 2020 (arXiv 2001.08361, table 1): a forward pass costs 2N per token, where N counts
the matmul weights (every non-embedding weight plus the LM-head projection), plus the attention term
2 · n_layers · seq_len · d_attn. Training (forward + backward) costs 3x the forward. Dollars follow the R1
paper: device-hours x a rental price ($2 per H800 GPU-hour by default).

Departures:
- The attention term is the causal average: QK^T and AV each cost 2 · d_attn per (query, key) pair, and a
  causal query sees seq_len/2 keys on average, so 4 · d_attn · seq_len/2 per layer. PaLM's MFU formula
  (6N + 12 · L · H · Q · T) counts the full, non-causal matrix, i.e. twice our attention term.
- Norms, biases and rotary embeddings are counted in `param_count` but not in FLOPs (they are not matmuls).
- The CPU has no fixed peak: it is measured by a matmul probe (`r1kit.cost.devices.cpu_peak_flops`), and a CPU is
  counted per thread (device_count = threads), so per-device power and prices are per thread.
- Device peaks, memory, power and prices are tables in hardware.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from r1kit.cost.hardware import peak_flops, resolve_price
from r1kit.errors import UserError

SCHEMA_VERSION = 1
LEDGER_FILE = "ledger.jsonl"

COUNTERS = ("prompt_tokens", "generated_tokens", "trained_tokens", "forward_tokens", "flops", "energy_j")
_COMPUTED = (
    "schema",
    "stage",
    "phase",
    "start",
    "end",
    "wall_s",
    "device_kind",
    "device_count",
    "peak_flops",
    "device_hours",
    "flops_per_s",
    "mfu",
    "power_w",
    "price_per_hour",
    "usd",
)
_SUMMED = (
    "wall_s",
    "device_hours",
    "prompt_tokens",
    "generated_tokens",
    "trained_tokens",
    "flops",
    "energy_j",
    "usd",
    "sandbox_cpu_s",  # code tasks: CPU-seconds of the sandboxes that ran the completions' programs
    "executions",
)


# ---- FLOPs from a Hugging Face config --------------------------------------------------------------------


def _shape(cfg: Mapping[str, Any]) -> dict[str, Any]:
    try:
        d, layers, ff = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
        heads, vocab = cfg["num_attention_heads"], cfg["vocab_size"]
    except KeyError as e:
        raise UserError(f"model config lacks {e.args[0]!r}; r1kit counts FLOPs of Llama/Qwen configs") from e
    head_dim = cfg.get("head_dim") or d // heads
    kv_heads = cfg.get("num_key_value_heads") or heads
    return {
        "d": d,
        "layers": layers,
        "ff": ff,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "vocab": vocab,
        "tied": bool(cfg.get("tie_word_embeddings", False)),
    }


def matmul_param_count(cfg: Mapping[str, Any]) -> int:
    """N of the 2N rule: per layer q, k, v, o and a gated MLP (gate, up, down), plus the LM head."""
    s = _shape(cfg)
    q_out, kv_out = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    attention = s["d"] * (q_out + 2 * kv_out) + q_out * s["d"]
    mlp = 3 * s["d"] * s["ff"]
    return s["layers"] * (attention + mlp) + s["vocab"] * s["d"]


def param_count(cfg: Mapping[str, Any]) -> int:
    """All parameters of a Llama/Qwen2-style causal LM: matmuls, embeddings, RMSNorm weights and biases."""
    s = _shape(cfg)
    q_out, kv_out = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    attention_bias = cfg.get("attention_bias")
    qkv_bias = attention_bias if attention_bias is not None else cfg.get("model_type") == "qwen2"
    biases = (q_out + 2 * kv_out if qkv_bias else 0) + (s["d"] if attention_bias else 0)
    biases += (2 * s["ff"] + s["d"]) if cfg.get("mlp_bias") else 0
    norms = 2 * s["d"]
    total = matmul_param_count(cfg) + s["layers"] * (biases + norms) + s["d"]  # + final norm
    return total if s["tied"] else total + s["vocab"] * s["d"]  # untied: input embedding is separate


def flops_per_token(cfg: Mapping[str, Any], seq_len: int, training: bool) -> float:
    """2N + 2 · n_layers · seq_len · d_attn per token (causal average), x3 when training (fwd + bwd)."""
    s = _shape(cfg)
    forward = 2 * matmul_param_count(cfg) + 2 * s["layers"] * seq_len * s["heads"] * s["head_dim"]
    return float(3 * forward if training else forward)


# ---- The ledger ------------------------------------------------------------------------------------------


class Phase:
    """Counters of one entry into a phase; `add` sums counters and sets any other field."""

    def __init__(self) -> None:
        self.counters: dict[str, float] = {}
        self.extra: dict[str, Any] = {}

    def add(self, **fields: Any) -> None:
        for key, value in fields.items():
            if key in COUNTERS:
                self.counters[key] = self.counters.get(key, 0) + value
            elif key in _COMPUTED:
                raise ValueError(f"ledger field {key!r} is computed, not added")
            else:
                self.extra[key] = value


class Ledger:
    """Appends one JSON line per phase entry to `path`: a `.jsonl` file, or a run directory (gets ledger.jsonl).

    peak_flops, price_per_hour and power_w are per device; None means unknown (mfu/usd/energy then null).
    energy_meter, if given, returns a cumulative joule counter (e.g. NVML) read at phase entry and exit.
    In a distributed run only one rank should write; device_count covers all ranks.
    """

    def __init__(
        self,
        path: str | Path,
        stage: str,
        device_kind: str,
        device_count: int,
        peak_flops: float | None,
        price_per_hour: float | None,
        power_w: float | None,
        energy_meter: Callable[[], float | None] | None = None,
        model_config: Mapping[str, Any] | None = None,
    ) -> None:
        path = Path(path)
        self.path = path if path.suffix == ".jsonl" else path / LEDGER_FILE
        self.stage, self.device_kind, self.device_count = stage, device_kind, device_count
        self.peak_flops, self.price_per_hour, self.power_w = peak_flops, price_per_hour, power_w
        self.energy_meter = energy_meter
        self.model_config = model_config  # when set, FLOPs not given are derived from the token counts

    @contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        """Time the body and append its record on exit (also when it raises: the time was spent)."""
        ph = Phase()
        meter_start = self.energy_meter() if self.energy_meter else None
        start_unix, start = time.time(), time.perf_counter()
        ok = False
        try:
            yield ph
            ok = True
        finally:
            wall_s = time.perf_counter() - start
            meter_end = self.energy_meter() if self.energy_meter else None
            if "energy_j" not in ph.counters and meter_start is not None and meter_end is not None:
                ph.counters["energy_j"] = meter_end - meter_start
                ph.extra.setdefault("energy_source", "nvml")
            fields = {**ph.counters, **ph.extra, **({} if ok else {"error": True})}
            self.record(name, wall_s, start=start_unix, **fields)

    def record(self, phase: str, wall_s: float, start: float | None = None, **fields: Any) -> dict[str, Any]:
        """Append a record for `phase` that took `wall_s` seconds; return it."""
        ph = Phase()
        source = fields.pop("energy_source", None)
        ph.add(**fields)
        end = (start + wall_s) if start is not None else time.time()
        rec = self._compute(phase, wall_s, end - wall_s, end, ph, source)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
        return rec

    def _token_flops(self, ph: Phase) -> float:
        """FLOPs from the token counts: 2N (+attention) per token inferred, 6N (+attention) per token trained."""
        seq_len = int(ph.extra.get("seq_len", 0) or 0)
        c = ph.counters
        inferred = c.get("prompt_tokens", 0) + c.get("generated_tokens", 0) + c.get("forward_tokens", 0)
        return inferred * flops_per_token(self.model_config, seq_len, training=False) + c.get(
            "trained_tokens", 0
        ) * flops_per_token(self.model_config, seq_len, training=True)

    def _compute(
        self, phase: str, wall_s: float, start: float, end: float, ph: Phase, source: str | None
    ) -> dict[str, Any]:
        count, flops = self.device_count, ph.counters.get("flops")
        if flops is None:
            flops = self._token_flops(ph) if self.model_config else 0
        device_hours = wall_s * count / 3600
        energy = ph.counters.get("energy_j")
        if energy is None and self.power_w is not None:
            energy, source = self.power_w * wall_s * count, "tdp"
        elif energy is not None:
            source = source or "measured"
        budget = wall_s * self.peak_flops * count if self.peak_flops else 0.0
        return {
            "schema": SCHEMA_VERSION,
            "stage": self.stage,
            "phase": phase,
            "start": start,
            "end": end,
            "wall_s": wall_s,
            "device_kind": self.device_kind,
            "device_count": count,
            "peak_flops": self.peak_flops,
            "device_hours": device_hours,
            "prompt_tokens": ph.counters.get("prompt_tokens", 0),
            "generated_tokens": ph.counters.get("generated_tokens", 0),
            "trained_tokens": ph.counters.get("trained_tokens", 0),
            "flops": flops,
            "flops_per_s": flops / wall_s if wall_s > 0 else None,
            "mfu": flops / budget if budget > 0 else None,
            "power_w": self.power_w,
            "energy_j": energy,
            "energy_source": source,
            "price_per_hour": self.price_per_hour,
            "usd": device_hours * self.price_per_hour if self.price_per_hour is not None else None,
            **ph.extra,
        }


# ---- Reading and summing ---------------------------------------------------------------------------------


def read_ledger(path_or_run_dir: str | Path) -> list[dict[str, Any]]:
    """Records of a ledger file, or of every `ledger.jsonl` under a (pipeline) run directory."""
    root = Path(path_or_run_dir)
    if root.is_dir():
        files = sorted(root.rglob(LEDGER_FILE))
    elif root.is_file():
        files = [root]
    else:
        raise UserError(f"no ledger at {root}; give a run directory or a {LEDGER_FILE} file")
    records = []
    for file in files:
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{file}:{n}: not a JSON ledger line ({e.msg})") from e
    return records


def spent_flops(records: list[dict[str, Any]]) -> float:
    """FLOPs spent on producing a model (every phase but evaluation): what a compute budget counts."""
    return sum(r.get("flops") or 0.0 for r in records if r.get("phase") != "evaluation")


def _totals(records: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"entries": len(records)}
    for key in _SUMMED:
        values = [r.get(key) for r in records]
        out[key] = None if records and all(v is None for v in values) else sum(v for v in values if v)
    out["tokens"] = out["prompt_tokens"] + out["generated_tokens"] + out["trained_tokens"]
    peaked = [r for r in records if r.get("peak_flops")]
    budget = sum(r["wall_s"] * r["peak_flops"] * r.get("device_count", 1) for r in peaked)
    out["mfu"] = sum(r.get("flops", 0) for r in peaked) / budget if budget > 0 else None
    return out


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals overall, per stage and per (stage, phase). MFU = sum flops / sum(wall x peak x count).

    A null field (unknown price, power or peak) is skipped in a sum; the total is null only if all are.
    """
    by_stage: dict[str, list[dict[str, Any]]] = {}
    by_phase: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in records:
        by_stage.setdefault(r["stage"], []).append(r)
        by_phase.setdefault(r["stage"], {}).setdefault(r["phase"], []).append(r)
    return {
        "total": _totals(records),
        "stages": {s: _totals(rs) for s, rs in by_stage.items()},
        "phases": {s: {p: _totals(rs) for p, rs in ps.items()} for s, ps in by_phase.items()},
    }


def _si(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{prefix}{unit}"
    return f"{x:.0f}{unit}" if float(x).is_integer() else f"{x:.2f}{unit}"


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{seconds:.1f}s"


def _row(stage: str, phase: str, t: dict[str, Any]) -> list[str]:
    mfu = "-" if t["mfu"] is None else f"{100 * t['mfu']:.1f}%"
    energy = "-" if t["energy_j"] is None else f"{t['energy_j'] / 1e3:,.1f}"
    usd = "-" if t["usd"] is None else f"${t['usd']:,.2f}" if t["usd"] >= 1 else f"${t['usd']:.4f}"
    dh = "-" if t["device_hours"] is None else f"{t['device_hours']:.4g}"
    return [stage, phase, _duration(t["wall_s"]), dh, _si(t["tokens"]), _si(t["flops"]), mfu, energy, usd]


def format_table(summary: dict[str, Any]) -> str:
    """A fixed-width text table: one row per (stage, phase), a subtotal per stage, and the total."""
    header = ["stage", "phase", "wall", "device-h", "tokens", "FLOPs", "MFU", "energy kJ", "$"]
    rows = []
    for stage, phases in summary["phases"].items():
        rows += [_row(stage, phase, t) for phase, t in phases.items()]
        rows.append(_row(stage, "(all)", summary["stages"][stage]))
    rows.append(_row("total", "", summary["total"]))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    for stage, phases in summary["phases"].items():  # code tasks: what the sandbox ran
        for phase, t in phases.items():
            if t.get("executions"):
                lines.append(f"{stage}/{phase}: {t['executions']:,} sandboxed executions, "
                             f"{t['sandbox_cpu_s']:,.1f} sandbox CPU-s")
    return "\n".join(lines)


# ---- Estimating a run before it starts -------------------------------------------------------------------


def estimate_run(
    params_cfg: Mapping[str, Any],
    steps: int,
    prompts_per_step: int,
    group_size: int,
    prompt_len: int,
    completion_len: int,
    device_kind: str,
    device_count: int,
    mfu: float,
    price_per_hour: float | None = None,
    ref_forward: bool = False,
    dtype: str = "bf16",
    peak: float | None = None,
) -> dict[str, Any]:
    """Predict an RL run's FLOPs, seconds, device-hours and dollars (pure: uses the tables, not env).

    Per step, prompts_per_step x group_size sequences of prompt_len + completion_len tokens: rollout at the
    inference rate on every token (each sample prefills its prompt), training at the training rate on every
    token, and a reference-model forward on every token if ref_forward (KL > 0).
    """
    peak = peak_flops(device_kind, dtype, peak)
    if peak is None:
        raise UserError(f"no peak FLOP/s for {device_kind!r} ({dtype}); pass peak= (measure it for a CPU)")
    seq_len = prompt_len + completion_len
    tokens = steps * prompts_per_step * group_size * seq_len
    forward = flops_per_token(params_cfg, seq_len, training=False)
    rollout = tokens * forward
    training = tokens * flops_per_token(params_cfg, seq_len, training=True)
    reference = tokens * forward if ref_forward else 0.0
    flops = rollout + training + reference
    seconds = flops / (peak * device_count * mfu)
    device_hours = seconds * device_count / 3600
    price = resolve_price(device_kind, price_per_hour, env={})
    return {
        "tokens": tokens,
        "rollout_flops": rollout,
        "training_flops": training,
        "reference_flops": reference,
        "flops": flops,
        "seconds": seconds,
        "device_hours": device_hours,
        "price_per_hour": price,
        "usd": device_hours * price if price is not None else None,
    }
