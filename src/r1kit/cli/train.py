"""The `r1kit` commands that train or evaluate one model: base, rl, eval."""

from __future__ import annotations

import os
import sys

from r1kit.cli.flags import device_overrides, eval_config, format_overrides, stage_ledger


def cmd_base(args, overrides: list[str]) -> int:
    from r1kit.config import apply_overrides, build
    from r1kit.loops.base import BaseConfig, describe, run_base

    data = {"task": args.task, "size": args.size, "out": args.out, "seed": args.seed,
            "eval": {"n": args.eval_n, "k": args.eval_k}, "parallel": device_overrides(args)}
    if args.steps:
        data["steps"] = args.steps
    if args.tokenizer:
        data["tokenizer"] = args.tokenizer
    cfg = build(BaseConfig, apply_overrides(data, overrides))
    summary = run_base(cfg, ledger_factory=stage_ledger, resume=args.resume)
    print(describe(summary))
    return 0


def rl_config_from(args, overrides: list[str]):
    """RLConfig from a recipe file, then --section.key=value overrides, then the explicit flags."""
    from r1kit.algo.rl_config import RLConfig
    from r1kit.config import apply_overrides, build, load_toml

    data = load_toml(args.config) if args.config else {}
    data = {k: v for k, v in data.items() if k != "recipe"}  # [recipe] holds notes for people
    data = apply_overrides(data, overrides)
    for key in ("model", "task", "out"):
        if getattr(args, key):
            data[key] = getattr(args, key)
    if args.strict:
        data.setdefault("doctor", {})["strict"] = True
    data.setdefault("parallel", {}).update(device_overrides(args))
    return build(RLConfig, data)


def cmd_rl(args, overrides: list[str]) -> int:
    from r1kit.evaluation.evaluate import format_eval_table
    from r1kit.loops.rl import run_rl

    cfg = rl_config_from(args, overrides)
    if args.estimate and not args.resume and os.environ.get("WORLD_SIZE", "1") == "1":
        from r1kit.cost.estimate import estimate_from_config, write_estimate
        from r1kit.cost.views import format_estimate

        est = estimate_from_config(cfg, run_rl, calibrate_steps=3, ledger_factory=stage_ledger)
        print(format_estimate(est))
        write_estimate(cfg.out, est)
    from r1kit.parallel.dist import shutdown

    try:
        summary = run_rl(cfg, resume=args.resume, ledger_factory=stage_ledger)
    finally:
        shutdown()  # leave the process group cleanly (NCCL warns, or hangs, at exit otherwise)
    if summary.get("eval") and int(os.environ.get("RANK", "0")) == 0:
        if summary.get("before"):
            b = summary["before"]
            print(f"before RL: held-out pass@1 {100 * b['pass@1']:.1f}% (n={b['problems']} x k={cfg.eval.k})")
        print(format_eval_table(summary["eval"], title=f"after RL: {cfg.out}/model"))
    return 0


def cmd_eval(args) -> int:
    from r1kit.config import ParallelConfig
    from r1kit.evaluation.evaluate import evaluate, format_eval_table
    from r1kit.models.modeling import load_model
    from r1kit.parallel.engine import resolve_engine
    from r1kit.reporting.runlog import write_json
    from r1kit.tasks import get_task

    task = get_task(args.task, **format_overrides(args))
    cfg = eval_config(args, task)
    engine = resolve_engine(ParallelConfig(**device_overrides(args)))
    model, tokenizer = load_model(args.model, dtype=engine.compute_dtype)
    model = model.to(engine.device)
    from r1kit.tasks.prompting import format_warnings, make_prompter

    for w in format_warnings(make_prompter(task, tokenizer), args.model):
        print(f"r1kit doctor: {w}", file=sys.stderr)
    from r1kit.cli.flags import tool_settings
    from r1kit.evaluation.evaluate import format_tools_comparison
    from r1kit.rollout import make_engine, resolve_backend
    from r1kit.tools import make_toolbox
    from r1kit.tools.base import ToolConfig

    names, tool_fields = tool_settings(args)
    prompter = make_prompter(task, tokenizer)
    tools = make_toolbox(names, ToolConfig(**tool_fields), chat=prompter.chat, tokenizer=tokenizer,
                         system=prompter.system)
    if args.compare_tools and tools is None:
        from r1kit.errors import UserError

        raise UserError("--compare-tools compares with and without the tools named by --tools: give --tools")
    for w in tools.notes() if tools else []:
        print(f"r1kit doctor: {w}", file=sys.stderr)
    budget = tools.config.total_tokens(cfg.max_new_tokens) if tools else cfg.max_new_tokens
    backend = resolve_backend(args.backend or "r1kit", engine.device)
    longest = 0
    if backend == "vllm":  # the engine's context: the longest prompt of the evaluation + the completion budget
        prompter = make_prompter(task, tokenizer)
        longest = max(len(p) for p in prompter.encode(task.problems(cfg.split, cfg.n, seed=cfg.seed)))
    sampler = make_engine(backend, model, source=args.model, max_len=longest + budget, seed=cfg.seed,
                          device=engine.device, options={"max_num_seqs": cfg.batch_size})
    try:
        with engine.autocast():
            result = evaluate(model, tokenizer, task, cfg, engine=sampler, tools=tools)
            bare = evaluate(model, tokenizer, task, cfg, engine=sampler) if tools and args.compare_tools else None
    finally:
        sampler.close()
    result["model"] = args.model
    result["backend"] = sampler.name
    title = f"evaluation: {args.model} on {task.name} / {cfg.split}"
    print(format_eval_table(result, title=title))
    if bare is not None:
        print("\n" + format_tools_comparison(result, bare, title=f"{title}: with and without tools"))
        result["without_tools"] = bare
    if args.json:
        write_json(args.json, result)
    return 0
