"""Rejection-sampled reasoning traces: the teacher samples K completions per training question, the task's
verifier keeps the correct, well-formed, untruncated ones (R1's rejection sampling, ../shared/r1-reference.md §4).

Rows are appended to the output JSONL one chunk of questions at a time, each with its provenance (teacher,
question id, sampling settings, reward). A sidecar `OUT.progress.json` records how many chunks (and bytes) are
complete, so an interrupted run keeps what it wrote and `--resume` continues at the next chunk; chunk c is
sampled with a generator seeded from (seed, c), so a resumed file is identical to an uninterrupted one.
Only the train split is ever sampled: traces are training data. Per chunk, the counts so far go to
`OUT.metrics.jsonl` and the trackers of `[log]` (with a few kept rows as a table), named after the output's folder
when it is a pipeline stage's data.jsonl, else after the file.

    r1kit generate --model runs/demo/rl/model --task arithmetic --n 2000 --k 4 --out runs/traces.jsonl
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from r1kit.config import LogConfig, ParallelConfig, to_dict
from r1kit.errors import UserError
from r1kit.models.modeling import eos_ids, load_model
from r1kit.parallel.engine import resolve_engine
from r1kit.reporting.runlog import MetricsLog, progress_bar, write_json
from r1kit.rollout import make_engine
from r1kit.rollout.multiturn import run_episodes
from r1kit.rollout.sampler import SamplingParams
from r1kit.tasks import get_task
from r1kit.tasks.formats import PromptConfig
from r1kit.tasks.prompting import make_prompter
from r1kit.tools import make_toolbox
from r1kit.tools.base import ToolConfig


@dataclass
class GenerateConfig:
    model: str = ""  # the teacher: a Hugging Face model directory
    task: str = "arithmetic"  # task spec; its train split supplies the questions and its verifier the verdicts
    out: str = "traces.jsonl"  # the JSONL file to write (a sidecar OUT.progress.json tracks progress)
    n: int = 1000  # training questions
    k: int = 4  # completions sampled per question
    max_per_prompt: int = 0  # keep at most this many correct completions per question; 0: all of them
    dedup: bool = True  # drop a completion identical to one already kept for the same question
    temperature: float = 0.6  # sampling settings (the paper's evaluation settings by default)
    top_p: float = 0.95
    max_new_tokens: int = 128
    chunk: int = 64  # questions per written chunk (the unit of resume)
    batch_size: int = 256  # completions sampled together
    seed: int = 0
    backend: str = "r1kit"  # rollout engine: r1kit | vllm | auto (r1kit/rollout)
    tools: list[str] = field(default_factory=list)  # tools the teacher may call (multi-turn traces), e.g. python
    tool_use: ToolConfig = field(default_factory=ToolConfig)  # call format and budgets (tools/base.py)
    prompt: PromptConfig = field(default_factory=PromptConfig)  # format options over the task spec's
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # device and precision (one process)
    log: LogConfig = field(default_factory=LogConfig)  # trackers: TensorBoard, trackio, wandb

    def __post_init__(self) -> None:
        if min(self.n, self.k, self.chunk, self.batch_size, self.max_new_tokens) < 1 or self.max_per_prompt < 0:
            raise UserError("generate: n, k, chunk, batch_size and max_new_tokens must be at least 1, "
                            "max_per_prompt at least 0")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise UserError("generate: temperature must be >= 0 and top_p in (0, 1]")


def progress_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".progress.json")


SAMPLES_PER_CHUNK = 4  # kept rows of each chunk shown in the trackers' table


def _identity(cfg: GenerateConfig) -> dict:
    """The settings a resumed run must share with the run it continues (everything but the file name and where
    metrics go)."""
    ident = {k: v for k, v in to_dict(cfg).items() if k not in ("out", "log")}  # batch_size: batches shape samples
    if not cfg.prompt.overrides():
        del ident["prompt"]  # no format options: the same identity as before they existed (old files resume)
    if cfg.backend == "r1kit":
        del ident["backend"]  # likewise for the default rollout engine
    if not cfg.tools:
        del ident["tools"], ident["tool_use"]  # and for runs without tools
    return ident


def _chunk_seed(seed: int, chunk: int) -> int:
    return (seed * 1_000_003 + chunk * 7919 + 17) % (2**63)


def select(problem, texts: list[str], finished: list[bool], task, cfg: GenerateConfig) -> list[tuple[int, object]]:
    """(sample index, score) of the completions kept for one question: correct, formatted, finished, deduplicated,
    at most `max_per_prompt`. `task` is anything with `score(problem, text)`: a task or a Prompter (which puts a
    chat template's prefilled `<think>` back in front before scoring; the row stores the text as sampled)."""
    kept, seen = [], set()
    for j, (text, fin) in enumerate(zip(texts, finished)):
        score = task.score(problem, text)
        if not (fin and score.correct and score.formatted):
            continue
        if cfg.dedup and text.strip() in seen:
            continue
        seen.add(text.strip())
        kept.append((j, score))
        if cfg.max_per_prompt and len(kept) >= cfg.max_per_prompt:
            break
    return kept


def _resume_state(cfg: GenerateConfig, resume: bool) -> dict:
    out, prog = Path(cfg.out), progress_path(cfg.out)
    if not resume:
        if out.exists() or prog.exists():
            raise UserError(f"{out} already exists: add --resume to continue it, or choose another --out")
        return {"chunks_done": 0, "bytes": 0, "rows": 0, "sampled": 0, "finished": False}
    if not prog.is_file():
        if out.exists() and out.stat().st_size:
            raise UserError(f"{out} exists but has no {prog.name}: it was not written by r1kit generate; "
                            "choose another --out")
        return {"chunks_done": 0, "bytes": 0, "rows": 0, "sampled": 0, "finished": False}
    state = json.loads(prog.read_text())
    if not out.is_file() or out.stat().st_size < state.get("bytes", 0):
        raise UserError(f"{out} no longer matches {prog.name} (it is missing or shorter than recorded): delete both "
                        "to start again, or choose another --out")
    if state.get("config") != _identity(cfg):
        changed = sorted(k for k, v in _identity(cfg).items() if state.get("config", {}).get(k) != v)
        raise UserError(f"{out} was generated with other settings ({', '.join(changed)} differ): resume with the "
                        "same settings, or choose another --out")
    return state


def run_generate(cfg: GenerateConfig, *, resume: bool = False, progress: bool = True, ledger_factory=None,
                 stop_after_chunks: int | None = None) -> dict:
    """Sample, verify and append traces; returns a summary (questions, sampled, kept, seconds, out).

    `stop_after_chunks` ends the work after that many chunks (as if killed), for tests of --resume.
    """
    task = get_task(cfg.task, **cfg.prompt.overrides())
    out = Path(cfg.out)
    state = _resume_state(cfg, resume)
    if state.get("finished"):
        return state["summary"]
    problems = task.problems("train", cfg.n, seed=cfg.seed)
    if not problems:
        raise UserError(f"task {task.name!r} has no train problems to generate from")
    engine = resolve_engine(cfg.parallel)
    model, tokenizer = load_model(cfg.model, dtype=engine.compute_dtype)
    model = model.to(engine.device)
    prompter = make_prompter(task, tokenizer)
    tools = make_toolbox(cfg.tools, cfg.tool_use, chat=prompter.chat, tokenizer=tokenizer, system=prompter.system)
    if tools is not None:
        tools.attach(prompter)
    if progress:
        print(f"generate {task.name}: {prompter.describe()}" + (f"; tools {', '.join(cfg.tools)}" if tools else ""),
              flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    ledger = ledger_factory(out.parent, "generate", model.config.to_dict()) if ledger_factory else None
    params = SamplingParams(cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    stops, pad = eos_ids(model, tokenizer), tokenizer.pad_token_id
    longest = max(len(prompter.encode_text(prompter.text(p))) for p in problems)
    with ledger.phase("rollout_engine_startup") if ledger else nullcontext():
        budget = tools.config.total_tokens(cfg.max_new_tokens) if tools else cfg.max_new_tokens
        sampler = make_engine(cfg.backend, model, source=cfg.model, max_len=longest + budget,
                              seed=cfg.seed, device=engine.device, options={"max_num_seqs": cfg.batch_size})
    provenance = {"teacher": str(cfg.model), "task": cfg.task, "split": "train", "temperature": cfg.temperature,
                  "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed,
                  "formats": prompter.settings(), **({"tools": cfg.tools} if tools else {})}
    n_chunks = -(-len(problems) // cfg.chunk)
    log = _metrics_log(cfg, out, resumed=state["chunks_done"] > 0)
    log.truncate_after(state["chunks_done"])
    with open(out, "ab") as f:
        f.truncate(state["bytes"])  # drop rows of a chunk that was being written when the run stopped
    t0 = time.perf_counter()
    bar = progress_bar(total=len(problems), initial=min(state["chunks_done"] * cfg.chunk, len(problems)),
                       desc=f"generate {task.name} (k={cfg.k})", unit="question", disable=not progress)
    done_now = 0
    for c in range(state["chunks_done"], n_chunks):
        if stop_after_chunks is not None and done_now >= stop_after_chunks:
            break
        chunk = problems[c * cfg.chunk:(c + 1) * cfg.chunk]
        prompts = [prompter.text(p) for p in chunk]
        prompt_ids = [prompter.encode_text(p) for p in prompts]
        jobs = [i for i in range(len(chunk)) for _ in range(cfg.k)]
        gen = torch.Generator().manual_seed(_chunk_seed(cfg.seed, c))
        texts: list[str] = []
        finished: list[bool] = []
        lengths: list[int] = []
        episodes: list = []
        with ledger.phase("generation") if ledger else nullcontext() as ph:
            for s in range(0, len(jobs), cfg.batch_size):
                rows = jobs[s:s + cfg.batch_size]
                if tools is None:
                    res = sampler.sample([prompt_ids[i] for i in rows], params, eos_ids=stops, pad_id=pad,
                                         generator=gen)
                    tokens, fins, n_model = res.tokens, res.finished, [len(t) for t in res.tokens]
                else:  # multi-turn: the teacher's calls answered by the tools; lengths count its own tokens
                    eps = run_episodes(sampler, [prompt_ids[i] for i in rows], params, tools=tools,
                                       tokenizer=tokenizer, eos_ids=stops, pad_id=pad, generator=gen,
                                       return_logprobs=False)
                    tokens, fins, n_model = [e.tokens for e in eps], [e.finished for e in eps], [
                        e.model_tokens for e in eps]
                    episodes += eps
                texts += [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
                finished += fins
                lengths += n_model
            if ph is not None:
                ph.add(prompt_tokens=sum(len(prompt_ids[i]) for i in jobs), generated_tokens=sum(lengths),
                       seq_len=max(map(len, prompt_ids)) + cfg.max_new_tokens)
        lines = []
        with ledger.phase("scoring") if ledger else nullcontext():
            for i, problem in enumerate(chunk):
                sl = slice(i * cfg.k, (i + 1) * cfg.k)
                for j, score in select(problem, texts[sl], finished[sl], prompter, cfg):
                    lines.append(json.dumps({
                        "id": problem.id, "question": problem.question, "prompt": prompts[i],
                        "completion": texts[i * cfg.k + j],
                        "answer": score.answer, "reference": problem.answer,
                        "reward": {"accuracy": 1.0, "format": 1.0}, "length": lengths[i * cfg.k + j],
                        "provenance": {**provenance, "sample": j},
                        **(_turns(episodes[i * cfg.k + j], tokenizer) if episodes else {}),
                    }) + "\n")
        with open(out, "ab") as f:
            f.write("".join(lines).encode())
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        state.update(chunks_done=c + 1, bytes=size, rows=state["rows"] + len(lines),
                     sampled=state["sampled"] + len(jobs), config=_identity(cfg))
        write_json(progress_path(out), state)
        log.log(c + 1, {"questions": min((c + 1) * cfg.chunk, len(problems)), "sampled": state["sampled"],
                        "kept": state["rows"], "keep_rate": state["rows"] / max(state["sampled"], 1)})
        log.table(c + 1, "samples", [_shown(json.loads(line)) for line in lines[:SAMPLES_PER_CHUNK]])
        done_now += 1
        bar.update(len(chunk))
        bar.set_postfix(kept=state["rows"], refresh=False)
    bar.close()
    sampler.close()
    summary = {"out": str(out), "questions": len(problems), "sampled": state["sampled"], "kept": state["rows"],
               "keep_rate": state["rows"] / max(state["sampled"], 1),
               "seconds_this_process": time.perf_counter() - t0, "finished": state["chunks_done"] >= n_chunks}
    if summary["finished"]:
        state.update(finished=True, summary=summary)
        write_json(progress_path(out), state)
        log.finish(n_chunks)
    log.close()
    return summary


def _turns(episode, tokenizer) -> dict:
    """A tool-using trace's turns, as SFT reads them (the model's text, then each tool's, alternately), its calls,
    and its completion: the turns' texts joined (each a decoded run of tokens)."""
    turns, start = [], 0
    for k in range(1, len(episode.mask) + 1):
        if k == len(episode.mask) or episode.mask[k] != episode.mask[start]:
            model = bool(episode.mask[start])  # a tool turn keeps the chat template's special tokens
            text = tokenizer.decode(episode.tokens[start:k], skip_special_tokens=model)
            turns.append({"role": "model" if model else "tool", "text": text})
            start = k
    return {"completion": "".join(t["text"] for t in turns), "turns": turns, "tool_calls": len(episode.calls)}
def _metrics_log(cfg: GenerateConfig, out: Path, resumed: bool) -> MetricsLog:
    """OUT.metrics.jsonl and the trackers, named after a pipeline stage's folder or else the output file."""
    log_cfg = cfg.log
    if not log_cfg.name and out.name != "data.jsonl":  # (recipe.DATA_FILE: a pipeline stage's output)
        log_cfg = dataclasses.replace(log_cfg, name=out.stem)
    config = {k: v for k, v in to_dict(cfg).items() if k != "log"}
    return MetricsLog(out.parent, name=f"{out.name}.metrics.jsonl", log=log_cfg, config=config, resumed=resumed)


def _shown(row: dict) -> dict:
    """A kept row as the trackers' table shows it."""
    return {"id": row["id"], "question": row["question"], "completion": row["completion"],
            "answer": row["answer"], "reference": row["reference"], "length": row["length"]}


def describe(summary: dict) -> str:
    return (f"generated {summary['out']}: kept {summary['kept']} of {summary['sampled']} completions "
            f"({100 * summary['keep_rate']:.1f}%) for {summary['questions']} questions")
