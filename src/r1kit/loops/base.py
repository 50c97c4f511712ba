"""Build a tiny base model: a BPE tokenizer and a Llama pre-trained from scratch on worked solutions.

The corpus is the task's own worked solutions to train-split problems in the R1-Zero template (see
`ArithmeticTask.solution` for how it mixes careful, sloppy and guessed working), so the result is a *base model*:
it knows the format and the moves, but is unreliable, leaving RL room to improve it. Plain next-token loss on
whole documents, AdamW, linear warmup then cosine decay to a tenth. Same seed, same weights (on one thread count).

    r1kit base --task arithmetic --size tiny --out runs/base-tiny
"""

from __future__ import annotations

import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from r1kit.algo.sft import cosine_lr, make_optimizer
from r1kit.config import EvalConfig, LogConfig, ParallelConfig, to_dict
from r1kit.errors import UserError
from r1kit.evaluation.evaluate import evaluate, format_eval_table
from r1kit.models.checkpoint import checkpoint_root, latest_checkpoint, load_state, save_checkpoint, step_of
from r1kit.models.modeling import (
    SIZES,
    count_params,
    load_model,
    load_tokenizer,
    new_model,
    save_model,
    train_tokenizer,
)
from r1kit.parallel.engine import resolve_engine
from r1kit.reporting.modelcard import cost_from_ledger, lineage_of, write_model_card
from r1kit.reporting.runlog import MetricsLog, progress_bar, write_json
from r1kit.tasks import get_task, task_options


@dataclass
class BaseConfig:
    task: str = "arithmetic"  # task spec, e.g. "arithmetic:digits=3"
    size: str = "tiny"  # a key of modeling.SIZES
    tokenizer: str = ""  # reuse this model directory's tokenizer (a student that shares its teacher's); "": train one
    out: str = "runs/base-tiny"  # the model directory (also holds metrics, ledger and eval)
    seed: int = 0
    corpus: int = 40_000  # worked solutions in the corpus, from train-split problems
    steps: int = 1000  # optimiser steps
    batch_size: int = 32  # documents per step
    lr: float = 3e-3  # peak learning rate
    warmup: int = 60  # linear warmup steps
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    log_every: int = 20
    eval_every: int = 0  # steps between quick held-out checks (100 problems, k=2); 0: only the final eval
    checkpoint_every: int = 200  # steps between checkpoints (OUT/checkpoints, removed once the model is saved)
    final_eval: bool = True  # evaluate the model on the held-out split at the end
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # device and precision (one process)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)  # trackers: TensorBoard, trackio, wandb

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise UserError(f"unknown model size {self.size!r}: use one of {', '.join(SIZES)}")
        if min(self.corpus, self.steps, self.batch_size) < 1 or self.lr <= 0:
            raise UserError("base: corpus, steps and batch_size must be at least 1 and lr positive")


def build_corpus(task, n: int, seed: int) -> list[str]:
    """`n` documents: prompt + worked solution, for train-split problems (repeats allowed, solutions vary)."""
    distinct = task.problems("train", min(n, 20_000), seed=seed)
    rng = random.Random(seed)
    return [task.prompt(p) + " " + task.solution(p, rng) for p in (rng.choice(distinct) for _ in range(n))]


