"""Prompt and answer formats (tasks/formats.py) and their resolution against a tokenizer (prompting.py), table
by table, on completions as real models write them. Tokenizers are trained here on a few strings and given chat
templates shaped like SmolLM2's (ChatML), DeepSeek-R1-Distill's (opens <think> in its generation prompt) and
Gemma's (refuses a system turn)."""

import json

import pytest
from tokenizers import processors

from r1kit.errors import UserError
from r1kit.models.modeling import train_tokenizer
from r1kit.tasks.arithmetic import ArithmeticTask
from r1kit.tasks.base import Problem
from r1kit.tasks.formats import INSTRUCTIONS, answer_from_solution, instruction_text, read_answer
from r1kit.tasks.jsonl import JsonlTask
from r1kit.tasks.prompting import format_warnings, looks_instruct, make_prompter

R1_MATH = "Please reason step by step, and put your final answer within \\boxed{}."
R1_DISTILL_COMPLETION = "Okay, 40 + 2 is 42.</think>\n\nThe answer is \\boxed{42}"  # as decoded: the prefill is prompt

# ---- answer formats -------------------------------------------------------------------------------------------

READS = [
    # think-boxed: the last \boxed{} after the one think block (R1, the distilled models)
    ("think-boxed", "<think>\n" + R1_DISTILL_COMPLETION, "42", True),
    ("think-boxed", R1_DISTILL_COMPLETION, "42", True),  # the template opened <think>: only the close is decoded
    ("think-boxed", "<think>so \\boxed{41}?</think> No: \\boxed{42}", "42", True),
    ("think-boxed", "<think>a</think> \\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", True),
    ("think-boxed", "<think>\nthe sum is \\boxed{42}</think>\n\nThe answer is 42.", None, False),  # inside only
    ("think-boxed", "<think>\nthe sum is \\boxed{42}, so", None, False),  # the think block never closes
    ("think-boxed", "The answer is \\boxed{42}", None, False),  # no reasoning at all
    ("think-boxed", "<think>a</think>b</think> \\boxed{1}", None, False),  # two closes
    ("think-boxed", "<think>\n<think>a</think> \\boxed{1}", None, False),  # two opens
    ("think-boxed", "well <think>a</think> \\boxed{1}", None, False),  # text before the think block
    ("think-boxed", "<think>a</think> <think>b \\boxed{1}", None, False),  # a second block opened after
    # boxed: the last complete \boxed{} (or \fbox{}) anywhere, braces balanced
    ("boxed", "so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", True),
    ("boxed", "\\boxed{\\sqrt{\\frac{a}{b^{2}}}}", "\\sqrt{\\frac{a}{b^{2}}}", True),
    ("boxed", "first \\boxed{3}, then \\boxed{4}", "4", True),
    ("boxed", "I put it within \\boxed{}.", None, False),  # an echoed instruction is no answer
    ("boxed", "\\boxed{5}, as asked: within \\boxed{ }", "5", True),
    ("boxed", "<think>\\boxed{3}</think>", "3", True),  # think tags mean nothing here
    ("boxed", "\\boxed{\\boxed{7}}", "7", True),
    ("boxed", "\\fbox{7}", "7", True),
    ("boxed", "\\boxed {9}", "9", True),
    ("boxed", "\\boxed{ 5\\text{ cm} }", "5\\text{ cm}", True),
    ("boxed", "\\boxed{\\{1, 2\\}}", "\\{1, 2\\}", True),  # escaped braces neither open nor close
    ("boxed", "\\boxed{x = 1 \\\\}", "x = 1 \\\\", True),  # a line break right before the closing brace
    ("boxed", "\\boxed{3} and \\boxed{4", "3", True),  # an unclosed last box is skipped
    ("boxed", "\\boxed{4", None, False),
    ("boxed", "\\boxed{\\}", None, False),  # \} is not the closing brace
    ("boxed", "\\boxed 9", None, False),  # braces are required
    ("boxed", "The answer is 42.", None, False),
    # gsm8k: the last `#### N` line, thousands separators removed
    ("gsm8k", "She pays 1,000 + 234 = 1,234 dollars.\n#### 1,234", "1234", True),
    ("gsm8k", "#### 12\nWait, I forgot the tip.\n#### 13", "13", True),
    ("gsm8k", "####72", "72", True),
    ("gsm8k", "  #### -3  \n", "-3", True),
    ("gsm8k", "So the answer is #### 5", None, False),  # it must start its line
    ("gsm8k", "#### \n", None, False),  # a bare "####" is no answer, and does not hide an earlier one
    ("gsm8k", "#### 12\n####", "12", True),
    ("gsm8k", "The answer is \\boxed{5}", None, False),
    # think-answer: exactly <think>...</think> <answer>...</answer> (R1-Zero); the answer is read either way
    ("think-answer", "<think> 2+3=5 </think> <answer>5</answer>", "5", True),
    ("think-answer", "\n<think>\n2+3=5\n</think>\n<answer> 5 </answer>\n", "5", True),
    ("think-answer", "<think>x</think><answer>5</answer>", "5", True),
    ("think-answer", "<think>x</think> <answer>5</answer> Hope this helps!", "5", False),
    ("think-answer", "Sure! <think>x</think> <answer>5</answer>", "5", False),
    ("think-answer", "<think>x</think> <answer>5</answer> <answer>6</answer>", "6", False),
    ("think-answer", "<think><think>x</think> <answer>5</answer>", "5", False),
    ("think-answer", "<think>x <answer>4</answer></think> <answer>5</answer>", "5", False),
    ("think-answer", "<answer>5</answer>", "5", False),
    ("think-answer", "<think>x</think> <answer>5", None, False),
    ("think-answer", "<think>x</think> 5", None, False),
]


