"""Prompt formats and answer formats, by name: how a question is shown and where the answer is read from.

Prompt formats (a task option and recipe key `prompt_format`):

- `r1-zero`: the raw R1-Zero template (DeepSeek-R1 paper, table 1), for base models;
- `r1-zero-compact`: the same contract in fewer tokens, for r1kit's tiny models;
- `chat`: the tokenizer's own chat template, the question as the user turn (an optional system prompt), the
  generation prompt added (rendered in r1kit/tasks/prompting.py, which needs the tokenizer);
- a literal template containing `{question}`;
- `auto` (the default): `chat` when the tokenizer has a chat template, else the task's raw template.

An instruction (`instruction`) may be appended to the question: a key of INSTRUCTIONS (`r1-math` is the R1
evaluation instruction) or literal text; `auto` picks `r1-math` for the boxed answer formats and none otherwise.

Answer formats (`answer_format`), each a pair (extract the answer text, is the completion well formed), all read
by the one verifier (`Task.score`), so the format reward and the format-rate metric come from the same place:

- `think-answer`: `<think>…</think> <answer>…</answer>`, nothing else around them (R1-Zero);
- `think-boxed`: `…</think> … \\boxed{…}`: the last `\\boxed{}` after the reasoning (R1 and the distilled models;
  a `\\boxed{}` inside the reasoning only, or an unterminated think block, gives no answer);
- `boxed`: the last `\\boxed{}` anywhere;
- `gsm8k`: GSM8K's `#### N` (the last such line);
- `code`: the last fenced code block (```python ... ```), after the reasoning when there is a `</think>`: how
  chat models write programs (the code tasks' default for chat prompts; with `think-answer` a program is read
  from `<answer>`, a fence inside it unwrapped: see tasks/code.py).

`\\boxed{}` is read with its braces balanced (`\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`); `\\fbox{}` counts too.
Pure Python.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# The R1-Zero template (DeepSeek-R1 paper, table 1), and a compact form for tiny models whose context is short.
# `{question}` is replaced by the problem's text. The assistant's turn begins at the end of the prompt.
TEMPLATES = {
    "r1-zero": (
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
        "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
        "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
        "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
        "User: {question}. Assistant:"
    ),
    # Same contract, fewer tokens: the tiny built-in models see every prompt thousands of times.
    "r1-zero-compact": "User: {question}. Reason in <think> </think>, answer in <answer> </answer>. Assistant:",
}
CHAT, AUTO = "chat", "auto"
PROMPT_FORMATS = (*TEMPLATES, CHAT, AUTO)  # or a literal template with {question}

INSTRUCTIONS = {
    # DeepSeek-R1's evaluation instruction for maths (../shared/r1-reference.md §6)
    "r1-math": "Please reason step by step, and put your final answer within \\boxed{}.",
    "r1-zero": "Think inside <think> </think>, then give the answer inside <answer> </answer>.",
    "gsm8k": "Solve it step by step, then give the final answer on its own line as '#### ' followed by the number.",
    "code": "Write the complete Python function in one ```python code block.",
    "none": "",
}

# One think block then one answer block; neither may contain another tag.
_THINK_ANSWER_RE = re.compile(
    r"^\s*<think>((?:(?!</?think>|</?answer>).)*)</think>\s*<answer>((?:(?!</?think>|</?answer>).)*)</answer>\s*$",
    re.DOTALL,
)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_GSM8K_RE = re.compile(r"^[ \t]*####[ \t]*(\S.*?)[ \t]*$", re.MULTILINE)  # a bare "####" line is no answer
_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def boxed_contents(text: str) -> list[str]:
    """The contents of every `\\boxed{...}` (and `\\fbox{...}`) in `text`, braces balanced; unclosed and empty ones
    skipped (an echoed instruction "put it within \\boxed{}" is no answer)."""
    found = []
    for m in _BOX_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "\\":
                i += 2  # a backslash takes the next character with it: \{ and \} do not open or close, and
                continue  # the line break \\ does not escape a closing brace after it (\boxed{x=1\\})
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0 and text[m.end(): i - 1].strip():
            found.append(text[m.end(): i - 1].strip())
    return found


def last_boxed(text: str) -> str | None:
    """The content of the last complete `\\boxed{}` in `text`; None when there is none."""
    found = boxed_contents(text)
    return found[-1] if found else None


def gsm8k_answer(text: str) -> str | None:
    """The answer after the last `#### ` line, thousands separators removed; None when there is none."""
    found = _GSM8K_RE.findall(text)
    return (found[-1].replace(",", "").strip() or None) if found else None


def answer_from_solution(solution: str) -> str | None:
    """A reference answer from a worked solution field: GSM8K's `#### 72`, else MATH's last `\\boxed{}`."""
    return gsm8k_answer(solution) or last_boxed(solution)


def _after_think(completion: str) -> str | None:
    """The text after the reasoning, when the completion is one (optionally opened) think block then an answer
    part; None when the think block never closes or there is more than one."""
    if completion.count("</think>") != 1:
        return None
    reasoning, _, rest = completion.partition("</think>")
    opened = reasoning.count("<think>")
    if opened > 1 or (opened == 1 and not reasoning.lstrip().startswith("<think>")) or "<think>" in rest:
        return None
    return rest


# ---- the answer formats --------------------------------------------------------------------------------------


def _think_answer(completion: str) -> tuple[str | None, bool]:
    found = _ANSWER_RE.findall(completion)
    return (found[-1].strip() if found else None), _THINK_ANSWER_RE.match(completion) is not None


def _think_boxed(completion: str) -> tuple[str | None, bool]:
    rest = _after_think(completion)
    answer = last_boxed(rest) if rest is not None else None
    return answer, answer is not None


def _boxed(completion: str) -> tuple[str | None, bool]:
    answer = last_boxed(completion)
    return answer, answer is not None


def _gsm8k(completion: str) -> tuple[str | None, bool]:
    answer = gsm8k_answer(completion)
    return answer, answer is not None


def last_fenced(text: str) -> str | None:
    """The content of the last complete ``` fenced block (```python, ```py or bare); None when there is none."""
    found = _FENCE_RE.findall(text)
    return found[-1] if found else None


def _code(completion: str) -> tuple[str | None, bool]:
    rest = _after_think(completion) if "</think>" in completion else completion
    answer = last_fenced(rest) if rest is not None else None
    return answer, answer is not None


@dataclass(frozen=True)
class AnswerFormat:
    name: str
    read: Callable[[str], tuple[str | None, bool]]  # completion -> (answer text or None, well formed)
    instruction: str  # the key of INSTRUCTIONS that `instruction = "auto"` picks for it
    description: str


ANSWER_FORMATS: dict[str, AnswerFormat] = {
    "think-answer": AnswerFormat("think-answer", _think_answer, "none",
                                 "<think>...</think> <answer>...</answer> (R1-Zero)"),
    "think-boxed": AnswerFormat("think-boxed", _think_boxed, "r1-math",
                                "...</think> then the last \\boxed{} after the reasoning (R1, distilled models)"),
    "boxed": AnswerFormat("boxed", _boxed, "r1-math", "the last \\boxed{} anywhere"),
    "gsm8k": AnswerFormat("gsm8k", _gsm8k, "gsm8k", "the last '#### N' line (GSM8K)"),
    "code": AnswerFormat("code", _code, "code", "the last ```python fenced block (after </think> if any)"),
}


