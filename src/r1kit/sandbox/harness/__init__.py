"""The code that runs inside the sandbox, shipped to it as ONE marshalled code object assembled from four files.

    wire.py     frames, JSON, the plain-data codec (bounded decoding)
    confine.py  seccomp filter, capabilities, uids, rlimits, the capped /tmp
    program.py  the program process: confined, then the untrusted source
    judge.py    the judge (pid 1): forks the program, runs the tests, writes the report; `main` is the entry

How it is assembled (`source`): the four files, in that order, concatenated into one module, from which the
lines importing a sibling part (`from r1kit.sandbox.harness.X import ...`, one statement each) are blanked, since
in the shipped object every part shares one namespace; then `main()`. The host compiles that once per process
(`frame`: compiling the source costs 3.5 ms, an execution reads the marshalled object from fd 0 in well under
one) and the sandboxed interpreter's bootstrap (run.BOOTSTRAP) execs it. On the host each file is an ordinary
module (the tests import them), so the parts import only built-in modules and each other, and no two parts
define the same top-level name (a test checks both). Layer 0.
"""

from __future__ import annotations

import marshal
import re
from functools import lru_cache
from pathlib import Path

PARTS = ("wire.py", "confine.py", "program.py", "judge.py")
HERE = Path(__file__).parent
_SIBLING_IMPORT = re.compile(r"^from r1kit\.sandbox\.harness\.\w+ import (?:\([^)]*\)|[^\n]*)$", re.MULTILINE)


def source() -> str:
    """The shipped harness as one module's source (sibling imports blanked, line counts kept)."""
    parts = []
    for name in PARTS:
        text = (HERE / name).read_text(encoding="utf-8")
        parts.append(f"# ---- r1kit/sandbox/harness/{name} ----\n"
                     + _SIBLING_IMPORT.sub(lambda m: "\n" * m.group(0).count("\n"), text))
    return "\n".join(parts) + "\nmain()\n"


@lru_cache(maxsize=1)
def frame() -> bytes:
    """The harness as it crosses fd 0: a 4-byte length, then the marshalled code object."""
    data = marshal.dumps(compile(source(), "<r1kit sandbox harness>", "exec"))
    return len(data).to_bytes(4, "big") + data
