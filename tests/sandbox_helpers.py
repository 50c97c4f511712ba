"""Helpers of the sandbox tests: skip without bubblewrap (unless R1KIT_REQUIRE_SANDBOX=1, as in CI), write a
completion around a program, and find processes of a sandbox still alive on the host."""

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


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def processes_with(mark: bytes) -> list[int]:
    """Host pids whose command line contains `mark` (the host sees every pid namespace below its own)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid() and mark.decode() in (_read(f"/proc/{name}/cmdline") or ""):
            found.append(int(name))
    return found


def survivors(mark: bytes = HARNESS_MARK, settle_s: float = 0.5) -> list[str]:
    """/proc/PID/stat of every process carrying `mark` (looked for now and again after `settle_s`); [] is good."""
    found = processes_with(mark)
    if not found:
        time.sleep(settle_s)
        found = processes_with(mark)
    return [s[:80] for s in (_read(f"/proc/{pid}/stat") for pid in found) if s]


def processes_of(uids: list[int]) -> list[str]:
    """/proc/PID/stat of every live process of a sandbox that ran under `uids` (Result.extra["uids"]). Run by root,
    those are the execution's own fresh uids: any process of them is the sandbox's. In a user namespace the
    sandbox has this user's uid, so a process of it counts when it sits in another pid namespace (or hides which:
    the non-dumpable judge) or carries the harness's mark (bwrap)."""
    me, own_uid, own_ns = os.getpid(), os.getuid(), os.readlink("/proc/self/ns/pid")
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        status = _read(f"/proc/{name}/status")
        if status is None:
            continue
        ids = {int(x) for line in status.splitlines() if line.startswith("Uid:") for x in line.split()[1:]}
        if not ids & set(uids):
            continue
        if own_uid in uids:
            try:
                foreign = os.readlink(f"/proc/{name}/ns/pid") != own_ns
            except PermissionError:
                foreign = True
            except OSError:
                continue
            if not foreign and HARNESS_MARK.decode() not in (_read(f"/proc/{name}/cmdline") or ""):
                continue
        found.append((_read(f"/proc/{name}/stat") or name)[:80])
    return found
