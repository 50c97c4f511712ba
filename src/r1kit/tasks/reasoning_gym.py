"""reasoning-gym's procedural datasets as r1kit tasks: `rg:NAME[:knob=value,...]`.

reasoning-gym (github.com/open-thought/reasoning-gym; optional: `pip install 'r1kit[rg]'`) has a hundred seeded
generators (arithmetic, GSM-style word problems, countdown, logic, puzzles), each with a config dataclass, whose
fields are the knobs (`rg:basic_arithmetic:min_terms=2,max_terms=3`; a list is written `operators=+|-`), and
its own `score_answer`. This module puts r1kit's task contract around them:

- Splits. Entries are generated index by index from seeded datasets (dataset seeds laid end to end, `_CHUNK`
  indices each, so one `problems()` seed reads one long stream), and each goes to train or test by a hash of its
  question text (`split_of`, `test_percent` knob): a question is never in both splits, whatever the seeds. A
  repeated question is kept once; one whose own reference answer reasoning-gym scores below 1 is dropped. The
  stream is cached per (dataset, knobs, seed): the same seed gives the same problems, and asking for more
  extends the list.
- Verifier. The answer is read in the task's answer format (tasks/formats.py) and is correct iff reasoning-gym's
  `score_answer(answer, entry) >= 1`. Its partial credit (a wrong countdown expression gets 0.05, a trivially
  true logic conclusion 0.25) is not passed on: r1kit's accuracy is 0 or 1, as in the paper. `score_answer` runs
  in a child process with a time limit (`_Scorer`), because some scorers evaluate the answer with sympy: a
  countdown answer `9**9**9` computes for minutes inside C code that no signal interrupts.
- Prompt. The question is reasoning-gym's text, verbatim (stripped). Its own instructions say what the answer is
  ("Do not include units", countdown's "Provide your solution as an arithmetic expression"), not where it goes,
  so they do not fight the answer format: the `<answer>` tags of the R1-Zero template, or the `\\boxed{}` of the
  instruction appended after the question. reasoning-gym's system prompt (its own `<answer>` contract) is unused.
- Reference answer. `entry["answer"]`; where reasoning-gym gives none (several answers are right) an example from
  the metadata (`_EXAMPLE_KEYS`, e.g. propositional_logic's). boxnet and rush_hour have neither: their problems
  have answer "" and no worked solution, but can still be evaluated and trained on with RL.

`composite` (a mixture of datasets) is not offered: its config is a list of datasets, which a spec cannot write.
"""

from __future__ import annotations

import atexit
import difflib
import enum
import hashlib
import json
import logging
import random
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection

from r1kit.errors import UserError
from r1kit.tasks.base import (
    Problem,
    Score,
    check_formats,
    check_split,
    check_template,
    raw_prompt,
    read,
    split_of,
)

logger = logging.getLogger(__name__)

_CHUNK = 1_000  # indices per reasoning-gym dataset object (its `size`)
_MAX_BASE = 2**31  # a stream's first dataset seed is a hash of its seed below this, so that dataset seeds stay
# below 2**32 (pool_matrix seeds numpy with seed + index) and two seeds' streams almost never meet
_STALE = 2_000  # indices in a row without a new question: the knobs allow no more
_CACHED_STREAMS = 16
_TIMEOUT_S = 5.0  # one score_answer call; past it the answer scores 0 and the child is replaced
_START_TIMEOUT_S = 120.0  # the child importing reasoning-gym
_RESERVED = ("seed", "size")  # set by r1kit: the seed is problems()'s, the size _CHUNK
_UNSUPPORTED = ("composite",)
_EXAMPLE_KEYS = ("example_answer", "example_correct_answer", "possible_answer")
_GENERIC_THINKS = (
    "Let me work through the question step by step and check the result.",
    "I read the question carefully, solve it, and verify the answer.",
    "Let me think about what is asked, work it out, and double-check.",
)


def _import(spec: str):
    try:
        import reasoning_gym
    except ImportError:
        raise UserError(f"{spec}: reasoning-gym is not installed: pip install 'r1kit[rg]'") from None
    return reasoning_gym


