"""An RL step's data: the training questions in a seeded stream, G completions sampled for each, scored by the
task's verifier through the reward functions, and (dynamic sampling) groups of equal rewards refilled.

Randomness is derived from (seed, step, key, round), never carried in a global generator, so a resumed run replays
the remaining steps exactly and one process and N processes draw the same questions. Layer 2: the loop passes the
rollout engine, the ledger and the run's engine (device, ranks) in.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch

from r1kit.parallel import dist
from r1kit.rollout.sampler import SamplingParams
from r1kit.tasks.base import sandbox_usage, score_all
from r1kit.tools.base import budget_reward


def seed_of(*parts: int) -> int:
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p + 0x9E3779B9)) * 1099511628211) % (2**63)
    return h


class QuestionStream:
    """Training questions in a fresh seeded permutation per epoch; question j of step s is fixed by (seed, s, j)."""

    def __init__(self, pool: list, seed: int):
        self.pool, self.seed, self._perms = pool, seed, {}

    def __getitem__(self, j: int):
        epoch, i = divmod(j, len(self.pool))
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(len(self.pool), generator=torch.Generator().manual_seed(
                seed_of(self.seed, epoch)))}
        return self.pool[int(self._perms[epoch][i])]

    def extra(self, n: int, *key: int) -> list:
        g = torch.Generator().manual_seed(seed_of(self.seed, *key))
        return [self.pool[int(i)] for i in torch.randint(len(self.pool), (n,), generator=g)]


def sample_groups(rollout_engine, tokenizer, prompter, problems, keys, step, rnd, cfg, eos, engine):
    """G completions per problem, with the rollout engine's log-probs of them. Returns per-completion lists.

    Each sampling batch draws from a generator seeded by (seed, step, key of its first problem, round), where a
    problem's key is its index in the step's global list. With one group per batch (rollout.batch_size =
    group_size) a question gets the same completions whichever rank samples it, so one process and N processes
    take the same step (tests/test_torchrun.py); with larger batches the rows of a batch share one random stream,
    and the runs agree in distribution only."""
    r, G = cfg.rollout, cfg.rollout.group_size
    params = SamplingParams(r.temperature, r.top_p, r.max_new_tokens)
    prompts = prompter.encode(problems)
    rows = [i for i in range(len(problems)) for _ in range(G)]
    toks, fins, lps = [], [], []
    for s in range(0, len(rows), r.batch_size):
        chunk = rows[s: s + r.batch_size]
        gen = torch.Generator().manual_seed(seed_of(cfg.seed, step, keys[chunk[0]], rnd))
        with engine.autocast():
            out = rollout_engine.sample([prompts[i] for i in chunk], params, eos_ids=eos,
                                        pad_id=tokenizer.pad_token_id, generator=gen, return_logprobs=True)
        toks += out.tokens
        fins += out.finished
        lps += out.logprobs
    return prompts, rows, toks, fins, lps


def sample_episodes(rollout_engine, tokenizer, prompter, problems, keys, step, rnd, cfg, eos, engine, tools, ledger):
    """`sample_groups` with tools: each completion a multi-turn trajectory (rollout/multiturn.py), seeded the same
    way; sampling and tool calls are billed to the ledger's `rollout` and `tools` phases. Returns what
    sample_groups does, plus the trajectories (masks, calls, stop reasons)."""
    from r1kit.rollout.multiturn import run_episodes

    r, G = cfg.rollout, cfg.rollout.group_size
    params = SamplingParams(r.temperature, r.top_p, r.max_new_tokens)
    prompts = prompter.encode(problems)
    rows = [i for i in range(len(problems)) for _ in range(G)]
    phase = (lambda name: ledger.phase(name)) if ledger else None
    episodes = []
    for s in range(0, len(rows), r.batch_size):
        chunk = rows[s: s + r.batch_size]
        gen = torch.Generator().manual_seed(seed_of(cfg.seed, step, keys[chunk[0]], rnd))
        with engine.autocast():
            episodes += run_episodes(rollout_engine, [prompts[i] for i in chunk], params, tools=tools,
                                     tokenizer=tokenizer, eos_ids=eos, pad_id=tokenizer.pad_token_id, generator=gen,
                                     phase=phase)
    return (prompts, rows, [e.tokens for e in episodes], [e.finished for e in episodes],
            [e.logprobs for e in episodes], episodes)


def score_groups(prompter, tokenizer, reward_fn, cfg, problems, rows, toks, fins, episodes=None):
    """Rewards of the completions. With tools (`episodes`), the verifier reads the whole conversation, lengths
    count the model's tokens only, and a trajectory a budget stopped gets tools.budget_reward's reward."""
    texts = [prompter.completion(tokenizer.decode(t, skip_special_tokens=True)) for t in toks]
    scores = score_all(prompter.task, [problems[i] for i in rows], texts)  # a code task: in parallel, sandboxed
    rewards, parts_all = [], []
    for j, (i, t, fin, text, score) in enumerate(zip(rows, toks, fins, texts, scores)):
        length = episodes[j].model_tokens if episodes else len(t)
        ctx = {"max_new_tokens": cfg.rollout.max_new_tokens, "length": length, "truncated": not fin,
               "language": cfg.reward.language, "overlong_buffer": cfg.reward.overlong_buffer}
        total, parts = reward_fn(problems[i], text, score, ctx)
        if episodes:
            total = budget_reward(total, not fin, cfg.tool_use.budget_reward)
        rewards.append(total)
        parts_all.append(parts)
    return rewards, parts_all, scores


def collect_groups(step, rollout_engine, tokenizer, prompter, stream, reward_fn, cfg, engine, ledger, eos, tools=None):
    """Sample, score and (with dynamic sampling) refill this rank's groups. Returns the kept data + stats.
    `tools` (a tools.ToolBox): multi-turn trajectories with tool calls (`sample_episodes`)."""
    info = engine.info
    G, local_n = cfg.rollout.group_size, cfg.rollout.prompts_per_step // info.world
    P = cfg.rollout.prompts_per_step
    keys = [j for j in range(P) if j % info.world == info.rank]  # this rank's share of the step's questions
    first = [stream[step * P + j] for j in keys]
    kept = {"prompts": [], "toks": [], "fins": [], "lps": [], "rewards": [], "problems": [], "keys": [], "episodes": []}
    seen = {"rewards": [], "parts": [], "scores": [], "lengths": [], "fins": [], "zero_var": 0, "groups": 0,
            "episodes": []}
    problems, t_roll, t_score, n_prompt_tok, n_gen, longest_prompt = first, 0.0, 0.0, 0, 0, 0
    for rnd in range(cfg.rollout.max_refill_rounds + 1):
        t0 = time.perf_counter()
        episodes = None
        with ledger.phase("rollout") if ledger and tools is None else nullcontext() as ph:
            if tools is None:
                prompts, rows, toks, fins, lps = sample_groups(rollout_engine, tokenizer, prompter, problems, keys,
                                                                step, rnd, cfg, eos, engine)
            else:  # the turn loop bills its own rollout and tools phases (this rank's tokens)
                prompts, rows, toks, fins, lps, episodes = sample_episodes(
                    rollout_engine, tokenizer, prompter, problems, keys, step, rnd, cfg, eos, engine, tools, ledger)
            # the ledger (rank 0's) bills every rank's tokens: all ranks are in this round (see `missing` below)
            local = [sum(len(prompts[i]) for i in rows), sum(map(len, toks))]
            n_p, n_g = dist.all_reduce_sum(local)
            longest = dist.all_reduce_max([max(map(len, prompts), default=0)])[0]
            if ph is not None:
                ph.add(prompt_tokens=int(n_p), generated_tokens=int(n_g),
                       seq_len=int(longest) + cfg.rollout.max_new_tokens)
            elif ledger is not None and tools is not None and (n_g > local[1] or n_p > local[0]):
                ledger.record("rollout", 0.0, prompt_tokens=int(n_p - local[0]), generated_tokens=int(n_g - local[1]),
                              seq_len=int(longest) + cfg.rollout.max_new_tokens)  # the other ranks' tokens
        t1 = time.perf_counter()
        with ledger.phase("sandbox" if getattr(prompter.task, "executes_code", False) else "scoring") if ledger \
                else nullcontext() as ph:
            rewards, parts, scores = score_groups(prompter, tokenizer, reward_fn, cfg, problems, rows, toks, fins,
                                                  episodes)
            if ph is not None:
                ph.add(**sandbox_usage(scores))
        t_roll, t_score = t_roll + t1 - t0, t_score + time.perf_counter() - t1
        n_prompt_tok += sum(len(prompts[i]) for i in rows)
        n_gen += sum(map(len, toks))
        longest_prompt = max(longest_prompt, max(map(len, prompts), default=0))
        seen["rewards"] += rewards
        seen["parts"] += parts
        seen["scores"] += scores
        seen["lengths"] += [e.model_tokens for e in episodes] if episodes else [len(t) for t in toks]
        seen["episodes"] += episodes or []
        seen["fins"] += fins
        for g in range(len(problems)):
            sl = slice(g * G, (g + 1) * G)
            flat = max(rewards[sl]) - min(rewards[sl]) < 1e-9
            seen["groups"] += 1
            seen["zero_var"] += flat
            if (flat and cfg.rollout.dynamic_sampling) or len(kept["problems"]) >= local_n:
                continue
            kept["problems"].append(problems[g])
            kept["keys"].append(keys[g])
            kept["prompts"] += [prompts[g]] * G
            kept["toks"] += toks[sl]
            kept["fins"] += fins[sl]
            kept["lps"] += lps[sl]
            kept["rewards"] += rewards[sl]
            kept["episodes"] += episodes[sl] if episodes else []
        missing = local_n - len(kept["problems"])
        # every rank takes part in as many rounds as the rank that refills longest (an empty one if it is done)
        if not cfg.rollout.dynamic_sampling or dist.all_reduce_max([missing])[0] <= 0:
            break
        problems = stream.extra(missing, step, info.rank, rnd + 1) if missing > 0 else []
        keys = [info.rank + P * i for i in range(max(missing, 0))]  # refills are drawn per rank: keyed by it
    return kept, seen, {"rollout": t_roll, "scoring": t_score, "prompt_tokens": n_prompt_tok, "generated": n_gen,
                        "longest_prompt": longest_prompt}
