"""The `r1kit` commands of the distillation and pipeline stages: generate, sft, distill, run (and the demo, and
`import`, which turns a GGUF file into a model directory).

Flags set the common fields; any other config field is `--field=value` (`--eval.n=200`). cli/main.py parses and
dispatches here; nothing below reads argv.
"""

from __future__ import annotations

from pathlib import Path

from r1kit.cli.flags import (
    add_backend_flag,
    add_device_flags,
    add_tool_flags,
    device_overrides,
    positive_int,
    stage_ledger,
    tool_settings,
)
from r1kit.config import ParallelConfig


def add_parsers(sub) -> None:
    p = sub.add_parser("generate", help="rejection-sampled traces: K samples per question, keep the verified ones")
    p.add_argument("--model", required=True, help="the teacher (a Hugging Face model directory)")
    p.add_argument("--task", default="arithmetic", help="task spec (its train split gives the questions)")
    p.add_argument("--n", type=positive_int, default=1000, help="questions")
    p.add_argument("--k", type=positive_int, default=4, help="samples per question")
    p.add_argument("--out", required=True, help="the JSONL file to write")
    p.add_argument("--max-per-prompt", type=int, default=None, help="keep at most M correct samples per question")
    p.add_argument("--keep-duplicates", action="store_true", help="keep identical completions of a question")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--max-new-tokens", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue an interrupted file")
    add_tool_flags(p)
    add_backend_flag(p)
    add_device_flags(p)

    p = sub.add_parser("sft", help="supervised fine-tuning on (prompt, completion) rows, completion-only loss")
    p.add_argument("--data", required=True, help="JSONL rows with prompt and completion (r1kit generate)")
    p.add_argument("--out", required=True, help="run directory (the model goes to OUT/model)")
    p.add_argument("--model", default=None, help="the student: a Hugging Face model directory")
    p.add_argument("--student-size", default=None, help="... or a fresh Llama of this size: micro, tiny, small")
    p.add_argument("--tokenizer", default=None, help="tokenizer for a fresh student (default: the data's teacher)")
    add_tool_flags(p)
    _train_flags(p)

    p = sub.add_parser("distill", help="distil a teacher into a student: sequence | logit | on-policy")
    p.add_argument("--teacher", required=True, help="the teacher (a Hugging Face model directory)")
    p.add_argument("--out", required=True, help="run directory (the student goes to OUT/model)")
    p.add_argument("--method", default="sequence", choices=["sequence", "logit", "on-policy"])
    p.add_argument("--student", default=None, help="the student: a Hugging Face model directory")
    p.add_argument("--student-size", default=None, help="... or a fresh Llama of this size on the teacher's "
                   "tokenizer")
    p.add_argument("--data", default=None, help="teacher traces (default: generate them into OUT/traces.jsonl)")
    p.add_argument("--n", type=positive_int, default=1000, help="questions to generate traces for")
    p.add_argument("--k", type=positive_int, default=4, help="samples per question when generating")
    p.add_argument("--steps", type=positive_int, default=None, help="on-policy: optimiser steps")
    _train_flags(p)

    p = sub.add_parser("run", help="run a multi-stage pipeline recipe (skips finished stages, resumes the rest)")
    p.add_argument("recipe", help="a pipeline recipe, e.g. recipes/tiny-r1.toml")
    p.add_argument("--out", default=None, help="run directory (default: runs/RECIPE_NAME)")
    p.add_argument("--check", action="store_true", help="only check the recipe and show the plan")

    p = sub.add_parser("import", help="turn a GGUF file (llama.cpp) into a Hugging Face model directory")
    p.add_argument("--gguf", required=True, help="the .gguf file")
    p.add_argument("--out", required=True, help="the model directory to write (new or empty)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights' dtype")


