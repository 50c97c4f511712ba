"""SFT across prompt formats: rows written by a teacher in one format (the raw R1-Zero template) train a student
whose tokenizer has a chat template on prompts rendered anew in that template, answering in the teacher's format."""

import copy
import json

import pytest

from r1kit.algo.sft import encode_rows
from r1kit.config import build
from r1kit.loops.sft import SFTConfig, run_sft
from r1kit.models.modeling import new_model, save_model
from r1kit.tasks import get_task
from r1kit.tasks.prompting import make_prompter

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")




@pytest.fixture()
def chat_tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = CHATML
    return tok


def _rows(n=8):
    task = get_task("arithmetic")
    rows = []
    for p in task.problems("train", n, seed=0):
        rows.append({"id": p.id, "question": p.question, "prompt": task.prompt(p),
                     "completion": f" <think> add </think> <answer>{p.answer}</answer>",
                     "provenance": {"task": "arithmetic", "formats": {"answer_format": "think-answer"}}})
    return rows


def test_rows_with_a_question_are_rendered_in_the_students_format(chat_tokenizer):
    rows = _rows(2)
    prompter = make_prompter(get_task("arithmetic:answer_format=think-answer"), chat_tokenizer)
    ex = encode_rows(chat_tokenizer, rows, 256, prompter)[0]
    prompt = chat_tokenizer.decode(ex.ids[:ex.n_prompt])
    assert prompt == prompter.text(get_task("arithmetic").problems("train", 1, seed=0)[0])
    assert prompt.startswith("<|im_start|>user\n" + rows[0]["question"])
    plain = encode_rows(chat_tokenizer, rows, 256)[0]  # no prompter: the row's own prompt text
    assert chat_tokenizer.decode(plain.ids[:plain.n_prompt]) == rows[0]["prompt"]
    assert ex.ids[ex.n_prompt:] == plain.ids[plain.n_prompt:]  # the completion is the same tokens


def test_sft_of_a_chat_student_keeps_the_teachers_answer_format(tmp_path, chat_tokenizer, tiny_config,
                                                                 torch_threads):
    student = tmp_path / "student"
    save_model(new_model(tiny_config, chat_tokenizer, seed=0), chat_tokenizer, student)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    cfg = build(SFTConfig, {"data": str(data), "out": str(tmp_path / "sft"), "model": str(student), "epochs": 1,
                            "batch_size": 4, "eval": {"n": 2, "k": 1, "max_new_tokens": 4}})
    summary = run_sft(cfg, progress=False)
    run = json.loads((tmp_path / "sft" / "run.json").read_text())
    assert run["formats"]["prompt_format"] == "chat" and run["formats"]["answer_format"] == "think-answer"
    assert summary["eval"]["formats"]["answer_format"] == "think-answer"


@pytest.mark.parametrize("completion, teacher, student, expected", [
    (" <think> a </think> <answer>5</answer>", "", "", " <think> a </think> <answer>5</answer>"),
    # the student's template opens <think>: the student writes on from inside the block
    (" <think> a </think> <answer>5</answer>", "", "<think>\n", " a </think> <answer>5</answer>"),
    # the teacher's template had opened it: put back in front for a student that opens none
    ("a</think> \\boxed{5}", "<think>\n", "", "<think>\na</think> \\boxed{5}"),
    ("a</think> \\boxed{5}", "<think>\n", "<think>\n", "\na</think> \\boxed{5}"),
])
def test_move_prefill(completion, teacher, student, expected):
    from r1kit.algo.sft import move_prefill

    assert move_prefill(completion, teacher, student) == expected


def test_lora_resume_mismatch_is_one_line(tmp_path):
    from r1kit.errors import UserError
    from r1kit.models.lora import LoraConfig, load_for_training

    ckpt = tmp_path / "step_000001"
    ckpt.mkdir()
    (ckpt / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="LoRA adapter"):
        load_for_training(lambda: None, ckpt, LoraConfig(rank=0))


def test_the_student_is_given_the_teachers_answer_format_and_instruction(chat_tokenizer):
    from r1kit.algo.sft import teacher_answer_contract

    rows = [{"provenance": {"task": "arithmetic", "formats": {"answer_format": "boxed",
                                                             "instruction": "Answer in \\boxed{}."}}}]
    task = get_task("arithmetic")
    teacher_answer_contract(task, rows)
    assert (task.answer_format, task.instruction) == ("boxed", "Answer in \\boxed{}.")
    prompt = make_prompter(task, chat_tokenizer).text(task.problems("train", 1, seed=0)[0])
    assert "Answer in \\boxed{}." in prompt
    own = get_task("arithmetic", instruction="none")  # the student's own settings win
    teacher_answer_contract(own, rows)
    assert (own.answer_format, own.instruction) == ("boxed", "none")
    silent = get_task("arithmetic")  # a teacher given no instruction: none, not boxed's auto one
    teacher_answer_contract(silent, [{"provenance": {"formats": {"answer_format": "boxed", "instruction": ""}}}])
    assert silent.instruction == "none"


def test_generate_prompt_options_are_part_of_what_a_resume_must_match():
    from r1kit.loops.generate import GenerateConfig, _identity

    plain = GenerateConfig(model="m", out="x.jsonl")
    assert "prompt" not in _identity(plain)  # the identity of a file written before [prompt] existed
    boxed = build(GenerateConfig, {"model": "m", "out": "x.jsonl", "prompt": {"answer_format": "boxed"}})
    assert _identity(boxed)["prompt"]["answer_format"] == "boxed"
