"""The judge: pid 1 of the sandbox, which forks the program, runs the tests and writes the one report.

Part of the shipped harness (see r1kit.sandbox.harness), and its entry point (`main`). The judge makes itself
non-dumpable and deaf to SIGINT (pid 1 of a pid namespace gets no signal from inside it that it has no handler
for), reads part A of the request from fd 0 (mode, limits, the program and its stdin: what the program may know),
mounts the capped /tmp, forks the program process (program.py), and only then reads part B (the tests, the
trusted setup code, the names the tests call, and the call's nonce: what the program must not know). Run by
root it drops to a uid of its own, other than the program's, keeping only CAP_KILL (to end the program's
processes); in a user namespace it shares the program's uid and keeps nothing. Its own address space and CPU
time are capped (confine.set_judge_limits). A thread waits on fd 0: EOF there means the host gave up, and the
judge ends everything.

- `program` mode: the program runs as `__main__` with its stdin; the verdict is its exit status.
- `tests` mode: the program defines functions; the judge runs the tests in *its own* interpreter, where every
  entry point (`call`, or by default every function the program defines but for names of builtins, keywords and
  the setup's) is a proxy: calling it sends the (plain-data) arguments to the program process, which calls its
  function and sends back the (plain-data) result. The program never holds the tests or the nonce, and the judge
  only ever builds builtin values from what it receives, within bounds (wire.decode).

At the end the judge kills every other process of the sandbox (`kill(-1)` from pid 1), reaps them, and writes
one report line to fd 1: JSON whose free text is base64, carrying the nonce. The host trusts nothing else.
"""

import _signal
import _thread
import binascii
import marshal
import os
import resource
import select
import time

from r1kit.sandbox.harness.confine import (
    CAP_KILL,
    SIGKILL,
    become,
    die_with_bwrap,
    mount_tmp,
    non_dumpable,
    set_capabilities,
    set_judge_limits,
)
from r1kit.sandbox.harness.program import program
from r1kit.sandbox.harness.wire import (
    FRAME,
    MAX_MESSAGE,
    decode,
    dumps,
    encode,
    loads,
    read_frame,
    start_json,
    write_all,
)

SIGXCPU = 24
SIGNAL_NAMES = {2: "SIGINT", 4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 11: "SIGSEGV",
                13: "SIGPIPE", 15: "SIGTERM", 24: "SIGXCPU", 25: "SIGXFSZ", 31: "SIGSYS"}
MAX_NAMES = 1000  # names in the program's load report (only entry points are used)


class Stop(Exception):
    """The judge ends the execution: status (timeout | error) and why."""

    def __init__(self, status, detail):
        super().__init__(detail)
        self.status, self.detail = status, detail


class ProgramError(Exception):
    """The program process raised, died, or answered nonsense while a test called one of its functions."""


class ProgramDied(ProgramError):
    """The program process ended (exit, signal) while a test called one of its functions."""


class Watch:
    """The judge's view of the running program: drains its stdout/stderr (capped), reads its messages, notices
    its exit (pidfd), and stops at the wall deadline."""

    def __init__(self, pid, out_r, err_r, req_w, res_r, deadline, output_cap, wall_s):
        self.pid, self.deadline, self.cap, self.wall_s = pid, deadline, output_cap, wall_s
        self.req_fd = req_w
        self.pidfd = os.pidfd_open(pid)
        self.out = {out_r: bytearray(), err_r: bytearray()}
        self.out_fd, self.err_fd, self.res_fd = out_r, err_r, res_r
        self.open = {out_r, err_r} | ({res_r} if res_r is not None else set())
        self.res = bytearray()
        self.exited = False

    def _take_message(self):
        if len(self.res) < 4:
            return None
        (n,) = FRAME.unpack(self.res[:4])
        if n > MAX_MESSAGE:
            raise Stop("error", f"the program sent a message over {MAX_MESSAGE >> 20} MB")
        if len(self.res) < 4 + n:
            return None
        data = bytes(self.res[4: 4 + n])
        del self.res[: 4 + n]
        return data

    def _read(self, fd):
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            self.open.discard(fd)
        elif fd == self.res_fd:
            self.res += chunk
            if len(self.res) > MAX_MESSAGE + 4:
                raise Stop("error", f"the program sent a message over {MAX_MESSAGE >> 20} MB")
        else:
            room = self.cap - len(self.out[self.out_fd]) - len(self.out[self.err_fd])
            self.out[fd] += chunk[:room]
            if len(chunk) > room:
                raise Stop("error", f"output limit exceeded ({self.cap // 1024} KB)")

    def pump(self, want_message):
        """Until a message arrives (want_message) or the program exits; None when it exited without one."""
        while True:
            if want_message:
                msg = self._take_message()
                if msg is not None:
                    return msg
            if self.exited:
                self.drain()
                return self._take_message() if want_message else None
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise Stop("timeout", f"wall time limit ({self.wall_s:g} s)")
            ready, _, _ = select.select(list(self.open) + [self.pidfd], [], [], remaining)
            for fd in ready:
                if fd == self.pidfd:
                    self.exited = True
                else:
                    self._read(fd)

    def drain(self):
        """What is already in the pipes, without waiting (a daemon may hold them open)."""
        while self.open:
            ready, _, _ = select.select(list(self.open), [], [], 0)
            if not ready:
                return
            for fd in ready:
                self._read(fd)

    def send(self, data):
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise Stop("timeout", f"wall time limit ({self.wall_s:g} s)")
        _, ready, _ = select.select([], [self.req_fd], [], remaining)
        if not ready:
            raise Stop("timeout", f"wall time limit ({self.wall_s:g} s)")
        write_all(self.req_fd, data)


