"""The one device and precision decision of a run, made at the top of a loop and passed down as an `Engine`.

- device: `auto` is CUDA when torch sees a GPU, else the CPU; under torchrun each rank takes its LOCAL_RANK GPU.
- dtype (precision mode, as in torchtitan / FSDP2's MixedPrecisionPolicy):
    fp32       weights, compute, gradients and optimiser state in float32 (the CPU default: exact, and most CPUs
               run bfloat16 matmuls no faster)
    bf16       float32 master weights, gradients reduced in float32, optimiser state float32; forward and
               backward compute in bfloat16 (the GPU default). Sharded, FSDP2 casts each gathered layer
               (param_dtype=bf16, reduce_dtype=fp32); on one process `torch.autocast` does the same job
    bf16-pure  weights, gradients and optimiser state in bfloat16: half the memory, and AdamW's small updates
               round away (use a larger lr or accept slower learning)
- TF32 matmuls are turned on for float32 work on CUDA; attention is PyTorch's SDPA (flash / memory-efficient
  kernels on GPUs), the transformers default.

Checkpoints hold the master weights in their own dtype (float32, or bfloat16 for bf16-pure) and are loaded back
in it, so a resumed run continues from the very same numbers.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from r1kit.config import ParallelConfig
from r1kit.errors import UserError
from r1kit.parallel.dist import DistInfo

MASTER_DTYPES = {"fp32": torch.float32, "bf16": torch.float32, "bf16-pure": torch.bfloat16}
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "bf16-pure": torch.bfloat16}


@dataclass(frozen=True)
class Engine:
    device: torch.device
    precision: str  # fp32 | bf16 | bf16-pure (resolved; never "auto")
    info: DistInfo = DistInfo()
    reshard_after_forward: bool = True
    activation_checkpointing: bool = False
    logits_chunk: int = 1024

    @property
    def sharded(self) -> bool:
        """Training models are FSDP2-sharded whenever there is more than one rank."""
        return self.info.world > 1

    @property
    def master_dtype(self) -> torch.dtype:
        return MASTER_DTYPES[self.precision]

    @property
    def compute_dtype(self) -> torch.dtype:
        return COMPUTE_DTYPES[self.precision]

    @property
    def kind(self) -> str:
        return self.device.type

    def place(self, model, dtype: torch.dtype | None = None):
        """`model` on this device, its parameters in `dtype` (default: the master dtype). Floating buffers keep
        their own dtype: `Module.to(bf16)` would round the rotary `inv_freq` to bfloat16 (a 0.4% error in every
        frequency: whole radians off at position 1,000), which from_pretrained(dtype=bf16) itself never does."""
        dtype = dtype or self.master_dtype
        kept = {name: (buf.dtype, buf) for name, buf in model.named_buffers() if buf.is_floating_point()}
        model = model.to(device=self.device, dtype=dtype)
        for name, (own, buf) in kept.items():
            owner, _, attr = name.rpartition(".")
            module = model.get_submodule(owner)
            if module._buffers[attr].dtype != own:
                module._buffers[attr] = buf.to(device=self.device)  # the untouched original, moved
        return model

    def autocast(self):
        """bf16 compute over float32 weights on one process (FSDP2's mixed-precision policy does it when sharded)."""
        if self.precision == "bf16" and not self.sharded:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def peak_memory_mib(self) -> float:
        """Peak memory so far: CUDA's max_memory_allocated on a GPU, the process's peak RSS on a CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return peak_rss_mib()

    def reset_peak_memory(self) -> None:
        """Start a new peak (e.g. per step, so the metric is the step's, not the loading's)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()

    def memory_capacity_bytes(self) -> float | None:
        """Memory one rank may use: its GPU's total memory, or the machine's RAM shared by the ranks."""
        if self.device.type == "cuda":
            return float(torch.cuda.get_device_properties(self.device).total_memory)
        try:
            for line in open("/proc/meminfo"):
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024 / self.info.local_world
        except OSError:
            pass
        return None

    def device_name(self) -> str:
        """The GPU's name as CUDA reports it ("NVIDIA H100 80GB HBM3"), or "cpu"."""
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"

    def describe(self) -> str:
        where = f"{self.info.world} ranks, FSDP2" if self.sharded else "1 process"
        ac = ", activation checkpointing" if self.activation_checkpointing else ""
        return f"{self.device.type} {self.precision} ({where}{ac})"


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB: VmHWM (Linux; `reset_peak_rss` restarts it), else ru_maxrss.

    ru_maxrss alone misleads in a child process: Linux carries the parent's high-water mark across fork + exec."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def reset_peak_rss() -> None:
    """Restart the peak-RSS counter at the current RSS (Linux >= 4.0; elsewhere a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def resolve_engine(cfg: ParallelConfig | None = None, info: DistInfo | None = None, *, rl: bool = False) -> Engine:
    """Device and precision for this process; a one-line UserError when the machine cannot do what was asked.

    `rl=True` turns activation checkpointing on by default on GPUs (RL micro-batches are long sequences)."""
    cfg = cfg or ParallelConfig()
    info = info or DistInfo()
    has_cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not has_cuda:
        raise UserError("--device cuda: torch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                        "use --device cpu, or install the CUDA build of torch")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and has_cuda)
    if use_cuda:
        if info.local_rank >= torch.cuda.device_count():
            raise UserError(f"rank {info.rank} wants GPU {info.local_rank} (LOCAL_RANK) but only "
                            f"{torch.cuda.device_count()} are visible: lower --nproc-per-node")
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    precision = cfg.dtype if cfg.dtype != "auto" else ("bf16" if use_cuda else "fp32")
    checkpointing = cfg.activation_checkpointing == "on" or (
        cfg.activation_checkpointing == "auto" and rl and use_cuda)
    return Engine(device, precision, info, cfg.reshard_after_forward, checkpointing, cfg.logits_chunk)
