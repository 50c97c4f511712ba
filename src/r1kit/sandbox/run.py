"""The host side of the sandbox: the API, one execution (start bwrap in its cgroup, send the request, read the one
report, make sure nothing is left), and many executions at once.

Each execution is one `bwrap` process (bwrap.py) whose pid 1 is the judge (harness/judge.py). The host moves bwrap
into the execution's cgroup (cgroup.py) where there is one, writes to its stdin the harness (one marshalled code
object, compiled once) and the request in two frames (marshal; see harness/judge.py for why two), and keeps
stdin open: the judge takes EOF for "the host gave up". It reads at most a report's size (the output cap in base64
+ 1 MB) of stdout and waits at most `wall_s + STARTUP_GRACE_S`; past that it closes the judge's stdin (the judge
kills and reaps every process and exits), SIGKILLs a judge still there a second later (its pid namespace dies
with it), and lets bwrap reap it. It returns only once every process of the execution is gone:
the cgroup is empty, or (no cgroup) bwrap saw its pid 1 exit, which the kernel allows only after every other
process of the namespace has. A report is believed only when it is one JSON line carrying this call's random
nonce.

`run_many` runs jobs on a thread pool (each thread waits on its own bwrap process; the GIL is released while it
does), two workers per core by default.
"""

from __future__ import annotations

import base64
import json
import marshal
import os
import secrets
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import r1kit.sandbox.bwrap as bw
import r1kit.sandbox.harness as harness
from r1kit.errors import UserError
from r1kit.sandbox.bwrap import HOST_ENV, PYTHON_FLAGS, SANDBOX_ENV
from r1kit.sandbox.cgroup import Cgroup
from r1kit.sandbox.limits import STATUSES, Job, Limits, Result

STARTUP_GRACE_S = 3.0  # beyond wall_s, for bwrap and the interpreter to start and the judge to report
REPORT_SLACK = 1 << 20  # bytes of a report beyond its base64 output (at most output_kb): anything longer is no report
JUDGE_MEMORY_MB = 256  # the judge's address space (or memory_mb when larger)
JUDGE_TASKS = 2  # the judge and its thread: in a user namespace they share the program's uid (RLIMIT_NPROC)
ASK_S = 1.0  # after the host gives up, how long the judge gets to end and reap the sandbox before its SIGKILL
REAP_S = 5.0  # after the judge's SIGKILL, how long bwrap gets to reap it before it is killed too
GONE_S = 30.0  # how long the host waits for the last process of an execution (a process stuck in the kernel)
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"


def run_python(source: str, *, stdin: str | None = None, tests: str | None = None, setup: str = "",
               call: list[str] | tuple[str, ...] | None = None, expected_stdout: str | None = None,
               limits: Limits | None = None, unsafe_local_exec: bool | None = None) -> Result:
    """Run untrusted Python `source` in the sandbox and judge it.

    - Program mode (no `tests`): `source` runs as `__main__` with `stdin`; it passes when it exits with status 0
      and, if `expected_stdout` is given, printed that (line ends and trailing white space ignored). The
      expected text stays on the host.
    - Tests mode: `source` is loaded (it defines functions), then `tests` (trusted Python, e.g. asserts) runs in
      a separate judge process after the trusted `setup`; each name of `call` is a proxy to the program's
      function, passing plain data (None, bool, int, float, complex, str, bytes, list, tuple, dict, set,
      frozenset; their subclasses as the base type; ints of any size). Pass = the tests ran to their end. Name
      the entry points in `call`; left out, it is every function the program defines except names of
      builtins, keywords and what `setup` defines (so a program's `range`, `abs` or `all` never reaches the
      tests).

    Without bubblewrap this raises UserError, unless `unsafe_local_exec` (the program then runs unconfined but
    for rlimits: see r1kit.sandbox); None follows `allow_unsafe_local_exec` (the CLI's --unsafe-local-exec)."""
    job = Job(source, stdin, tests, setup, None if call is None else tuple(call), expected_stdout,
              limits or Limits())
    return run_many([job], unsafe_local_exec=unsafe_local_exec)[0]