def _batch(docs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(d) for d in docs)
    ids = torch.full((len(docs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(docs), width), dtype=torch.long)
    for i, d in enumerate(docs):
        ids[i, : len(d)] = torch.tensor(d)
        mask[i, : len(d)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def run_base(cfg: BaseConfig, *, progress: bool = True, ledger_factory=None, resume: bool = False,
             stop_after: int | None = None) -> dict:
    """Build, pre-train, save and evaluate a base model; returns a summary (params, seconds, eval).

    `resume` continues from the last checkpoint in OUT (same weights as an uninterrupted run); `stop_after` ends
    the work after that many steps, as if killed (for tests)."""
    out = Path(cfg.out)
    task = get_task(cfg.task)
    ckpt = latest_checkpoint(out) if resume else None
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "run.json", {"stage": "base", "config": to_dict(cfg), "task_options": task_options(task),
                           "resumed_from": step_of(ckpt) or None}
    )
    if ckpt is None:
        (out / "metrics.jsonl").unlink(missing_ok=True)  # a fresh start rewrites the curves
    log = MetricsLog(out, log=cfg.log, config=to_dict(cfg), resumed=ckpt is not None)
    t_start = time.perf_counter()

    texts = build_corpus(task, cfg.corpus, cfg.seed)
    if ckpt is not None or cfg.tokenizer:
        tokenizer = load_tokenizer(ckpt or cfg.tokenizer)
    else:
        tokenizer = train_tokenizer(texts, vocab_size=SIZES[cfg.size]["vocab_size"])
    eos = tokenizer.eos_token_id
    docs = [ids + [eos] for ids in tokenizer(texts).input_ids]
    engine = resolve_engine(cfg.parallel)
    model = load_model(ckpt, trainable=True)[0] if ckpt is not None else new_model(cfg.size, tokenizer, seed=cfg.seed)
    model = engine.place(model)
    n_params = count_params(model)
    ledger = ledger_factory(out, "base", model.config.to_dict()) if ledger_factory else None
    model.train()
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    start, tokens_trained, loss_ema = 0, 0, None
    if ckpt is not None:
        state = load_state(ckpt)
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        start, tokens_trained, loss_ema = state["step"], state["tokens_trained"], state["loss_ema"]
        log.truncate_after(start - 1)
    bar = progress_bar(range(start, cfg.steps), desc=f"pre-train {cfg.size} on {task.name}", disable=not progress,
                       initial=start, total=cfg.steps)
    for step in bar:
        if stop_after is not None and step >= start + stop_after:
            bar.close()
            log.close()
            return {"model": str(out), "finished": False, "steps_done": step}
        lr = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(len(docs), (cfg.batch_size,), generator=gen).tolist()
        ids, mask, labels = (t.to(engine.device) for t in _batch([docs[i] for i in idx], tokenizer.pad_token_id))
        with ledger.phase("training") if ledger else nullcontext() as phase:
            with engine.autocast():
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"base: loss became {loss.item()} at step {step}; lower the lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            n_tok = int(mask.sum())
            tokens_trained += n_tok
            if phase is not None:
                phase.add(trained_tokens=n_tok, seq_len=ids.shape[1])
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            log.log(
                step,
                {
                    "loss": loss.item(),
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "tokens_trained": tokens_trained,
                },
            )
            bar.set_postfix(loss=f"{loss_ema:.3f}", refresh=False)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            quick = EvalConfig(split=cfg.eval.split, n=100, k=2, max_new_tokens=cfg.eval.max_new_tokens)
            with engine.autocast():
                m = evaluate(model, tokenizer, task, quick, progress=False)["metrics"]
            model.train()
            log.log(step, {"eval/pass@1": m["pass@1"], "eval/format_rate": m["format_rate"]})
            bar.write(f"step {step + 1}: held-out pass@1 {m['pass@1']:.3f} (100 problems x 2)")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            with ledger.phase("checkpointing") if ledger else nullcontext():
                save_checkpoint(out, step + 1, model, tokenizer, {
                    "optimizer": opt.state_dict(), "generator": gen.get_state(), "tokens_trained": tokens_trained,
                    "loss_ema": loss_ema}, keep=1)
    train_seconds = time.perf_counter() - t_start
    model.eval()
    with ledger.phase("checkpointing") if ledger else nullcontext():
        save_model(model, tokenizer, out)
    shutil.rmtree(checkpoint_root(out), ignore_errors=True)  # the model is complete: the checkpoints are spent
    with engine.autocast():
        result = evaluate(model, tokenizer, task, cfg.eval, progress=progress, ledger=ledger) if cfg.final_eval else None
    summary = {
        "model": str(out),
        "params": n_params,
        "train_seconds": train_seconds,
        "tokens_trained": tokens_trained,
        "final_loss": loss_ema,
        "finished": True,
        "eval": result,
    }
    if result is not None:
        write_json(out / "eval.json", result)
    write_model_card(out, title=f"{out.name}: tiny {task.name} base model ({cfg.size})", eval_result=result,
                     cost_summary=cost_from_ledger(out), lineage=lineage_of(out))
    write_json(out / "summary.json", {k: v for k, v in summary.items() if k != "eval"})
    log.finish(cfg.steps - 1, result["metrics"] if result else None)
    return summary


def describe(summary: dict) -> str:
    head = (
        f"base model {summary['model']}: {summary['params'] / 1e6:.2f}M parameters, "
        f"pre-trained on {summary['tokens_trained'] / 1e6:.2f}M tokens in {summary['train_seconds']:.0f} s "
        f"(final loss {summary['final_loss']:.3f})"
    )
    return head + ("\n" + format_eval_table(summary["eval"]) if summary.get("eval") else "")
