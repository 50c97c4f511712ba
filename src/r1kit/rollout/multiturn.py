"""Multi-turn rollouts with tools: the model writes, calls a tool, reads the observation, writes on.

    run_episodes(engine, prompts, params, tools=ToolBox(...), ...) -> list[Trajectory]

A trajectory is every token after the prompt: the model's own (mask 1, with the engine's log-probs) and the
observations' (mask 0, log-prob 0). Token in, token out: the sampled ids are kept as sampled and each turn is
continued from the exact ids so far, with the observation's tokens (the call format's text, tokenised on its own)
appended; nothing is decoded and re-encoded.

The turn loop is engine-neutral: it needs only `engine.sample(prompts, params, eos_ids=...)` (the RolloutEngine
of rollout/__init__.py), so r1kit's sampler and vLLM run it alike. Each round samples every open trajectory from
its ids so far until EOS or a *stop candidate* (a token holding the last character of the format's stop string,
tools/formats.py `stop_token_ids`); a row whose turn now ends with a complete call waits for its tool, a row
stopped by a false candidate goes on. The calls of a round run together, in parallel in the sandbox's pool and in
a thread, *while the next round decodes the other rows*; their rows rejoin the round after. The schedule depends
only on the rows' tokens, never on timing, so a seeded run repeats exactly. (Rows are re-submitted whole: vLLM's
prefix cache and r1kit's shared-prompt prefill make that cheap; a sampler that keeps each row's KV cache while its
tool runs plugs in here.)

Budgets (tools.base.ToolConfig), each stopping a trajectory as *truncated* (not finished): the model-token budget
(`max_new_tokens`), `max_turn_tokens`, `max_turns` (a turn ending in a call at the last turn gets no answer),
`max_total_tokens` (model + observation tokens). A call past `max_calls` is answered "budget used up" and the
model may still answer. Errors, timeouts and bad arguments are observations (tools.base), never a stop.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

from r1kit.rollout.sampler import SamplingParams
from r1kit.tools import ToolBox
from r1kit.tools.base import Observation, ToolCall, truncate_middle


@dataclass
class Trajectory:
    tokens: list[int] = field(default_factory=list)  # after the prompt: model and observation tokens
    mask: list[int] = field(default_factory=list)  # 1: the model's token (trained), 0: an observation's
    logprobs: list[float] = field(default_factory=list)  # the engine's log-prob of each model token, 0 elsewhere
    finished: bool = False  # the model ended it (EOS); False: a budget stopped it
    stop: str = ""  # answer | max_new_tokens | max_turn_tokens | max_turns | max_total_tokens
    turns: int = 1
    calls: list[dict] = field(default_factory=list)  # per call: tool, status, seconds, cpu_s, observation_tokens

    @property
    def model_tokens(self) -> int:
        return sum(self.mask)

    @property
    def observation_tokens(self) -> int:
        return len(self.mask) - sum(self.mask)


@dataclass
class _Row:
    prompt: list[int]
    traj: Trajectory
    turn_start: int = 0  # index into traj.tokens where the current turn began
    turn_tokens: int = 0
    history: dict = field(default_factory=dict)  # tool name -> earlier arguments (the python tool replays them)


def run_episodes(engine, prompts: list[list[int]], params: SamplingParams, *, tools: ToolBox, tokenizer,
                 eos_ids: list[int], pad_id: int, generator=None, return_logprobs: bool = True,
                 phase=None) -> list[Trajectory]:
    """One trajectory per prompt (see the module docstring). `phase(name)` -> a context manager that bills its
    body to the ledger phase `name`: `rollout` for sampling, `tools` for the time the loop waits on tool calls
    beyond its decoding (the calls run in a thread while the other rows decode)."""
    phase = phase or (lambda name: nullcontext())
    cfg = tools.config
    stops = list(eos_ids) + [i for i in tools.stop_ids(tokenizer) if i not in eos_ids]
    total_budget = cfg.total_tokens(params.max_new_tokens)
    rows = [_Row(list(p), Trajectory()) for p in prompts]
    open_rows, pending = list(range(len(rows))), None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="r1kit-tools") as pool:
        while open_rows or pending is not None:
            waiting, still_open = [], []
            if open_rows:
                waiting, still_open = _round(engine, rows, open_rows, params, stops, eos_ids, pad_id, generator,
                                             return_logprobs, tools, tokenizer, total_budget, phase)
            if pending is not None:  # the calls started last round, run while this round decoded
                with phase("tools") as ph:
                    t0 = time.perf_counter()
                    calls, observations = pending[0], pending[1].result()
                    if ph is not None:  # the phase's wall time: the wait; tool_wall_s: the calls, overlap included
                        now = time.perf_counter()
                        ph.add(tool_calls=len(calls), tool_cpu_s=sum(o.cpu_s for o in observations),
                               tool_wall_s=now - pending[2], waited_s=now - t0)
                pending = None
                for (r, call), obs in zip(calls, observations):
                    if _append_observation(rows[r], call, obs, tools, tokenizer, total_budget):
                        stop = _exhausted(rows[r], params.max_new_tokens, 0, total_budget)  # the call used it all
                        if stop:
                            rows[r].traj.stop = stop
                        else:
                            still_open.append(r)
            if waiting:
                pending = (waiting, pool.submit(_call_tools, rows, waiting, tools), time.perf_counter())
            open_rows = sorted(still_open)
    return [row.traj for row in rows]


def _round(engine, rows, open_rows, params, stops, eos_ids, pad_id, generator, return_logprobs, tools, tokenizer,
           total_budget, phase):
    """Sample every open row to its next stop: returns (rows waiting for a tool call, rows to sample again)."""
    cfg = tools.config
    budgets = {r: _room(rows[r], params.max_new_tokens, cfg.max_turn_tokens, total_budget) for r in open_rows}
    width = max(budgets.values())
    contexts = [rows[r].prompt + rows[r].traj.tokens for r in open_rows]
    with phase("rollout") as ph:
        out = engine.sample(contexts, SamplingParams(params.temperature, params.top_p, width), eos_ids=stops,
                            pad_id=pad_id, generator=generator, return_logprobs=return_logprobs)
        if ph is not None:
            ph.add(prompt_tokens=sum(map(len, contexts)), generated_tokens=out.num_tokens,
                   seq_len=max(map(len, contexts)) + width)
    waiting: list[tuple[int, ToolCall]] = []
    still_open = []
    for i, r in enumerate(open_rows):
        row, toks = rows[r], out.tokens[i][: budgets[r]]
        lps = out.logprobs[i][: len(toks)] if out.logprobs is not None else [0.0] * len(toks)
        row.traj.tokens += toks
        row.traj.mask += [1] * len(toks)
        row.traj.logprobs += lps
        row.turn_tokens += len(toks)
        last = toks[-1] if toks else None
        if last is not None and last in eos_ids:
            row.traj.finished, row.traj.stop = True, "answer"
            continue
        if last is not None and last in stops:
            call = tools.format.find_call(tokenizer.decode(row.traj.tokens[row.turn_start:]))
            if call is not None:
                if row.traj.turns >= cfg.max_turns:
                    row.traj.stop = "max_turns"  # the last turn ended in a call: no answer comes
                    continue
                waiting.append((r, call))
                continue
        stop = _exhausted(row, params.max_new_tokens, cfg.max_turn_tokens, total_budget)
        if stop:
            row.traj.stop = stop
        else:
            still_open.append(r)  # a false stop candidate, or sampled to this round's width
    return waiting, still_open


def _room(row: _Row, max_new: int, max_turn: int, total: int) -> int:
    """New model tokens this row may sample now."""
    room = min(max_new - row.traj.model_tokens, total - len(row.traj.tokens))
    if max_turn:
        room = min(room, max_turn - row.turn_tokens)
    return max(room, 1)


def _exhausted(row: _Row, max_new: int, max_turn: int, total: int) -> str:
    """The budget this row has used up ('' when none)."""
    if row.traj.model_tokens >= max_new:
        return "max_new_tokens"
    if len(row.traj.tokens) >= total:
        return "max_total_tokens"
    if max_turn and row.turn_tokens >= max_turn:
        return "max_turn_tokens"
    return ""


def _call_tools(rows: list[_Row], waiting: list[tuple[int, ToolCall]], tools: ToolBox) -> list[Observation]:
    """Every waiting call answered (in parallel per tool); bad names, bad calls and spent budgets answered too."""
    answers: list[Observation | None] = [None] * len(waiting)
    by_tool: dict[str, list[int]] = {}
    for k, (r, call) in enumerate(waiting):
        row = rows[r]
        if call.problem:
            answers[k] = Observation(f"Error: {call.problem}", "bad_arguments")
        elif call.name not in tools.tools:
            answers[k] = Observation(f"Error: there is no tool {call.name!r} (tools: {', '.join(tools.tools)})",
                                     "bad_arguments")
        elif len(row.traj.calls) >= tools.config.max_calls:
            answers[k] = Observation(f"Error: the tool-call budget ({tools.config.max_calls} calls) is used up: "
                                     "answer without tools", "budget")
        else:
            by_tool.setdefault(call.name, []).append(k)
    for name, ks in by_tool.items():
        batch = [(waiting[k][1].arguments, rows[waiting[k][0]].history.get(name, [])) for k in ks]
        for k, obs in zip(ks, tools.tools[name].call_many(batch)):
            answers[k] = obs
            r, call = waiting[k]
            rows[r].history.setdefault(name, []).append(call.arguments)
    return answers


def _append_observation(row: _Row, call: ToolCall, obs: Observation, tools: ToolBox, tokenizer,
                        total: int) -> bool:
    """The observation's tokens appended (mask 0); False when they do not fit the trajectory's token budget."""
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    cut = Observation(truncate_middle(obs.text, tools.config.max_observation_tokens, count), obs.status,
                      obs.seconds, obs.cpu_s)
    text = tools.format.observation_text(cut, tokenizer.decode(row.traj.tokens[row.turn_start:]))
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if obs.status != "budget":
        row.traj.calls.append({"tool": call.name, "status": obs.status,
                               "seconds": obs.seconds, "cpu_s": obs.cpu_s, "observation_tokens": len(ids)})
    room = total - len(row.traj.tokens)
    row.traj.tokens += ids[:room]
    row.traj.mask += [0] * len(ids[:room])
    row.traj.logprobs += [0.0] * len(ids[:room])
    if len(ids) >= room:
        row.traj.stop = "max_total_tokens"
        return False
    row.traj.turns += 1
    row.turn_start, row.turn_tokens = len(row.traj.tokens), 0
    return True


COUNTS = ("trajectories", "calls", "with_call", "turns", "errors", "timeouts", "observation_tokens", "call_seconds")


def tool_counts(episodes: list[Trajectory]) -> list[float]:
    """Sums over trajectories, in the order of COUNTS (summed over ranks by the caller, then `tool_rates`)."""
    calls = [c for e in episodes for c in e.calls]
    return [len(episodes), len(calls), sum(bool(e.calls) for e in episodes), sum(e.turns for e in episodes),
            sum(c["status"] in ("error", "bad_arguments") for c in calls), sum(c["status"] == "timeout" for c in calls),
            sum(e.observation_tokens for e in episodes), sum(c["seconds"] for c in calls)]


def tool_rates(counts: list[float]) -> dict:
    """Per step or evaluation: calls per trajectory, turns, the share of trajectories with a call, the error and
    timeout rates of calls, observation tokens per trajectory, seconds spent in calls."""
    c = dict(zip(COUNTS, counts))
    n, per_call = max(c["trajectories"], 1), max(c["calls"], 1)
    return {"tool_calls_per_trajectory": c["calls"] / n, "turns_mean": c["turns"] / n,
            "tool_use_share": c["with_call"] / n, "tool_error_rate": c["errors"] / per_call,
            "tool_timeout_rate": c["timeouts"] / per_call, "observation_tokens_mean": c["observation_tokens"] / n,
            "tool_call_seconds": c["call_seconds"]}