def check_prompt_format(fmt: str) -> str:
    """A prompt format is a name of PROMPT_FORMATS or a literal string containing `{question}`; else UserError."""
    from r1kit.errors import UserError

    if fmt not in PROMPT_FORMATS and "{question}" not in fmt:
        raise UserError(f"unknown prompt format {fmt!r}: use one of {', '.join(PROMPT_FORMATS)} "
                        "or a template string containing {question}")
    return fmt


def check_answer_format(fmt: str) -> str:
    from r1kit.errors import UserError

    if fmt != AUTO and fmt not in ANSWER_FORMATS:
        raise UserError(f"unknown answer format {fmt!r}: use one of {', '.join(ANSWER_FORMATS)} or auto")
    return fmt


def instruction_text(instruction: str, answer_format: str) -> str:
    """The text appended to the question: `auto` follows the answer format; names are keys of INSTRUCTIONS;
    anything else is literal text."""
    if instruction == AUTO:
        instruction = ANSWER_FORMATS[answer_format].instruction if answer_format in ANSWER_FORMATS else "none"
    return INSTRUCTIONS.get(instruction, instruction)


def with_instruction(question: str, instruction: str) -> str:
    return f"{question}\n{instruction}" if instruction else question


def render_template(template: str, question: str) -> str:
    """Fill a raw template (a key of TEMPLATES, or a literal string containing `{question}`)."""
    return TEMPLATES.get(template, template).replace("{question}", question)


def read_answer(answer_format: str, completion: str) -> tuple[str | None, bool]:
    """(answer text or None, well formed) of a completion in a named answer format."""
    return ANSWER_FORMATS[answer_format].read(completion)


@dataclass
class PromptConfig:
    """The `[prompt]` section of a recipe: format options set over the task spec's (None keeps the spec's)."""

    prompt_format: str | None = None  # auto | chat | r1-zero | r1-zero-compact | a template with {question}
    answer_format: str | None = None  # auto | think-answer | think-boxed | boxed | gsm8k | code
    system: str | None = None  # system prompt of a chat prompt
    instruction: str | None = None  # appended to the question: auto | r1-math | r1-zero | gsm8k | none | text

    def __post_init__(self) -> None:  # checked when the recipe is read, not when the stage starts
        if self.prompt_format is not None:
            check_prompt_format(self.prompt_format)
        if self.answer_format is not None:
            check_answer_format(self.answer_format)

    def overrides(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None}