def config_class(dataset: str):
    """The config dataclass of a reasoning-gym dataset; UserError naming close names for an unknown one."""
    _import(f"rg:{dataset}")
    from reasoning_gym.factory import DATASETS

    offered = sorted(set(DATASETS) - set(_UNSUPPORTED))
    if dataset not in offered:
        close = difflib.get_close_matches(dataset, offered, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"e.g. {', '.join(offered[:6])}"
        raise UserError(f"rg:{dataset}: no such reasoning-gym dataset ({hint}; {len(offered)} in all, "
                        "listed in reasoning_gym.factory.DATASETS)")
    return DATASETS[dataset][1]


def config_defaults(dataset: str) -> dict:
    """The dataset's knobs and their defaults (the fields of its config, less the ones r1kit sets)."""
    import dataclasses

    config = config_class(dataset)()
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in _RESERVED}


def _number(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def coerce_knob(value, default):
    """A spec value (int, float or str) as the type of the config field's default: bools from true/false/1/0,
    lists and tuples from `a|b|c`, enums from their values, numbers as strings for text fields."""
    if isinstance(default, bool):
        words = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
        if isinstance(value, bool):
            return value
        if str(value).lower() not in words:
            raise ValueError("use true or false")
        return words[str(value).lower()]
    if isinstance(default, enum.Enum):
        return type(default)(value)
    if isinstance(default, (list, tuple)) and not isinstance(value, (list, tuple)):
        items = str(value).split("|")
        text_items = all(isinstance(x, str) for x in default)
        return type(default)(item if text_items else _number(item) for item in items)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, str) and isinstance(value, (int, float)):
        return str(value)
    return value


def make_dataset(dataset: str, knobs: dict, seed: int, spec: str = ""):
    """A reasoning-gym dataset object of `_CHUNK` entries; its own validation errors become one-line UserErrors."""
    reasoning_gym = _import(spec or f"rg:{dataset}")
    try:
        return reasoning_gym.create_dataset(dataset, seed=seed, size=_CHUNK, **knobs)
    except (AssertionError, ValueError, TypeError, KeyError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"{spec or 'rg:' + dataset}: reasoning-gym rejects the knobs: {message}") from None


def reference_answer(entry: dict) -> str:
    """The entry's answer, else an example answer from its metadata (JSON for a non-string); '' when none."""
    if entry.get("answer") is not None:
        return str(entry["answer"])
    for key in _EXAMPLE_KEYS:
        example = entry.get("metadata", {}).get(key)
        if example is not None:
            return example if isinstance(example, str) else json.dumps(example)
    return ""


# ---- the stream of generated entries, cached ------------------------------------------------------------------


class _Stream:
    """The distinct questions of one (dataset, knobs, seed), in the order generated, as (question, entry).

    A question whose reference answer reasoning-gym itself scores below 1 is dropped: no model could get it
    right (propositional_logic, now and then, gives premises that are all tautologies and a conclusion that
    does not follow), and its worked solution would teach a wrong answer."""

    def __init__(self, dataset: str, knobs: dict, seed: int):
        self.dataset, self.knobs = dataset, knobs
        self.base = int.from_bytes(hashlib.sha1(f"rg-seed:{seed}".encode()).digest()[:4], "big") % _MAX_BASE
        self.entries: list[tuple[str, dict]] = []
        self.index = 0  # the next index to generate
        self.rejected = 0  # questions whose own reference answer reasoning-gym does not accept
        self._seen: set[str] = set()
        self._chunk = (None, None)  # (chunk number, its dataset object)

    def grow(self) -> bool:
        """Generate until one new question is kept; False when `_STALE` indices in a row bring none."""
        for _ in range(_STALE):
            chunk, i = divmod(self.index, _CHUNK)
            if self._chunk[0] != chunk:
                self._chunk = (chunk, make_dataset(self.dataset, self.knobs, self.base + chunk * _CHUNK))
            dataset = self._chunk[1]
            try:
                entry = dataset[i]
            except (ValueError, AssertionError, RuntimeError) as e:  # e.g. countdown's "Failed to generate"
                raise UserError(f"rg:{self.dataset}: reasoning-gym could not generate a question with these "
                                f"knobs: {' '.join(str(e).split())}") from None
            self.index += 1
            question = entry["question"].strip()
            if question in self._seen:
                continue
            self._seen.add(question)
            reference = reference_answer(entry)
            if reference and dataset.score_answer(reference, entry) < 1.0:  # trusted text: scored in-process
                self.rejected += 1
                continue
            self.entries.append((question, entry))
            return True
        return False


