"""What each device kind offers and costs: peak FLOP/s by dtype, memory, board power, and a rental price per
device-hour (tables from NVIDIA's datasheets and the R1 paper; the labelled guesses say so). Pure Python.

`resolve_price` reads the environment (R1KIT_PRICE_<KIND>, R1KIT_PRICE_PER_HOUR): the ledger needs the price where
the run is, not only in the CLI. A CPU has no table peak: r1kit.cost.devices measures one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from r1kit.errors import UserError

# Dense (no 2:4 sparsity) peak FLOP/s per device, from NVIDIA's datasheets (SXM boards; HGX B200 per GPU).
# H800 and H200 are H100 silicon: same compute, less NVLink (H800) or more HBM (H200).
DEVICE_PEAKS: dict[str, dict[str, float]] = {
    "A100": {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12},
    "H100": {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12, "fp8": 1978.9e12},
    "H800": {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12, "fp8": 1978.9e12},
    "H200": {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12, "fp8": 1978.9e12},
    "B200": {"fp32": 75e12, "tf32": 1.1e15, "bf16": 2.25e15, "fp16": 2.25e15, "fp8": 4.5e15},
}

# Memory per device (HBM, bytes), for `r1kit.cost.memplan`: the datasheet's "GB" read as 1e9 bytes, the SXM boards of
# DEVICE_PEAKS (A100 also comes with 40 GB, H100 NVL with 94 GB). The GPUs report somewhat more (an H100 "80 GB"
# shows 81,559 MiB in nvidia-smi, 85.5e9 bytes), so a plan against this table errs on the safe side.
DEVICE_MEMORY_BYTES: dict[str, float] = {
    "A100": 80e9,
    "H100": 80e9,
    "H800": 80e9,
    "H200": 141e9,
    "B200": 192e9,
}

# Board power (max TDP, W) per device, for energy when NVML is not available.
DEVICE_POWER_W: dict[str, float] = {
    "A100": 400.0,
    "H100": 700.0,
    "H800": 700.0,
    "H200": 700.0,
    "B200": 1000.0,
}
# A server CPU's TDP over its cores: EPYC 9654 360 W / 96 = 3.8 W, Xeon 8480+ 350 W / 56 = 6.3 W. An estimate.
CPU_WATTS_PER_THREAD = 5.0

# USD per device-hour. H800 is the paper's assumption; the rest are r1kit's labelled guesses, not quotes.
PRICES_PER_HOUR: dict[str, float] = {
    "H800": 2.00,  # R1 paper (Nature supplement): "$2 per GPU hour"
    "H100": 2.00,  # same silicon as the H800: the paper's rate
    "H200": 2.50,  # assumption: H100 rate + 25% for the larger HBM
    "A100": 1.20,  # DeepScaleR: 3,800 A100-hours for $4,500 = $1.18/h
    "B200": 4.00,  # assumption: about 2x an H100 hour for about 2.3x its bf16 peak
    "cpu": 0.04,  # per thread-hour: a cloud on-demand vCPU-hour (AWS c7i.large, $0.089/h for 2 vCPUs)
}
PRICE_ENV = "R1KIT_PRICE_PER_HOUR"


def peak_flops(kind: str, dtype: str = "bf16", measured: float | None = None) -> float | None:
    """Peak FLOP/s of one device: a measured value if given, else the table, else None (unknown device)."""
    if measured is not None:
        return float(measured)
    return DEVICE_PEAKS.get(kind, {}).get(dtype)


def device_power_w(kind: str) -> float | None:
    """Typical power of one device in watts (one thread for "cpu"), or None for an unknown device."""
    return CPU_WATTS_PER_THREAD if kind == "cpu" else DEVICE_POWER_W.get(kind)


def _parse_price(text: str, source: str) -> float:
    try:
        price = float(text)
    except ValueError:
        price = float("nan")
    if not math.isfinite(price) or price < 0:
        raise UserError(f"{source}={text!r} is not a price; give USD per device-hour, e.g. 2.0")
    return price


def resolve_price(
    kind: str, override: float | None = None, env: Mapping[str, str] = os.environ
) -> float | None:
    """USD per device-hour: override (run/config) > R1KIT_PRICE_<KIND> > R1KIT_PRICE_PER_HOUR > table."""
    if override is not None:
        return _parse_price(str(override), "price override")
    kind_env = "R1KIT_PRICE_" + "".join(c if c.isalnum() else "_" for c in kind.upper())
    for name in (kind_env, PRICE_ENV):
        if env.get(name, "").strip():
            return _parse_price(env[name].strip(), name)
    return PRICES_PER_HOUR.get(kind)
