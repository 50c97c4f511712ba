"""The run doctor: notices when an RL run cannot learn, and says why.

Checks, each over `patience` consecutive steps unless noted:
- truncation: most completions hit the token budget (raise rollout.max_new_tokens, or penalise length);
- zero variance: most groups have all-equal rewards, so advantages are zero (the task is too easy or too hard
  for the model; use dynamic sampling, or change difficulty / group size);
- format stuck at 0: no completion is ever well formatted (check the template and the base model);
- non-finite loss or gradients (immediately; the update is skipped and no checkpoint is written);
- reward hacking: training reward rising between two held-out evaluations while held-out pass@1 falls;
- engine drift: the rollout engine's log-probs of its samples differ from the trainer's (mismatch KL per token
  above `mismatch_limit`: a stale or wrongly loaded engine, or a precision too low for the model);
- sandbox timeouts (code tasks): most completions' programs hit the sandbox's time limit (the step's
  `execution_timeout_rate` and `execution_crash_rate` are in metrics.jsonl);
- tool use (runs with tools): no trajectory calls a tool any more, or nearly every call fails.
Warnings are returned as strings; in strict mode `DoctorStop` is raised with the same message. Pure Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from r1kit.errors import UserError


class DoctorStop(UserError):
    """The run cannot learn; raised in strict mode."""


@dataclass
class Doctor:
    strict: bool = False
    truncation_limit: float = 0.95
    zero_variance_limit: float = 0.95
    patience: int = 5
    hacking_drop: float = 0.05
    mismatch_limit: float = 0.01
    streaks: dict = field(default_factory=lambda: {"truncation": 0, "zero_variance": 0, "format": 0,
                                                   "mismatch": 0, "timeouts": 0, "tool_collapse": 0,
                                                   "tool_errors": 0})
    last_eval: tuple | None = None  # (mean train reward since the previous eval, held-out pass@1)
    rewards_since_eval: list = field(default_factory=list)
    warned: set = field(default_factory=set)

    def state(self) -> dict:
        return {"streaks": dict(self.streaks), "last_eval": self.last_eval,
                "rewards_since_eval": list(self.rewards_since_eval), "warned": sorted(self.warned)}

    def load(self, state: dict) -> None:
        self.streaks = {**self.streaks, **state["streaks"]}  # a checkpoint from before a check was added lacks it
        self.last_eval = tuple(state["last_eval"]) if state["last_eval"] else None
        self.rewards_since_eval = list(state["rewards_since_eval"])
        self.warned = set(state["warned"])

    def _report(self, key: str, message: str) -> list[str]:
        if self.strict:
            raise DoctorStop(message)
        if key in self.warned:
            return []
        self.warned.add(key)
        return [message]

    def check_step(self, step: int, m: dict) -> list[str]:
        """Look at one step's metrics (truncation_rate, zero_variance_share, format_rate, loss, grad_norm)."""
        out: list[str] = []
        for name in ("loss", "grad_norm"):
            value = m.get(name)
            if value is not None and not math.isfinite(value):
                out += self._report(f"nan{step}", f"step {step}: {name} is {value}; the update was skipped "
                                    "(lower optim.lr or check the data)")
        if m.get("skipped_updates"):
            out += self._report(f"skip{step}", f"step {step}: {m['skipped_updates']} update(s) had NaN/inf "
                                "gradients and were skipped (lower optim.lr)")
        rules = [
            ("truncation", m.get("truncation_rate", 0) >= self.truncation_limit,
             f"{self.truncation_limit:.0%} or more of completions are truncated: raise rollout.max_new_tokens"),
            ("zero_variance", m.get("zero_variance_share", 0) >= self.zero_variance_limit,
             f"{self.zero_variance_limit:.0%} or more of groups have all-equal rewards, so there is nothing to "
             "learn from: enable rollout.dynamic_sampling, raise group_size, or change the task's difficulty"),
            ("format", m.get("format_rate", 1) == 0,
             "no completion is well formatted (<think>..</think> <answer>..</answer>): check the template and "
             "that the model can produce the tags"),
            ("mismatch", m.get("mismatch_kl", 0) > self.mismatch_limit,
             f"the rollout engine's log-probs drift from the trainer's (mismatch KL {m.get('mismatch_kl', 0):.3g} "
             f"per token > {self.mismatch_limit}): check that the engine gets the new weights after every step, "
             "or sample in the training precision (rollout.dtype)"),
            ("timeouts", m.get("execution_timeout_rate", 0) > 0.5,
             "most completions' programs time out in the sandbox: look at samples.jsonl (endless loops?), give "
             "the task more time, or penalise length"),
            ("tool_collapse", m.get("tool_use_share", 1) == 0,
             "no trajectory calls a tool any more (tool use collapsed to 0): the model has stopped using its "
             "tools; look at samples.jsonl, check the call format, or start from a cold-start SFT on tool-using "
             "traces"),
            ("tool_errors", m.get("tool_calls_per_trajectory", 0) > 0 and m.get("tool_error_rate", 0) >= 0.9,
             "nearly every tool call fails (tool_error_rate >= 90%): look at the calls in samples.jsonl (bad "
             "arguments? code that cannot run in the sandbox?)"),
        ]
        for key, bad, message in rules:
            self.streaks[key] = self.streaks.get(key, 0) + 1 if bad else 0
            if self.streaks[key] >= self.patience:
                out += self._report(key, f"step {step}: for {self.streaks[key]} steps {message}")
        if "reward_mean" in m:
            self.rewards_since_eval.append(m["reward_mean"])
        return out

    def check_eval(self, step: int, pass_at_1: float) -> list[str]:
        """Compare with the previous held-out evaluation: reward up while accuracy down is reward hacking."""
        out: list[str] = []
        reward = (sum(self.rewards_since_eval) / len(self.rewards_since_eval)) if self.rewards_since_eval else None
        if self.last_eval is not None and reward is not None and self.last_eval[0] is not None:
            prev_reward, prev_acc = self.last_eval
            if reward > prev_reward and pass_at_1 < prev_acc - self.hacking_drop:
                out += self._report(f"hacking{step}", (
                    f"step {step}: training reward rose ({prev_reward:.3f} -> {reward:.3f}) while held-out pass@1 "
                    f"fell ({prev_acc:.3f} -> {pass_at_1:.3f}): possible reward hacking; check the reward "
                    "functions"))
        self.last_eval = (reward, pass_at_1)
        self.rewards_since_eval = []
        return out