@pytest.mark.parametrize("fmt, completion, answer, formatted", READS)
def test_read_answer(fmt, completion, answer, formatted):
    assert read_answer(fmt, completion) == (answer, formatted)


@pytest.mark.parametrize("solution, answer", [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),  # GSM8K
    ("So $x = \\boxed{\\frac{3}{4}}$.", "\\frac{3}{4}"),  # MATH
    ("No final answer here.", None),
])
def test_answer_from_solution(solution, answer):
    assert answer_from_solution(solution) == answer


# ---- the verifier: math-verify through JsonlTask.score ---------------------------------------------------------

SCORES = [
    # units: math-verify drops \text{...} and units it knows; plain words are read as \text{} (tasks/jsonl.py)
    ("5", "boxed", "\\boxed{5\\text{ cm}}", True),
    ("5", "boxed", "\\boxed{5\\,\\text{cm}}", True),
    ("5\\text{ cm}", "boxed", "\\boxed{5}", True),
    ("5", "boxed", "\\boxed{6\\text{ cm}}", False),
    ("5", "boxed", "\\boxed{5 cookies}", True),
    ("18", "gsm8k", "#### 18 dollars", True),
    ("12", "gsm8k", "#### 12 eggs.", True),
    ("5", "boxed", "\\boxed{5 or 6}", False),  # hedging is not an answer
    ("5x", "boxed", "\\boxed{5 x}", True),  # a one-letter word is a variable, not a unit
    # values
    ("\\frac{1}{2}", "boxed", "\\boxed{\\frac{1}{2}}", True),
    ("\\frac{1}{2}", "boxed", "\\boxed{0.5}", True),
    ("\\frac{1}{2}", "boxed", "\\boxed{\\frac{1}{3}}", False),
    ("\\{1,2\\}", "boxed", "\\boxed{\\{2, 1\\}}", True),
    ("1234", "gsm8k", "#### 1,234", True),
    ("1234", "gsm8k", "#### $1,234", True),
    ("42", "think-boxed", "<think>\n" + R1_DISTILL_COMPLETION, True),
    ("42", "think-boxed", "<think>\\boxed{42}</think> so it is 42", False),
    ("5", "think-answer", "<think>2+3</think> <answer>5</answer> ok", True),  # correct, though not well formed
]


@pytest.fixture(scope="module")
def jsonl_task(tmp_path_factory):
    path = tmp_path_factory.mktemp("formats") / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "What is 2 + 3?", "answer": "5"}) + "\n")
    return JsonlTask(path)


@pytest.mark.parametrize("gold, fmt, completion, correct", SCORES)
def test_jsonl_scores(jsonl_task, gold, fmt, completion, correct):
    jsonl_task.answer_format = fmt
    score = jsonl_task.score(Problem("q", "question", gold), completion)
    assert score.correct is correct
    assert score.formatted is read_answer(fmt, completion)[1]



@pytest.mark.parametrize("same", [
    ["\\boxed{5}", "\\boxed{\\text{5}}", "\\boxed{5\\text{ cm}}", "\\boxed{ 5 }"],
    ["\\boxed{0.5}", "\\boxed{\\frac{1}{2}}", "\\boxed{\\text{0.5}}"],
    ["\\boxed{banana}", "\\boxed{ banana }", "\\boxed{\\text{banana}}"],
])
def test_equal_answers_get_one_majority_vote_key(jsonl_task, same):
    """cons@k counts votes by Score.answer: answers math-verify reads as the same value share one key."""
    jsonl_task.answer_format = "boxed"
    keys = {jsonl_task.score(Problem("q", "question", "5"), c).answer for c in same}
    assert len(keys) == 1, keys
    other = jsonl_task.score(Problem("q", "question", "5"), "\\boxed{\\text{6}}").answer
    assert other not in keys

