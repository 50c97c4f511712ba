"""The host side of the sandbox: build the bubblewrap command, send the request, read the one report, and run many
executions at once.

Each execution is one `bwrap` process whose pid 1 is the judge (harness.py): fresh pid, network, IPC, UTS and
cgroup namespaces, and a user namespace unless r1kit runs as root (see r1kit.sandbox for why). The host writes to
its stdin the harness (a marshalled code object, compiled once) and the request in two frames (marshal; see
harness.py for why two), and keeps stdin open: the judge takes EOF for "the host gave up". It reads at most a
report's size (the output cap in base64 + 1 MB) of stdout and waits at most `wall_s + STARTUP_GRACE_S`; past that
it SIGKILLs the judge (the namespace dies with its pid 1) and bwrap. A report is believed only when it is one JSON
line carrying this call's random nonce.

`run_many` runs jobs on a thread pool (each thread waits on its own bwrap process; the GIL is released while it
does), two workers per core by default.
"""

from __future__ import annotations

import glob
import json
import marshal
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from r1kit.errors import UserError

STATUSES = ("pass", "fail", "timeout", "error")
STARTUP_GRACE_S = 3.0  # beyond wall_s, for bwrap and the interpreter to start and the judge to report
REPORT_SLACK = 1 << 20  # bytes of a report beyond its base64 output (at most output_kb): anything longer is no report
SANDBOX_UID = 1000  # the program's uid inside its user namespace (no capabilities)
FRESH_UIDS = (1 << 20, 1 << 29)  # run as root: each execution's uid is drawn from [2^20, 2^20 + 2^29)
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"
# The interpreter starts with this bootstrap, which reads the harness as a marshalled code object from fd 0 (compiled
# once here: compiling its source costs 3.5 ms an execution); the request's two frames follow it on fd 0.
BOOTSTRAP = """# r1kit-sandbox-harness
import os, marshal
def read(n):
    b = b""
    while len(b) < n:
        c = os.read(0, n - len(b))
        if not c:
            raise SystemExit(2)
        b += c
    return b
exec(marshal.loads(read(int.from_bytes(read(4), "big"))))
"""
HARNESS_FILE = Path(__file__).with_name("harness") / "judge.py"


@lru_cache(maxsize=1)
def _harness_frame() -> bytes:
    code = compile(HARNESS_FILE.read_text(encoding="utf-8") + "\nmain()\n", str(HARNESS_FILE), "exec")
    data = marshal.dumps(code)
    return len(data).to_bytes(4, "big") + data


@dataclass(frozen=True)
class Limits:
    """What one execution may use. Every per-process limit is an rlimit set with hard = soft in the program's
    process, so neither it nor its children can raise it."""

    cpu_s: int = 2  # CPU seconds per process (RLIMIT_CPU: SIGXCPU, then SIGKILL a second later)
    wall_s: float = 5.0  # wall seconds for the whole execution: loading the program and running every test
    memory_mb: int = 512  # address space per process (RLIMIT_AS): a MemoryError, not a swapping machine
    processes: int = 16  # processes + threads of the sandbox's user, the judge included (RLIMIT_NPROC)
    open_files: int = 64  # descriptors per process (RLIMIT_NOFILE)
    file_mb: int = 16  # largest file the program may write (RLIMIT_FSIZE)
    tmp_mb: int = 32  # size of the private, writable /tmp (a tmpfs: the only writable place)
    output_kb: int = 256  # stdout + stderr; beyond it the program is killed (status error)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise UserError(f"sandbox limit {name} must be a positive number, got {value!r}")
        if self.processes < 3:
            raise UserError("sandbox limit processes must be at least 3 (the judge, the program, one more)")


@dataclass(frozen=True)
class Result:
    """The verdict on one execution.

    status: `pass` (tests mode: every test ran to its end; program mode: exit status 0 and, when expected_stdout
    was given, that output), `fail` (a test failed, or the output differed), `timeout` (wall or CPU limit) or
    `error` (the program raised, exited or crashed before the tests finished, or broke a limit)."""

    status: str
    detail: str = ""  # why it did not pass: the failing test line, the exception, the limit, the signal
    stdout: str = ""  # the program's, truncated at the output limit
    stderr: str = ""
    exit_code: int | None = None  # of the program's process; None when it was killed by a signal
    signal: int | None = None
    cpu_s: float = 0.0  # CPU seconds of the whole sandbox (bwrap, judge, program and its children)
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict, compare=False)  # max_rss_kb, program_cpu_s

    @property
    def passed(self) -> bool:
        return self.status == "pass"


