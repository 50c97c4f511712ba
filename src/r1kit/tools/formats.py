"""Tool-call formats, by name: how the model writes a call, and how the observation is written back.

- `code` (raw templates; ToRL, SimpleTIR): a fenced ```` ```python ```` block that closes the model's turn is a
  call of the `python` tool with the block as its code; the observation comes back as a ```` ```output ````
  block, and the model writes on.
- `chat` (chat templates): the tokenizer's own tool-aware chat template (`apply_chat_template(tools=[...])`): the
  model writes `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Qwen2.5/Hermes), the answer is a
  `tool` turn as the template renders it, then the assistant's generation prompt. The observation text is cut
  from the template's own rendering of [user, assistant, tool] (the text between the assistant's content and
  the next assistant turn), so the tokens appended are what the template would write; the model's earlier tokens
  are never re-rendered or re-tokenised (token in, token out). A template that ignores `tools=` (SmolLM2's, a
  plain ChatML one) gets r1kit's fallback: the Hermes tool block in the system prompt (the text Qwen2.5's
  template writes) and the tool turn rendered by the model's template as a `tool` role with the output inside
  `<tool_response>` tags. `chat_template_report` says which applies and whether the template is
  prefix-preserving (rendering a longer conversation keeps the shorter one's text: not so for templates that drop
  earlier reasoning, Qwen3's); where it is not, the run doctor says so, and r1kit keeps every earlier turn as
  sampled, renders only the new tool turn, and so trains on exactly the tokens the model saw.

A turn is a call when the text the model wrote since the last observation ends with a complete call; a stop
string (```` ``` ````, `</tool_call>`) only tells the turn loop when to look. Pure Python (a tokenizer object is
passed in; its methods are plain Python).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from r1kit.errors import UserError
from r1kit.tools.base import Observation, ToolCall

_PY_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)```\s*$", re.DOTALL | re.IGNORECASE)
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>\s*$", re.DOTALL)
_OBS, _MODEL, _USER, _THOUGHT = "\x00OBSERVATION\x00", "\x00MODEL\x00", "\x00USER\x00", "\x00THOUGHT\x00"

HERMES_TOOLS = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided "
                "with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\nFor each "
                "function call, return a json object with function name and arguments within <tool_call>"
                "</tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": "
                "<args-json-object>}}\n</tool_call>")


@dataclass
class CodeFormat:
    """```python blocks are calls of the python tool; ```output blocks answer them (ToRL)."""

    name: str = "code"
    stop_strings: tuple = ("```",)

    def find_call(self, turn_text: str) -> ToolCall | None:
        m = _PY_BLOCK.search(turn_text)
        return ToolCall("python", {"code": m.group(1)}) if m else None

    def observation_text(self, obs: Observation, turn_text: str) -> str:
        lead = "" if turn_text.endswith("\n") else "\n"
        return f"{lead}```output\n{obs.text}\n```\n"

    def render_call(self, call: ToolCall) -> str:
        """How the model writes `call` (for script-written traces)."""
        return f"```python\n{call.arguments['code'].rstrip()}\n```"


@dataclass
class ChatFormat:
    """<tool_call>{json}</tool_call> in the tokenizer's own chat template (module docstring)."""

    tokenizer: object
    schemas: list  # the tools in the OpenAI function format (tools.base.schema)
    system: str = ""  # the task's system prompt
    name: str = "chat"
    stop_strings: tuple = ("</tool_call>",)
    tool_aware: bool = field(init=False)
    prefix_preserving: bool = field(init=False)
    _skeleton: str = field(init=False)

    def __post_init__(self) -> None:
        self.tool_aware = self._render([{"role": "user", "content": _USER}], True, self.schemas) != \
            self._render([{"role": "user", "content": _USER}], True, None)
        said = f"<think>{_THOUGHT}</think>{_MODEL}"  # what the model wrote: reasoning, then its call
        convo = [{"role": "user", "content": _USER}, {"role": "assistant", "content": said},
                 {"role": "tool", "content": self._tool_content(_OBS)}]
        full = self.render_messages(convo, generation_prompt=True)
        prompt = self.render_messages(convo[:1], generation_prompt=True)
        if _MODEL not in full or _OBS not in full:
            raise UserError("the chat template drops the assistant's or the tool's message: use the code tool "
                            "format (tool_use.format = \"code\") with a raw prompt format")
        self._skeleton = full[full.index(_MODEL) + len(_MODEL):]
        self.prefix_preserving = full.startswith(prompt + said)

    def _render(self, messages, generation_prompt: bool, tools):
        kwargs = {"tools": tools} if tools else {}
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                                  **kwargs)

    def system_text(self) -> str:
        """The system prompt: the task's, with the Hermes tool block in front when the template is not
        tool-aware (the fallback)."""
        if self.tool_aware:
            return self.system
        block = HERMES_TOOLS.format(tools="\n".join(json.dumps(s) for s in self.schemas))
        return f"{self.system}\n\n{block}" if self.system else block

    def render_messages(self, messages: list[dict], generation_prompt: bool) -> str:
        system = self.system_text()
        if system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}, *messages]
        return self._render(messages, generation_prompt, self.schemas if self.tool_aware else None)

    def _tool_content(self, text: str) -> str:
        return text if self.tool_aware else f"<tool_response>\n{text}\n</tool_response>"

    def find_call(self, turn_text: str) -> ToolCall | None:
        m = _TOOL_CALL.search(turn_text)
        if not m:
            return None
        try:
            data = json.loads(m.group(1))
        except json.JSONDecodeError as e:
            return ToolCall("", {}, f"the tool call is not valid JSON ({e.msg})")
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return ToolCall("", {}, 'a tool call needs {"name": ..., "arguments": {...}}')
        arguments = data.get("arguments", {})
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return ToolCall(data["name"], {}, "the arguments are not valid JSON")
        return ToolCall(data["name"], arguments if isinstance(arguments, dict) else {"": arguments})

    def observation_text(self, obs: Observation, turn_text: str) -> str:
        return self._skeleton.replace(_OBS, obs.text)  # the skeleton holds the tool turn around it

    def render_call(self, call: ToolCall) -> str:
        return "<tool_call>\n" + json.dumps({"name": call.name, "arguments": call.arguments}) + "\n</tool_call>"


