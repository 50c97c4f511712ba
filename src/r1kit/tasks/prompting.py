"""A task's questions as the model sees them, and its completions as the verifier reads them.

`make_prompter(task, tokenizer)` resolves the task's `auto` format options against the tokenizer once, at the top
of a loop (tasks/formats.py names them):

- prompt format `auto` -> `chat` when the tokenizer has a chat template, else the task's raw template;
- answer format `auto` -> `think-answer` for a raw R1-Zero template; for chat, the task's `chat_answer_format` when
  it has one (the code tasks: `code`), else `think-boxed` when the template pre-fills `<think>` (as the
  R1-distilled models' templates do), else `boxed`; for a literal template, `boxed`
  when it mentions `\\boxed`, else `think-answer`;
- instruction `auto` -> the answer format's (`r1-math` for the boxed formats, none for R1-Zero's tags).

A chat prompt is the tokenizer's own template applied to [system?, user: question + instruction] with the
generation prompt added, and is tokenised without adding special tokens again (the template holds its own BOS).
When the generation prompt ends inside an open `<think>` block, that text (`prefill`) is part of every
completion: `Prompter.score` puts it back in front before the verifier reads the completion.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import PurePath

from r1kit.errors import UserError
from r1kit.tasks.base import Problem, Score, score_all
from r1kit.tasks.formats import (
    AUTO,
    CHAT,
    TEMPLATES,
    check_answer_format,
    check_prompt_format,
    instruction_text,
    render_template,
    with_instruction,
)


@dataclass
class Prompter:
    """Renders, tokenises and scores for one (task, tokenizer) pair; its fields are the resolved formats."""

    task: object
    tokenizer: object
    prompt_format: str  # chat | a key of TEMPLATES | a literal template
    answer_format: str  # a key of ANSWER_FORMATS
    system: str
    instruction: str  # the literal text appended to each question ('' for none)
    prefill: str = ""  # text the chat template opens the assistant turn with, e.g. "<think>\n"
    tool_format: object = None  # a chat tool-call format (tools/formats.py ChatFormat): renders the prompt with
    # the tools (the template's tools= or r1kit's Hermes fallback); None: no tools in the prompt

    @property
    def chat(self) -> bool:
        return self.prompt_format == CHAT

    def text(self, problem: Problem) -> str:
        """The prompt of one problem, as text."""
        question = with_instruction(problem.question, self.instruction)
        if self.chat and self.tool_format is not None:
            return self.tool_format.render_messages([{"role": "user", "content": question}], generation_prompt=True)
        if self.chat:
            return render_chat(self.tokenizer, question, self.system)
        return render_template(self.prompt_format, question)

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a prompt text (a chat prompt already holds its special tokens)."""
        return self.tokenizer(text, add_special_tokens=not self.chat).input_ids

    def encode(self, problems: list[Problem]) -> list[list[int]]:
        return [self.encode_text(self.text(p)) for p in problems]

    def completion(self, text: str) -> str:
        """A decoded completion as the verifier reads it: with the prefilled text put back in front."""
        return self.prefill + text

    def score(self, problem: Problem, text: str) -> Score:
        return self.task.score(problem, self.completion(text))

    def score_many(self, problems: list[Problem], texts: list[str]) -> list[Score]:
        """`score` of each pair, in one batch for tasks that judge in parallel (the code tasks' sandbox)."""
        return score_all(self.task, problems, [self.completion(t) for t in texts])

    def settings(self) -> dict:
        """The resolved formats, for a run's resolved config."""
        return {"prompt_format": self.prompt_format, "answer_format": self.answer_format, "system": self.system,
                "instruction": self.instruction, "prefill": self.prefill}

    def describe(self) -> str:
        fmt = "chat template" if self.chat else (f"template {self.prompt_format}" if self.prompt_format in TEMPLATES
                                                 else "a literal template")
        extra = f", prefill {self.prefill!r}" if self.prefill else ""
        instr = f", instruction {self.instruction!r}" if self.instruction else ""
        return f"prompt: {fmt}; answer format: {self.answer_format}{instr}{extra}"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(tokenizer, question: str, system: str = "", generation_prompt: bool = True) -> str:
    """The tokenizer's chat template on [system?, user]; a template that refuses system turns (Gemma's) gets the
    system prompt in front of the question instead."""
    messages = [{"role": "user", "content": question}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # jinja2's TemplateError: the template raised, e.g. "System role not supported"
        if not system:
            raise UserError(f"the tokenizer's chat template failed ({e}): use prompt_format = \"r1-zero\"") from None
        merged = [{"role": "user", "content": f"{system}\n\n{question}"}]
        try:
            return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as e2:
            raise UserError(f"the tokenizer's chat template failed ({e2}): use prompt_format = \"r1-zero\"") from None


def chat_prefill(tokenizer, system: str = "") -> str:
    """The part of the generation prompt from an open `<think>` on ('' when the template opens none)."""
    probe = "\x00question\x00"
    with_gen = render_chat(tokenizer, probe, system, generation_prompt=True)
    tail = with_gen[with_gen.rfind(probe) + len(probe):]
    start = tail.rfind("<think>")
    return tail[start:] if start >= 0 and "</think>" not in tail[start:] else ""


def make_prompter(task, tokenizer) -> Prompter:
    """Resolve the task's `auto` options against `tokenizer` (see the module docstring). The Prompter holds a copy
    of the task with the resolved answer format (`prompter.task.score` reads completions the same way); the
    task given is left as it is, so one task object can meet several tokenizers (a pipeline's eval stage)."""
    task = copy.copy(task)
    fmt = check_prompt_format(getattr(task, "prompt_format", AUTO))
    if fmt == AUTO:
        fmt = CHAT if has_chat_template(tokenizer) else getattr(task, "template", "r1-zero")
    if fmt == CHAT and not has_chat_template(tokenizer):
        raise UserError("prompt_format = \"chat\" but this tokenizer has no chat template: use \"r1-zero\" (or a "
                        "template with {question}) for a base model")
    system = getattr(task, "system", "") or ""
    prefill = chat_prefill(tokenizer, system) if fmt == CHAT else ""
    answer = check_answer_format(getattr(task, "answer_format", AUTO))
    if answer == AUTO:
        if fmt == CHAT and getattr(task, "chat_answer_format", None):  # a code task: a ```python block
            answer = task.chat_answer_format
        elif fmt == CHAT:
            answer = "think-boxed" if prefill else "boxed"
        elif fmt in TEMPLATES:
            answer = "think-answer"
        else:
            answer = "boxed" if "\\boxed" in fmt else "think-answer"
    task.answer_format = answer
    instruction = instruction_text(getattr(task, "instruction", AUTO) or "none", answer)
    return Prompter(task, tokenizer, fmt, answer, system, instruction, prefill)


def looks_instruct(name: str, tokenizer) -> bool | None:
    """True for a model that looks instruction-tuned, False for one that looks like a base model, None when the
    name and tokenizer do not tell (used by the run doctor's prompt-format warnings). Only the last part of a
    path is the model's name (in runs/tiny-distill/student-base the pipeline's name says nothing about the
    model), and a directory called just `base` is a stage's (r1kit's pipelines, `make smollm2`), not a name."""
    lowered = PurePath(str(name)).name.lower()
    if any(key in lowered for key in ("instruct", "-chat", "_chat", "-it", "distill", "-sft", "-rl")):
        return True
    if not has_chat_template(tokenizer):
        return False
    if "base" in lowered and lowered != "base":
        return False
    return None


def format_warnings(prompter: Prompter, model_name: str) -> list[str]:
    """The doctor's warnings for a prompt format that does not fit the model."""
    kind = looks_instruct(model_name, prompter.tokenizer)
    if prompter.chat and kind is False:
        return [f"{model_name} looks like a base model but is given its chat template: base models are usually "
                "prompted with prompt_format = \"r1-zero\""]
    if not prompter.chat and kind is True and has_chat_template(prompter.tokenizer):  # else chat is no option
        return [f"{model_name} looks like an instruct model but is given the raw {prompter.prompt_format} template: "
                "instruct models usually answer better with prompt_format = \"chat\""]
    return []
