"""The `r1kit` command: parses arguments and dispatches to the commands (train.py, costs.py, commands.py). The
only place that reads argv.

A user's mistake (missing model dir, unknown task, bad flag value, unreadable data file) prints one line,
`r1kit: error: ...`, and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from r1kit.cli import commands, costs, train
from r1kit.cli.flags import (
    Parser,
    add_backend_flag,
    add_device_flags,
    add_eval_flags,
    add_format_flags,
    add_tool_flags,
    positive_int,
    unit_float,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="r1kit", description="Train DeepSeek-R1-style reasoning models; know what it cost.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("base", help="build a tiny base model: tokenizer + Llama pre-trained from scratch; extra "
                       "--section.key=value set the config")
    p.add_argument("--task", default="arithmetic", help="task spec, e.g. arithmetic or arithmetic:digits=2")
    p.add_argument("--size", default="tiny", help="micro (~0.26M parameters), mini (~0.44M), tiny (~1.9M) or "
                   "small (~24M)")
    p.add_argument("--tokenizer", default=None, help="reuse this model directory's tokenizer (default: train one)")
    p.add_argument("--resume", action="store_true", help="continue from OUT's last checkpoint")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=positive_int, default=None, help="pre-training steps")
    p.add_argument("--eval-n", type=positive_int, default=500, help="held-out problems for the final eval")
    p.add_argument("--eval-k", type=positive_int, default=4, help="samples per problem for the final eval")
    add_device_flags(p)

    p = sub.add_parser("eval", help="evaluate a model as the R1 paper does (pass@1 over k samples, cons@k)")
    p.add_argument("--model", required=True, help="a Hugging Face causal-LM directory")
    p.add_argument("--task", required=True, help="task spec: arithmetic, countdown, jsonl:PATH, "
                   "data:PATH, hf:NAME[:CONFIG], gsm8k, math500, aime24, aime25")
    add_eval_flags(p)
    add_format_flags(p)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    add_tool_flags(p, compare=True)
    add_backend_flag(p)
    add_device_flags(p)

    p = sub.add_parser("rl", help="R1-Zero RL (GRPO) from a model; extra --section.key=value set the config")
    p.add_argument("--model", default=None, help="the policy to start from (a Hugging Face model directory)")
    p.add_argument("--task", default=None, help="task spec (default: the config's, else arithmetic)")
    p.add_argument("--out", default=None, help="run directory")
    p.add_argument("--config", default=None, help="a recipe TOML file (see recipes/)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--strict", action="store_true", help="stop when the run doctor finds the run cannot learn")
    p.add_argument("--estimate", action="store_true",
                   help="first predict the run's time and cost (a 3-step calibration) into RUN_DIR/estimate.json")
    add_device_flags(p)

    commands.add_parsers(sub)

    p = sub.add_parser("demo", help="the main job: the tiny R1 pipeline (recipes/tiny-r1.toml)")
    p.add_argument("--out", default="runs/demo", help="run directory")

    p = sub.add_parser("cost", help="cost ledger: `cost paper`, `cost estimate --config R --model M`, `cost RUN_DIR`")
    p.add_argument("what", help="`paper` for DeepSeek's published table, `probe` to re-measure the CPU peak, "
                   "`estimate` to predict an RL run's cost "
                   "before launch (extra --section.key=value set its config), or a run directory")
    p.add_argument("--price", type=float, default=None, help="USD per device-hour (default: the price table)")
    p.add_argument("--config", default=None, help="estimate: a recipe TOML file (see recipes/)")
    p.add_argument("--model", default=None, help="estimate: the policy's model directory")
    p.add_argument("--task", default=None, help="estimate: task spec (default: the config's)")
    p.add_argument("--gpu", default=None, help="estimate for this device kind (A100, H100, H800, H200, B200, cpu)")
    p.add_argument("--count", type=positive_int, default=None, help="estimate for this many devices")
    p.add_argument("--mfu", type=unit_float, default=None, help="estimate at this MFU (0-1) in every phase")
    p.add_argument("--calibrate-steps", type=int, default=None,
                   help="estimate: real RL steps run here first to measure rates and lengths (0: none; default 3 "
                   "when estimating for this machine, else 0)")
    p.add_argument("--completion-len", type=float, default=None, help="estimate: expected completion tokens")
    p.add_argument("--prompt-len", type=float, default=None,
                   help="estimate: mean prompt tokens (default: measured with the model's tokenizer, or by the "
                   "calibration); with --completion-len a model directory holding only config.json will do")
    p.add_argument("--save", default=None, help="estimate: also write it as DIR/estimate.json")

    p = sub.add_parser(
        "plan", help="will it fit? memory per GPU of an RL run before launch (exit 1 when it does not fit)",
        description="Plan an RL run's memory per device (r1kit/cost/memplan.py): parameters, gradients and AdamW state "
        "sharded by FSDP2 over --count ranks, activations, logits, KV cache, reference and inference copies; with "
        "--gpu also its hours and dollars at an assumed MFU (as `r1kit cost estimate --gpu`). Extra "
        "--section.key=value set the config. Exit status: 0 when it fits or the capacity is unknown (no --gpu: "
        "this CPU), 1 when it does not fit, 2 on a usage error.")
    p.add_argument("--config", default=None, help="a recipe TOML file (see recipes/)")
    p.add_argument("--model", default=None, help="the policy's model directory (only its config.json is read)")
    p.add_argument("--gpu", default=None, help="device kind: A100, H100, H800, H200, B200 (default: this CPU, "
                   "capacity unknown)")
    p.add_argument("--count", type=positive_int, default=1, help="devices (ranks) the run is sharded over")
    p.add_argument("--prompt-len", type=positive_int, default=256, help="prompt tokens to plan for (default 256)")

    p = sub.add_parser("report", help="write RUN_DIR/report.html: curves, evaluation, cost, lineage")
    p.add_argument("run_dir", help="a run (or pipeline) directory")
    p.add_argument("--out", default=None, help="the HTML file to write (default RUN_DIR/report.html)")
    for name in ("base", "eval", "rl", "generate", "run", "demo"):  # the commands that may score code tasks
        sub.choices[name].add_argument(
            "--unsafe-local-exec", action="store_true",
            help="code tasks without bubblewrap installed: run the model's programs UNCONFINED on this machine "
            "(default: refuse; see r1kit.sandbox)")
    return parser


COMMANDS = {"eval": train.cmd_eval, "report": costs.cmd_report, "import": commands.cmd_import}
TAKES_OVERRIDES = {"base": train.cmd_base, "rl": train.cmd_rl, "cost": costs.cmd_cost, "plan": costs.cmd_plan,
                   "generate": commands.cmd_generate, "sft": commands.cmd_sft, "distill": commands.cmd_distill,
                   "run": commands.cmd_run, "demo": commands.cmd_demo}  # run, demo: --log.KEY=VALUE only


def main(argv: list[str] | None = None) -> int:
    from r1kit.errors import UserError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [e for e in extra if not (e.startswith("--") and "=" in e)]  # --key=value or --section.key=value
    if args.command not in TAKES_OVERRIDES and extra or bad:
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.command != "rl":
        print(f"r1kit: error: `r1kit {args.command}` runs on one process; under torchrun only `r1kit rl` runs "
              "(sharded over the ranks): launch this command without torchrun", file=sys.stderr)
        return 2
    if getattr(args, "unsafe_local_exec", False):  # code tasks without bubblewrap: unconfined, loudly
        from r1kit.sandbox import allow_unsafe_local_exec

        allow_unsafe_local_exec()
    try:
        if args.command in TAKES_OVERRIDES:
            return TAKES_OVERRIDES[args.command](args, extra)
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"r1kit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("r1kit: interrupted", file=sys.stderr)
        return 130
    except json.JSONDecodeError as e:  # a corrupt run file
        print(f"r1kit: error: unreadable JSON ({e}); the run directory may be damaged", file=sys.stderr)
        return 2
