"""Model and tokenizer I/O: tiny models built here, any Hugging Face causal LM loaded from disk.

- `train_tokenizer` trains a byte-level BPE (digits always split one per token, so arithmetic is done on digits)
  with the R1 tags `<think>`, `</think>`, `<answer>`, `</answer>` as single tokens.
- `new_model` builds a Llama-architecture `LlamaForCausalLM` of a named size from a seed (same seed, same weights).
- `load_model` is the real `from_pretrained` (local directories only; tests run with HF_HUB_OFFLINE=1), so a
  Qwen2.5 or Llama checkpoint works wherever a built-in model does (tests/test_architectures.py runs every loop on
  ten architectures). Weights load in float32 whatever the checkpoint's dtype (see `load_model`); a tokenizer
  without a pad token pads with EOS.
- `save_model` writes safetensors + config + tokenizer atomically: a complete temp dir renamed into place (or, into
  a run directory that already exists, each file replaced atomically, config.json last).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import torch

from r1kit.errors import UserError

TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
EOS, PAD = "<|endoftext|>", "<|pad|>"

# Named sizes of the built-in Llama models (vocab_size: the BPE target; the model takes the tokenizer's real size).
# Parameter counts include the (tied) embedding.
SIZES: dict[str, dict] = {
    "tiny": dict(
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=6,
        num_key_value_heads=6,
        intermediate_size=512,
        max_position_embeddings=512,
        vocab_size=512,
    ),  # ~1.9M
    "small": dict(
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=1408,
        max_position_embeddings=1024,
        vocab_size=1024,
    ),  # ~24M
    # A quarter of tiny: the distillation student of recipes/tiny-distill.toml.
    "mini": dict(
        hidden_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=320,
        max_position_embeddings=512,
        vocab_size=512,
    ),  # ~0.44M
    # Smaller than tiny: distillation students and fast tests.
    "micro": dict(
        hidden_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=256,
        max_position_embeddings=512,
        vocab_size=512,
    ),  # ~0.3M
}


def train_tokenizer(texts, vocab_size: int = 512):
    """A byte-level BPE trained on `texts` (an iterable of strings), wrapped as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=None)
    fast.add_tokens(TAG_TOKENS)
    fast.padding_side = "left"
    fast.model_max_length = 4096
    return fast


def new_model(size: str | dict, tokenizer, seed: int = 0):
    """A freshly initialised LlamaForCausalLM of a named size (or a dict of config fields), seeded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if isinstance(size, str):
        if size not in SIZES:
            raise UserError(f"unknown model size {size!r}: use one of {', '.join(SIZES)}")
        fields = dict(SIZES[size])
    else:
        fields = dict(size)
    fields["vocab_size"] = -(-len(tokenizer) // 64) * 64  # the tokenizer's size, rounded up for matmul speed
    config = LlamaConfig(
        **fields,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def count_params(model) -> int:
    """Parameters, counting tied weights once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _quiet_transformers() -> None:
    """r1kit shows its own progress; transformers' per-shard bars would only add noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_model(path: str | os.PathLike, dtype: torch.dtype | str | None = None, trainable: bool = False):
    """(model, tokenizer) from a local Hugging Face directory; a clear UserError when it is not one.

    The weights are float32 whatever the checkpoint holds (a bfloat16 checkpoint is upcast exactly): training
    keeps float32 weights (AdamW's small updates vanish in bfloat16), most CPUs run bfloat16 matmuls no faster
    than float32 ones, and GRPO takes its old log-probs from the sampler, so sampling and training must compute
    in one dtype. The cost is memory: twice a bfloat16 checkpoint's size. `dtype` overrides it for inference
    (torch.bfloat16, or "auto" for the checkpoint's own dtype); the sampler runs in any dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    path = Path(path)
    if not path.is_dir():
        raise UserError(
            f"model directory {str(path)!r} does not exist: build one with `r1kit base` or give a "
            "Hugging Face model directory"
        )
    if not (path / "config.json").is_file():
        raise UserError(f"{str(path)!r} has no config.json: it is not a Hugging Face model directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load the model in {str(path)!r}: {first}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.train(trainable)
    return model, tokenizer


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a local Hugging Face directory (left padding, a pad token)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"tokenizer directory {str(path)!r} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load a tokenizer from {str(path)!r}: {first}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def eos_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a completion: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id}
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif extra:
        ids.update(extra)
    ids.discard(None)
    return sorted(ids)


def save_model(
    model, tokenizer, out_dir: str | os.PathLike, extra_files: dict[str, str] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save as a Hugging Face directory atomically; refuses to save non-finite weights.

    `state_dict` replaces the model's own weights (a sharded model's, gathered on one rank); config.json then
    records their dtype, so the directory loads back in it."""
    _quiet_transformers()
    out = Path(out_dir)
    named = state_dict.items() if state_dict is not None else model.named_parameters()
    for name, p in named:
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise FloatingPointError(f"refusing to save {out}: parameter {name} has NaN or inf values")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}"
    tmp.mkdir()  # (not mkdtemp, whose 0700 the model directory would keep: this one gets the umask's mode)
    try:
        if state_dict is None:
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            own = model.config.dtype
            model.config.dtype = next(v.dtype for v in state_dict.values() if v.is_floating_point())
            try:
                model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
            finally:
                model.config.dtype = own
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if not out.exists():
            tmp.rename(out)  # one atomic step
        else:  # a run directory that holds other files too: replace the model's files one by one, config last
            names = sorted(os.listdir(tmp), key=lambda n: n == "config.json")
            for name in names:
                os.replace(tmp / name, out / name)
            tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
