"""What this run runs on: device kind and count, the CPU's measured peak, NVML energy, and a ready Ledger.

Layer 1: imports torch lazily inside functions, so importing this module stays cheap.

- `detect_device` maps CUDA device names to the kinds of `r1kit.cost.hardware.DEVICE_PEAKS` by substring; a CPU is
  counted per thread (torch.get_num_threads()), so the ledger's per-device peak, power and price are per thread.
- A CPU has no datasheet peak we can trust (clocks, AVX-512/AMX, SMT), so `cpu_peak_flops` measures one: best
  of several square matmuls on all threads, cached in ~/.cache/r1kit/cpu_peak.json keyed by CPU model, thread
  count and dtype. MFU on a CPU is therefore against an achieved, not a theoretical, peak (it reads high).
- Energy comes from NVML's cumulative counter (nvmlDeviceGetTotalEnergyConsumption, mJ) when pynvml is
  installed; otherwise the ledger estimates it as board power x time. pynvml is optional. Under torchrun the
  ledger is kept by rank 0, which reads its node's GPUs and scales by the number of nodes.
- The device count is what the job uses: one GPU per rank (world size), or CPU threads x ranks.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from r1kit.cost.hardware import device_power_w, peak_flops, resolve_price
from r1kit.cost.ledger import LEDGER_FILE, Ledger

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "r1kit"
CPU_PEAK_FILE = "cpu_peak.json"
# Checked in order: "H100" must not claim an H800 or "GH200"; names look like "NVIDIA H100 80GB HBM3".
GPU_KINDS = ("H800", "H200", "H100", "B200", "A100")


def gpu_kind(name: str) -> str:
    """The DEVICE_PEAKS kind in a CUDA device name, or the raw name when none matches."""
    upper = name.upper()
    return next((kind for kind in GPU_KINDS if kind in upper), name)


def detect_device() -> tuple[str, int]:
    """(kind, count) of what this job runs on: its GPUs by kind, one per rank, when the process has put work on
    CUDA (the loop's engine initialises it; `--device cpu` on a GPU machine bills the CPU), else ("cpu", the
    threads torch uses x ranks). Ranks come from torch.distributed when it is initialised."""
    import torch
    import torch.distributed as tdist

    world = tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return gpu_kind(torch.cuda.get_device_name(torch.cuda.current_device())), world
    return "cpu", torch.get_num_threads() * world


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def measure_matmul_flops(dtype: str = "fp32", size: int = 2048, seconds: float = 1.0) -> float:
    """Best FLOP/s of square matmuls on all torch threads over about `seconds` (2 · n^3 per matmul).

    n doubles from 128 up to `size` while one matmul takes under seconds/8, so a slow dtype (bf16 on a CPU
    without native support can run at ~1 GFLOP/s) still finishes in about 2 x `seconds`.
    """
    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    gen = torch.Generator().manual_seed(0)
    torch.matmul(
        torch.ones(64, 64, dtype=torch_dtype), torch.ones(64, 64, dtype=torch_dtype)
    )  # start threads
    n = min(128, size)
    while True:
        a = torch.randn(n, n, generator=gen).to(torch_dtype)  # (n, n)
        b = torch.randn(n, n, generator=gen).to(torch_dtype)  # (n, n)
        out = torch.empty(n, n, dtype=torch_dtype)  # (n, n)
        torch.matmul(a, b, out=out)  # warm-up at this size
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        if n >= size or 8 * (time.perf_counter() - start) > seconds:
            break
        n *= 2
    best, deadline = 0.0, time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        torch.matmul(a, b, out=out)  # (n, n)
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
        if time.perf_counter() >= deadline:
            return best


def cpu_peak_flops(
    cache_dir: str | Path | None = None,
    dtype: str = "fp32",
    size: int = 2048,
    seconds: float = 1.0,
    refresh: bool = False,
) -> float:
    """Peak FLOP/s of this CPU on all torch threads, measured once and cached per (model, threads, dtype)."""
    import torch

    path = Path(cache_dir or DEFAULT_CACHE_DIR) / CPU_PEAK_FILE
    key = f"{cpu_model()}|threads={torch.get_num_threads()}|{dtype}"
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if not refresh and isinstance(cache.get(key), (int, float)) and cache[key] > 0:
        return float(cache[key])
    # A probe on a busy machine reads low: keep the best ever seen, and never less than with fewer threads.
    fewer = [v for k, v in cache.items() if k.startswith(f"{cpu_model()}|threads=") and k.endswith(f"|{dtype}")
             and int(k.split("threads=")[1].split("|")[0]) <= torch.get_num_threads()]
    cache[key] = max([measure_matmul_flops(dtype, size, seconds), *fewer])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1) + "\n")
        tmp.replace(path)  # atomic: two runs probing at once cannot leave a torn file
    except OSError:
        pass  # a read-only home only costs a re-measure next time
    return float(cache[key])


class NvmlEnergy:
    """Total energy of some GPUs in joules from NVML's counter; `read_j` returns None without NVML.

    Indices are NVML's (physical); by default those in CUDA_VISIBLE_DEVICES when it lists integers, else all.
    """

    def __init__(self, indices: list[int] | None = None) -> None:
        self._nvml: Any = None
        self._handles: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            if indices is None:
                visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
                parts = [p.strip() for p in visible.split(",") if p.strip()]
                all_gpus = list(range(pynvml.nvmlDeviceGetCount()))
                indices = [int(p) for p in parts] if parts and all(p.isdigit() for p in parts) else all_gpus
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
            self._nvml = pynvml
        except Exception:  # no pynvml, no driver, or a GPU without the counter (pre-Volta)
            self._handles = []

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def read_j(self) -> float | None:
        """Cumulative joules over the devices since driver load, or None when NVML cannot say."""
        if not self._handles:
            return None
        try:
            return sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles) / 1000.0
        except Exception:
            return None


def job_energy_meter(ranks: int):
    """Joules of the job's GPUs from NVML, read on the rank that keeps the ledger: the GPUs of this node that
    the job's ranks here use (all visible ones under torchrun, the one in use on a single process), times the
    number of nodes (ranks / LOCAL_WORLD_SIZE: the nodes do the same work). None without NVML."""
    import torch

    visible = [p.strip() for p in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if p.strip()]
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(ranks)))
    if ranks == 1:  # one process: its own GPU only, as NVML numbers it
        current = torch.cuda.current_device() if torch.cuda.is_initialized() else 0
        indices = [int(visible[current])] if visible and all(v.isdigit() for v in visible) else [current]
    elif visible and all(v.isdigit() for v in visible):  # torchrun: rank i uses visible GPU i, i < local
        indices = [int(v) for v in visible[:local]]
    else:
        indices = list(range(local))
    nvml = NvmlEnergy(indices=indices)
    if not nvml.available:
        return None
    nodes = max(1, ranks // max(local, 1))
    return lambda: None if (j := nvml.read_j()) is None else j * nodes


def ledger_for(
    run_dir: str | Path,
    stage: str,
    price_override: float | None = None,
    dtype: str | None = None,
    cache_dir: str | Path | None = None,
    model_config: dict | None = None,
) -> Ledger:
    """A Ledger writing `run_dir/ledger.jsonl` for this machine: kind, count, peak, price, power, NVML energy.

    dtype is the compute dtype MFU is measured against: default bf16 on GPUs, fp32 on the CPU.
    """
    import torch

    kind, count = detect_device()
    if kind == "cpu":
        dtype = dtype or "fp32"
        peak = cpu_peak_flops(cache_dir, dtype) / torch.get_num_threads()  # per thread: a CPU counts threads
        meter = None
    else:
        dtype = dtype or "bf16"
        peak = peak_flops(kind, dtype)
        meter = job_energy_meter(count)
    return Ledger(
        Path(run_dir) / LEDGER_FILE,
        stage,
        kind,
        count,
        peak_flops=peak,
        price_per_hour=resolve_price(kind, price_override),
        power_w=device_power_w(kind),
        energy_meter=meter,
        model_config=model_config,
    )