@dataclass(frozen=True)
class Job:
    """One execution: see `run_python` for the fields."""

    source: str
    stdin: str | None = None
    tests: str | None = None
    setup: str = ""
    call: tuple[str, ...] | None = None
    expected_stdout: str | None = None
    limits: Limits = field(default_factory=Limits)


def run_python(source: str, *, stdin: str | None = None, tests: str | None = None, setup: str = "",
               call: list[str] | tuple[str, ...] | None = None, expected_stdout: str | None = None,
               limits: Limits | None = None, unsafe_local_exec: bool | None = None) -> Result:
    """Run untrusted Python `source` in the sandbox and judge it.

    - Program mode (no `tests`): `source` runs as `__main__` with `stdin`; it passes when it exits with status 0
      and, if `expected_stdout` is given, printed that (line ends and trailing white space ignored). The
      expected text stays on the host.
    - Tests mode: `source` is loaded (it defines functions), then `tests` (trusted Python, e.g. asserts) runs in
      a separate judge process after the trusted `setup`; each name of `call` (default: every function the
      program defines that `setup` does not) is a proxy to the program's function, passing plain data
      (None, bool, int, float, complex, str, bytes, list, tuple, dict, set). Pass = the tests ran to their end.

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
    help_text = subprocess.run([path, "--help"], capture_output=True, text=True, env=_HOST_ENV).stdout
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

_HOST_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}  # bwrap itself sees no secrets either
_SANDBOX_ENV = {"HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"}


@lru_cache(maxsize=1)
def _python_mounts() -> tuple[str, list[str]]:
    """(interpreter path, bwrap arguments): read-only binds of the interpreter and the system libraries, the
    interpreter's site-packages hidden under empty read-only tmpfs (the program gets the standard library only)."""
    exe = os.path.realpath(sys.executable)
    prefix = os.path.realpath(sys.base_prefix)
    args: list[str] = []
    roots: list[str] = []
    for path in ("/usr/lib", "/usr/lib64", "/usr/lib32"):
        if os.path.isdir(path):
            roots.append(path)
    for path in ("/lib", "/lib64", "/lib32"):
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            roots.append(path)
    if prefix != "/usr":
        roots.append(prefix)
    if not any(exe == r or exe.startswith(r + "/") for r in roots):
        roots.append(exe)
    made: set[str] = set()
    for path in roots:  # parents made world-traversable (bwrap run by root makes them 0700)
        parents = [str(p) for p in reversed(Path(path).parents) if str(p) != "/"]
        for parent in parents:
            if parent not in made:
                made.add(parent)
                args += ["--perms", "0755", "--dir", parent]
        args += ["--ro-bind", path, path]
    hidden = [d for r in roots if os.path.isdir(r) for pattern in ("python3*/site-packages", "python3*/dist-packages",
              "python3/dist-packages") for d in glob.glob(os.path.join(r, "lib", pattern)) + glob.glob(
              os.path.join(r, pattern))]
    for path in sorted(set(hidden)):
        args += ["--tmpfs", path, "--remount-ro", path]
    return exe, args


def _as_root() -> bool:
    return os.geteuid() == 0