def make_proxy(watch, name):
    """A stand-in for the program's function `name`: each call is one request with a fresh random id, and only an
    answer carrying that id counts (answers sent ahead of the question cannot match)."""
    def proxy(*args, **kwargs):
        call_id = binascii.hexlify(os.urandom(8)).decode()
        data = dumps({"id": call_id, "name": name, "args": encode(list(args)), "kwargs": encode(kwargs)})
        try:
            watch.send(FRAME.pack(len(data)) + data)
        except OSError:
            raise ProgramDied(f"{name}(): the program is gone") from None
        msg = watch.pump(want_message=True)
        if msg is None:
            raise ProgramDied(f"{name}(): the program exited during the call")
        try:
            answer = loads(msg)
            if answer["id"] != call_id:
                raise ValueError("an answer to another call")
            if "value" in answer:
                return decode(answer["value"])
            kind, message = str(answer["raise"]), str(answer["message"])
        except Exception as e:
            why = f" ({e})" if type(e) is ValueError else ""
            raise ProgramError(f"{name}(): the program answered with something that is not its answer{why}") from None
        raise safe_exception(kind)(message)

    proxy.__name__ = proxy.__qualname__ = name
    return proxy


def safe_exception(name):
    """The builtin exception class of that name, so tests that expect e.g. ValueError still work; never one that
    changes control flow in the judge (StopIteration would end a `map` early, SystemExit the judge)."""
    import builtins

    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(
            cls, (StopIteration, StopAsyncIteration)):
        return cls
    return ProgramError


def entry_points(call, names, namespace):
    """The names the tests reach in the program: `call` as given (the task names them), or by default the program's
    functions, never a name of a builtin, a keyword or anything the setup defined (a program defining `range` or
    `abs` would change what the tests compute)."""
    if call is not None:
        return list(call)
    import builtins
    import keyword

    protected = set(dir(builtins)) | set(keyword.kwlist) | set(keyword.softkwlist) | set(namespace)
    return [n for n in names if n.isidentifier() and not n.startswith("__") and n not in protected]


def run_tests(watch, b):
    """Wait for the program to load, then run the tests here, the program's functions reached through proxies."""
    msg = watch.pump(want_message=True)
    if msg is None:
        return "error", "the program exited before the tests ran"
    try:
        loaded = loads(msg)
        ok, names = loaded["load"] == "ok", loaded.get("names", [])
        if not (type(names) is list and len(names) <= MAX_NAMES and all(type(n) is str and len(n) <= 200
                                                                         for n in names)):
            return "error", f"the program's load report is not a list of at most {MAX_NAMES} names"
    except Exception:
        return "error", "the program sent something other than its load report"
    if not ok:
        return "error", str(loaded.get("detail", "the program failed to load"))[:2000]
    namespace = {"__name__": "__tests__"}
    exec(compile(b["setup"], "<setup>", "exec"), namespace)
    for name in entry_points(b["call"], names, namespace):
        namespace[name] = make_proxy(watch, name)
    try:
        exec(compile(b["tests"], "<tests>", "exec"), namespace)
    except Stop:
        raise
    except BaseException as e:
        tb, line = e.__traceback__, None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<tests>":
                line = tb.tb_lineno
            tb = tb.tb_next
        where = f" (tests line {line})" if line else ""
        return "error" if isinstance(e, ProgramDied) else "fail", f"{type(e).__name__}{where}: {e}"[:2000]
    return "pass", ""


def report(fields):
    """One JSON line; free text as base64, so nothing the program printed can break the framing."""
    items = []
    for key, value in fields.items():
        if isinstance(value, bytes):
            text = '"' + binascii.b2a_base64(value, newline=False).decode() + '"'
        elif value is None or isinstance(value, bool):
            text = {None: "null", True: "true", False: "false"}[value]
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:  # fixed tokens (status, nonce)
            text = '"' + str(value) + '"'
        items.append(f'"{key}":{text}')
    return ("\n{" + ",".join(items) + "}\n").encode()


