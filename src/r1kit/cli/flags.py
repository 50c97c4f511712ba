"""What the commands' parsers share: the one-line-error parser, argument types, flag groups, and how flags become
config fields. Nothing here imports torch.
"""

from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2, no usage dump
        self.exit(2, f"r1kit: error: {message} (see `{self.prog} --help`)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 2:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range")
    return value


def add_eval_flags(p: argparse.ArgumentParser) -> None:
    """Evaluation flags; one left out takes the task's default (a preset's paper settings), else EvalConfig's."""
    p.add_argument("--split", default=None, choices=["train", "test", "all"],
                   help="problems to evaluate on (default: test; all rows of an unsplit data file)")
    p.add_argument("--n", type=positive_int, default=None,
                   help="number of problems (default: every one of a dataset, 500 of a generated task)")
    p.add_argument("--k", type=positive_int, default=None, help="samples per problem (default 4; a preset's)")
    p.add_argument("--temperature", type=unit_float, default=None, help="default 0.6")
    p.add_argument("--top-p", type=unit_float, default=None, help="default 0.95")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="default 128 (a preset's: 32768)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="default 128")
    p.add_argument("--seed", type=int, default=None, help="default 0")


def add_format_flags(p: argparse.ArgumentParser) -> None:
    """The task's format options (tasks/formats.py), over whatever the task spec says."""
    p.add_argument("--prompt-format", default=None,
                   help="auto (chat if the tokenizer has a chat template, else r1-zero) | chat | r1-zero | "
                   "a template with {question}")
    p.add_argument("--answer-format", default=None, help="auto | think-answer | think-boxed | boxed | gsm8k")
    p.add_argument("--system", default=None, help="system prompt of a chat prompt")
    p.add_argument("--instruction", default=None, help="appended to each question: auto | r1-math | none | text")


def add_device_flags(p: argparse.ArgumentParser) -> None:
    """The run's device and precision (r1kit/parallel/engine.py), for every command that runs a model."""
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="auto (default): CUDA when torch sees a GPU (under torchrun each rank its LOCAL_RANK GPU)")
    p.add_argument("--dtype", default=None, choices=["auto", "fp32", "bf16", "bf16-pure"],
                   help="auto (default): bf16 on CUDA (fp32 master weights), fp32 on a CPU; bf16-pure: bf16 "
                   "weights and optimiser state")


def add_backend_flag(p: argparse.ArgumentParser) -> None:
    """The rollout engine that samples (r1kit/rollout)."""
    p.add_argument("--backend", default=None, choices=["auto", "r1kit", "vllm"],
                   help="rollout engine: r1kit (default: its own sampler), vllm (in-process; `make vllm-venv`), "
                   "auto (vLLM on a GPU when installed)")


def device_overrides(args) -> dict:
    """{"device": ..., "dtype": ...} for the flags given: a config's [parallel] section."""
    return {k: getattr(args, k) for k in ("device", "dtype") if getattr(args, k, None) is not None}


def format_overrides(args) -> dict:
    return {k: getattr(args, k) for k in ("prompt_format", "answer_format", "system", "instruction")
            if getattr(args, k, None) is not None}


def eval_config(args, task):
    from r1kit.evaluation.metrics import eval_config_for

    return eval_config_for(task, split=args.split, n=args.n, k=args.k, temperature=args.temperature,
                           top_p=args.top_p, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                           seed=args.seed)


def stage_ledger(run_dir, stage: str, model_config: dict | None = None):
    """The cost ledger of one stage of a run (the loops' `ledger_factory`)."""
    from r1kit.cost.devices import ledger_for

    return ledger_for(run_dir, stage, model_config=model_config)


def add_tool_flags(p: argparse.ArgumentParser, compare: bool = False) -> None:
    """Tools the model may call while it answers (r1kit/tools): multi-turn samples."""
    p.add_argument("--tools", default=None, help="comma-separated tools the model may call, e.g. python (default: "
                   "none)")
    p.add_argument("--tool-format", default=None, choices=["auto", "code", "chat"],
                   help="how calls are written: code (```python blocks), chat (the chat template's tool calls), "
                   "auto (chat for chat prompts)")
    if compare:
        p.add_argument("--compare-tools", action="store_true",
                       help="also evaluate without the tools and show both side by side")


def tool_settings(args) -> tuple[list[str], dict]:
    """(tool names, [tool_use] fields) from the tool flags."""
    names = [n.strip() for n in (getattr(args, "tools", None) or "").split(",") if n.strip()]
    return names, ({"format": args.tool_format} if getattr(args, "tool_format", None) else {})
