"""Dataset tasks (tasks/dataset.py, tasks/sources.py): local files of every kind, save_to_disk directories, hub
datasets (with `datasets.load_dataset` replaced, so no network is touched), column mapping and detection,
answers read from worked solutions, splits, whole-file evaluation, presets, and one-line errors."""

import json

import pytest

datasets = pytest.importorskip("datasets")

from r1kit.errors import UserError  # noqa: E402
from r1kit.evaluation.metrics import GENERATED_EVAL_N, eval_config_for  # noqa: E402
from r1kit.tasks import get_task, task_options  # noqa: E402
from r1kit.tasks.arithmetic import ArithmeticTask  # noqa: E402
from r1kit.tasks.dataset import PAPER_EVAL, PRESETS  # noqa: E402
from r1kit.tasks.jsonl import JsonlTask  # noqa: E402

ROWS = [{"problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(30)]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """datasets' cache of prepared files in this test's folder, not in the user's home."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def write(tmp_path, rows, name):
    """`rows` as a data file of the type `name`'s extension says."""
    path = tmp_path / name
    if name.endswith(".parquet"):
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif name.endswith(".csv"):
        datasets.Dataset.from_list(rows).to_csv(str(path), index=False)
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows))
    return path


def done(answer: str) -> str:
    return f"<think> working </think> <answer>{answer}</answer>"


def every(task):
    return task.problems("all")


# ---- local files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["d.parquet", "d.json", "d.jsonl", "d.csv"])
def test_each_file_type_is_read_whole_with_its_columns_found(tmp_path, name):
    path = write(tmp_path, ROWS, name)
    task = get_task(f"data:{path}")
    problems = every(task)
    assert len(problems) == len(ROWS) and task.eval_split == "all"
    assert {p.question for p in problems} == {r["problem"] for r in ROWS}
    assert all(p.answer == str(int(p.question.split()[2]) + 1) for p in problems)  # csv's ints written back
    train, test = task.problems("train"), task.problems("test")
    assert len(train) + len(test) == len(ROWS) and not {p.id for p in train} & {p.id for p in test}
    assert sorted(p.id for p in every(get_task(f"data:{path}"))) == sorted(p.id for p in problems)  # stable
    assert task.score(problems[0], done(problems[0].answer)).correct


def test_columns_named_by_options_and_by_jsonl_keys(tmp_path):
    rows = [{"q": f"Q{i}?", "a": f"{i}", "why": f"because {i}", "question": "decoy"} for i in range(5)]
    path = write(tmp_path, rows, "d.jsonl")
    for spec in (f"data:{path},question=q,answer=a,solution=why", f"data:{path},prompt_key=q,answer_key=a,"
                 "solution=why"):
        problems = sorted(every(get_task(spec)), key=lambda p: p.question)
        assert [(p.question, p.answer, p.meta["solution"]) for p in problems] == [
            (f"Q{i}?", f"{i}", f"because {i}") for i in range(5)]
    options = task_options(get_task(spec))  # recorded in run.json: plain values
    assert json.loads(json.dumps(options))["solution"] == "why" and options["question"] == "q"


def test_column_detection_ignores_case_and_prefers_the_answer_column(tmp_path):
    rows = [{"ID": i, "Problem": f"P{i}", "Solution": f"so \\boxed{{{i + 100}}}", "Answer": i} for i in range(4)]
    problems = every(get_task(f"data:{write(tmp_path, rows, 'd.parquet')}"))
    assert sorted((p.question, p.answer) for p in problems) == [(f"P{i}", str(i)) for i in range(4)]
    assert all(p.meta["solution"].startswith("so ") for p in problems)


def test_gsm8k_answers_are_read_from_the_worked_solution(tmp_path):
    rows = [{"question": "Natalia sold 48 clips...", "answer": "48/2 = <<48/2=24>>24\n48+24 = 72\n#### 1,072"}]
    (p,) = every(get_task(f"data:{write(tmp_path, rows, 'd.jsonl')}"))
    assert p.answer == "1072" and p.meta["solution"] == "48/2 = <<48/2=24>>24\n48+24 = 72"


def test_math_answers_are_read_from_the_boxed_solution(tmp_path):
    rows = [{"problem": "Half of one?", "solution": "One over two: $\\boxed{\\frac{1}{2}}$."}]
    task = get_task(f"data:{write(tmp_path, rows, 'd.json')}")
    (p,) = every(task)
    assert p.answer == "\\frac{1}{2}"
    assert task.score(p, done("0.5")).correct and not task.score(p, done("1/3")).correct
    assert "\\boxed" in task.solution(p, __import__("random").Random(0))


def test_bad_rows_are_rejected_one_by_one_and_good_ones_kept(tmp_path):
    rows = [*ROWS[:3], {"problem": "", "answer": "1"}, {"problem": "What is 0 + 1?", "answer": "1"},
            {"problem": "No answer", "answer": None}]
    task = get_task(f"data:{write(tmp_path, rows, 'd.jsonl')}")
    assert len(every(task)) == 3 and len(task.rejected) == 3
    assert any("duplicate of" in r and "row 0" in r for r in task.rejected)


