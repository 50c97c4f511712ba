"""A scripted model for the tool tests: fixed turns of text per row, served through the RolloutEngine interface."""

from __future__ import annotations

from r1kit.rollout.sampler import Samples


class ScriptedEngine:
    """Plays `scripts[row][turn]` (text) for the row whose prompt is `prompts[row]`: each call continues a row
    from where its context stands, stops at the first token in `eos_ids` (a stop candidate or EOS) or at
    `max_new_tokens`, as a real engine does. The turn is the number of observations in the context so far."""

    name = "scripted"

    def __init__(self, tokenizer, prompts: list[list[int]], scripts: list[list[str]], eos_id: int,
                 observation_marker: str = "```output"):
        self.tok, self.prompts, self.eos, self.marker = tokenizer, [tuple(p) for p in prompts], eos_id, \
            observation_marker
        self.scripts = [[tokenizer(t, add_special_tokens=False).input_ids for t in turns] for turns in scripts]
        self.calls = 0

    def _row(self, context: list[int]) -> int:
        return next(r for r, p in enumerate(self.prompts) if tuple(context[: len(p)]) == p)

    def sample(self, prompts, params, *, eos_ids, pad_id, generator=None, return_logprobs=False) -> Samples:
        self.calls += 1
        tokens, finished, lps = [], [], []
        for context in prompts:
            r = self._row(context)
            after = context[len(self.prompts[r]):]
            turn = self.tok.decode(after).count(self.marker)
            script = self.scripts[r][min(turn, len(self.scripts[r]) - 1)]
            # how much of this turn's script is already in the context (a row continued after a false stop)
            done = 0
            for n in range(min(len(script), len(after)), 0, -1):
                if after[-n:] == script[:n]:
                    done = n
                    break
            rest = script[done:] + ([self.eos] if turn == len(self.scripts[r]) - 1 else [])
            out = []
            for t in rest[: params.max_new_tokens]:
                out.append(t)
                if t in eos_ids:
                    break
            tokens.append(out)
            finished.append(bool(out) and out[-1] == self.eos)
            lps.append([-0.5] * len(out))
        return Samples(tokens, finished, lps if return_logprobs else None)

    def update_weights(self, policy) -> None:
        pass

    def close(self) -> None:
        pass


class DrawnScriptEngine:
    """A scripted policy for whole RL runs: each new trajectory draws one of `options` (lists of turn texts) from
    the sampling generator (so a seeded step replays the same draws, as a resumed run must); a continued one
    plays the next turn of the option its text began with. Tokens come from the run's tokenizer, so the trainer
    can score them."""

    name = "scripted"

    def __init__(self, tokenizer, options: list[list[str]], eos_id: int, marker: str = "```output"):
        self.tok, self.eos, self.marker = tokenizer, eos_id, marker
        self.options = [[tokenizer(t, add_special_tokens=False).input_ids for t in turns] for turns in options]

    def sample(self, prompts, params, *, eos_ids, pad_id, generator=None, return_logprobs=False) -> Samples:
        import torch

        draws = torch.randint(len(self.options), (len(prompts),), generator=generator).tolist()
        tokens, finished, lps = [], [], []
        for context, draw in zip(prompts, draws):
            text = self.tok.decode(context)
            turn = text.count(self.marker)
            option = draw
            if turn:  # the option whose first turn this trajectory holds
                option = next(k for k, o in enumerate(self.options) if self.tok.decode(o[0]) in text)
            else:  # a first turn continued after a false stop: the option it began
                started = [(n, k) for k, o in enumerate(self.options) for n in range(len(o[0]), 1, -1)
                           if context[-n:] == o[0][:n]]
                option = max(started)[1] if started else draw
            script = self.options[option][min(turn, len(self.options[option]) - 1)]
            done = 0
            for n in range(min(len(script), len(context)), 0, -1):
                if context[-n:] == script[:n]:
                    done = n
                    break
            last = turn >= len(self.options[option]) - 1
            out = []
            for t in (script[done:] + ([self.eos] if last else []))[: params.max_new_tokens]:
                out.append(t)
                if t in eos_ids:
                    break
            tokens.append(out)
            finished.append(bool(out) and out[-1] == self.eos)
            lps.append([-1.0] * len(out))
        return Samples(tokens, finished, lps if return_logprobs else None)

    def update_weights(self, policy) -> None:
        pass

    def close(self) -> None:
        pass
