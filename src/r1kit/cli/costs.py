"""The `r1kit` commands about cost and reports: cost (paper, probe, estimate, a run's ledger), plan, report."""

from __future__ import annotations

import sys

from r1kit.cli.flags import stage_ledger
from r1kit.cli.train import rl_config_from


def cmd_cost_estimate(args, overrides: list[str]) -> int:
    """`r1kit cost estimate`: calibrate the RL config here for a few steps, then predict the whole run."""
    import types

    from r1kit.cost.devices import detect_device
    from r1kit.cost.estimate import estimate_from_config, write_estimate
    from r1kit.cost.views import format_estimate
    from r1kit.loops.rl import run_rl

    flags = types.SimpleNamespace(config=args.config, model=args.model, task=args.task, out=None, strict=False)
    cfg = rl_config_from(flags, overrides)
    here = detect_device()[0]
    steps = args.calibrate_steps
    if steps is None:  # calibrating a big model on this machine for another device would take too long
        steps = 3 if args.gpu in (None, here) else 0
    if steps > 0:
        print(f"calibrating: {steps} RL steps of this config on this machine ({here}) ...", file=sys.stderr)
    est = estimate_from_config(cfg, run_rl, device_kind=args.gpu, device_count=args.count, mfu=args.mfu,
                               price=args.price, calibrate_steps=max(steps, 0),
                               expected_completion_len=args.completion_len, ledger_factory=stage_ledger,
                               prompt_len=args.prompt_len)
    print(format_estimate(est))
    if args.save:
        print(f"written to {write_estimate(args.save, est)}")
    return 0


def cmd_plan(args, overrides: list[str]) -> int:
    """`r1kit plan`: the RL config's memory per device; on a GPU also its time and cost at the assumed MFU."""
    import types

    from r1kit.cost.estimate import estimate_rl, load_model_config
    from r1kit.cost.memplan import format_plan, memory_plan
    from r1kit.errors import UserError

    flags = types.SimpleNamespace(config=args.config, model=args.model, task=None, out=None, strict=False)
    cfg = rl_config_from(flags, overrides)
    if not cfg.model:
        raise UserError("plan needs the policy's model directory (--model DIR, or model = in the recipe)")
    model_config = load_model_config(cfg.model)
    plan = memory_plan(model_config, cfg, args.count, args.gpu, prompt_len=args.prompt_len)
    print(format_plan(plan))
    if plan.device == "cpu":  # a CPU has no table peak: its rates need a calibration run
        print(f"time and cost: a CPU estimate needs a calibration, run `r1kit cost estimate --model {cfg.model}`"
              + (f" --config {args.config}" if args.config else ""))
    else:  # the same numbers as `r1kit cost estimate --gpu ... --count ...` without a calibration
        est = estimate_rl(cfg, model_config, plan.device, args.count, prompt_len=args.prompt_len)
        t = est["total"]
        usd = "-" if t["usd"] is None else f"${t['usd']:,.0f}"
        print(f"time and cost (as `r1kit cost estimate --gpu {plan.device} --count {args.count}`): "
              f"{t['wall_s'] / 3600:.3g} h wall, {t['device_hours']:.4g} GPU-hours, {usd}")
        for note in est["notes"]:
            if note.startswith("ASSUMPTION"):
                print(f"  {note}")
    return 1 if plan.fits is False else 0


def cmd_cost(args, overrides: list[str] | None = None) -> int:
    from pathlib import Path

    from r1kit.cost.ledger import format_table, read_ledger, summarize
    from r1kit.cost.paper import format_paper_table
    from r1kit.errors import UserError

    if args.what == "estimate":
        return cmd_cost_estimate(args, overrides or [])
    if overrides:
        raise UserError(f"unrecognized arguments: {' '.join(overrides)} (config overrides go with `cost estimate`)")
    if args.what == "paper":
        print(format_paper_table(args.price or 2.0))
        return 0
    if args.what == "probe":  # re-measure the CPU's matmul peak (MFU's denominator); the best value is kept
        from r1kit.cost.devices import cpu_model, cpu_peak_flops

        peak = cpu_peak_flops(refresh=True, seconds=2.0)
        print(f"CPU peak ({cpu_model()}): {peak / 1e9:.1f} GFLOP/s fp32 on all threads (cached; best seen)")
        return 0
    path = Path(args.what)
    if not path.exists():
        raise UserError(f"{args.what!r} is neither `paper` nor an existing run directory")
    records = read_ledger(path)
    if not records:
        raise UserError(f"no ledger.jsonl under {args.what!r}: is it an r1kit run directory?")
    print(format_table(summarize(records)))
    from r1kit.cost.views import estimates_beside_measured

    for text in estimates_beside_measured(path):
        print("\n" + text)
    return 0


def cmd_report(args) -> int:
    from r1kit.reporting.report import write_report

    print(f"wrote {write_report(args.run_dir, out=args.out)}")
    return 0
