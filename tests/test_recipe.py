"""`r1kit run`: a bad recipe is rejected before anything runs, with the file and line at fault."""

import pytest

from pipeline_recipe import (
    BASE,
    EVAL,
    EVAL_N,
    HEAD,
    MATCHED,
    MODEL_STAGES,
    SFT,
    STAGES,
    ZERO,
    at,
    header_of,
    write_rows,
)
from r1kit.cli.main import main
from r1kit.cli.pipeline import load_pipeline, run_pipeline, stage_state
from r1kit.errors import UserError

# ---- A bad recipe is rejected before anything runs, naming its line --------------------------------------------


@pytest.fixture
def rows(tmp_path):
    return write_rows(tmp_path / "rows.jsonl")


def _rejected(tmp_path, text: str) -> str:
    """The UserError of running `text` as a recipe; nothing may have been written."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        run_pipeline(recipe, out, progress=False)
    assert not out.exists()
    return str(e.value)


def test_unknown_kind(tmp_path):
    text = HEAD + BASE + '\n[[stage]]\nname = "pt"\nkind = "pretrain"\n'
    msg = _rejected(tmp_path, text)
    assert at(text, 'kind = "pretrain"') in msg
    assert "pretrain" in msg and "rl" in msg  # the known kinds are listed


def test_input_that_names_nothing(tmp_path):
    text = HEAD + BASE + ZERO.replace('model = "base"', 'model = "bsae"')
    msg = _rejected(tmp_path, text)
    assert at(text, 'model = "bsae"') in msg
    assert "'bsae'" in msg and "no earlier stage" in msg


def test_missing_input_names_the_stage_header(tmp_path):
    text = HEAD + BASE + ZERO.replace('model = "base"\n', "")
    msg = _rejected(tmp_path, text)
    assert f"recipe.toml:{header_of(text, 'zero')}:" in msg
    assert "'zero'" in msg and "model" in msg


def test_input_from_a_later_stage(tmp_path, rows):
    text = HEAD + BASE + ZERO.replace('model = "base"', 'model = "sft"') + SFT.format(rows=rows)
    msg = _rejected(tmp_path, text)
    assert at(text, 'model = "sft"') in msg
    assert "later stage" in msg and f"{header_of(text, 'sft')})" in msg  # (line N) or (recipe.toml:N)


def test_match_compute_of_a_later_stage(tmp_path):
    text = HEAD + BASE + MATCHED + ZERO
    msg = _rejected(tmp_path, text)
    assert at(text, 'match_compute = ["zero"]') in msg
    assert "'zero'" in msg


@pytest.mark.parametrize(
    "old, new",
    [
        ("steps = 2", "stepz = 2"),  # a top-level key of the stage
        ("group_size = 2", "group_sise = 2"),  # a key of a sub-table ([stage.rollout])
    ],
)
def test_unknown_key_names_its_line(tmp_path, old, new):
    text = HEAD + BASE + ZERO.replace(old, new)
    msg = _rejected(tmp_path, text)
    assert at(text, new) in msg
    assert new.split()[0] in msg and "'zero'" in msg


@pytest.mark.parametrize(
    "old, new",
    [
        ("steps = 10", 'steps = "ten"'),
        ("batch_size = 8", "batch_size = true"),
    ],
)
def test_bad_value_type_names_its_line(tmp_path, old, new):
    text = HEAD + BASE.replace(old, new)
    msg = _rejected(tmp_path, text)
    assert at(text, new) in msg
    assert new.split()[0] in msg and "'base'" in msg


def test_bad_value_type_in_a_sub_table(tmp_path):
    text = HEAD + BASE + ZERO.replace("max_new_tokens = 16", 'max_new_tokens = "long"')
    msg = _rejected(tmp_path, text)
    assert at(text, 'max_new_tokens = "long"') in msg
    assert "rollout.max_new_tokens" in msg


def test_bad_value_in_a_sub_table_whose_key_appears_twice(tmp_path):
    """[stage.rollout] and [stage.eval] both have max_new_tokens: the error must point at the eval one."""
    text = HEAD + BASE + ZERO + '[stage.eval]\nmax_new_tokens = "long"\n'
    msg = _rejected(tmp_path, text)
    assert "eval.max_new_tokens" in msg
    assert at(text, 'max_new_tokens = "long"') in msg


def test_sub_table_given_as_a_value_is_a_user_error(tmp_path):
    """`eval = 3` in a stage (a table expected) is a UserError naming its line, not an AttributeError."""
    text = HEAD + BASE.replace("steps = 10", "steps = 10\neval = 3")
    msg = _rejected(tmp_path, text)
    assert at(text, 'eval = 3') in msg


def test_duplicate_stage_names(tmp_path):
    text = HEAD + BASE + ZERO + BASE
    msg = _rejected(tmp_path, text)
    headers = [n for n, line in enumerate(text.splitlines(), 1) if line == "[[stage]]"]
    assert f"recipe.toml:{headers[2]}:" in msg
    assert "'base'" in msg and "twice" in msg and f"{headers[0]})" in msg  # (first at ...:N)


def test_input_of_the_wrong_type(tmp_path):
    text = HEAD + BASE + SFT.format(rows="base")  # data = a base stage: a model, not data
    msg = _rejected(tmp_path, text)
    assert at(text, 'data = "base"') in msg
    assert "produces model, not data" in msg


def test_cli_reports_one_line_and_status_2(tmp_path, capsys):
    text = HEAD + BASE + '\n[[stage]]\nname = "pt"\nkind = "pretrain"\n'
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("r1kit: error: "), captured.err
    assert at(text, 'kind = "pretrain"') in lines[0]
    assert "Traceback" not in captured.err
    assert not out.exists()


def test_a_good_recipe_loads(tmp_path, rows):
    text = HEAD + BASE + SFT.format(rows=rows) + ZERO + MATCHED + EVAL
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    pipe = load_pipeline(recipe, tmp_path / "out")
    assert [s.name for s in pipe.stages] == STAGES
    by = {s.name: s for s in pipe.stages}
    assert by["sft"].upstream == ["base"] and by["matched"].upstream == ["base", "zero"]
    assert by["eval"].inputs["model_names"] == MODEL_STAGES
    assert by["sft"].config["final_eval"] is False and by["zero"].config["final_eval"] is True
    assert by["zero"].config["eval"]["n"] == EVAL_N  # the recipe's [eval] reaches every stage
    assert all(stage_state(pipe.out, s) == "new" for s in pipe.stages)
    assert not (tmp_path / "out").exists()


# ---- [prompt]: format options for every stage and the eval ---------------------------------------------------------

PROMPT = """
[prompt]
answer_format = "boxed"
instruction = 'Answer in \\boxed{}.'
"""


def test_prompt_section_reaches_every_stage_and_the_eval(tmp_path, rows):
    text = HEAD + PROMPT + BASE + SFT.format(rows=rows) + ZERO + EVAL
    text = text.replace("[stage.rollout]", '[stage.prompt]\ninstruction = "none"\n[stage.rollout]')  # zero's own
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    pipe = load_pipeline(recipe, tmp_path / "out")
    by = {s.name: s for s in pipe.stages}
    assert pipe.prompt == {"answer_format": "boxed", "instruction": "Answer in \\boxed{}."}
    assert by["sft"].config["prompt"] == {"prompt_format": None, "answer_format": "boxed", "system": None,
                                          "instruction": "Answer in \\boxed{}."}
    assert by["zero"].config["prompt"]["answer_format"] == "boxed"  # the recipe's [prompt] under the stage's own
    assert by["zero"].config["prompt"]["instruction"] == "none"
    assert by["eval"].config["prompt"] == pipe.prompt
    assert "prompt" not in by["base"].config  # pre-training has no prompt format


def test_bad_prompt_section_names_its_line(tmp_path):
    text = HEAD + '\n[prompt]\nanswer_format = "xml"\n' + BASE + EVAL
    msg = _rejected(tmp_path, text)
    assert at(text, '[prompt]') in msg and "unknown answer format 'xml'" in msg
    text = HEAD + '\n[prompt]\nanswer = "boxed"\n' + BASE + EVAL
    assert "unknown config key 'prompt.answer'" in _rejected(tmp_path, text)


def test_a_stage_recorded_before_a_new_option_existed_still_matches(tmp_path, rows):
    """stage.json of an older r1kit lacks options added since (here: sft's `prompt`); at their defaults the stage
    is unchanged, set to anything else it has changed."""
    import json

    text = HEAD + BASE + SFT.format(rows=rows) + EVAL
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    pipe = load_pipeline(recipe, tmp_path / "out")
    sft = next(s for s in pipe.stages if s.name == "sft")
    folder = tmp_path / "out" / "sft"
    folder.mkdir(parents=True)
    old = {k: v for k, v in sft.config.items() if k != "prompt"}
    (folder / "stage.json").write_text(json.dumps({"kind": "sft", "config": old}))
    (folder / "done.json").write_text("{}")
    assert stage_state(pipe.out, sft) == "done"
    recipe.write_text(HEAD + PROMPT + BASE + SFT.format(rows=rows) + EVAL)
    sft = next(s for s in load_pipeline(recipe, tmp_path / "out").stages if s.name == "sft")
    assert stage_state(pipe.out, sft) == "changed"