def kill_all(pid, sandboxed):
    """Everything but the judge: kill(-1) from pid 1 of a pid namespace reaches every process in it (run by root,
    the judge keeps CAP_KILL for this: the program's processes have another uid)."""
    try:
        if sandboxed:
            os.kill(-1, SIGKILL)
        else:
            os.killpg(pid, SIGKILL)
    except ProcessLookupError:
        pass


def reap_all():
    """Wait for every child (orphans of the namespace are re-parented to pid 1): their CPU time then counts in the
    judge's children's time, and so in bwrap's and the host's (processes left to the kernel's end of the namespace
    are reaped without it)."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def watch_host(pid, sandboxed):
    """The host holds fd 0 open until it has the report: EOF before that means it gave up on this execution (or
    died), and the judge ends everything at once, reaps it all, and exits. (A uid change cleared the parent-death
    signal; see run.py.)"""
    try:
        while os.read(0, 1 << 12):
            pass
    except OSError:
        pass
    kill_all(pid, sandboxed)
    reap_all()
    os._exit(3)


def verdict(status, detail, code, cpu, on_its_own, limits, stderr):
    """The status from how the program ended: CPU limit, a signal, its exit status (program mode)."""
    killed = SIGNAL_NAMES.get(-code, f"signal {-code}")
    if on_its_own and code < 0 and (-code == SIGXCPU or (-code == SIGKILL and cpu >= limits["cpu_s"] - 0.05)):
        return "timeout", f"CPU time limit ({limits['cpu_s']} s)"
    if status is None:  # program mode, it exited
        if code == 0:
            return "pass", ""
        if code < 0:
            return "error", f"killed by {killed}"
        lines = stderr.decode("utf-8", "replace").strip().splitlines()
        return "error", lines[-1][:2000] if lines else f"exit status {code}"
    if status in ("fail", "error") and on_its_own and code < 0:
        return "error", f"{detail}; the program was killed by {killed}"
    return status, detail


def main():
    start = time.monotonic()
    non_dumpable()
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)  # with no handler, pid 1 gets no SIGINT from inside
    a = marshal.loads(read_frame(0))
    limits, sandboxed = a["limits"], a["sandboxed"]
    if a["mount_tmp"]:
        mount_tmp(limits["tmp_mb"], limits["tmp_files"])
    if sandboxed and a["uid"] is None:
        set_capabilities(())  # user namespace: the mount was the last privileged act; the program inherits none
    if a["mode"] == "tests":
        start_json()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    req_r, req_w = os.pipe() if a["mode"] == "tests" else (None, None)
    res_r, res_w = os.pipe() if a["mode"] == "tests" else (None, None)
    pid = os.fork()
    if pid == 0:
        program(a, out_w, err_w, req_r, res_w)
    for fd in (out_w, err_w, req_r, res_w):
        if fd is not None:
            os.close(fd)
    if a["judge_uid"] is not None:
        become(a["judge_uid"], keep=(CAP_KILL,))
        die_with_bwrap()
    b = marshal.loads(read_frame(0))  # the secrets, read only now that the program's memory is its own
    set_judge_limits(limits)
    _thread.stack_size(1 << 18)
    _thread.start_new_thread(watch_host, (pid, sandboxed))
    watch = Watch(pid, out_r, err_r, req_w, res_r, start + limits["wall_s"], limits["output_kb"] * 1024,
                  limits["wall_s"])
    try:
        if a["mode"] == "program":
            watch.pump(want_message=False)
            status, detail = None, ""  # decided by the exit status below
        else:
            status, detail = run_tests(watch, b)
    except Stop as e:
        status, detail = e.status, e.detail
    except MemoryError:
        status, detail = "error", "the judge ran out of memory (its own cap) on what the program sent"
    done, wait_status, usage = os.wait4(pid, os.WNOHANG)
    on_its_own = done == pid  # it ended before the judge killed it
    kill_all(pid, sandboxed)
    if not on_its_own:
        _, wait_status, usage = os.wait4(pid, 0)
    if sandboxed:
        reap_all()
    try:
        watch.drain()
    except Stop:
        pass
    code = os.waitstatus_to_exitcode(wait_status)
    cpu = usage.ru_utime + usage.ru_stime
    status, detail = verdict(status, detail, code, cpu, on_its_own, limits, bytes(watch.out[err_r]))
    all_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    fields = {"nonce": b["nonce"], "status": status, "detail": detail.encode("utf-8", "replace"),
              "stdout": bytes(watch.out[out_r]), "stderr": bytes(watch.out[err_r]),
              "exit_code": code if code >= 0 else None, "signal": -code if code < 0 else None,
              "program_cpu_s": round(all_cpu.ru_utime + all_cpu.ru_stime, 4), "max_rss_kb": usage.ru_maxrss,
              "judge_max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    write_all(1, report(fields))
    if not sandboxed:  # unsafe local mode: the judge's process group goes last, the judge with it
        os.killpg(0, SIGKILL)
    os._exit(0)