def make_call_format(name: str, *, chat: bool, tokenizer=None, schemas: list | None = None, system: str = ""):
    """The call format `name` (auto: chat for a chat prompt, else code) for this prompt format."""
    if name == "auto":
        name = "chat" if chat else "code"
    if name == "code":
        return CodeFormat()
    if name == "chat":
        if not chat:
            raise UserError("tool_use.format = \"chat\" needs a chat prompt (prompt_format = \"chat\"): use \"code\" "
                            "with a raw template")
        return ChatFormat(tokenizer, schemas or [], system)
    raise UserError(f"unknown tool-call format {name!r}: use auto, code or chat")


def chat_template_report(fmt) -> list[str]:
    """The doctor's notes on a chat template used for tool calls (empty for the code format)."""
    if not isinstance(fmt, ChatFormat):
        return []
    notes = []
    if not fmt.tool_aware:
        notes.append("the chat template ignores tools=: r1kit's Hermes fallback is used (the tool list and "
                     "<tool_call> syntax in the system prompt, tool output as a `tool` turn in <tool_response> tags)")
    if not fmt.prefix_preserving:
        notes.append("the chat template is not prefix-preserving (a longer conversation re-renders earlier "
                     "turns): r1kit keeps earlier turns as sampled and renders only each new tool turn, so "
                     "training sees exactly the tokens the model saw, which a re-rendered conversation would not")
    return notes


def stop_token_ids(tokenizer, stop_strings: tuple) -> list[int]:
    """Token ids whose text holds the last character of a stop string: a turn can end only at one of them."""
    lasts = {s[-1] for s in stop_strings}
    vocab = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(vocab)])
    return [i for i, t in enumerate(texts) if any(c in t for c in lasts)]