def run_many(jobs: list[Job], *, workers: int | None = None, unsafe_local_exec: bool | None = None) -> list[Result]:
    """Run jobs in parallel, results in the jobs' order. Default: two workers per core (a worker also waits on its
    sandbox, bwrap's namespace setup and teardown; bench/bench_sandbox.py on 2 cores: 95 executions/s with one
    worker per core, 101/s with two, and two held up better while another job shared the cores, 73/s -> 95/s)."""
    mode = check_sandbox(unsafe_local_exec)
    if not jobs:
        return []
    workers = max(1, min(workers or 2 * (os.cpu_count() or 1), len(jobs)))
    if workers == 1:
        return [_run_one(job, mode) for job in jobs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="r1kit-sandbox") as pool:
        return list(pool.map(lambda job: _run_one(job, mode), jobs))


# ---- is there a sandbox? -------------------------------------------------------------------------------

_warned_unsafe = threading.Event()
_unsafe_allowed = threading.Event()  # set by allow_unsafe_local_exec (the CLI's --unsafe-local-exec)


def allow_unsafe_local_exec(allowed: bool = True) -> None:
    """Where bubblewrap is missing, run programs unconfined instead of refusing (the CLI's --unsafe-local-exec)."""
    if allowed:
        _unsafe_allowed.set()
    else:
        _unsafe_allowed.clear()


@lru_cache(maxsize=1)
def _bwrap_status() -> tuple[str | None, str]:
    """(path of a working bwrap, '') or (None, why not), found once per process by running `pass` in it."""
    path = shutil.which("bwrap")
    if path is None:
        return None, f"the code sandbox needs bubblewrap (bwrap), which is not installed: {INSTALL_HINT}"
    help_text = subprocess.run([path, "--help"], capture_output=True, text=True, env=HOST_ENV).stdout
    missing = [flag for flag in ("--size", "--die-with-parent", "--as-pid-1", "--clearenv") if flag not in help_text]
    if missing:
        return None, f"bubblewrap at {path} is too old (no {', '.join(missing)}): install bubblewrap >= 0.8"
    probe = _run_one(Job("pass", limits=Limits(wall_s=10)), "bwrap", bwrap=path)
    if probe.status != "pass":
        return None, (f"bubblewrap cannot create the sandbox here ({probe.detail or probe.status}); it needs user "
                      "namespaces (sysctl kernel.unprivileged_userns_clone=1, or run as root)")
    return path, ""


def check_sandbox(unsafe_local_exec: bool | None = None) -> str:
    """'bwrap' when the sandbox works here; 'unsafe-local' when it does not and `unsafe_local_exec` was asked for
    (None: as allow_unsafe_local_exec said), with a loud warning, once; else a one-line UserError saying what to
    install."""
    path, why = _bwrap_status()
    if path is not None:
        return "bwrap"
    if unsafe_local_exec is None:
        unsafe_local_exec = _unsafe_allowed.is_set()
    if not unsafe_local_exec:
        raise UserError(f"{why} (or pass --unsafe-local-exec to run model-written code unconfined on this machine)")
    if not _warned_unsafe.is_set():
        _warned_unsafe.set()
        print(f"r1kit: WARNING: --unsafe-local-exec: model-written programs run UNCONFINED on this machine, with "
              f"your files and network, under rlimits only ({why})", file=sys.stderr, flush=True)
    return "unsafe-local"


# ---- one execution -------------------------------------------------------------------------------------


def _request(job: Job, sandboxed: bool, nonce: str, uids: tuple[int, int] | None) -> bytes:
    """The harness, then two frames: A (what the program may know) and B (what it must not)."""
    mode = "program" if job.tests is None else "tests"
    limits = asdict(job.limits)
    limits["cpu_s"] = int(max(1, round(job.limits.cpu_s)))
    limits["nproc"] = job.limits.processes + (JUDGE_TASKS if sandboxed and uids is None else 0)
    limits["judge_mb"] = JUDGE_MEMORY_MB
    a = {"mode": mode, "source": job.source, "stdin": job.stdin, "limits": limits, "sandboxed": sandboxed,
         "judge_uid": uids[0] if uids else None, "uid": uids[1] if uids else None, "seccomp": sandboxed,
         "mount_tmp": sandboxed and bw.judge_mounts_tmp()}
    b = {"nonce": nonce, "tests": job.tests or "", "setup": job.setup, "call": list(job.call) if job.call else None}
    frames = [marshal.dumps(a), marshal.dumps(b)]
    return harness.frame() + b"".join(len(f).to_bytes(4, "big") + f for f in frames)


