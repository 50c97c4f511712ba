"""How a training model is placed and sharded: the one place that decides it (as torchtitan's parallelize.py).

- One process: the model moves to the engine's device in its master dtype; nothing is wrapped.
- N processes (torchrun): PyTorch's FSDP2, `fully_shard`, over an explicit 1-D device mesh ("cpu" on gloo,
  "cuda" on NCCL): one group per decoder layer (the classes the model lists in `_no_split_modules`, as
  accelerate does), then the root, which holds the embedding, the final norm and the lm_head — a tied embedding
  and lm_head are one parameter in one group (accelerate#4171 shows the failure when they are split). Gradients
  are reduce-scattered as sums (divide factor 1): r1kit's losses already divide by counts over the *global*
  batch, so one process and N processes take the same step. Mixed precision (bf16) is FSDP2's
  MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32).
- Activation checkpointing: each decoder layer is recomputed in the backward (transformers' non-reentrant
  gradient checkpointing, applied before sharding).
- Rollouts never all-gather per decoded token (pytorch#123962): each rank keeps a plain, full *inference copy*
  of the policy in the compute dtype, and after every optimiser step `sync_weights` gathers the new weights into
  it in place, one parameter at a time, cast to the compute dtype before the gather (the ledger's "weight_sync"
  phase). The sampler and the evaluator only ever see that plain model. One process in bf16 keeps such a copy
  too (bf16 weights and KV cache for the sampler instead of float32 ones cast at every decoded token). The copy
  costs 2 bytes per parameter on every rank: a 70B policy needs a sharded sampler (vLLM, issue 11), not this.
- The root group (embedding, final norm, lm_head) stays gathered between forward and backward (FSDP2's default
  for a root); `reshard_after_forward` applies to the decoder layers.
- A sharded model is only cast on the host: `fully_shard` moves each group's shard to the device as it goes,
  so no rank ever holds the whole model on its GPU.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from r1kit.parallel.engine import Engine


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers model: modules whose class is in `_no_split_modules`."""
    names = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__} (no _no_split_modules)")
    return layers[::-1]  # children before their parents (fully_shard needs the inner groups first)


def enable_activation_checkpointing(model) -> None:
    """Recompute every decoder layer in the backward instead of keeping its activations."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (the old name is deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def shard(model, engine: Engine):
    """fully_shard each decoder layer, then the root, over a 1-D mesh of all ranks. Returns the model."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(engine.device.type, (engine.info.world,))
    mp = None
    if engine.precision == "bf16":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    kwargs = {"mesh": mesh, "reshard_after_forward": engine.reshard_after_forward}
    if mp is not None:
        kwargs["mp_policy"] = mp
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **{**kwargs, "reshard_after_forward": False})  # the root is needed again at once
    for group in (m for m in model.modules() if isinstance(m, FSDPModule)):  # each group has its own setting
        group.set_gradient_divide_factor(1.0)  # sums, not means: the losses divide by global counts already
        group.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)
    return model


def prepare_training_model(model, engine: Engine, *, frozen: bool = False):
    """Master dtype, device, activation checkpointing (trained models) and, with several ranks, FSDP2."""
    if engine.sharded:  # fully_shard moves each shard to the mesh's device itself
        model = dataclasses.replace(engine, device=torch.device("cpu")).place(model)
    else:
        model = engine.place(model)
    if engine.activation_checkpointing and not frozen:
        enable_activation_checkpointing(model)
    if engine.sharded:
        shard(model, engine)
    return model


def inference_copy(model, engine: Engine, dtype: torch.dtype | None = None, separate: bool = False):
    """The model the sampler runs: a plain full copy in `dtype` (default: the compute dtype), made before sharding,
    on every rank of a sharded run, on one process whose sampler dtype is not the master dtype, and whenever
    `separate` (a sampler running while the policy trains) — kept current by `sync_weights`; else the policy."""
    dtype = dtype or engine.compute_dtype
    if not engine.sharded and dtype == engine.master_dtype and not separate:
        return model
    twin = engine.place(copy.deepcopy(model), dtype)
    if getattr(twin, "is_activation_checkpointing", False):  # a copy made after checkpointing was turned on
        twin.activation_checkpointing_disable()
    return twin.eval().requires_grad_(False)


