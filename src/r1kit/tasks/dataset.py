"""Question/answer datasets the way users have them: a hub dataset, a local file, a `save_to_disk` directory.

Specs (parsed by tasks/__init__.py; tasks/sources.py reads the data):

    hf:NAME[:CONFIG][,key=value...]     e.g. hf:openai/gsm8k:main  (the network, or the HF offline cache)
    data:PATH[,key=value...]            a .parquet/.json/.jsonl/.csv file or a save_to_disk directory
    data:train=PATH,test=PATH           one file per split
    gsm8k | math500 | aime24 | aime25   presets (PRESETS below); `gsm8k:path=LOCAL_COPY` reads a local copy

Columns: `question=COL`, `answer=COL`, `solution=COL` name them (`prompt_key`/`answer_key` as for jsonl); unnamed
ones are found among QUESTION_COLUMNS, ANSWER_COLUMNS and SOLUTION_COLUMNS (case aside). An answer that is a
worked solution (GSM8K's `... #### 72`, MATH's `... \\boxed{\\frac{1}{2}}`) gives its final answer and becomes the
row's solution; with no answer column the answer is read from the solution column the same way. Answers are
compared with math-verify, as for jsonl (tasks/jsonl.py).

Splits, the first that applies: explicit split files (`train=`, `test=`); named splits (`train_split=`,
`test_split=`, else a split called test/validation/valid/dev beside an optional train); a source with one split
is unsplit, and its rows go by a `split` column of train/test values when there is one, else by the hash of the
question (`split_of`). The same question never lands in both splits: one in test is dropped from train. A
problem's id is the task's name and a hash of its question, so it is stable across runs and files.

Evaluation reads `eval_split`: the test split when the data names its splits, else every row (`all`), so a file
given to `r1kit eval` is evaluated whole unless `--n` asks for a sample. Presets carry the R1 paper's evaluation
settings (`eval_defaults`, ../shared/r1-reference.md §6), which `r1kit eval` uses unless a flag overrides them.
Bad rows are rejected one by one (`task.rejected`, the first ten logged); bad input is a one-line UserError.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from dataclasses import dataclass
from decimal import Decimal

from r1kit.errors import UserError
from r1kit.tasks.base import (
    FORMAT_OPTIONS,
    SPLITS,
    Problem,
    Score,
    check_formats,
    check_split,
    check_template,
    raw_prompt,
    split_of,
)
from r1kit.tasks.formats import answer_from_solution, gsm8k_answer
from r1kit.tasks.jsonl import math_score, math_solution
from r1kit.tasks.sources import load_hub, load_local, load_split_files

logger = logging.getLogger(__name__)

QUESTION_COLUMNS = ("question", "problem", "prompt", "input", "query")
ANSWER_COLUMNS = ("answer", "final_answer", "target", "expected_answer")
SOLUTION_COLUMNS = ("solution", "reasoning", "rationale")
TEST_SPLIT_NAMES = ("test", "validation", "valid", "dev")  # a named split taken as the test split
ALL = "all"  # the split name that means every row (train and test)
UNSPLIT = "rows"  # role of a source with one split: split by its `split` column or by hash
_LOGGED_REJECTS = 10


@dataclass(frozen=True)
class Columns:
    question: str
    answer: str | None  # None: the answer is read from the solution
    solution: str | None
    split: str | None  # a `split` column of train/test values


def find_column(columns: list[str], wanted, candidates: tuple, role: str, label: str) -> str | None:
    """The column named `wanted` (exactly, else case aside), else the first of `candidates` present."""
    lowered = {c.lower(): c for c in columns}
    if wanted is not None:
        wanted = str(wanted)
        if wanted in columns or wanted.lower() in lowered:
            return wanted if wanted in columns else lowered[wanted.lower()]
        raise UserError(f"{label}: {role}={wanted!r} is not a column; its columns are {', '.join(columns)}")
    return next((lowered[c] for c in candidates if c in lowered), None)


def resolve_columns(columns: list[str], question, answer, solution, *, label: str) -> Columns:
    q = find_column(columns, question, QUESTION_COLUMNS, "question", label)
    if q is None:
        raise UserError(f"{label}: no question column among {', '.join(columns)}: name it with question=COL")
    a = find_column(columns, answer, ANSWER_COLUMNS, "answer", label)
    s = find_column(columns, solution, tuple(c for c in SOLUTION_COLUMNS if c not in (q, a)), "solution", label)
    if a is None and s is None:
        raise UserError(f"{label}: no answer column among {', '.join(columns)}: name it with answer=COL (or "
                        "solution=COL for a worked solution ending in \\boxed{} or #### N)")
    return Columns(q, a, s, "split" if "split" in columns else None)


def answer_text(value) -> str | None:
    """A reference answer as text: strings stripped, finite numbers written out (0.5, not 5e-1); else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(Decimal(repr(value)), "f") if math.isfinite(value) else None
    return (value.strip() or None) if isinstance(value, str) else None