def _train_flags(p) -> None:
    p.add_argument("--task", default=None, help="task for the held-out evaluation (default: the data's)")
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=None, help="examples per optimiser step")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (cosine decay to 1/10)")
    p.add_argument("--max-len", type=positive_int, default=None, help="tokens per packed row")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--eval-n", type=positive_int, default=None, help="held-out problems for the final eval")
    p.add_argument("--eval-k", type=positive_int, default=None, help="samples per problem for the final eval")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    add_device_flags(p)


def _config(cls, args, fields: dict, overrides: list[str], tools: tuple[list, dict] = ([], {})):
    """A config dataclass from flags (dest -> field; None = not given) then --field=value overrides."""
    from r1kit.config import apply_overrides, build

    data = {field: getattr(args, dest) for dest, field in fields.items() if getattr(args, dest, None) is not None}
    if tools[0]:
        data.update(tools=tools[0], tool_use=tools[1])
    if device_overrides(args):
        data["parallel"] = device_overrides(args)
    if getattr(args, "eval_n", None):
        data.setdefault("eval", {})["n"] = args.eval_n
    if getattr(args, "eval_k", None):
        data.setdefault("eval", {})["k"] = args.eval_k
    return build(cls, apply_overrides(data, overrides))


_TRAIN = {"task": "task", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "max_len": "max_len",
          "seed": "seed"}


def cmd_generate(args, overrides) -> int:
    from r1kit.loops.generate import GenerateConfig, describe, run_generate

    cfg = _config(GenerateConfig, args, {"model": "model", "task": "task", "n": "n", "k": "k", "out": "out",
                                         "max_per_prompt": "max_per_prompt", "temperature": "temperature",
                                         "top_p": "top_p", "max_new_tokens": "max_new_tokens", "seed": "seed",
                                         "backend": "backend"},
                  overrides + (["--dedup=false"] if args.keep_duplicates else []), tool_settings(args))
    print(describe(run_generate(cfg, resume=args.resume, ledger_factory=stage_ledger)))
    return 0


def cmd_sft(args, overrides) -> int:
    from r1kit.loops.sft import SFTConfig, describe, run_sft

    cfg = _config(SFTConfig, args, {"data": "data", "out": "out", "model": "model", "student_size": "student_size",
                                    "tokenizer": "tokenizer", **_TRAIN}, overrides, tool_settings(args))
    summary = run_sft(cfg, resume=args.resume, ledger_factory=stage_ledger)
    print(describe(summary))
    return 0


def cmd_distill(args, overrides) -> int:
    """sequence = generate + SFT (R1's method); logit and on-policy = token-level KD (shared tokenizer)."""
    from r1kit.loops.distill import DistillConfig, run_distill
    from r1kit.loops.distill import describe as describe_kd
    from r1kit.loops.generate import GenerateConfig, run_generate
    from r1kit.loops.generate import describe as describe_gen
    from r1kit.loops.sft import SFTConfig, run_sft
    from r1kit.loops.sft import describe as describe_sft

    data = args.data
    if data is None and args.method in ("sequence", "logit"):
        data = str(Path(args.out) / "traces.jsonl")
        gen = GenerateConfig(model=args.teacher, task=args.task or "arithmetic", n=args.n, k=args.k, out=data,
                             seed=args.seed or 0, parallel=ParallelConfig(**device_overrides(args)))
        print(describe_gen(run_generate(gen, resume=True, ledger_factory=stage_ledger)))
    if args.method == "sequence":
        args.data, args.model = data, args.student
        cfg = _config(SFTConfig, args, {"data": "data", "out": "out", "model": "model", **_TRAIN}, overrides)
        cfg.student_size = args.student_size or ""
        cfg.tokenizer = cfg.tokenizer or (args.teacher if args.student_size else "")
        print(describe_sft(run_sft(cfg, resume=args.resume, ledger_factory=stage_ledger)))
        return 0
    args.data = data
    cfg = _config(DistillConfig, args, {"teacher": "teacher", "out": "out", "method": "method", "student": "student",
                                        "data": "data", "steps": "steps", "student_size": "student_size", **_TRAIN},
                  overrides)
    print(describe_kd(run_distill(cfg, resume=args.resume, ledger_factory=stage_ledger)))
    return 0