@torch.no_grad()
def sync_weights(sharded, twin) -> None:
    """Gather the sharded model's parameters into the plain copy, in place, in one order on every rank."""
    if twin is sharded:
        return
    from torch.distributed.tensor import DTensor

    target = dict(twin.named_parameters())
    for name, p in sharded.named_parameters():
        p = p.detach().to(target[name].dtype)  # cast the shard first: half the bytes to gather in bf16
        target[name].copy_(p.full_tensor() if isinstance(p, DTensor) else p)  # an all-gather over the ranks


@torch.no_grad()
def copy_sharded(src, dst) -> None:
    """dst's parameters := src's, shard by shard (the same layout on every rank): e.g. a reference reset."""
    from torch.distributed.tensor import DTensor

    for p_dst, p_src in zip(dst.parameters(), src.parameters(), strict=True):
        if isinstance(p_dst, DTensor):
            p_dst.to_local().copy_(p_src.to_local())
        else:
            p_dst.copy_(p_src)


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """Every weight in full, on the CPU, on rank 0 only (the other ranks get {}): an export gathered one
    tensor at a time, never the whole model on every rank. On one process: the model's own state dict."""
    if not is_sharded(model):
        return {k: v.detach() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # a tied lm_head is the embedding: one tensor, saved once (as save_pretrained does for a plain model)
    own = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    return {k: v for k, v in full.items() if k in own}


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of these parameters' gradients (over every shard), as a plain tensor."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.nn.utils.get_total_norm(grads)
    return total.full_tensor() if isinstance(total, DTensor) else total


# ---- Loading a sharded run without a whole model on every rank -------------------------------------------------


def _empty(config, dtype: torch.dtype):
    """The model of `config` with its parameters on the meta device (no memory, no initialisation)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _materialise(model, engine: Engine, buffers: dict, generation_config) -> None:
    """Allocate a meta model's tensors on the device (contents undefined) and put rank 0's buffers (the rotary
    tables: float32, not in the state dict) and generation settings (its EOS ids) in place."""
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model.to_empty(device=engine.device)
    if tied and model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        model.tie_weights()  # to_empty gave a plain model's tied lm_head a tensor of its own: one again
    for name, buf in buffers.items():
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner)._buffers[attr] = buf.to(engine.device)
    model.generation_config = generation_config


def load_sharded(source, engine: Engine, with_reference: bool):
    """(policy, inference copy, reference or None, tokenizer) of a sharded run, from a model directory.

    Only rank 0 reads the weights (onto its CPU, in the master dtype); every rank builds the models on the meta
    device, shards them, allocates its shards on its device, and receives its part of the weights from rank 0
    (`set_model_state_dict(..., broadcast_from_rank0=True)`). The inference copy gets the weights by
    `sync_weights` and the reference by `copy_sharded`, so no rank ever holds more than its shards plus one copy
    in the compute dtype.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoConfig

    from r1kit.models.modeling import load_model, load_tokenizer
    from r1kit.parallel import dist

    full, buffers, generation = {}, None, None
    if engine.info.main:
        model, tokenizer = load_model(source, dtype=engine.master_dtype, trainable=True)
        full = model.state_dict()
        buffers = {n: b for n, b in model.named_buffers() if n not in full}
        generation = model.generation_config
        del model
    else:
        tokenizer = load_tokenizer(source)
    buffers, generation = dist.broadcast_object((buffers, generation))
    config = AutoConfig.from_pretrained(source)

    policy = _empty(config, engine.master_dtype)
    if engine.activation_checkpointing:
        enable_activation_checkpointing(policy)
    shard(policy, engine)
    _materialise(policy, engine, buffers, generation)
    set_model_state_dict(policy, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    policy.train()

    twin = _empty(config, engine.compute_dtype)
    _materialise(twin, engine, buffers, generation)
    sync_weights(policy, twin)
    twin.eval().requires_grad_(False)

    reference = None
    if with_reference:
        reference = shard(_empty(config, engine.master_dtype), engine)
        _materialise(reference, engine, buffers, generation)
        copy_sharded(policy, reference)
        reference.eval().requires_grad_(False)
    return policy, twin, reference, tokenizer
