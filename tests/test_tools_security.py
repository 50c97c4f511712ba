"""Hostile tool calls cost only their own row and leave nothing behind: a fork bomb, an endless loop, a giant
output, reading another row's data, sleeping past the deadline, writing files for the next call, all in one
batch of the turn loop beside a benign row that must get its answer. Every call goes through r1kit.sandbox (the
guarantees of grading: tests/test_sandbox_adversarial.py)."""

import os
from pathlib import Path

from r1kit.rollout.multiturn import run_episodes
from r1kit.rollout.sampler import SamplingParams
from r1kit.tools import ToolConfig, make_toolbox
from sandbox_helpers import requires_sandbox
from tools_helpers import ScriptedEngine

pytestmark = requires_sandbox


def _cell(code: str) -> str:
    return f"<think>\n```python\n{code}\n```"


ANSWER = " done </think> <answer>1</answer>"
HOSTILE = {
    "benign": "print(6 * 7)",
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "endless_loop": "while True:\n    pass",
    "giant_output": "while True:\n    print('x' * 10000)",
    "sleeps_past_deadline": "import time\ntime.sleep(60)\nprint('woke')",
    "writes_for_the_next_call": "open('/tmp/planted.py', 'w').write('print(1)')\nimport os\n"
                                "os.makedirs('/tmp/keep', exist_ok=True)\nprint('written')",
    "reads_other_rows": "import os, glob\nprint(sorted(glob.glob('/tmp/*')), os.path.exists('/tmp/planted.py'))",
    "daemon": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(120)\nprint('parent')",
}


def _children() -> set[int]:
    me = os.getpid()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                found.add(int(entry.name))
    return found


def test_hostile_calls_cost_only_their_own_row(tokenizer):
    names = list(HOSTILE)
    scripts = [[_cell(HOSTILE[n]), ANSWER] for n in names]
    scripts[names.index("writes_for_the_next_call")].insert(1, " again\n```python\nimport os\n"
                                                             "print(os.listdir('/tmp'))\n```")
    prompts = [tokenizer(f"User: row {i}. Assistant:").input_ids for i in range(len(names))]
    engine = ScriptedEngine(tokenizer, prompts, scripts, tokenizer.eos_token_id)
    box = make_toolbox(["python"], ToolConfig(call_wall_s=2.0, call_cpu_s=1, max_observation_tokens=64),
                       chat=False, tokenizer=tokenizer)
    tmp_before = set(os.listdir("/tmp"))
    children_before = _children()
    eps = run_episodes(engine, prompts, SamplingParams(1.0, 1.0, 200), tools=box, tokenizer=tokenizer,
                       eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id)
    by = dict(zip(names, eps))

    def seen(name: str) -> str:
        e = by[name]
        return tokenizer.decode([t for t, m in zip(e.tokens, e.mask) if not m])

    assert all(e.finished and e.stop == "answer" for e in eps)  # every row answered: nothing stopped the batch
    assert by["benign"].calls[0]["status"] == "ok" and "42" in seen("benign")
    assert by["endless_loop"].calls[0]["status"] == "timeout" and "TimeoutError" in seen("endless_loop")
    assert by["sleeps_past_deadline"].calls[0]["status"] == "timeout" and "woke" not in seen("sleeps_past_deadline")
    assert by["fork_bomb"].calls[0]["status"] in ("timeout", "error")
    assert by["giant_output"].calls[0]["status"] in ("error", "timeout")
    assert by["giant_output"].observation_tokens <= 64 + 16  # cut in the middle to the observation budget
    assert "planted" not in seen("reads_other_rows") and "keep" not in seen("reads_other_rows")
    # the same episode's second call replays its first cell (the file comes back), yet sees only its own /tmp
    assert "'planted.py'" in seen("writes_for_the_next_call").split("written")[-1]
    assert by["daemon"].calls[0]["status"] == "ok" and "parent" in seen("daemon")
    # nothing of the calls on the host's /tmp (other programs of a shared machine may write there meanwhile)
    assert not [p for p in set(os.listdir("/tmp")) - tmp_before if p.startswith(("r1kit", "planted", "keep"))]
    assert not Path("/tmp/planted.py").exists() and not Path("/tmp/keep").exists()
    assert _children() <= children_before  # no sandbox, daemon or fork outlived its call