# ---- splits ------------------------------------------------------------------------------------------------


def test_explicit_split_files_and_no_question_in_both(tmp_path):
    train = write(tmp_path, ROWS[:20], "train.parquet")
    test = write(tmp_path, ROWS[15:], "test.csv")
    task = get_task(f"data:train={train},test={test}")
    assert task.eval_split == "test"
    assert len(task.problems("test")) == 15 and len(task.problems("train")) == 15  # 5 overlapping dropped
    assert not {p.question for p in task.problems("train")} & {p.question for p in task.problems("test")}
    only_test = get_task(f"data:test={test}")
    with pytest.raises(UserError, match="no train problems"):
        only_test.problems("train")


def test_named_splits_of_a_saved_datasetdict(tmp_path):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:25]),
                               "test": datasets.Dataset.from_list(ROWS[25:])})
    dd.save_to_disk(str(tmp_path / "dd"))
    task = get_task(f"data:{tmp_path / 'dd'}")
    assert task.eval_split == "test" and len(task.problems("test")) == 5 and len(task.problems("train")) == 25
    assert eval_config_for(task).split == "test" and eval_config_for(task).n is None
    chosen = get_task(f"data:{tmp_path / 'dd'},test_split=train")
    assert len(chosen.problems("test")) == 25
    with pytest.raises(UserError, match="no split 'dev'; its splits are train, test"):
        get_task(f"data:{tmp_path / 'dd'},test_split=dev")


def test_a_saved_dataset_is_unsplit_and_a_split_column_is_obeyed(tmp_path):
    ds = datasets.Dataset.from_list([{**r, "split": "test" if i < 4 else "train"} for i, r in enumerate(ROWS)])
    ds.save_to_disk(str(tmp_path / "ds"))
    task = get_task(f"data:{tmp_path / 'ds'}")
    assert task.eval_split == "test" and len(task.problems("test")) == 4 and len(task.problems("train")) == 26
    hashed = get_task(f"data:{write(tmp_path, ROWS, 'd.jsonl')}")
    assert [p.id for p in sorted(hashed.problems("test"), key=lambda p: p.id)] != []  # 30 rows: a few in test


def test_the_same_question_labelled_train_and_test_stays_in_test(tmp_path):
    rows = [{"problem": "Q", "answer": "1", "split": "train"}, {"problem": "Q", "answer": "1", "split": "test"},
            {"problem": "R", "answer": "2", "split": "train"}]
    task = get_task(f"data:{write(tmp_path, rows, 'd.jsonl')}")
    assert [p.question for p in task.problems("test")] == ["Q"]
    assert [p.question for p in task.problems("train")] == ["R"]


# ---- whole-file evaluation -----------------------------------------------------------------------------------


def test_a_file_given_for_evaluation_is_evaluated_whole_unless_n_is_given(tmp_path):
    data = get_task(f"data:{write(tmp_path, ROWS, 'd.jsonl')}")
    jsonl = JsonlTask(write(tmp_path, [{"prompt": r["problem"], "answer": r["answer"]} for r in ROWS], "j.jsonl"))
    for task in (data, jsonl):
        cfg = eval_config_for(task)
        assert (cfg.split, cfg.n) == ("all", None)
        assert len(task.problems(cfg.split, cfg.n)) == len(ROWS)
        assert len(task.problems(*_split_n(eval_config_for(task, n=7)))) == 7
    generated = eval_config_for(ArithmeticTask())
    assert (generated.split, generated.n, generated.k, generated.max_new_tokens) == ("test", GENERATED_EVAL_N, 4,
                                                                                     128)


def _split_n(cfg):
    return cfg.split, cfg.n


def test_cli_eval_reads_every_row_of_a_file(tmp_path, tiny_model, tokenizer, capsys):
    from r1kit.cli.main import main
    from r1kit.models.modeling import save_model

    save_model(tiny_model, tokenizer, tmp_path / "m")
    path, out = write(tmp_path, ROWS[:12], "d.csv"), tmp_path / "e.json"
    argv = ["eval", "--model", str(tmp_path / "m"), "--task", f"data:{path}", "--k", "1"]
    assert main([*argv, "--max-new-tokens", "4", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["metrics"]["problems"] == 12 and result["settings"]["split"] == "all"
    assert "/ all" in capsys.readouterr().out


# ---- the hub and presets -----------------------------------------------------------------------------------


@pytest.fixture
def hub(monkeypatch):
    """`datasets.load_dataset` answering hub names from memory (and local files as usual); records the calls."""
    real, calls, store = datasets.load_dataset, [], {}

    def load_dataset(name, config=None, **kw):
        if name in ("json", "csv", "parquet") or "/" not in name:
            return real(name, config, **kw)
        calls.append((name, config))
        if name not in store:
            raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)\nsecond line")
        return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in store[name].items()})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls, store


GSM8K = {"train": [{"question": f"Train {i}?", "answer": f"so\n#### {i}"} for i in range(6)],
         "test": [{"question": f"Test {i}?", "answer": f"so\n#### {i}"} for i in range(4)]}
