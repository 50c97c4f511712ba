"""One cgroup per execution: a cap on all of its memory, a cap on its tasks, the CPU time of all of its processes,
and a kill that reaches every one of them.

Where it holds, found once per process (`hierarchy`):
- cgroup v2, where this process may make children with the memory and pids controllers: its own cgroup when
  they are enabled below it, or when it may enable them (when this process is the only one in it, it first
  moves itself into a leaf `r1kit-host`, as the "no internal processes" rule asks). A user gets such a delegated
  cgroup with `systemd-run --user --scope -p Delegate=yes r1kit ...`.
- cgroup v1, where the memory hierarchy is writable (root; pids and cpuacct used when writable too).
- none: the sandbox still holds, with memory capped per process instead of per execution (see r1kit.sandbox).

Per execution (`Cgroup.create`): a child `r1kit-<host pid>-<nonce>` with memory.max / memory.limit_in_bytes (and swap at 0)
= `memory_mb`, pids.max = `processes` + 4 (bwrap, the judge and its thread, one spare). The host moves bwrap
into it right after starting it, before the request is written (`attach_tree`: bwrap, then any child it already
has; later children are born inside). At the end it kills every process left in it and waits until it is
empty, then reads the CPU time (cpuacct.usage / cpu.stat: every process, killed ones included), the memory peak
and the OOM kills, and removes it. The cgroups of a host process that was killed before it could (the pid in the
name is gone) are removed by the next process that finds the hierarchy. Layer 0.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

V1_CONTROLLERS = ("memory", "pids", "cpuacct")


@dataclass(frozen=True)
class Hierarchy:
    """Where this process makes its executions' cgroups: one parent per v1 controller, or one v2 parent."""

    version: str  # "v1" | "v2"
    parents: dict  # controller ("memory", "pids", "cpuacct"; v2: "unified") -> parent directory


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(root, mount point, fs type, super options) of every cgroup mount, from /proc/self/mountinfo."""
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            found.append((fields[3], fields[4], tail[0], set(tail[2].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """controller -> this process's cgroup path (v1), and "unified" -> its v2 path."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else ["unified"]:
            paths[name] = path
    return paths


def _below(mount: str, root: str, path: str) -> Path | None:
    if root == "/":
        return Path(mount + path)
    if path == root or path.startswith(root + "/"):
        return Path(mount + path[len(root):])
    return None


def _writable(parent: Path) -> bool:
    probe = parent / f"r1kit-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
        return True
    except OSError:
        return False


def _v2_parent(directory: Path) -> Path | None:
    """`directory` (this process's v2 cgroup) made a parent with memory and pids for its children, or None."""
    try:
        if not {"memory", "pids"} <= set((directory / "cgroup.controllers").read_text().split()):
            return None
        if {"memory", "pids"} <= set((directory / "cgroup.subtree_control").read_text().split()):
            return directory if _writable(directory) else None
        try:
            (directory / "cgroup.subtree_control").write_text("+memory +pids")
        except OSError:  # EBUSY: processes live here; when it is only this one, it moves into a leaf of its own
            if (directory / "cgroup.procs").read_text().split() != [str(os.getpid())]:
                return None
            leaf = directory / "r1kit-host"
            leaf.mkdir(exist_ok=True)
            (leaf / "cgroup.procs").write_text(str(os.getpid()))
            (directory / "cgroup.subtree_control").write_text("+memory +pids")
        return directory
    except OSError:
        return None


@lru_cache(maxsize=1)
def hierarchy() -> Hierarchy | None:
    """Where this process's executions get their cgroups (v2 first), or None when it may make none."""
    try:
        own = _own_paths()
    except OSError:
        return None
    mounts = _mounts()
    for root, point, fstype, _ in mounts:
        if fstype == "cgroup2" and "unified" in own:
            directory = _below(point, root, own["unified"])
            parent = _v2_parent(directory) if directory is not None else None
            if parent is not None:
                found = Hierarchy("v2", {"unified": parent})
                _remove_orphans(found)
                return found
    parents = {}
    for root, point, fstype, options in mounts:
        for name in V1_CONTROLLERS:
            if fstype == "cgroup" and name in options and name in own and name not in parents:
                directory = _below(point, root, own[name])
                if directory is not None and _writable(directory):
                    parents[name] = directory
    found = Hierarchy("v1", parents) if "memory" in parents else None
    if found is not None:
        _remove_orphans(found)
    return found


