"""Helpers of the sandbox tests: skip without bubblewrap (unless R1KIT_REQUIRE_SANDBOX=1, as in CI), write a
completion around a program, and find processes of any sandbox still alive on the host."""

from __future__ import annotations

import os
import shutil
import time

import pytest

HARNESS_MARK = b"r1kit-sandbox-harness"  # the first line of the bootstrap: in every sandbox process's cmdline

requires_sandbox = pytest.mark.skipif(
    shutil.which("bwrap") is None and os.environ.get("R1KIT_REQUIRE_SANDBOX") != "1",
    reason="bubblewrap (bwrap) is not installed: apt-get install bubblewrap",
)


def answer(code: str) -> str:
    """A completion in r1kit's own template whose program is `code`."""
    return f"<think> write it </think> <answer>{code}</answer>"


def processes_with(mark: bytes) -> list[int]:
    """Host pids whose command line contains `mark` (the host sees every pid namespace below its own)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if mark in f.read():
                    found.append(int(name))
        except OSError:  # it ended while we looked
            pass
    return found


def survivors(mark: bytes = HARNESS_MARK, settle_s: float = 0.5) -> list[str]:
    """/proc/PID/stat of every process carrying `mark` (looked for now and again after `settle_s`); [] is good."""
    found = processes_with(mark)
    if not found:
        time.sleep(settle_s)
        found = processes_with(mark)
    stats = []
    for pid in found:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stats.append(f.read()[:80])
        except OSError:
            pass
    return stats