MATH = {"test": [{"problem": f"M{i}", "solution": f"\\boxed{{{i}}}", "answer": str(i), "unique_id": f"t/{i}"}
                 for i in range(5)]}
AIME = {"train": [{"id": i, "problem": f"A{i}", "solution": "...", "answer": i, "url": "u", "year": "2024"}
                  for i in range(3)]}


def test_hf_spec_loads_name_and_config(hub):
    calls, store = hub
    store["owner/set"] = GSM8K
    task = get_task("hf:owner/set:main,answer=answer")
    assert calls == [("owner/set", "main")] and task.name == "hf" and task.eval_split == "test"
    assert sorted(p.answer for p in task.problems("test")) == ["0", "1", "2", "3"]
    get_task("hf:owner/set,config=other")
    assert calls[-1] == ("owner/set", "other")


@pytest.mark.parametrize("preset, data, split, count", [("gsm8k", GSM8K, "test", 4), ("math500", MATH, "test", 5),
                                                        ("aime24", AIME, "test", 3), ("aime25", AIME, "test", 3)])
def test_presets_load_their_hub_dataset_with_the_paper_settings(hub, preset, data, split, count):
    calls, store = hub
    store[PRESETS[preset].hub] = data
    task = get_task(preset)
    assert calls == [(PRESETS[preset].hub, PRESETS[preset].config)]
    cfg = eval_config_for(task)
    assert (cfg.split, cfg.n, cfg.k) == (split, None, PRESETS[preset].k)
    assert (cfg.temperature, cfg.top_p, cfg.max_new_tokens) == (0.6, 0.95, PAPER_EVAL["max_new_tokens"])
    assert len(task.problems(cfg.split, cfg.n)) == count and task.name == preset
    assert all(p.id.startswith(f"{preset}/") for p in task.problems(split))
    assert eval_config_for(task, k=2, max_new_tokens=64).k == 2  # flags override the preset


def test_preset_hub_names_columns_and_settings():
    assert {name: (p.hub, p.config, p.splits.get("test_split"), p.k) for name, p in PRESETS.items()} == {
        "gsm8k": ("openai/gsm8k", "main", "test", 8),
        "math500": ("HuggingFaceH4/MATH-500", None, "test", 16),
        "aime24": ("HuggingFaceH4/aime_2024", None, "train", 64),
        "aime25": ("yentinglin/aime_2025", None, "train", 64),
    }
    assert PAPER_EVAL == {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 32768}


def test_a_benchmark_preset_has_no_training_problems(hub):
    hub[1][PRESETS["math500"].hub] = MATH
    with pytest.raises(UserError, match="no train problems"):
        get_task("math500").problems("train")


def test_a_preset_pointed_at_a_local_copy_never_asks_the_hub(tmp_path, hub):
    path = write(tmp_path, GSM8K["test"], "gsm8k-test.parquet")
    task = get_task(f"gsm8k:path={path}")
    assert hub[0] == [] and task.eval_split == "all" and task.eval_defaults["k"] == 8
    assert sorted(p.answer for p in every(task)) == ["0", "1", "2", "3"]


def test_an_unreachable_hub_is_one_line_that_says_what_to_do(hub):
    with pytest.raises(UserError) as e:
        get_task("gsm8k")
    message = str(e.value)
    assert "\n" not in message and "openai/gsm8k:main" in message and "OfflineModeIsEnabled" in message
    assert "HF cache" in message and "gsm8k:path=PATH" in message


# ---- one-line errors ---------------------------------------------------------------------------------------


def _bad_files(tmp_path):
    (tmp_path / "garbage.parquet").write_text("not parquet")
    (tmp_path / "header.csv").write_text("problem,answer\n")
    (tmp_path / "data.txt").write_text("hello")
    write(tmp_path, [{"problem": "", "answer": ""}], "blank.jsonl")
    write(tmp_path, [{"text": "x", "label": 1}], "other.jsonl")
    write(tmp_path, [{"problem": "x", "solution": "no box here"}], "nobox.jsonl")
    write(tmp_path, ROWS, "ok.jsonl")


@pytest.mark.parametrize("spec, mentions", [
    ("data:{t}/ok.jsonl,question=text", "question='text' is not a column; its columns are problem, answer"),
    ("data:{t}/other.jsonl", "no question column among text, label"),
    ("data:{t}/other.jsonl,question=text", "no answer column"),
    ("data:{t}/header.csv", "has no rows"),
    ("data:{t}/garbage.parquet", "cannot read"),
    ("data:{t}/data.txt", "unknown data file type '.txt'"),
    ("data:{t}/missing.jsonl", "no such file"),
    ("data:{t}/blank.jsonl", "no usable row"),
    ("data:{t}/nobox.jsonl", "no usable row"),
    ("data:", "give one source"),
    ("data:{t}/ok.jsonl,hub=a/b", "give one source"),
    ("data:{t}/ok.jsonl,bogus=1", "check the task's options"),
])
def test_bad_input_is_a_one_line_user_error(tmp_path, spec, mentions):
    _bad_files(tmp_path)
    with pytest.raises(UserError) as e:
        get_task(spec.format(t=tmp_path))
    assert mentions in str(e.value) and "\n" not in str(e.value)
