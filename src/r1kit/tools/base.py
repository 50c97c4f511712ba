"""What a tool is, what a call and its observation are, the tool-use settings, and tool output cut to a budget.

A tool has a name, a description and JSON-schema parameters (what a chat template's `tools=` argument takes, the
OpenAI function format), and `call(arguments) -> Observation`. A call never raises: bad arguments, an error in
the tool, a timeout all come back as an observation whose text says so (status `bad_arguments`, `error`,
`timeout`), and the rollout goes on; only the model's own tokens are ever trained (rollout/multiturn.py).
Pure Python.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from r1kit.errors import UserError

STATUSES = ("ok", "error", "timeout", "bad_arguments")


@dataclass(frozen=True)
class ToolCall:
    """A call as the model wrote it: the tool's name and its arguments (already parsed), or `problem` when the
    call could not be read (bad JSON, no name): it is answered with an observation saying so."""

    name: str
    arguments: dict = field(default_factory=dict)
    problem: str = ""


@dataclass(frozen=True)
class Observation:
    """What a call gives back to the model (`text`) and how it went (`status`, a key of STATUSES)."""

    text: str
    status: str = "ok"
    seconds: float = 0.0  # wall time of the call
    cpu_s: float = 0.0  # CPU time of its sandbox (python tool)

    @property
    def failed(self) -> bool:
        return self.status != "ok"


class Tool(Protocol):
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments (an "object" with "properties" and "required")

    def call(self, arguments: dict) -> Observation: ...

    def call_many(self, calls: list[tuple[dict, list[dict]]]) -> list[Observation]:
        """Many calls at once, each with the episode's earlier calls to this tool: (arguments, history)."""
        ...


def schema(tool) -> dict:
    """The tool in the OpenAI function format, as `apply_chat_template(tools=[...])` takes it."""
    return {"type": "function",
            "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters}}


_JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict,
               "array": list}


def check_arguments(parameters: dict, arguments) -> str:
    """'' when `arguments` fit the tool's schema (an object: required keys present, no unknown keys when
    `additionalProperties` is false, each property of its declared type), else what is wrong, in one line."""
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, got {type(arguments).__name__}"
    props = parameters.get("properties", {})
    missing = [k for k in parameters.get("required", []) if k not in arguments]
    if missing:
        return f"missing argument(s): {', '.join(missing)}"
    unknown = [k for k in arguments if k not in props]
    if unknown and parameters.get("additionalProperties", True) is False:
        return f"unknown argument(s): {', '.join(unknown)} (known: {', '.join(props)})"
    for key, value in arguments.items():
        want = _JSON_TYPES.get(props.get(key, {}).get("type", ""))
        if want is not None and (not isinstance(value, want) or (want is not bool and isinstance(value, bool))):
            return f"argument {key!r} must be of type {props[key]['type']}"
    return ""


def truncate_middle(text: str, max_tokens: int, count: Callable[[str], int] | None = None) -> str:
    """`text` cut in the middle to at most about `max_tokens` tokens (head and tail kept, as a notebook shows a
    long output), with a marker saying how much went. `count(text) -> tokens` (the tokenizer's); without one,
    4 characters a token. The cut is made in characters, then narrowed until the count fits."""
    count = count or (lambda s: -(-len(s) // 4))
    if max_tokens <= 0 or count(text) <= max_tokens:
        return text
    keep = max(2 * max_tokens, 8)  # characters kept, first guess (tokens hold >= 1 character; digits one each)
    while True:
        head, tail = text[: keep // 2], text[len(text) - keep // 2:]
        out = f"{head}\n... [{len(text) - len(head) - len(tail)} characters cut] ...\n{tail}"
        if count(out) <= max_tokens or keep <= 8:
            return out
        keep = int(keep * 0.8)


CALL_FORMATS = ("auto", "code", "chat")


@dataclass
class ToolConfig:
    """Tool use in rollouts (`[tool_use]` of a recipe): the call format and every budget, each with a default.

    The completion budget (`rollout.max_new_tokens`, `eval.max_new_tokens`, ...) stays the budget of the *model's*
    tokens over the whole trajectory: the length metrics, the overlong penalty, truncation and Dr. GRPO's constant
    count those only. Why these defaults: a ToRL/SimpleTIR trajectory on a maths problem makes 1-3 calls; a
    notebook cell that prints more than ~256 tokens is a dump the model cannot use (ToRL cuts at 512 characters);
    5 s of wall time and 2 CPU seconds run any sane cell (the sandbox's grading defaults)."""

    format: str = "auto"  # how calls are written: code (```python block, ```output answer: ToRL) | chat (the
    # tokenizer's tool-aware chat template, <tool_call>{json}</tool_call>) | auto (chat for chat prompts, else code)
    max_turns: int = 4  # model turns per trajectory (a turn ends at a call or at the answer)
    max_calls: int = 3  # tool calls per trajectory; a call past it is answered "budget used up"
    max_turn_tokens: int = 0  # new model tokens per turn; 0: only the trajectory's budget
    max_observation_tokens: int = 256  # tokens of one observation; longer output is cut in the middle
    max_total_tokens: int = 0  # model + observation tokens after the prompt; 0: budget + calls x observations
    call_wall_s: float = 5.0  # per call: wall seconds (replaying the episode's earlier cells included)
    call_cpu_s: int = 2  # per call: CPU seconds per process
    call_memory_mb: int = 512  # per call: address space per process
    budget_reward: str = "clamp"  # a trajectory stopped by a budget: clamp (graded, then min(reward, 0)) | grade

    def __post_init__(self) -> None:
        if self.format not in CALL_FORMATS:
            raise UserError(f"tool_use.format = {self.format!r}: use one of {', '.join(CALL_FORMATS)}")
        if self.budget_reward not in ("clamp", "grade"):
            raise UserError("tool_use.budget_reward must be clamp or grade")
        if min(self.max_turns, self.max_observation_tokens, self.call_cpu_s, self.call_memory_mb) < 1 \
                or self.max_calls < 0 or self.max_turn_tokens < 0 or self.max_total_tokens < 0 \
                or self.call_wall_s <= 0:
            raise UserError("tool_use: max_turns, max_observation_tokens, call_cpu_s and call_memory_mb must be "
                            ">= 1, call_wall_s > 0, max_calls, max_turn_tokens and max_total_tokens >= 0")

    def total_tokens(self, max_new_tokens: int) -> int:
        """Model + observation tokens a trajectory may hold after its prompt."""
        return self.max_total_tokens or max_new_tokens + self.max_calls * (self.max_observation_tokens + 16)


def budget_reward(reward: float, stopped_by_budget: bool, rule: str = "clamp") -> float:
    """The reward of a trajectory a budget stopped (turns, calls, tokens): graded as any other, then clamped to
    at most 0 (`clamp`), so running out of budget never pays, while a wrong answer's penalties still apply."""
    return min(reward, 0.0) if stopped_by_budget and rule == "clamp" else reward
