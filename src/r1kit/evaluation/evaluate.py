"""Evaluation as the R1 paper does it: k samples per problem at temperature 0.6, top-p 0.95.

Reports pass@1 (mean correctness over the k samples, with a 95% confidence interval across problems), cons@k
(majority vote over extracted answers), pass@k (unbiased estimator), format rate, truncation rate and mean
completion length. Correctness comes from `task.score`, the same verifier the RL reward calls.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict

import torch

from r1kit.config import EvalConfig
from r1kit.errors import UserError
from r1kit.evaluation.metrics import majority, summarize
from r1kit.models.lora import merged_copy
from r1kit.models.modeling import eos_ids
from r1kit.parallel import dist
from r1kit.reporting.runlog import progress_bar
from r1kit.rollout import RolloutEngine, SamplerEngine
from r1kit.rollout.multiturn import run_episodes, tool_counts, tool_rates
from r1kit.rollout.sampler import SamplingParams
from r1kit.tasks.base import sandbox_usage
from r1kit.tasks.prompting import make_prompter


def evaluate(
    model, tokenizer, task, cfg: EvalConfig, *, progress: bool = True, ledger=None, keep_samples: int = 8,
    shard: bool = False, engine: RolloutEngine | None = None, tools=None,
) -> dict:
    """Evaluate `model` on `cfg.n` problems of `task`'s split; returns the metrics and a few sample completions.

    `shard=True` under torchrun: every rank calls it, samples every world-th batch with its own generator, and
    every rank gets the whole result (one process samples them all, with one generator, as before). `engine`:
    the rollout engine to sample with (e.g. vLLM, holding `model`'s weights); r1kit's sampler on `model` if None.
    `tools` (a tools.ToolBox): every sample a multi-turn trajectory with tool calls (rollout/multiturn.py), its
    length the model's tokens only; the metrics add the tool-use rates."""
    rank, world = (dist.rank(), dist.world()) if shard and dist.active() else (0, 1)
    problems = task.problems(cfg.split, cfg.n, seed=cfg.seed)
    if not problems:
        raise UserError(f"task {task.name!r} has no {cfg.split} problems to evaluate on")
    prompter = make_prompter(task, tokenizer)
    if tools is not None:
        tools.attach(prompter)
    if progress:
        print(f"eval {task.name}: {prompter.describe()}", flush=True)
    prompt_ids = prompter.encode(problems)
    jobs = [(i, j) for i in range(len(problems)) for j in range(cfg.k)]  # (problem, sample) pairs
    # Sort by prompt length so batches pad little; the order of results is restored by index.
    jobs.sort(key=lambda ij: len(prompt_ids[ij[0]]))
    params = SamplingParams(cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    gen = torch.Generator().manual_seed(cfg.seed if world == 1 else cfg.seed * 1_000_003 + rank)
    stops = eos_ids(model, tokenizer)
    results: dict[tuple[int, int], tuple] = {}
    t0 = time.perf_counter()
    n_prompt = n_gen = 0
    phase = ledger.phase("evaluation") if ledger is not None else nullcontext()
    with (
        phase as ph,
        progress_bar(
            total=len(jobs),
            desc=f"eval {task.name}/{cfg.split}",
            unit="sample",
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        for b, start in enumerate(range(0, len(jobs), cfg.batch_size)):
            chunk = jobs[start : start + cfg.batch_size]
            if b % world != rank:  # another rank's batch
                continue
            batch = [prompt_ids[i] for i, _ in chunk]
            sampler = engine or SamplerEngine(model)
            if tools is None:
                out = sampler.sample(batch, params, eos_ids=stops, pad_id=tokenizer.pad_token_id, generator=gen)
                tokens, finished, episodes = out.tokens, out.finished, [None] * len(batch)
            else:
                episodes = run_episodes(sampler, batch, params, tools=tools, tokenizer=tokenizer, eos_ids=stops,
                                        pad_id=tokenizer.pad_token_id, generator=gen, return_logprobs=False)
                tokens, finished = [e.tokens for e in episodes], [e.finished for e in episodes]
            texts = [tokenizer.decode(toks, skip_special_tokens=True) for toks in tokens]
            scores = prompter.score_many([problems[i] for i, _ in chunk], texts)  # code tasks: in parallel
            for (i, j), toks, fin, text, score, ep in zip(chunk, tokens, finished, texts, scores, episodes):
                results[(i, j)] = (score, len(toks) if ep is None else ep.model_tokens, fin, text, ep)
            n_prompt += sum(len(b) for b in batch)
            n_gen += sum(map(len, tokens))
            bar.update(len(chunk) * world)
        if world > 1:  # every rank's samples, on every rank
            results = {k: v for part in dist.all_gather_objects(results) for k, v in part.items()}
            n_prompt, n_gen = (int(x) for x in dist.all_reduce_sum([n_prompt, n_gen]))
        if ph is not None:
            ph.add(
                prompt_tokens=n_prompt,
                generated_tokens=n_gen,
                seq_len=max(len(p) for p in prompt_ids) + cfg.max_new_tokens,
                **sandbox_usage([r[0] for r in results.values()]),
            )
    seconds = time.perf_counter() - t0

    correct, cons, formatted, lengths, truncated, examples = [], [], 0, [], 0, []
    for i, problem in enumerate(problems):
        rows = [results[(i, j)] for j in range(cfg.k)]
        flags = [r[0].correct for r in rows]
        correct.append(flags)
        vote = majority([r[0].answer for r in rows])
        cons.append(any(r[0].correct for r in rows if vote is not None and r[0].answer == vote))
        formatted += sum(r[0].formatted for r in rows)
        lengths += [r[1] for r in rows]
        truncated += sum(not r[2] for r in rows)
        if len(examples) < keep_samples:
            examples.append(
                {
                    "question": problem.question,
                    "answer": problem.answer,
                    "completion": rows[0][3],
                    "correct": rows[0][0].correct,
                }
            )
    total = len(problems) * cfg.k
    metrics = summarize(correct, cons, cfg.k)
    if world > 1:
        metrics["ranks"] = world
    metrics.update(
        {
            "format_rate": formatted / total,
            "truncation_rate": truncated / total,
            "mean_completion_tokens": sum(lengths) / total,
            "problems": len(problems),
            "samples": total,
            "seconds": seconds,
            "generated_tokens": n_gen,
            "tokens_per_s": n_gen / max(seconds, 1e-9),
        }
    )
    if tools is not None:
        metrics.update(tool_rates(tool_counts([r[4] for r in results.values()])))
        metrics["tools"] = sorted(tools.tools)
    return {"task": task.name, "settings": asdict(cfg), "formats": prompter.settings(), "metrics": metrics,
            "examples": examples}


def format_eval_table(result: dict, title: str | None = None) -> str:
    """The evaluation result as a small fixed-width table."""
    m, s = result["metrics"], result["settings"]
    k = s["k"]
    lines = [
        title or f"evaluation: {result['task']} / {s['split']}",
        f"  problems {m['problems']}, k={k} samples each, T={s['temperature']}, top-p={s['top_p']}, "
        f"max {s['max_new_tokens']} new tokens",
        f"  {'pass@1':<22}{100 * m['pass@1']:6.1f}%  ± {100 * m['pass@1_ci95']:.1f} (95% CI)",
        f"  {f'cons@{k}':<22}{100 * m[f'cons@{k}']:6.1f}%",
        f"  {'format rate':<22}{100 * m['format_rate']:6.1f}%",
        f"  {'truncated':<22}{100 * m['truncation_rate']:6.1f}%",
        f"  {'mean length (tokens)':<22}{m['mean_completion_tokens']:6.1f}",
        f"  {'sampling':<22}{m['tokens_per_s']:6.0f} tokens/s ({m['seconds']:.1f} s)",
    ]
    if k > 1:
        lines.insert(4, f"  {f'pass@{k}':<22}{100 * m[f'pass@{k}']:6.1f}%")
    if "tool_calls_per_trajectory" in m:
        lines += [f"  {'tools':<22}{', '.join(m['tools'])}: {m['tool_calls_per_trajectory']:.2f} calls a sample, "
                  f"{100 * m['tool_use_share']:.0f}% of samples call, {100 * m['tool_error_rate']:.0f}% of calls fail, "
                  f"{100 * m['tool_timeout_rate']:.0f}% time out"]
    return "\n".join(lines)


def format_tools_comparison(with_tools: dict, without: dict, title: str) -> str:
    """pass@k with and without tools, side by side (`r1kit eval --tools python --compare-tools`)."""
    a, b, k = with_tools["metrics"], without["metrics"], with_tools["settings"]["k"]
    keys = [("pass@1", "pass@1"), (f"pass@{k}", f"pass@{k}"), (f"cons@{k}", f"cons@{k}"),
            ("format rate", "format_rate"), ("truncated", "truncation_rate")]
    lines = [title, f"  {'':<16}{'with ' + '+'.join(a['tools']):>14}{'without tools':>16}"]
    for name, key in dict.fromkeys(keys):
        if key in a and key in b:
            lines.append(f"  {name:<16}{100 * a[key]:13.1f}%{100 * b[key]:15.1f}%")
    lines.append(f"  {'mean length':<16}{a['mean_completion_tokens']:14.1f}{b['mean_completion_tokens']:16.1f}"
                 "  (model tokens)")
    lines.append(f"  pass@1 95% CI: ± {100 * a['pass@1_ci95']:.1f} with, ± {100 * b['pass@1_ci95']:.1f} without; "
                 f"{a['problems']} problems x k={k}")
    return "\n".join(lines)


def finish_model(model, tokenizer, out, *, title: str, task_spec: str | None, eval_cfg: EvalConfig | None,
                 upstream: list[str] = (), ledger=None, progress: bool = True,
                 state_dict: dict | None = None, result: dict | None = None,
                 engine: RolloutEngine | None = None, tools=None) -> dict | None:
    """The end of a training stage: save OUT/model, evaluate it on the held-out split (unless `eval_cfg` is None),
    write OUT/eval.json and the model card. Returns the evaluation result (or None).

    `state_dict`: the weights to save instead of `model`'s (a sharded policy's, gathered; `model` is then its
    inference copy). `result`: an evaluation already made (by every rank of a sharded run), written as is.
    `engine`: the rollout engine to evaluate with (holding the same weights)."""
    from pathlib import Path

    from r1kit.models.modeling import save_model
    from r1kit.reporting.modelcard import cost_from_ledger, lineage_of, write_model_card
    from r1kit.reporting.runlog import write_json
    from r1kit.tasks import get_task

    out = Path(out)
    model = merged_copy(model)  # a LoRA model is saved (and evaluated) with its adapters merged in
    model.eval()
    with ledger.phase("checkpointing") if ledger is not None else nullcontext():
        save_model(model, tokenizer, out / "model", state_dict=state_dict)
    if result is not None:
        write_json(out / "eval.json", result)
    elif eval_cfg is not None:
        if not task_spec:
            raise UserError(f"{out}: no task to evaluate on: give --task")
        result = evaluate(model, tokenizer, get_task(task_spec), eval_cfg, progress=progress, ledger=ledger,
                          engine=engine, tools=tools)
        write_json(out / "eval.json", result)
    write_model_card(out / "model", title=title, eval_result=result,
                     cost_summary=cost_from_ledger(out, upstream=[u for u in upstream if u]),
                     lineage=lineage_of(out))
    return result


__all__ = ["evaluate", "finish_model", "format_eval_table", "format_tools_comparison"]