def _bwrap_argv(bwrap: str, limits: Limits) -> list[str]:
    exe, mounts = _python_mounts()
    if _as_root():  # no user namespace: the judge keeps only CAP_SETUID/SETGID, to drop to a fresh uid itself
        argv = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv = [bwrap, "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
        if "--disable-userns" in _bwrap_help(bwrap):
            argv.append("--disable-userns")  # no nested user namespaces: less kernel to attack
    argv += ["--die-with-parent", "--new-session", "--as-pid-1", "--hostname", "sandbox", *mounts,
             "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
             "--perms", "1777", "--size", str(int(limits.tmp_mb) << 20), "--tmpfs", "/tmp", "--remount-ro", "/",
             "--chdir", "/tmp", "--clearenv"]
    for key, value in _SANDBOX_ENV.items():
        argv += ["--setenv", key, value]
    return argv + ["--", exe, "-I", "-S", "-B", "-X", "utf8", "-c", BOOTSTRAP]


@lru_cache(maxsize=4)
def _bwrap_help(bwrap: str) -> str:
    return subprocess.run([bwrap, "--help"], capture_output=True, text=True, env=_HOST_ENV).stdout


def _request(job: Job, sandboxed: bool, nonce: str) -> bytes:
    """The harness, then two frames: A (what the program may know) and B (what it must not)."""
    mode = "program" if job.tests is None else "tests"
    limits = asdict(job.limits)
    limits["cpu_s"] = int(max(1, round(job.limits.cpu_s)))
    # Run by root, bwrap maps the sandbox to uid 0 outside, and the kernel never applies RLIMIT_NPROC to uid 0:
    # the judge and the program drop to a fresh uid instead (random, so concurrent sandboxes count apart).
    uid = FRESH_UIDS[0] + secrets.randbelow(FRESH_UIDS[1]) if sandboxed and _as_root() else None
    a = {"mode": mode, "source": job.source, "stdin": job.stdin, "limits": limits, "sandboxed": sandboxed,
         "uid": uid, "seccomp": sandboxed}
    b = {"nonce": nonce, "tests": job.tests or "", "setup": job.setup, "call": list(job.call) if job.call else None}
    frames = [marshal.dumps(a), marshal.dumps(b)]
    return _harness_frame() + b"".join(len(f).to_bytes(4, "big") + f for f in frames)


def _run_one(job: Job, mode: str, bwrap: str | None = None) -> Result:
    nonce = secrets.token_hex(16)
    sandboxed = mode == "bwrap"
    tmp = None
    if sandboxed:
        argv, cwd = _bwrap_argv(bwrap or _bwrap_status()[0], job.limits), "/"
    else:  # unsafe: the same judge and program, no namespaces; a scratch cwd at least
        tmp = tempfile.mkdtemp(prefix="r1kit-unsafe-")
        argv, cwd = [os.path.realpath(sys.executable), "-I", "-S", "-B", "-X", "utf8", "-c", BOOTSTRAP], tmp
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=_HOST_ENV if sandboxed else {**_HOST_ENV, **_SANDBOX_ENV, "HOME": tmp},
                                cwd=cwd, close_fds=True, start_new_session=not sandboxed, umask=0o022)
        cap = int(job.limits.output_kb * 1024 * 4 / 3) + REPORT_SLACK
        out, err, timed_out = _communicate(proc, _request(job, sandboxed, nonce),
                                           t0 + job.limits.wall_s + STARTUP_GRACE_S, sandboxed, cap)
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = -1  # reaped here (wait4 gives the sandbox's CPU time; Popen.wait would not)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - t0
    cpu = usage.ru_utime + usage.ru_stime
    if timed_out:
        return Result("timeout", f"wall time limit ({job.limits.wall_s:g} s; the sandbox was killed)",
                      cpu_s=cpu, wall_s=wall)
    report = _parse_report(out, nonce)
    if report is None:
        why = err.decode("utf-8", "replace").strip().splitlines()
        return Result("error", "the sandbox gave no valid report" + (f": {why[-1][:500]}" if why else ""),
                      cpu_s=cpu, wall_s=wall)
    status, detail, stdout = report["status"], report["detail"], report["stdout"]
    if status == "pass" and job.tests is None and job.expected_stdout is not None and not same_output(
            stdout, job.expected_stdout):
        status, detail = "fail", "the output differs from the expected output"
    return Result(status, detail, stdout, report["stderr"], report["exit_code"], report["signal"], cpu, wall,
                  {"max_rss_kb": report["max_rss_kb"], "program_cpu_s": report["program_cpu_s"]})


def _communicate(proc: subprocess.Popen, request: bytes, deadline: float, sandboxed: bool, cap: int):
    """Write the request, read stdout and stderr (each capped at `cap` bytes), kill at the deadline."""
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
    if timed_out or overflow:
        _kill(proc, sandboxed)
    for f in (proc.stdin, *chunks):
        try:
            f.close()
        except BrokenPipeError:
            pass
    out = b"" if overflow else b"".join(chunks[proc.stdout])
    return out, b"".join(chunks[proc.stderr]), timed_out


def _kill(proc: subprocess.Popen, sandboxed: bool) -> None:
    """SIGKILL the sandbox: its pid 1 (the judge, bwrap's child; a pid namespace dies with its pid 1), then bwrap.
    Not left to bwrap's --die-with-parent alone: the judge's change of uid clears that parent-death signal, and
    bwrap, which keeps no capabilities, may not signal a process of another uid anyway."""
    targets = _children(proc.pid) + [proc.pid] if sandboxed else []
    for pid in targets:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.perf_counter() + 2.0  # a pid 1 is gone only once every process of its namespace is
    while sandboxed and time.perf_counter() < deadline and any(_alive(pid) for pid in targets[:-1]):
        time.sleep(0.01)
    if not sandboxed:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    """Not yet reaped, and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


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
    import base64

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