def _remove_orphans(where: Hierarchy) -> None:
    """Empty execution cgroups left by host processes that are gone (killed before they could remove them)."""
    for parent in where.parents.values():
        for d in parent.glob("r1kit-*-*"):
            try:
                os.kill(int(d.name.split("-")[1]), 0)
            except ProcessLookupError:
                try:
                    d.rmdir()
                except OSError:
                    pass
            except (ValueError, PermissionError):
                pass


class Cgroup:
    """One execution's cgroup (a directory per v1 controller, or one v2 directory)."""

    def __init__(self, version: str, dirs: dict[str, Path]):
        self.version, self.dirs = version, dirs

    @classmethod
    def create(cls, name: str, memory_mb: int, tasks: int) -> Cgroup | None:
        where = hierarchy()
        if where is None:
            return None
        dirs = {controller: parent / name for controller, parent in where.parents.items()}
        group = cls(where.version, dirs)
        memory = str(int(memory_mb) << 20)
        try:
            for d in dirs.values():
                d.mkdir()
            if where.version == "v2":
                d = dirs["unified"]
                group._write(d / "memory.max", memory)
                group._write(d / "memory.swap.max", "0", optional=True)
                group._write(d / "pids.max", str(tasks))
            else:
                group._write(dirs["memory"] / "memory.limit_in_bytes", memory)
                group._write(dirs["memory"] / "memory.memsw.limit_in_bytes", memory, optional=True)
                if "pids" in dirs:
                    group._write(dirs["pids"] / "pids.max", str(tasks))
        except OSError:
            group.remove()
            raise
        return group

    @staticmethod
    def _write(path: Path, value: str, optional: bool = False) -> None:
        try:
            path.write_text(value)
        except FileNotFoundError:
            if not optional:
                raise

    def _read(self, controller: str, file: str) -> str | None:
        d = self.dirs.get("unified" if self.version == "v2" else controller)
        try:
            return (d / file).read_text() if d is not None else None
        except OSError:
            return None

    def attach_tree(self, pid: int) -> None:
        """Move `pid` in, then its descendants that exist already (a fork that races the move completes first,
        and its child is then listed; any later child is born inside)."""
        todo = [pid]
        while todo:
            p = todo.pop()
            for d in self.dirs.values():
                try:
                    (d / "cgroup.procs").write_text(str(p))
                except ProcessLookupError:
                    break
            try:
                todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
            except OSError:
                pass

    def procs(self) -> list[int]:
        text = self._read("pids" if "pids" in self.dirs else "memory", "cgroup.procs") or ""
        return [int(p) for p in text.split()]

    def kill_and_wait(self, timeout_s: float = 30.0) -> bool:
        """SIGKILL every process in it until none is left (cgroup.kill on v2 where the kernel has it); False when
        some survived `timeout_s` (a process stuck in the kernel)."""
        if self.version == "v2":
            self._write(self.dirs["unified"] / "cgroup.kill", "1", optional=True)
        deadline = time.monotonic() + timeout_s
        while True:
            pids = self.procs()
            if not pids:
                return True
            if time.monotonic() > deadline:
                return False
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.002)

    def cpu_s(self) -> float | None:
        if self.version == "v2":
            stat = self._read("unified", "cpu.stat") or ""
            usec = [int(line.split()[1]) for line in stat.splitlines() if line.startswith("usage_usec ")]
            return usec[0] / 1e6 if usec else None
        text = self._read("cpuacct", "cpuacct.usage")
        return int(text) / 1e9 if text else None

    def memory_peak_mb(self) -> float | None:
        text = self._read("memory", "memory.peak" if self.version == "v2" else "memory.max_usage_in_bytes")
        return round(int(text) / (1 << 20), 1) if text else None

    def oom_kills(self) -> int:
        text = self._read("memory", "memory.events" if self.version == "v2" else "memory.oom_control") or ""
        counts = [int(line.split()[1]) for line in text.splitlines() if line.startswith("oom_kill ")]
        return counts[0] if counts else 0

    def remove(self) -> None:
        for d in self.dirs.values():
            for _ in range(50):  # a v1 memory cgroup may be busy for a moment after its last task
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.002)
