"""Tools a model calls between its thoughts (ToRL, ReTool, SimpleTIR): the interface, the `python` tool (the
model's code in r1kit's sandbox), the call formats (`code`, `chat`) and the tool-use budgets. Layer 0: pure
Python (the python tool runs subprocesses through r1kit.sandbox); the turn loop that drives an engine is
rollout/multiturn.py.

- base.py: Tool, ToolCall, Observation, ToolConfig (the `[tool_use]` section: format and budgets), middle
  truncation of long output, the reward of a trajectory a budget stopped;
- python.py: the python tool (one sandbox per call, the episode's earlier cells replayed);
- formats.py: how calls are written and observations written back, by name.

A recipe names its tools (`tools = ["python"]`), `r1kit eval` and `generate` take `--tools python`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from r1kit.errors import UserError
from r1kit.tools.base import ToolConfig, budget_reward, schema
from r1kit.tools.formats import chat_template_report, make_call_format, stop_token_ids


def _python(cfg: ToolConfig):
    from r1kit.tools.python import PythonTool

    return PythonTool(wall_s=cfg.call_wall_s, cpu_s=cfg.call_cpu_s, memory_mb=cfg.call_memory_mb)


TOOLS = {"python": _python}  # name -> factory(ToolConfig) -> a Tool


def check_tool_names(names) -> list[str]:
    """The names, checked: each a key of TOOLS (UserError otherwise)."""
    names = [n for n in (names or []) if n and n != "none"]
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        raise UserError(f"unknown tool(s) {', '.join(unknown)}: use {', '.join(TOOLS)}")
    return names


@dataclass
class ToolBox:
    """The tools of a run, their settings and the call format, built once at the top of a loop."""

    tools: dict  # name -> Tool
    config: ToolConfig
    format: object  # tools.formats.CodeFormat | ChatFormat
    _stop_ids: dict = field(default_factory=dict)

    def stop_ids(self, tokenizer) -> list[int]:
        key = id(tokenizer)
        if key not in self._stop_ids:
            self._stop_ids[key] = stop_token_ids(tokenizer, self.format.stop_strings)
        return self._stop_ids[key]

    def schemas(self) -> list[dict]:
        return [schema(t) for t in self.tools.values()]

    def attach(self, prompter) -> None:
        """Give a chat prompter the tools (its prompts then list them, as the call format renders them)."""
        if getattr(self.format, "name", "") == "chat":
            prompter.tool_format = self.format

    def notes(self) -> list[str]:
        """What the doctor says about the call format (chat template fallbacks)."""
        return chat_template_report(self.format)


def make_toolbox(names, config: ToolConfig, *, chat: bool, tokenizer=None, system: str = "") -> ToolBox | None:
    """The ToolBox for tool `names` (None when there are none); `chat`: whether prompts use a chat template."""
    names = check_tool_names(names)
    if not names:
        return None
    tools = {n: TOOLS[n](config) for n in names}
    if config.format in ("code", "auto") and not chat and set(names) != {"python"}:
        raise UserError("the code call format has only the python tool: use a chat prompt for other tools")
    fmt = make_call_format(config.format, chat=chat, tokenizer=tokenizer, schemas=[schema(t) for t in tools.values()],
                           system=system)
    return ToolBox(tools, config, fmt)


__all__ = ["TOOLS", "ToolBox", "ToolConfig", "budget_reward", "check_tool_names", "make_toolbox"]
