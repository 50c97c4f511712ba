"""A GGUF file (llama.cpp's format) turned into a plain Hugging Face model directory, so every r1kit command can
train or evaluate it.

`import_gguf(path, out, dtype)` goes through transformers' own GGUF loader (`from_pretrained(..., gguf_file=)`):
it rebuilds the config and the tokenizer (with its chat template) from the file's metadata and dequantizes the
weights (undoing llama.cpp's permutation of the q/k projections). The model it returns still carries a GGUF
quantizer (`config.quantization_config`), which `save_pretrained` refuses to serialise, so the weights are copied
into a fresh model built from the same config without it, and that one is saved (r1kit.models.modeling.save_model:
atomic, refuses NaN weights). The dequantized weights are exact copies of what the file stores: an imported Q4
model is as good as the Q4 file, not as the original checkpoint.

Needs the `gguf` package (`pip install 'r1kit[gguf]'`) and accelerate, which transformers asks for with GGUF.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch

from r1kit.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_MAGIC = b"GGUF"
# The file's `general.architecture` where transformers' legacy loader knows it under another name
# (transformers/modeling_gguf_pytorch_utils.py, load_gguf_checkpoint).
_FILE_SPELLINGS = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss",
                   "minimax-m2": "minimax_m2", "t5encoder": "t5"}
_NOT_ARCHITECTURES = {"general", "tokenizer"}  # keys of the same table that are metadata sections


def supported_architectures() -> list[str]:
    """The `general.architecture` values transformers' GGUF loader reads (both its loaders, where it has two)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    names = set(GGUF_SUPPORTED_ARCHITECTURES) - _NOT_ARCHITECTURES
    try:  # transformers >= 5.x: a second, block-keeping loader for some architectures
        from transformers.integrations.gguf import GGUF_ARCHS

        names |= set(GGUF_ARCHS)
    except ImportError:
        pass
    return sorted(names)


def gguf_architecture(path: str | os.PathLike) -> str:
    """The file's `general.architecture`; UserError when it is not a readable GGUF file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        if f.read(4) != _MAGIC:
            raise UserError(f"{str(path)!r} is not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise UserError("reading GGUF files needs the gguf package: pip install 'r1kit[gguf]'") from None
    try:
        field = GGUFReader(path).fields.get("general.architecture")
    except Exception as e:  # a truncated or corrupt file: numpy/struct errors of every kind
        raise UserError(f"cannot read the GGUF file {str(path)!r}: {_first_line(e)}") from None
    if field is None:
        raise UserError(f"{str(path)!r} has no general.architecture: it is not a model GGUF file")
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def import_gguf(path: str | os.PathLike, out: str | os.PathLike, dtype: str = "float32") -> Path:
    """Write the model of the GGUF file `path` as a Hugging Face directory `out` (see the module docstring)."""
    path, out = Path(path), Path(out)
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{str(out)!r} already exists and is not empty: give a new directory for --out")
    architecture = gguf_architecture(path)
    supported = supported_architectures()
    if architecture not in supported and _FILE_SPELLINGS.get(architecture) not in supported:
        raise UserError(f"architecture {architecture!r} of {path.name} is not supported by transformers' GGUF "
                        f"loader; it reads: {', '.join(supported)}")
    model, tokenizer = _load(path, DTYPES[dtype])
    from r1kit.models.modeling import save_model

    return save_model(model, tokenizer, out)


def _load(path: Path, dtype: torch.dtype):
    """(a plain, serialisable model, tokenizer) from the GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1kit.models.modeling import _quiet_transformers

    _quiet_transformers()
    folder, name = path.parent, path.name
    kwargs = {}
    try:  # transformers >= 5.x could keep some weights in GGUF blocks; a plain copy needs them unpacked
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, **kwargs)
    except ImportError as e:  # transformers asks for accelerate/gguf at load time
        raise UserError(f"reading {path.name} needs another package ({_first_line(e)}): "
                        "pip install 'r1kit[gguf]'") from None
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        raise UserError(f"transformers cannot load {path.name}: {_first_line(e)}") from None
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the quantizer is what makes save_pretrained refuse
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    try:
        model.load_state_dict(loaded.state_dict())  # strict: every key of the one is a key of the other
    except RuntimeError as e:
        raise UserError(f"{path.name}: the GGUF weights do not fit a {type(model).__name__} "
                        f"({_first_line(e)})") from None
    model.generation_config = copy.deepcopy(loaded.generation_config)
    model.eval()
    return model, tokenizer


def describe_import(out: str | os.PathLike) -> str:
    """One line about a model directory: architecture, parameters, vocabulary, chat template, EOS (read from its
    files, without loading the weights)."""
    from safetensors import safe_open

    out = Path(out)
    config = json.loads((out / "config.json").read_text())
    params = 0
    for shard in sorted(out.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as f:
            for key in f.keys():
                params += _numel(f.get_slice(key).get_shape())
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    chat = bool(tokenizer_config.get("chat_template")) or (out / "chat_template.jinja").is_file()
    arch = ", ".join(config.get("architectures") or [config.get("model_type", "?")])
    eos = tokenizer_config.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    size = f"{params / 1e6:.1f}M" if params >= 10**6 else f"{params:,}"
    return (f"{out}: {arch}, {size} parameters, vocab {config.get('vocab_size')}, "
            f"chat template {'yes' if chat else 'no'}, eos {eos!r}, {config.get('dtype') or config.get('torch_dtype')}")


def _numel(shape) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
