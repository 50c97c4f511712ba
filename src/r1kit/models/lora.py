"""LoRA (Hu et al., 2021) through `peft`, as an option of every training loop (rl, sft, distill).

`rank = 0` (the default) is full fine-tuning. With `rank > 0` the base weights are frozen and each targeted linear
layer gets a trainable low-rank update `W + (alpha / rank) * B A`:

- training runs the PeftModel (peft's own forward);
- the sampler reads the effective weights `W + s * B A` (rollout/sampler.py asks `effective_weight`), so rollouts always
  come from the current adapters, with no merge/unmerge round trip that would drift the base weights;
- a checkpoint holds the adapter only (`adapter_model.safetensors` + `adapter_config.json`, peft's format) beside
  the trainer state; resuming loads the base model again and the adapter on top, exactly;
- the final model directory is the merged model (a plain Hugging Face checkpoint any tool loads).

peft is an optional extra (`pip install 'r1kit[lora]'`): without it, asking for LoRA is a one-line error.
"""

from __future__ import annotations

import torch

from r1kit.config import LoraConfig  # noqa: F401  (the loops take it from here)
from r1kit.errors import UserError


def _peft():
    try:
        import peft
    except ImportError:
        raise UserError("lora.rank > 0 needs peft: pip install 'r1kit[lora]' (or set lora.rank = 0)") from None
    return peft


def apply_lora(model, cfg: LoraConfig, adapter_dir=None, seed: int = 0):
    """The model with LoRA adapters (fresh ones initialised from `seed`, or loaded from `adapter_dir`), trainable."""
    if not cfg.enabled:
        return model
    peft = _peft()
    if adapter_dir is not None:
        from pathlib import Path

        if not (Path(adapter_dir) / "adapter_config.json").is_file():
            raise UserError(f"{adapter_dir} is a full fine-tuning checkpoint: resume it with lora.rank = 0")
        return peft.PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    targets = cfg.target_modules if cfg.target_modules == "all-linear" else [
        t.strip() for t in cfg.target_modules.split(",") if t.strip()]
    config = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                             bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):  # A's initialisation: the same seed, the same adapters
        torch.manual_seed(seed)
        try:
            return peft.get_peft_model(model, config)
        except ValueError as e:
            raise UserError(f"lora.target_modules = {cfg.target_modules!r}: {str(e).splitlines()[0]}") from None


def is_lora(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def unwrap(model):
    """The transformers model inside a PeftModel (with its LoRA layers), or the model itself."""
    return model.get_base_model() if is_lora(model) else model


def effective_weight(linear) -> torch.Tensor:
    """The weight a linear layer applies: W for a plain layer, W + (alpha/r) B A for an active LoRA layer."""
    weight = linear.weight
    active = getattr(linear, "active_adapters", None)
    if not active or getattr(linear, "merged", False) or getattr(linear, "disable_adapters", False):
        return weight
    base = getattr(linear, "base_layer", linear)
    weight = base.weight
    for name in active:
        if name not in getattr(linear, "lora_A", {}):
            continue
        a, b = linear.lora_A[name].weight, linear.lora_B[name].weight  # (r, in), (out, r)
        weight = weight + linear.scaling[name] * (b @ a)  # (out, in)
    return weight


def effective_bias(linear):
    return getattr(getattr(linear, "base_layer", linear), "bias", None)


def merged_copy(model):
    """A plain transformers model with the adapters merged in (the PeftModel itself is left untouched)."""
    import copy

    if not is_lora(model):
        return model
    return copy.deepcopy(model).merge_and_unload()


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_for_training(fresh, checkpoint, cfg: LoraConfig, seed: int = 0):
    """(model, tokenizer) to train: `fresh()` builds the starting model; a checkpoint of a full fine-tuning run
    is a whole model directory, one of a LoRA run holds the adapter that goes on top of `fresh()`'s model."""
    from r1kit.models.modeling import load_model

    if checkpoint is not None and not cfg.enabled:
        from pathlib import Path

        if (Path(checkpoint) / "adapter_config.json").is_file():
            raise UserError(f"{checkpoint} holds a LoRA adapter: resume it with the run's lora settings "
                            "(lora.rank > 0)")
        return load_model(checkpoint, trainable=True)
    model, tokenizer = fresh()
    if cfg.enabled:
        model = apply_lora(model, cfg, adapter_dir=checkpoint, seed=seed)
    return model, tokenizer