_STREAMS: dict[tuple, _Stream] = {}  # oldest first, at most _CACHED_STREAMS


def stream(dataset: str, knobs: dict, seed: int) -> _Stream:
    key = (dataset, repr(sorted(knobs.items())), seed)
    if key not in _STREAMS:
        if len(_STREAMS) >= _CACHED_STREAMS:
            _STREAMS.pop(next(iter(_STREAMS)))
        _STREAMS[key] = _Stream(dataset, knobs, seed)
    return _STREAMS[key]


# ---- score_answer in a child process, with a time limit -------------------------------------------------------


def _serve(conn) -> None:
    """The scorer's child: (dataset, knobs, answer, entry) in, score_answer's value out, until the pipe closes."""
    try:
        import reasoning_gym
    except Exception as e:  # reported to the parent, which raises
        conn.send(f"cannot import reasoning-gym: {e}")
        return
    conn.send("ready")
    datasets: dict = {}
    while True:
        try:
            dataset, knobs, answer, entry = conn.recv()
        except (EOFError, OSError):
            return
        key = (dataset, repr(sorted(knobs.items())))
        try:
            if key not in datasets:
                datasets[key] = reasoning_gym.create_dataset(dataset, seed=0, size=_CHUNK, **knobs)
            value = float(datasets[key].score_answer(answer, entry))
        except Exception:  # a scorer that raises on a junk answer: no credit
            value = 0.0
        conn.send(value)


# The child's program: it is started with `python -c` (not multiprocessing, which would re-run the parent's
# unguarded main script) and talks over a socket, so nothing a scorer prints can garble the replies.
_CHILD = (
    "import sys; from multiprocessing.connection import Connection; conn = Connection(int(sys.argv[1])); "
    "sys.path[:] = conn.recv(); from r1kit.tasks.reasoning_gym import _serve; _serve(conn)"
)