def read_row(row: dict, cols: Columns) -> tuple[str, str, str | None] | str:
    """(question, answer, worked solution or None) of one row, or the reason it is rejected."""
    question = row[cols.question]
    if not isinstance(question, str) or not question.strip():
        return f"empty or non-text {cols.question!r}"
    solution = row.get(cols.solution) if cols.solution else None
    solution = solution.strip() if isinstance(solution, str) and solution.strip() else None
    if cols.answer is not None:
        raw = answer_text(row[cols.answer])
        if raw is None:
            return f"{cols.answer!r} is empty or not a string or a finite number"
        answer = answer_from_solution(raw) or raw
        if answer != raw and solution is None:  # the answer column holds a worked solution (GSM8K's)
            solution = raw.rsplit("####", 1)[0].strip() if gsm8k_answer(raw) else raw
    else:
        answer = answer_from_solution(solution) if solution else None
        if answer is None:
            return f"no '#### N' or \\boxed{{}} answer in {cols.solution!r}"
    return question.strip(), answer, solution


def choose_splits(found: dict, train_split, test_split, label: str) -> dict:
    """{role: Dataset} with roles train/test (named splits) or UNSPLIT (a source with one split)."""
    if not found:
        raise UserError(f"{label} has no splits (no rows): check the dataset")
    for given in (train_split, test_split):
        if given is not None and str(given) not in found:
            raise UserError(f"{label} has no split {given!r}; its splits are {', '.join(found)}")
    if train_split is not None or test_split is not None:
        return {role: found[str(name)] for role, name in (("train", train_split), ("test", test_split))
                if name is not None}
    test = next((name for name in TEST_SPLIT_NAMES if name in found), None)
    if test is not None:
        return {"test": found[test], **({"train": found["train"]} if "train" in found else {})}
    if len(found) == 1:
        return {UNSPLIT: next(iter(found.values()))}
    raise UserError(f"{label} has the splits {', '.join(found)}: choose with train_split=NAME,test_split=NAME")


