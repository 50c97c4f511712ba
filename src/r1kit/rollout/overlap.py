"""rollout.overlap: the next RL step's rollout sampled in a background thread while the current step trains.

Used by loops/rl.py; the rollout itself (sampling and scoring) is the loop's, passed in as a function.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch


class BackgroundRollout:
    """rollout.overlap: the next step's rollout sampled (and scored) in a thread while this step trains, from the
    sampler's copy of the weights before this step's update: one step off-policy, corrected by TIS against the
    trainer's log-probs (algo/grpo.py). The torch threads are split between the two while they overlap.

    The ledger bills wall time once: the rollout's record holds the time the trainer *waited* for it (its
    tokens and FLOPs in full, its own duration as `overlapped_s`), the training record the training. A
    checkpoint keeps the prefetched rollout, so `--resume` continues with the very completions the uninterrupted
    run trained on."""

    def __init__(self, cfg, rollout, prefetched=None):
        self.cfg = cfg
        self.rollout = rollout  # rollout(step, ledger) -> (kept, seen, times): `_rollout_step` of this run
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="r1kit-rollout")
        self.threads = torch.get_num_threads()
        self.future = None
        self.prefetched = prefetched  # (step, (kept, seen, times)) of the next step, once sampled

    def _work(self, step: int):
        torch.set_num_threads(max(1, self.threads // 2))  # this thread's share (OpenMP settings are per thread)
        t0 = time.perf_counter()
        result = self.rollout(step, None)  # billed by `wait`
        return step, result, time.perf_counter() - t0

    def start(self, step: int) -> None:
        self.future = self.pool.submit(self._work, step)

    def wait(self, ledger) -> None:
        """Wait for the rollout in flight (if any) and keep it as the next step's."""
        if self.future is None:
            return
        t0 = time.perf_counter()
        step, result, took = self.future.result()
        waited = time.perf_counter() - t0
        self.future = None
        self.prefetched = (step, result)
        times = result[2]
        times["overlapped"], times["waited"] = took, waited
        if ledger is not None:
            ledger.record("rollout", waited, prompt_tokens=int(times["prompt_tokens"]),
                          generated_tokens=int(times["generated"]), overlapped_s=took,
                          seq_len=int(times["longest_prompt"]) + self.cfg.rollout.max_new_tokens)

    def take(self, step: int, ledger):
        """The rollout of `step`: the prefetched one, or sampled now (the first step)."""
        if self.prefetched is not None and self.prefetched[0] == step:
            result, self.prefetched = self.prefetched[1], None
            return result
        return self.rollout(step, ledger)

    @contextmanager
    def main_threads(self):
        """The trainer's share of the torch threads while the rollout runs beside it."""
        if self.future is None:
            yield
            return
        torch.set_num_threads(max(1, self.threads - self.threads // 2))
        try:
            yield
        finally:
            torch.set_num_threads(self.threads)

    def close(self) -> None:
        if self.future is not None:
            self.future.result()
        self.pool.shutdown()