def _run_one(job: Job, mode: str, bwrap: str | None = None) -> Result:
    nonce = secrets.token_hex(16)
    sandboxed = mode == "bwrap"
    limits = job.limits
    uids = bw.fresh_uids() if sandboxed and bw.as_root() else None
    tmp = group = None
    if sandboxed:
        argv, cwd = bw.bwrap_argv(bwrap or _bwrap_status()[0], limits), "/"
        group = Cgroup.create(f"r1kit-{os.getpid()}-{nonce[:16]}", limits.memory_mb, limits.processes + JUDGE_TASKS + 2)
    else:  # unsafe: the same judge and program, no namespaces; a scratch cwd at least
        tmp = tempfile.mkdtemp(prefix="r1kit-unsafe-")
        argv, cwd = [os.path.realpath(sys.executable), *PYTHON_FLAGS], tmp
    t0 = time.perf_counter()
    proc = None
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=HOST_ENV if sandboxed else {**HOST_ENV, **SANDBOX_ENV, "HOME": tmp},
                                cwd=cwd, close_fds=True, start_new_session=not sandboxed, umask=0o022)
        if group is not None:
            group.attach_tree(proc.pid)
        cap = int(limits.output_kb * 1024 * 4 / 3) + REPORT_SLACK
        out, err, timed_out, judges = _communicate(proc, _request(job, sandboxed, nonce, uids),
                                                   t0 + limits.wall_s + STARTUP_GRACE_S, sandboxed, cap)
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = -1  # reaped here (wait4 gives the sandbox's CPU time; Popen.wait would not)
        gone = group.kill_and_wait(GONE_S) if group is not None else _gone(judges)
        cpu = (group.cpu_s() if group is not None else None) or usage.ru_utime + usage.ru_stime
        extra = {"cgroup": group.version if group is not None else "none",
                 "uids": list(uids) if uids else [os.getuid()]}
        if group is not None:
            extra.update(memory_peak_mb=group.memory_peak_mb(), oom_kills=group.oom_kills())
    finally:  # also when this thread is interrupted: nothing of the execution is left behind
        if proc is not None and proc.returncode is None:
            _gone(_stop(proc, sandboxed))
            proc.wait()
        if group is not None:
            group.kill_and_wait(GONE_S)
            group.remove()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - t0
    result = _verdict(job, out, err, nonce, timed_out, cpu, wall, extra)
    if not gone:
        return Result("error", f"{result.detail}; processes of the sandbox outlived it by {GONE_S:g} s", cpu_s=cpu,
                      wall_s=wall, extra=extra)
    return result


def _verdict(job: Job, out: bytes, err: bytes, nonce: str, timed_out: bool, cpu: float, wall: float,
             extra: dict) -> Result:
    oom = f"memory limit of the execution ({job.limits.memory_mb} MB; the kernel killed a process)"
    if timed_out:
        return Result("timeout", f"wall time limit ({job.limits.wall_s:g} s; the sandbox was killed)", cpu_s=cpu,
                      wall_s=wall, extra=extra)
    report = _parse_report(out, nonce)
    if report is None:
        why = err.decode("utf-8", "replace").strip().splitlines()
        detail = oom if extra.get("oom_kills") else "the sandbox gave no valid report" + (
            f": {why[-1][:500]}" if why else "")
        return Result("error", detail, cpu_s=cpu, wall_s=wall, extra=extra)
    status, detail, stdout = report["status"], report["detail"], report["stdout"]
    if status == "pass" and job.tests is None and job.expected_stdout is not None and not same_output(
            stdout, job.expected_stdout):
        status, detail = "fail", "the output differs from the expected output"
    if status != "pass" and extra.get("oom_kills"):
        detail = f"{oom}: {detail}"
    extra.update({k: report.get(k) for k in ("max_rss_kb", "program_cpu_s", "judge_max_rss_kb")})
    return Result(status, detail, stdout, report["stderr"], report["exit_code"], report["signal"], cpu, wall, extra)