# ---- prompting: the formats resolved against a tokenizer --------------------------------------------------------

CHATML = (  # SmolLM2-Instruct's shape
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
R1_BOS = "<｜begin▁of▁sentence｜>"
R1_DISTILL = (  # DeepSeek-R1-Distill's shape: BOS in the template, the generation prompt opens <think>
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)
GEMMA = (  # Gemma's shape: a system turn is an error
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\n' + message['content'] "
    "| trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
NO_THINK = (  # Qwen3-like with thinking off: the generation prompt opens *and closes* an empty think block
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' }}{% endif %}"
)
TEMPLATES = {"chatml": CHATML, "r1-distill": R1_DISTILL, "gemma": GEMMA, "no-think": NO_THINK, "none": None}


def make_tokenizer(template: str | None, bos: bool = False):
    """A tiny byte-level BPE with `template` as its chat template; with `bos`, it adds a BOS token when asked to
    add special tokens (as Llama's and DeepSeek's do)."""
    tokenizer = train_tokenizer(["What is 12 + 7? Please reason step by step, then answer."] * 4, vocab_size=300)
    if bos:
        tokenizer.add_special_tokens({"bos_token": R1_BOS})
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{R1_BOS} $A", special_tokens=[(R1_BOS, tokenizer.bos_token_id)])
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="module")
def tokenizers() -> dict:
    return {name: make_tokenizer(template, bos=name == "r1-distill") for name, template in TEMPLATES.items()}


LITERAL_BOXED = "Q: {question}\nPut the final answer in \\boxed{}.\nA:"
RESOLUTIONS = [
    # template, task options -> prompt format, answer format, instruction, prefill
    ("chatml", {}, "chat", "boxed", R1_MATH, ""),
    ("r1-distill", {}, "chat", "think-boxed", R1_MATH, "<think>\n"),
    ("no-think", {}, "chat", "boxed", R1_MATH, ""),  # the think block is already closed
    ("gemma", {}, "chat", "boxed", R1_MATH, ""),
    ("none", {}, "r1-zero-compact", "think-answer", "", ""),  # the task's raw template
    ("none", {"template": "r1-zero"}, "r1-zero", "think-answer", "", ""),
    ("chatml", {"prompt_format": "r1-zero"}, "r1-zero", "think-answer", "", ""),  # a base-style prompt on purpose
    ("none", {"prompt_format": LITERAL_BOXED}, LITERAL_BOXED, "boxed", R1_MATH, ""),
    ("none", {"prompt_format": "Q: {question}\nA:"}, "Q: {question}\nA:", "think-answer", "", ""),
    ("chatml", {"answer_format": "gsm8k"}, "chat", "gsm8k", INSTRUCTIONS["gsm8k"], ""),
    ("chatml", {"instruction": "none"}, "chat", "boxed", "", ""),
    ("chatml", {"instruction": "Answer with one number."}, "chat", "boxed", "Answer with one number.", ""),
    ("r1-distill", {"answer_format": "boxed"}, "chat", "boxed", R1_MATH, "<think>\n"),
]


@pytest.mark.parametrize("template, options, prompt_format, answer_format, instruction, prefill", RESOLUTIONS)
def test_make_prompter_resolves_auto(tokenizers, template, options, prompt_format, answer_format, instruction,
                                     prefill):
    task = ArithmeticTask(**options)
    prompter = make_prompter(task, tokenizers[template])
    assert (prompter.prompt_format, prompter.answer_format, prompter.instruction, prompter.prefill) == (
        prompt_format, answer_format, instruction, prefill)
    assert prompter.task.answer_format == answer_format  # prompter.task.score reads completions the same way
    assert task.answer_format == options.get("answer_format", "auto")  # the task given is left as it was
    assert prompter.settings()["answer_format"] == answer_format


def test_explicit_chat_without_a_chat_template_is_a_user_error(tokenizers):
    with pytest.raises(UserError, match="no chat template"):
        make_prompter(ArithmeticTask(prompt_format="chat"), tokenizers["none"])


def test_instruction_text():
    assert instruction_text("auto", "think-boxed") == instruction_text("auto", "boxed") == R1_MATH
    assert instruction_text("auto", "think-answer") == instruction_text("none", "boxed") == ""
    assert instruction_text("r1-zero", "boxed") == INSTRUCTIONS["r1-zero"]
    assert instruction_text("Show your work.", "gsm8k") == "Show your work."


def _problem() -> Problem:
    return Problem("q", "What is 40 + 2?", "42")


def test_chat_prompt_is_the_template_with_the_instruction(tokenizers):
    prompter = make_prompter(ArithmeticTask(), tokenizers["chatml"])
    assert prompter.text(_problem()) == (
        f"<|im_start|>user\nWhat is 40 + 2?\n{R1_MATH}<|im_end|>\n<|im_start|>assistant\n")
    raw = make_prompter(ArithmeticTask(), tokenizers["none"])
    assert raw.text(_problem()) == (
        "User: What is 40 + 2?. Reason in <think> </think>, answer in <answer> </answer>. Assistant:")


def test_prefill_is_put_back_before_scoring(tokenizers):
    prompter = make_prompter(ArithmeticTask(), tokenizers["r1-distill"])
    assert prompter.text(_problem()).endswith("<｜Assistant｜><think>\n")
    assert prompter.completion(R1_DISTILL_COMPLETION) == "<think>\n" + R1_DISTILL_COMPLETION
    score = prompter.score(_problem(), R1_DISTILL_COMPLETION)
    assert score.correct and score.formatted
    # where it matters: R1-Zero's tags behind a template that opened <think>; the decoded text starts mid-block
    tags = make_prompter(ArithmeticTask(answer_format="think-answer"), tokenizers["r1-distill"])
    completion = "40 + 2 = 42 </think> <answer>42</answer>"
    assert tags.score(_problem(), completion).formatted
    assert not tags.task.score(_problem(), completion).formatted
    # a model that opens <think> again inside the pre-filled block is not well formed
    assert not prompter.score(_problem(), "<think>\n" + R1_DISTILL_COMPLETION).formatted


def test_chat_prompts_get_no_second_bos(tokenizers):
    tokenizer = tokenizers["r1-distill"]
    bos = tokenizer.bos_token_id
    assert tokenizer("hi").input_ids[0] == bos  # this tokenizer adds BOS when asked to
    chat = make_prompter(ArithmeticTask(), tokenizer)
    (ids,) = chat.encode([_problem()])
    assert ids[0] == bos and ids.count(bos) == 1  # the template wrote it; encoding added none
    raw = make_prompter(ArithmeticTask(prompt_format="r1-zero"), tokenizer)
    (ids,) = raw.encode([_problem()])
    assert ids[0] == bos and ids.count(bos) == 1  # a raw prompt gets the tokenizer's BOS


def test_system_prompt(tokenizers):
    system = "You are a careful mathematician."
    chatml = make_prompter(ArithmeticTask(system=system), tokenizers["chatml"])
    assert chatml.text(_problem()).startswith(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n")
    # Gemma's template refuses a system turn: the system prompt goes in front of the question instead
    gemma = make_prompter(ArithmeticTask(system=system), tokenizers["gemma"])
    assert gemma.text(_problem()) == (
        f"<start_of_turn>user\n{system}\n\nWhat is 40 + 2?\n{R1_MATH}<end_of_turn>\n<start_of_turn>model\n")


def test_a_template_that_fails_is_a_user_error():
    broken = make_tokenizer("{{ raise_exception('this template needs tools') }}")
    with pytest.raises(UserError, match="r1-zero"):
        make_prompter(ArithmeticTask(), broken)


@pytest.mark.parametrize("name, template, expected", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "chatml", True),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "r1-distill", True),
    ("google/gemma-2-2b-it", "gemma", True),
    ("runs/demo/sft-chat", "chatml", True),
    ("deepseek-ai/deepseek-llm-7b-base", "chatml", False),
    ("Qwen/Qwen2.5-0.5B", "none", False),  # no chat template: a base model
    ("Qwen/Qwen2.5-0.5B", "chatml", None),  # Qwen's base models ship a chat template: the name does not tell
    ("runs/tiny-distill/student-base", "none", False),  # the pipeline's name is not the model's
    ("runs/smollm2/base", "chatml", None),  # a stage directory called `base` says nothing
])
def test_looks_instruct(tokenizers, name, template, expected):
    assert looks_instruct(name, tokenizers[template]) is expected


@pytest.mark.parametrize("name, template, options, warns", [
    ("deepseek-ai/deepseek-llm-7b-base", "chatml", {}, "looks like a base model"),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "chatml", {"prompt_format": "r1-zero"}, "looks like an instruct model"),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "chatml", {}, None),
    ("runs/base-tiny", "none", {}, None),
    ("runs/tiny-distill/student-base", "none", {}, None),
    ("runs/demo/student-rl", "none", {}, None),  # r1kit's own RL model: no chat template, so chat is no option
    ("runs/smollm2/base", "chatml", {}, None),
])
def test_format_warnings(tokenizers, name, template, options, warns):
    warnings = format_warnings(make_prompter(ArithmeticTask(**options), tokenizers[template]), name)
    if warns is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warns in warnings[0] and name in warnings[0]