class DatasetTask:
    """Problems from a dataset; see the module docstring for the specs, columns and splits."""

    finite = True  # a fixed set of problems: evaluation reads all of them unless asked for a sample

    def __init__(
        self,
        path: str | None = None,
        hub: str | None = None,
        config: str | None = None,
        train: str | None = None,
        test: str | None = None,
        train_split: str | None = None,
        test_split: str | None = None,
        question: str | None = None,
        answer: str | None = None,
        solution: str | None = None,
        prompt_key: str | None = None,
        answer_key: str | None = None,
        label: str | None = None,
        test_percent: int = 10,
        template: str = "r1-zero",
        prompt_format: str = "auto",
        answer_format: str = "auto",
        system: str = "",
        instruction: str = "auto",
    ):
        if hub is not None and ":" in str(hub):
            hub, _, config_in_name = str(hub).partition(":")
            config = config if config is not None else config_in_name
        self.path, self.hub, self.config = path, hub, None if config is None else str(config)
        self.train, self.test, self.train_split, self.test_split = train, test, train_split, test_split
        # (`solution` would shadow the method)
        self.columns = {"question": question or prompt_key, "answer": answer or answer_key, "solution": solution}
        self.name = str(label or ("hf" if hub else "data"))
        self.label = label
        self.test_percent = test_percent
        self.template = check_template(template)
        self.prompt_format, self.answer_format = prompt_format, answer_format  # tasks/formats.py
        self.system, self.instruction = system, instruction
        check_formats(self)
        self.eval_defaults: dict = {}  # evaluation settings `r1kit eval` uses unless flags say otherwise
        self.rejected: list[str] = []  # "SOURCE[split] row N: reason", one per rejected row
        self._splits: dict[str, list[Problem]] = {split: [] for split in SPLITS}
        self._hashed = False  # True when rows were split by hash (the data names no splits)
        self._load()

    # -- reading ---------------------------------------------------------------------------------------
    def source(self) -> str:
        if self.hub:
            return f"{self.hub}:{self.config}" if self.config else self.hub
        return str(self.path) if self.path else ",".join(f"{s}={p}" for s, p in (("train", self.train),
                                                                                 ("test", self.test)) if p)

    def _roles(self) -> dict:
        given = [s for s in (self.hub, self.path, self.train or self.test) if s]
        if len(given) != 1:
            raise UserError(f"task {self.name!r}: give one source: hf:NAME, data:PATH, or train=PATH/test=PATH")
        if self.train or self.test:
            return load_split_files(self.train, self.test)
        hint = f"{self.label}:path=PATH" if self.label else "data:PATH"
        found = load_hub(self.hub, self.config, hint) if self.hub else load_local(self.path)
        return choose_splits(found, self.train_split, self.test_split, self.source())

    def _load(self) -> None:
        rows = []  # (split, question, answer, solution, where)
        roles = self._roles()
        for role in sorted(roles, key=lambda r: r != "test"):  # test first: a question in both stays there
            rows += self._read(role, roles[role])
        in_test = {q for split, q, *_ in rows if split == "test"}
        first: dict[tuple[str, str], str] = {}
        overlap = 0
        for split, question, answer, solution, where in rows:
            if (split, question) in first:
                self.rejected.append(f"{where}: duplicate of {first[split, question]}")
                continue
            if split == "train" and question in in_test:
                overlap += 1
                continue
            first[split, question] = where
            pid = f"{self.name}/{hashlib.sha1(question.encode()).hexdigest()[:12]}"
            self._splits[split].append(Problem(pid, question, answer, {"row": where, "solution": solution}))
        if overlap:
            logger.warning("%s: dropped %d train rows whose question is also in test", self.source(), overlap)
        self._report()

    def _read(self, role: str, ds) -> list[tuple]:
        where = f"{self.source()}[{role}]" if role != UNSPLIT else self.source()
        if len(ds) == 0:
            raise UserError(f"{where} has no rows: check the file or split")
        cols = resolve_columns(list(ds.column_names), **self.columns, label=where)
        data = ds.select_columns([c for c in dict.fromkeys(vars(cols).values()) if c]).to_dict()
        splits = self._split_column(data.get(cols.split), where) if role == UNSPLIT else None
        self._hashed = self._hashed or (role == UNSPLIT and splits is None)
        out = []
        for i in range(len(ds)):
            got = read_row({c: values[i] for c, values in data.items()}, cols)
            if isinstance(got, str):
                self.rejected.append(f"{where} row {i}: {got}")
                continue
            split = role if role != UNSPLIT else (splits[i] if splits else split_of(got[0], self.test_percent))
            out.append((split, *got, f"{where} row {i}"))
        return out

    @staticmethod
    def _split_column(values: list | None, where: str) -> list | None:
        """The rows' `split` values when every one is train or test, else None (split by hash)."""
        if values is None:
            return None
        if set(values) <= set(SPLITS):
            return values
        odd = next(v for v in values if v not in SPLITS)
        logger.warning("%s: its 'split' column holds %r (not train/test): splitting by hash instead", where, odd)
        return None

    def _report(self) -> None:
        kept = sum(map(len, self._splits.values()))
        if kept == 0:
            why = f"first rejected row: {self.rejected[0]}" if self.rejected else "no rows"
            raise UserError(f"no usable row in {self.source()} ({why}): check the question=/answer= columns")
        for message in self.rejected[:_LOGGED_REJECTS]:
            logger.warning("rejected %s", message)
        if self.rejected:
            logger.warning("%s: kept %d rows, rejected %d (task.rejected lists them all)", self.source(), kept,
                           len(self.rejected))

    # -- the Task interface ----------------------------------------------------------------------------
    def options(self) -> dict:
        """The task's options, for a run's resolved config (tasks.task_options)."""
        source = {k: getattr(self, k) for k in ("path", "hub", "config", "train", "test", "train_split",
                                                "test_split", "label", "test_percent", "template")}
        return {**source, **self.columns, **{k: getattr(self, k) for k in FORMAT_OPTIONS}}

    @property
    def eval_split(self) -> str:
        """What evaluation reads: the test split when the data names its splits, else every row (`all`)."""
        return ALL if self._hashed else "test"

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        """The problems of `split` (train, test or all), shuffled by `seed`; the first `n` (all when None)."""
        if split != ALL:
            check_split(split)
        problems = self._splits["train"] + self._splits["test"] if split == ALL else list(self._splits[split])
        if not problems:
            raise UserError(f"{self.source()} gives no {split} problems: give {split}=PATH or "
                            f"{split}_split=NAME, or use the split that has them")
        random.Random(seed).shuffle(problems)
        return problems if n is None or n <= 0 else problems[:n]

    def prompt(self, problem: Problem) -> str:
        return raw_prompt(self, problem)

    def score(self, problem: Problem, completion: str) -> Score:
        """Correct iff math-verify finds the answer equal to the reference (format is scored apart)."""
        return math_score(self, problem, completion)

    def solution(self, problem: Problem, rng: random.Random) -> str:
        """The row's own worked solution when it has one, else a generic sentence, then the reference answer."""
        return math_solution(problem, rng)


