"""The reference pages, generated from the code at every build so they cannot drift (an mkdocs hook).

- `reference/cli.md`: every `r1kit` command and flag, from the argument parser (`r1kit.cli.main.build_parser`):
  flags, default, choices and the flag's help text.
- `reference/config.md`: every recipe key, from the config dataclasses: section, key, type, default and the
  comment written beside the field (continuation comment lines included).

`undocumented()` lists flags without help and config fields without a comment: tests/test_docs.py fails on any.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import tokenize
import typing

# The configs a recipe or `--section.key=value` fills: the top-level one of each loop (sections recurse).
TOP_CONFIGS = {
    "r1kit rl (an RL recipe, or a `kind = \"rl\"` stage)": ("r1kit.algo.rl_config", "RLConfig"),
    "r1kit base (a `kind = \"base\"` stage)": ("r1kit.loops.base", "BaseConfig"),
    "r1kit generate (a `kind = \"generate\"` stage)": ("r1kit.loops.generate", "GenerateConfig"),
    "r1kit sft (a `kind = \"sft\"` stage)": ("r1kit.loops.sft", "SFTConfig"),
    "r1kit distill (a `kind = \"distill\"` stage)": ("r1kit.loops.distill", "DistillConfig"),
}
OPTIONAL_CONFIGS = {  # loops that other work adds; documented when present
    "r1kit rm (a `kind = \"rm\"` stage)": ("r1kit.loops.rm", "RMConfig"),
}


def _configs() -> dict[str, type]:
    import importlib

    found = {}
    for title, (module, name) in {**TOP_CONFIGS, **OPTIONAL_CONFIGS}.items():
        try:
            found[title] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            if title in TOP_CONFIGS:
                raise
    return found


def field_comments(cls: type) -> dict[str, str]:
    """{field: the comment beside it}, read from the class's source (a trailing comment on the field's line(s),
    then comment-only lines right below it)."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    tree = ast.parse(source)
    body = tree.body[0].body
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    docs = {}
    for node in body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        parts = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        n = node.end_lineno + 1
        while n <= len(lines) and lines[n - 1].strip().startswith("#"):
            parts.append(comments.get(n, ""))
            n += 1
        docs[node.target.id] = " ".join(p for p in parts if p)
    return docs


def _type_name(hint) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if dataclasses.is_dataclass(value):
            return "(section)"
    else:
        return "(required)"
    return "`" + repr(value).replace("|", "\\|") + "`"


def config_rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) of every field of `cls`, sections flattened as `section.key`."""
    rows = []
    hints = typing.get_type_hints(cls)
    docs = field_comments(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            rows += config_rows(hint, f"{prefix}{f.name}.")
            continue
        rows.append((prefix + f.name, _type_name(hint), _default(f), docs.get(f.name, "")))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def config_reference() -> str:
    out = ["# Recipe and config keys", "",
           "Every key a recipe's TOML or a `--section.key=value` flag can set, generated from the config dataclasses "
           "(the comment beside each field is its documentation). Unknown keys and wrong types are errors when the "
           "recipe is read.", ""]
    for title, cls in _configs().items():
        out += [f"## {title}", "", "| key | type | default | what it does |", "|---|---|---|---|"]
        for key, typ, default, doc in config_rows(cls):
            out.append(f"| `{key}` | {_cell(typ)} | {default} | {_cell(doc)} |")
        out.append("")
    return "\n".join(out)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help_of(parser: argparse.ArgumentParser, name: str) -> str:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if choice.dest == name:
                    return choice.help or ""
    return ""


def cli_reference() -> str:
    from r1kit.cli.main import build_parser

    parser = build_parser()
    out = ["# Command line", "",
           "Every `r1kit` command and flag, generated from the argument parser. Commands that take config overrides "
           "(`rl`, `generate`, `sft`, `distill`, `cost estimate`, `plan`) also take any recipe key as "
           "`--section.key=value` (see [Recipe and config keys](config.md)).", ""]
    for name, sub in _subcommands(parser).items():
        out += [f"## `r1kit {name}`", "", _help_of(parser, name), "", "| flag | default | what it does |",
                "|---|---|---|"]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flags = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}` (positional)"
            default = "" if action.default in (None, False, argparse.SUPPRESS) else f"`{action.default}`"
            text = (action.help or "").replace("|", "\\|")
            if action.choices:
                text += " (one of: " + ", ".join(f"`{c}`" for c in action.choices) + ")"
            if action.required:
                text += " **required**"
            out.append(f"| {flags} | {default} | {text} |")
        out.append("")
    return "\n".join(out)


def undocumented() -> list[str]:
    """Flags without help text and config fields without a comment."""
    from r1kit.cli.main import build_parser

    missing = []
    for name, sub in _subcommands(build_parser()).items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip():
                missing.append(f"r1kit {name} {'/'.join(action.option_strings) or action.dest}: no help text")
    for title, cls in _configs().items():
        for key, _, _, doc in config_rows(cls):
            if not doc.strip():
                missing.append(f"{title.split(' (')[0]}: config key {key} has no comment beside its field")
    return sorted(set(missing))


PAGES = {"reference/cli.md": cli_reference, "reference/config.md": config_reference}


def on_files(files, config):  # mkdocs hook: the generated pages join the site's files
    from mkdocs.structure.files import File

    for uri, make in PAGES.items():
        files.append(File.generated(config, uri, content=make()))
    return files
