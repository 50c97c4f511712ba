"""Cold-start traces written by a script, for SFT before GRPO with tools (recipes/tiny-tools.toml,
recipes/smollm2-tools.toml): for each training question of an arithmetic task, a completion that computes the
answer with the python tool and then answers, in the call format of the prompt (`code`: a ```python block and the
```output block the tool answers with; `chat`: a <tool_call> and the template's tool turn), or (`--no-tools`) the
same pipeline's trace without tools: the answer stated at once, as a model that has no tool must.

Rows are what `r1kit sft` reads: prompt, question, completion, and `turns` (the model's text and the tool's,
alternately: the tool's turns carry no loss, as in RL). The tool's text is what the rollout's turn loop writes
back for the same call (tools/formats.py), the output computed by Python here.

    python examples/tools/tool_traces.py --task "arithmetic:digits=6,mul_digits=4,min_digits=4,ops=*" \
        --model runs/tools/base --n 400 --out runs/tools/traces-tools.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from r1kit.models.modeling import load_tokenizer
from r1kit.tasks import get_task
from r1kit.tasks.prompting import make_prompter
from r1kit.tools import ToolConfig, make_toolbox
from r1kit.tools.base import Observation, ToolCall


def expression(problem) -> str:
    op, terms = problem.meta["op"], problem.meta["terms"]
    return op.join(str(t) for t in terms)


def trace(problem, prompter, tools, rng: random.Random) -> list[dict]:
    """The turns of one tool-using completion (model, tool, model), in the prompt's answer format."""
    expr, value = expression(problem), problem.answer
    code = expr if tools.format.name == "code" else f"print({expr})"  # a notebook shows a bare expression's value
    first = tools.format.render_call(ToolCall("python", {"code": code}))
    if prompter.answer_format == "think-answer":
        opener, close = rng.choice(["<think>", "<think> compute it"]), f"</think> <answer>{value}</answer>"
        first = f"{opener}\n{first}"
    else:  # boxed answers (chat models)
        first = f"Let me compute {expr} with Python.\n{first}"
        close = f"The result is {value}, so the answer is \\boxed{{{value}}}."
    observation = tools.format.observation_text(Observation(value), first)
    return [{"role": "model", "text": first}, {"role": "tool", "text": observation},
            {"role": "model", "text": close}]


def plain(problem, prompter) -> list[dict]:
    expr, value = expression(problem), problem.answer
    if prompter.answer_format == "think-answer":
        return [{"role": "model", "text": f"<think> {expr} </think> <answer>{value}</answer>"}]
    return [{"role": "model", "text": f"{expr} = {value}, so the answer is \\boxed{{{value}}}."}]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, help="an arithmetic task spec (its train split)")
    p.add_argument("--model", required=True, help="the model directory whose tokenizer and template the traces fit")
    p.add_argument("--n", type=int, default=400, help="training questions (one trace each)")
    p.add_argument("--out", required=True, help="the JSONL file to write")
    p.add_argument("--no-tools", action="store_true", help="traces without tools (the answer stated at once)")
    p.add_argument("--tool-format", default="auto", choices=["auto", "code", "chat"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", action="append", default=[], help="a format option KEY=VALUE (as [prompt])")
    args = p.parse_args(argv)
    options = dict(kv.split("=", 1) for kv in args.prompt)
    task = get_task(args.task, **options)
    tokenizer = load_tokenizer(args.model)
    prompter = make_prompter(task, tokenizer)
    tools = make_toolbox(["python"], ToolConfig(format=args.tool_format), chat=prompter.chat, tokenizer=tokenizer,
                         system=prompter.system)
    if not args.no_tools:
        tools.attach(prompter)
    rng = random.Random(args.seed)
    rows = []
    for problem in task.problems("train", args.n, seed=args.seed):
        turns = plain(problem, prompter) if args.no_tools else trace(problem, prompter, tools, rng)
        completion = "".join(t["text"] for t in turns)
        assert prompter.score(problem, completion).correct, completion
        rows.append({"id": problem.id, "question": problem.question, "prompt": prompter.text(problem),
                     "completion": completion, "turns": turns, "tool_calls": 0 if args.no_tools else 1,
                     "provenance": {"teacher": "examples/tools/tool_traces.py", "task": args.task,
                                    "formats": prompter.settings(), "tools": [] if args.no_tools else ["python"]}})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} {'plain' if args.no_tools else 'tool-using'} traces to {args.out}")


if __name__ == "__main__":
    main()