def _communicate(proc: subprocess.Popen, request: bytes, deadline: float, sandboxed: bool, cap: int):
    """Write the request, read stdout and stderr (each capped at `cap` bytes), kill at the deadline; the pidfds of
    the judges it killed come back too."""
    try:
        proc.stdin.write(request)
        proc.stdin.flush()  # kept open: the judge takes its EOF for "the host gave up" (harness.watch_host)
    except BrokenPipeError:  # the judge died before reading it all; its report (none) says the rest
        pass
    chunks = {proc.stdout: [], proc.stderr: []}
    sizes = {proc.stdout: 0, proc.stderr: 0}
    timed_out = overflow = False
    with selectors.DefaultSelector() as sel:
        for f in chunks:
            sel.register(f, selectors.EVENT_READ)
        while sel.get_map() and not overflow:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(remaining):
                data = os.read(key.fd, 1 << 16)
                if not data:
                    sel.unregister(key.fileobj)
                elif sizes[key.fileobj] + len(data) > cap:
                    overflow = True  # no judge writes that much: whatever it is, it is not a report
                else:
                    chunks[key.fileobj].append(data)
                    sizes[key.fileobj] += len(data)
    judges = _stop(proc, sandboxed) if timed_out or overflow else []
    for f in (proc.stdin, *chunks):
        try:
            f.close()
        except BrokenPipeError:
            pass
    out = b"" if overflow else b"".join(chunks[proc.stdout])
    return out, b"".join(chunks[proc.stderr]), timed_out, judges


def _stop(proc: subprocess.Popen, sandboxed: bool) -> list[int]:
    """The host gives up. First it closes the judge's stdin: the judge then kills every process of the sandbox,
    reaps them (so their CPU time is counted) and exits. A judge that has not within ASK_S (stuck in C code with
    the GIL held) is SIGKILLed, and its pid namespace dies with it; bwrap reaps it, or is killed itself after
    REAP_S. Returns pidfds of the judges, to see them gone (`_gone`). Not left to bwrap's --die-with-parent: the
    judge's change of uid clears that parent-death signal."""
    if not sandboxed:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return []
    judges, pidfds = _children(proc.pid), []
    for pid in judges:
        try:
            pidfds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            pass
    try:
        proc.stdin.close()
    except OSError:
        pass
    for signals, wait_s in (([], ASK_S), (judges, REAP_S), ([proc.pid], 0)):
        for pid in signals:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.perf_counter() + wait_s
        while time.perf_counter() < deadline:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return pidfds
            time.sleep(0.005)
    return pidfds


def _gone(pidfds: list[int]) -> bool:
    """Without a cgroup: every judge the host killed has exited (a pid 1 exits only after every other process of
    its namespace has; a judge that exited on its own was reaped by bwrap, whose exit says so)."""
    ok = True
    for fd in pidfds:
        try:
            ok = ok and bool(select.select([fd], [], [], GONE_S)[0])
        finally:
            os.close(fd)
    return ok


def _children(pid: int) -> list[int]:
    """Host pids whose parent is `pid` (/proc/PID/task/PID/children, else a scan of /proc/*/stat)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(name))
    return found


def _parse_report(out: bytes, nonce: str) -> dict | None:
    """The judge's report: the last line, JSON, with this call's nonce; None otherwise."""
    lines = out.strip().splitlines()
    if not lines:
        return None
    try:
        raw = json.loads(lines[-1])
        if not isinstance(raw, dict) or raw.get("nonce") != nonce or raw.get("status") not in STATUSES:
            return None
        text = {k: base64.b64decode(raw[k], validate=True).decode("utf-8", "replace")
                for k in ("detail", "stdout", "stderr")}
    except (ValueError, TypeError, KeyError):
        return None
    return {**raw, **text}


def same_output(got: str, expected: str) -> bool:
    """Outputs equal up to line ends and trailing white space on each line and at the end."""
    def norm(s: str) -> list[str]:
        return [line.rstrip() for line in s.rstrip().splitlines()]

    return norm(got) == norm(expected)
