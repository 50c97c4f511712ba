"""Configs: dataclasses whose fields carry their documentation, filled from TOML and `--section.key=value`.

Unknown keys and values of the wrong type are UserErrors at load time, naming the key and what was expected.
Pure Python.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path

import tomllib

from r1kit.errors import UserError


def _coerce(value, annotation, where: str):
    """Check (and gently convert: int -> float, str -> number from the command line) one value."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except UserError:
                pass
        raise UserError(f"{where}: {value!r} is not a valid {annotation}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(annotation) or (object,)
        return [_coerce(v, inner, where) for v in value]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a table, got {value!r}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise UserError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, str):
            try:
                value = annotation(value) if annotation is float else int(value)
            except ValueError:
                raise UserError(f"{where}: expected {annotation.__name__}, got {value!r}") from None
        if annotation is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if annotation is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, annotation):
            raise UserError(f"{where}: expected {annotation.__name__}, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def build(cls, data: dict, where: str = ""):
    """Instantiate dataclass `cls` from `data`, recursing into dataclass fields; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise UserError(f"unknown config key {name!r}; known keys here: {known}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f"{name}: expected a [{name}] table")
            kwargs[key] = build(hint, value, name)
        else:
            kwargs[key] = _coerce(value, hint, name)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UserError(f"config {where or cls.__name__}: {e}") from None


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: invalid TOML: {e}") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings onto a nested dict (values stay strings; `build` converts them)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UserError(f"override {item!r} is not of the form section.key=value")
        *path, last = key.lstrip("-").split(".")
        node = data
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r}: {part!r} is not a section")
        node[last] = value
    return data


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# The LoRA options every training loop takes (r1kit/models/lora.py applies them); here because configs are pure Python.
@dataclasses.dataclass
class LoraConfig:
    rank: int = 0  # LoRA rank r; 0 = full fine-tuning
    alpha: float = 32.0  # scale numerator: the update is (alpha / rank) * B A
    dropout: float = 0.0  # dropout on the LoRA input (0 keeps rollouts and training the same function)
    target_modules: str = "all-linear"  # peft's name for every linear layer but the output head, or a comma list

    def __post_init__(self) -> None:
        if self.rank < 0 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise UserError("lora: rank must be >= 0 (0: full fine-tuning), alpha > 0 and dropout in [0, 1)")

    @property
    def enabled(self) -> bool:
        return self.rank > 0


# Device, precision and sharding: one decision per run, made at the top of a loop (r1kit/parallel/) and passed down.
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "fp32", "bf16", "bf16-pure")
ACTIVATION_CHECKPOINTING = ("auto", "on", "off")


@dataclasses.dataclass
class ParallelConfig:
    device: str = "auto"  # auto (CUDA when present, each torchrun rank its LOCAL_RANK GPU) | cpu | cuda
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 (bf16 compute, fp32 master weights and
    # gradient reduction) | bf16-pure (bf16 weights, gradients and optimiser state)
    reshard_after_forward: bool = True  # FSDP2: free each layer's gathered weights after its forward (ZeRO-3)
    activation_checkpointing: str = "auto"  # recompute each decoder layer in the backward; auto: on for RL on GPUs
    logits_chunk: int = 1024  # positions per chunk of log-prob/entropy: bounds the fp32 (tokens, vocab) buffer
    compile: str = "auto"  # torch.compile the sampler's decoding step and the shared-prompt training forward:
    # auto (when a C++ compiler / Triton is there and the work pays; R1KIT_COMPILE=0/1 decides first) | on | off

    @property
    def compile_flag(self) -> bool | None:
        """True/False when set, None for auto (r1kit.rollout.fast.compile_wanted decides)."""
        return {"on": True, "off": False}.get(self.compile)

    def __post_init__(self) -> None:
        checks = [(self.device, DEVICES, "device"), (self.dtype, DTYPES, "dtype"),
                  (self.activation_checkpointing, ACTIVATION_CHECKPOINTING, "activation_checkpointing"),
                  (self.compile, ("auto", "on", "off"), "compile")]
        for value, allowed, name in checks:
            if value not in allowed:
                raise UserError(f"parallel.{name} = {value!r}: use one of {', '.join(allowed)}")
        if self.logits_chunk < 1:
            raise UserError("parallel.logits_chunk must be at least 1 (positions per log-prob chunk)")


# How every loop evaluates a model on held-out problems (evaluation/evaluate.py), the paper's protocol; here
# because the RL, SFT, distillation and base configs all hold one.
@dataclasses.dataclass
class EvalConfig:
    split: str = "test"  # never the training split for learning results; `all`: every row of a data task
    n: int | None = 500  # problems; None: every problem of the split (a dataset's, see eval_config_for)
    k: int = 4  # samples per problem
    temperature: float = 0.6  # the paper's evaluation settings
    top_p: float = 0.95
    max_new_tokens: int = 128
    batch_size: int = 128  # completions sampled together
    seed: int = 0  # problem draw and sampling

    def __post_init__(self) -> None:
        if (self.n is not None and self.n < 1) or self.k < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise UserError("eval: n, k, batch_size and max_new_tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise UserError("eval: temperature must be >= 0 and top_p in (0, 1]")


# Where a run's metrics go besides its metrics.jsonl (r1kit/reporting/trackers.py); every loop's config holds one.
REPORT_TO = ("tensorboard", "trackio", "wandb")  # reporting.trackers.TRACKERS (this module is pure Python)


@dataclasses.dataclass
class LogConfig:
    report_to: list[str] = dataclasses.field(default_factory=lambda: ["tensorboard"])  # any of tensorboard
    # (RUN_DIR/tb), trackio (local SQLite; `pip install 'r1kit[trackio]'`), wandb (offline unless you configured
    # it; `pip install 'r1kit[wandb]'`); [] for metrics.jsonl alone
    project: str = ""  # the trackio/wandb project; "": the name of the run directory's parent folder
    name: str = ""  # the run's name there; "": the run directory's name (a pipeline stage's name)

    def __post_init__(self) -> None:
        unknown = [t for t in self.report_to if t not in REPORT_TO]
        if unknown:
            raise UserError(f"log.report_to: unknown tracker {unknown[0]!r}: use any of {', '.join(REPORT_TO)}")
        if len(set(self.report_to)) != len(self.report_to):
            raise UserError(f"log.report_to names a tracker twice: {self.report_to}")