def log_overrides(overrides: list[str]) -> dict:
    """A pipeline command's `--log.KEY=VALUE` flags as [log] keys (the recipe holds every other setting)."""
    from r1kit.config import apply_overrides
    from r1kit.errors import UserError

    other = [o for o in overrides if not o.startswith("--log.")]
    if other:
        raise UserError(f"unrecognized arguments: {' '.join(other)} (a pipeline takes --log.KEY=VALUE; its recipe "
                        "holds the other settings)")
    return apply_overrides({}, overrides).get("log", {})


def run_recipe(recipe: str, out: str, check: bool = False, show_summary: bool = True, log: dict | None = None) -> int:
    """`r1kit run`: check the whole recipe, run its stages in order, print the summary table."""
    from r1kit.cli.pipeline import check_resumable, load_pipeline, run_pipeline, stage_state
    from r1kit.reporting.summary import format_summary, summary_rows

    pipe = load_pipeline(recipe, out, log)
    check_resumable(pipe)
    n = len(pipe.stages)
    if check:
        for i, s in enumerate(pipe.stages, 1):
            ups = ", ".join(s.upstream) or "-"
            print(f"[{i}/{n}] {s.name:<16} {s.kind:<9} from {ups:<28} {stage_state(pipe.out, s)}")
        print(f"recipe {recipe}: {n} stages, checked")
        return 0
    order = {s.name: i for i, s in enumerate(pipe.stages, 1)}

    def announce(stage, state):
        word = {"done": "finished earlier, skipped", "partial": "resuming", "new": "running"}[state]
        print(f"\n[{order[stage.name]}/{n}] {stage.name} ({stage.kind}): {word}", flush=True)

    result = run_pipeline(recipe, out, ledger_factory=stage_ledger, on_stage=announce, log=log)
    if show_summary:
        print(f"\npipeline {recipe} -> {out}\n")
        print(format_summary(summary_rows(out)))
    if any(v == "interrupted" for v in result["status"].values()):
        return 1
    return 0


def cmd_import(args) -> int:
    from r1kit.models.gguf import describe_import, import_gguf

    print(describe_import(import_gguf(args.gguf, args.out, args.dtype)))
    return 0


def find_recipe(name: str) -> str:
    """A shipped recipe: ./recipes/NAME, else the repository's recipes/ beside the package source."""
    from r1kit.errors import UserError

    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        path = root / "recipes" / name
        if path.is_file():
            return str(path)
    raise UserError(f"recipe {name!r} not found: run from the r1kit repository, or give --config PATH")


def cmd_run(args, overrides: list[str]) -> int:
    out = args.out or str(Path("runs") / Path(args.recipe).stem)
    return run_recipe(args.recipe, out, check=args.check, log=log_overrides(overrides))


def cmd_demo(args, overrides: list[str]) -> int:
    """The tiny R1 pipeline (recipes/tiny-r1.toml); then the cost ledger, estimate vs measured for the RL stages,
    the HTML report, and last the summary table of every model."""
    from r1kit.cost.ledger import format_table, read_ledger, summarize
    from r1kit.cost.views import estimates_beside_measured
    from r1kit.reporting.report import write_report
    from r1kit.reporting.summary import format_summary, summary_rows

    recipe = find_recipe("tiny-r1.toml")
    code = run_recipe(recipe, args.out, show_summary=False, log=log_overrides(overrides))
    print(f"\ncost of this run by stage and phase (r1kit cost {args.out}):")
    print(format_table(summarize(read_ledger(args.out))))
    for table in estimates_beside_measured(args.out):
        print("\n" + table)
    print(f"\nreport: {write_report(args.out)}")
    print(f"\npipeline {recipe} -> {args.out}: every model on the same held-out set\n")
    print(format_summary(summary_rows(args.out)))
    return code
