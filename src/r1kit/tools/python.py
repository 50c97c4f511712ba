"""The `python` tool: the model's code runs in r1kit's sandbox (r1kit.sandbox), one fresh sandbox per call.

As in a notebook, the value of a cell's last expression is shown (`12*34` prints 408), besides what it prints.

State model: **the episode's earlier cells are replayed**. A call runs, in one new sandbox, every earlier cell of
the same trajectory (their output discarded, an exception in one does not stop the next, as in a notebook) and
then the new cell, whose stdout and (on an error) the last lines of its traceback are the observation. So a
variable defined in one call is there in the next, yet nothing lives between calls: no interpreter to leak,
to share between rows or to outlive a budget, and every call has the sandbox's full guarantees (fresh
namespaces, rlimits, seccomp, a private /tmp; r1kit/sandbox/__init__.py). The cost is time: a cell is run again
at each later call (the per-call wall limit covers the replay), and a cell whose output depends on the clock or
on unseeded randomness may see other values on replay. A per-episode interpreter would save the replays but
needs a sandbox that lives across calls and takes cells one at a time, which r1kit.sandbox does not offer.

Status: `ok` (the cell ran to its end), `error` (it raised; the observation ends with the exception), `timeout`
(wall or CPU limit: "TimeoutError: ..."). A cell that prints past the output cap is killed: what it printed up to
the cap is the observation, with a note. Pure Python (the sandbox is subprocesses).
"""

from __future__ import annotations

from r1kit.sandbox import Job, Limits, run_many
from r1kit.tools.base import Observation, check_arguments

# Runs inside the sandbox: the cells, earlier ones silenced, the last one's stdout/stderr line-buffered (so output
# printed before a CPU-limit kill is kept), its traceback cut to the cell's own frames.
_REPLAY = '''import ast as _a, contextlib as _c, io as _io, sys as _s, traceback as _t
_s.stdout.reconfigure(line_buffering=True)
_cells = {cells!r}
_env = {{"__name__": "__main__"}}
for _i, _src in enumerate(_cells):
    _last = _i == len(_cells) - 1
    _sink = _c.nullcontext() if _last else _c.ExitStack()
    if not _last:
        _sink.enter_context(_c.redirect_stdout(_io.StringIO()))
        _sink.enter_context(_c.redirect_stderr(_io.StringIO()))
    with _sink:
        try:
            _tree = _a.parse(_src, "<cell>")
            _tail = _tree.body.pop() if _last and _tree.body and isinstance(_tree.body[-1], _a.Expr) else None
            exec(compile(_tree, "<cell>", "exec"), _env)
            if _tail is not None:  # a notebook shows the value of the cell's last expression
                _value = eval(compile(_a.Expression(_tail.value), "<cell>", "eval"), _env)
                if _value is not None:
                    print(repr(_value))
        except BaseException as _e:
            if not _last:
                continue
            _s.stdout.flush()
            _tb = [f for f in _t.extract_tb(_e.__traceback__) if f.filename == "<cell>"]
            _lines = ["Traceback (most recent call last):"] if _tb else []
            _lines += [f"  line {{f.lineno}}" + (f": {{f.line}}" if f.line else "") for f in _tb[-3:]]
            _lines += _t.format_exception_only(type(_e), _e)
            print("\\n".join(l.rstrip() for l in _lines), file=_s.stderr)
            _s.exit(1)
'''


class PythonTool:
    """Runs a Python cell in the sandbox; see the module docstring for the state model and the statuses."""

    name = "python"
    description = ("Run Python 3 code (standard library only) and see what it prints. Variables from earlier "
                   "calls in this conversation are kept. Use print() to see values.")
    parameters = {"type": "object", "properties": {"code": {"type": "string", "description": "the Python code"}},
                  "required": ["code"], "additionalProperties": False}

    def __init__(self, wall_s: float = 5.0, cpu_s: int = 2, memory_mb: int = 512, output_kb: int = 16,
                 unsafe_local_exec: bool | None = None):
        self.limits = Limits(cpu_s=cpu_s, wall_s=wall_s, memory_mb=memory_mb, output_kb=output_kb)
        self.unsafe_local_exec = unsafe_local_exec  # None: as the CLI's --unsafe-local-exec said

    def call(self, arguments: dict) -> Observation:
        return self.call_many([(arguments, [])])[0]

    def call_many(self, calls: list[tuple[dict, list[dict]]]) -> list[Observation]:
        """Each (arguments, earlier calls of the episode) in its own sandbox, in parallel (the sandbox's pool)."""
        out: list[Observation | None] = [None] * len(calls)
        jobs, where = [], []
        for i, (arguments, history) in enumerate(calls):
            problem = check_arguments(self.parameters, arguments)
            if problem:
                out[i] = Observation(f"Error: bad arguments to python: {problem}", "bad_arguments")
                continue
            cells = [h["code"] for h in history if isinstance(h.get("code"), str)] + [arguments["code"]]
            jobs.append(Job(_REPLAY.format(cells=cells), limits=self.limits))
            where.append(i)
        for i, result in zip(where, run_many(jobs, unsafe_local_exec=self.unsafe_local_exec)):
            out[i] = observe(result, self.limits)
        return out


def observe(result, limits: Limits) -> Observation:
    """A sandbox Result as the model sees it."""
    text = result.stdout
    if result.status == "timeout":
        status = "timeout"
        text += ("" if not text or text.endswith("\n") else "\n") + (
            f"TimeoutError: the code ran past its limit ({result.detail})")
    elif result.status == "error":
        status = "error"
        err = result.stderr.strip() or result.detail
        if "output limit" in result.detail:
            err = f"OutputLimitError: the output passed {limits.output_kb} KB and the code was stopped"
        text += ("" if not text or text.endswith("\n") else "\n") + err
    else:
        status = "ok"
    return Observation(text.rstrip("\n"), status, result.wall_s, result.cpu_s)