class _Scorer:
    """One child process that runs score_answer; a call that takes over `_TIMEOUT_S` scores 0, the child is
    killed, and the next call starts a fresh one."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc = self._conn = None

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        theirs.close()
        conn = Connection(ours.detach())
        conn.send(list(sys.path))
        try:
            hello = conn.recv() if conn.poll(_START_TIMEOUT_S) else "it did not start"
        except (EOFError, OSError):
            hello = f"it exited with status {proc.wait()}"
        if hello != "ready":
            proc.kill()
            proc.wait()
            conn.close()
            raise UserError(f"rg: cannot start reasoning-gym's scorer process: {hello}")
        self._proc, self._conn = proc, conn

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._conn.close()
        self._proc = self._conn = None

    def __call__(self, dataset: str, knobs: dict, answer: str, entry: dict) -> float:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self.stop()
                self._start()
            try:
                self._conn.send((dataset, knobs, answer, entry))
                if self._conn.poll(_TIMEOUT_S):
                    return self._conn.recv()
            except (EOFError, OSError):
                pass
            logger.warning("rg:%s: score_answer gave no verdict within %.0f s on %.80r: scored 0",
                           dataset, _TIMEOUT_S, answer)
            self.stop()
            return 0.0


_SCORER = _Scorer()
atexit.register(_SCORER.stop)


# ---- the task -----------------------------------------------------------------------------------------------


class ReasoningGymTask:
    """One reasoning-gym dataset with r1kit's splits, prompt formats and verifier (see the module docstring)."""

    def __init__(
        self,
        dataset: str,
        template: str = "r1-zero",  # the raw template (prompt_format auto without a chat template)
        prompt_format: str = "auto",  # auto | chat | r1-zero | r1-zero-compact | a literal template
        answer_format: str = "auto",  # auto | think-answer | think-boxed | boxed | gsm8k
        system: str = "",  # system prompt of a chat prompt
        instruction: str = "auto",  # appended to the question: auto | r1-math | none | literal text
        test_percent: int = 10,  # share of questions (by hash of their text) held out for test
        **knobs,  # the dataset's config fields
    ):
        self.dataset, self.name = dataset, f"rg:{dataset}"
        self.template = check_template(template)
        self.prompt_format, self.answer_format = prompt_format, answer_format
        self.system, self.instruction = system, instruction
        check_formats(self)
        if not isinstance(test_percent, int) or not 0 < test_percent < 100:
            raise UserError(f"{self.name}: test_percent={test_percent!r}: use a whole percentage in 1..99")
        self.test_percent = test_percent
        self.knobs = dict(knobs)  # as given, for the run's record
        self._config = self._check_knobs(knobs)  # as the dataset's config takes them
        make_dataset(dataset, self._config, 0, spec=self.name)  # reasoning-gym's own checks, now

    def _check_knobs(self, knobs: dict) -> dict:
        defaults = config_defaults(self.dataset)
        for key in knobs:
            if key in _RESERVED:
                raise UserError(f"{self.name}: {key} is set by r1kit (the problems' seed, and the split sizes)")
            if key not in defaults:
                raise UserError(f"{self.name}: unknown knob {key!r}: the dataset's knobs are "
                                f"{', '.join(defaults) or '(none)'}; r1kit's: template, prompt_format, "
                                "answer_format, system, instruction, test_percent")
        config = {}
        for key, value in knobs.items():
            try:
                config[key] = coerce_knob(value, defaults[key])
            except ValueError as e:
                raise UserError(f"{self.name}: {key}={value!r}: {e}") from None
        return config

    def problems(self, split: str, n: int | None, seed: int = 0) -> list[Problem]:
        """The first `n` distinct problems of `split` in the stream of seed `seed` (UserError when the knobs
        allow fewer)."""
        check_split(split)
        if n is None or n < 0:
            raise UserError(f"{self.name}: the problems are generated without end: ask for a number of them")
        entries, found, pos = stream(self.dataset, self._config, seed), [], 0
        while len(found) < n:
            if pos == len(entries.entries) and (pos >= 200 * n + _CHUNK or not entries.grow()):
                raise UserError(
                    f"{self.name}: only {len(found)} distinct {split} problems in {entries.index} generated "
                    f"(asked for {n}): ask for fewer, or widen the knobs so there are more questions"
                )
            question, entry = entries.entries[pos]
            pos += 1
            if split_of(question, self.test_percent) == split:
                found.append(self._problem(question, entry))
        return found

    def _problem(self, question: str, entry: dict) -> Problem:
        digest = hashlib.sha1(question.encode()).hexdigest()[:12]
        return Problem(f"rg/{self.dataset}/{digest}", question, reference_answer(entry), {"entry": entry})

    def prompt(self, problem: Problem) -> str:
        return raw_prompt(self, problem)

    def credit(self, problem: Problem, answer: str) -> float:
        """reasoning-gym's own score of an answer text, partial credit included (0 past the time limit)."""
        if "entry" not in problem.meta:
            raise ValueError(f"{problem.id}: not a problem of {self.name} (no reasoning-gym entry in its meta)")
        return _SCORER(self.dataset, self._config, answer, problem.meta["entry"])

    def score(self, problem: Problem, completion: str) -> Score:
        """Correct iff reasoning-gym gives the extracted answer full credit (format is scored apart)."""
        text, formatted = read(self, completion)
        if not text:
            return Score(correct=False, formatted=formatted, answer=None)
        correct = self.credit(problem, text) >= 1.0
        return Score(correct=correct, formatted=formatted, answer=" ".join(text.split()))

    def solution(self, problem: Problem, rng: random.Random) -> str:
        """A generic sentence of reasoning, then the reference answer (reasoning-gym writes no worked solutions)."""
        if not problem.answer:
            raise UserError(f"{self.name} gives no reference answer, so no worked solutions: use it for RL or "
                            "evaluation, not for a pre-training corpus")
        return f"<think> {rng.choice(_GENERIC_THINKS)} </think> <answer>{problem.answer}</answer>"