# ---- presets: the benchmarks users name --------------------------------------------------------------------

PAPER_EVAL = {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 32768}  # ../shared/r1-reference.md §6


@dataclass(frozen=True)
class Preset:
    hub: str
    config: str | None
    columns: dict  # question= / answer= on the hub (a local copy saved from it has the same)
    splits: dict  # train_split= / test_split= on the hub
    k: int  # samples per problem (the paper: 64 for AIME, 16 for MATH; GSM8K is not in it)


PRESETS = {
    "gsm8k": Preset("openai/gsm8k", "main", {"question": "question", "answer": "answer"},
                    {"train_split": "train", "test_split": "test"}, k=8),
    "math500": Preset("HuggingFaceH4/MATH-500", None, {"question": "problem", "answer": "answer"},
                      {"test_split": "test"}, k=16),
    "aime24": Preset("HuggingFaceH4/aime_2024", None, {"question": "problem", "answer": "answer"},
                     {"test_split": "train"}, k=64),
    "aime25": Preset("yentinglin/aime_2025", None, {"question": "problem", "answer": "answer"},
                     {"test_split": "train"}, k=64),  # lighteval's and open-r1's AIME 2025
}


def preset_task(preset: str, path: str | None = None, **options) -> DatasetTask:
    """A preset's task: its hub dataset, or `path` (a local copy; its splits are its own), columns mapped,
    the paper's evaluation settings in `eval_defaults`; `options` override the preset's."""
    p = PRESETS[preset]
    local = path is not None or "train" in options or "test" in options
    source = {"path": path} if local else {"hub": p.hub, "config": p.config, **p.splits}
    task = DatasetTask(**{**p.columns, **source, "label": preset, **options})
    task.eval_defaults = {"k": p.k, **PAPER_EVAL}
    return task
