"""The code that runs inside the sandbox: a judge process and the untrusted program it forks.

The host compiles this file once and sends it, marshalled, ahead of the request on the sandboxed interpreter's fd 0
(`python -I -S -B -X utf8 -c <run.BOOTSTRAP>`); it imports only built-in modules (no `re`, `json` or `traceback`
unless needed: each costs milliseconds per execution).

The judge (under bubblewrap it is pid 1 of the sandbox's pid namespace) makes itself non-dumpable, reads part A
of the request from fd 0 (mode, limits, the program and its stdin: what the program may know), forks the program
process, and only then reads part B (the tests, the trusted setup code, the names the tests call, and the
call's nonce: what the program must not know). The program process closes every descriptor it inherited except
its own pipes, drops to the execution's uid (when bwrap runs as root; the judge does too), sets its rlimits
(hard = soft, so they cannot be raised), installs the seccomp filter, and runs the source. A thread of the judge
waits on fd 0: EOF there means the host gave up, and the judge ends everything.

- `program` mode: the program runs as `__main__` with its stdin; the verdict is its exit status.
- `tests` mode: the program defines functions; the judge runs the tests in *its own* interpreter, where every
  name in `call` is a proxy: calling it sends the (plain-data) arguments to the program process, which calls
  its function and sends back the (plain-data) result. The program never holds the tests or the nonce, and
  the judge only ever builds builtin values from what it receives (`decode`).

At the end the judge kills every other process of the sandbox (`kill(-1)` from pid 1), reaps them, and writes
one report line to fd 1: JSON whose free text is base64, carrying the nonce. The host trusts nothing else.
"""

import _thread
import binascii
import fcntl
import marshal
import os
import resource
import select
import struct
import sys
import time

SIGKILL, SIGXCPU = 9, 24
SIGNAL_NAMES = {4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 11: "SIGSEGV", 13: "SIGPIPE",
                15: "SIGTERM", 24: "SIGXCPU", 25: "SIGXFSZ", 31: "SIGSYS"}
MAX_MESSAGE = 8 << 20  # bytes of one program -> judge message (a function's encoded return value)
_FRAME = struct.Struct(">I")
json = None  # set in tests mode: JSON through the C accelerator alone (the `json` package imports `re`: ~7 ms)


class Json:
    """json.dumps / json.loads by `_json`'s C encoder and scanner, configured as json's defaults are (NaN and
    infinities allowed), without importing `json` (an error message imports it, on the error path only)."""

    def __init__(self):
        import _json

        class Context:  # the attributes _json.make_scanner reads from a json.JSONDecoder
            strict, object_hook, object_pairs_hook = True, None, None
            parse_float, parse_int = float, int
            parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__
            memo = {}

        def refuse(o):
            raise TypeError(f"{type(o).__name__} is not JSON")

        self.scan = _json.make_scanner(Context())
        self.encode = _json.make_encoder(None, refuse, _json.encode_basestring_ascii, None, ":", ",", False, False,
                                         True)

    def dumps(self, obj):
        return "".join(self.encode(obj, 0))

    def loads(self, data):
        text = data.decode() if isinstance(data, bytes) else data
        try:
            obj, end = self.scan(text, 0)
        except StopIteration:
            raise ValueError("not JSON") from None
        if end != len(text):
            raise ValueError("extra data after the JSON value")
        return obj


class Stop(Exception):
    """The judge ends the execution: status (timeout | error) and why."""

    def __init__(self, status, detail):
        super().__init__(detail)
        self.status, self.detail = status, detail


class ProgramError(Exception):
    """The program process raised, died, or answered nonsense while a test called one of its functions."""


class ProgramDied(ProgramError):
    """The program process ended (exit, signal) while a test called one of its functions."""


# ---- framing -------------------------------------------------------------------------------------------


def read_exact(fd, n):
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(fd):
    (n,) = _FRAME.unpack(read_exact(fd, 4))
    return read_exact(fd, n)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ---- plain data across the process boundary ------------------------------------------------------------


def encode(value, depth=0):
    """A JSON-able tree for None, bool, int, float, str, bytes, complex, list, tuple, dict, set, frozenset (exact
    types: a subclass, e.g. an `int` whose `__eq__` always says True, is refused)."""
    if depth > 200:
        raise ValueError("value nested too deeply")
    t = type(value)
    if value is None or t in (bool, int, float, str):
        return value
    if t is list:
        return [encode(v, depth + 1) for v in value]
    if t is tuple:
        return {"t": [encode(v, depth + 1) for v in value]}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if t is set or t is frozenset:
        return {"s" if t is set else "f": [encode(v, depth + 1) for v in value]}
    if t is bytes:
        return {"b": binascii.b2a_base64(value, newline=False).decode()}
    if t is complex:
        return {"c": [value.real, value.imag]}
    raise TypeError(f"cannot pass a {t.__name__} between the tests and the program (plain data only)")


def decode(tree):
    """Builtin values from a JSON tree made by `encode` (or by anyone: anything else raises ValueError)."""
    if tree is None or type(tree) in (bool, int, float, str):
        return tree
    if type(tree) is list:
        return [decode(v) for v in tree]
    if type(tree) is dict and len(tree) == 1:
        ((tag, body),) = tree.items()
        if tag == "b" and type(body) is str:
            return binascii.a2b_base64(body)
        if type(body) is list:
            if tag == "t":
                return tuple(decode(v) for v in body)
            if tag == "d":
                if not all(type(kv) is list and len(kv) == 2 for kv in body):
                    raise ValueError("bad dict")
                return {decode(k): decode(v) for k, v in body}
            if tag in ("s", "f"):
                return (set if tag == "s" else frozenset)(decode(v) for v in body)
            if tag == "c" and len(body) == 2 and all(type(x) in (int, float) for x in body):
                return complex(body[0], body[1])
    raise ValueError("not a value made by encode()")


def send_message(fd, obj):
    data = json.dumps(obj).encode()
    write_all(fd, _FRAME.pack(len(data)) + data)


# ---- seccomp: system calls the program never needs, refused ------------------------------------------------

# seccomp_data: nr at 0, arch at 4, args[0] (low 32 bits, little-endian) at 16. Return values and BPF opcodes from
# linux/seccomp.h and linux/filter.h.
_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_DENY = {  # name: (x86_64, aarch64) syscall numbers
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271), "unshare": (272, 97),
    "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282), "keyctl": (250, 219),
    "add_key": (248, 217), "request_key": (249, 218), "kexec_load": (246, 104), "kexec_file_load": (320, 294),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "name_to_handle_at": (303, 264), "open_by_handle_at": (304, 265), "acct": (163, 89), "swapon": (167, 224),
    "swapoff": (168, 225), "reboot": (169, 142), "open_tree": (428, 428), "move_mount": (429, 429),
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442), "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
}
_CLONE, _CLONE3, _PRLIMIT64 = (56, 220), 435, (302, 261)
_NEW_NAMESPACES = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_EPERM, _ENOSYS = 1, 38


def seccomp_filter(machine):
    """The classic-BPF program as (code, jt, jf, k) tuples; None on an architecture without a table here."""
    if machine not in _ARCH:
        return None
    col = 0 if machine == "x86_64" else 1
    deny = _ERRNO | _EPERM
    prog = [(_LD_ABS, 0, 0, 4), (_JEQ, 1, 0, _ARCH[machine]), (_RET, 0, 0, _KILL), (_LD_ABS, 0, 0, 0)]
    if machine == "x86_64":  # the x32 ABI's numbers would get past the table
        prog += [(_JGE, 0, 1, 0x40000000), (_RET, 0, 0, deny)]
    for numbers in _DENY.values():
        prog += [(_JEQ, 0, 1, numbers[col]), (_RET, 0, 0, deny)]
    prog += [(_JEQ, 0, 1, _CLONE3), (_RET, 0, 0, _ERRNO | _ENOSYS)]  # libc falls back to clone, checked below
    # prlimit64 on another process (the judge shares the program's uid): refused; on itself (pid 0) allowed
    prog += [(_JEQ, 0, 4, _PRLIMIT64[col]), (_LD_ABS, 0, 0, 16), (_JEQ, 0, 1, 0), (_RET, 0, 0, _ALLOW),
             (_RET, 0, 0, deny), (_LD_ABS, 0, 0, 0)]
    prog += [(_JEQ, 0, 3, _CLONE[col]), (_LD_ABS, 0, 0, 16), (_JSET, 0, 1, _NEW_NAMESPACES), (_RET, 0, 0, deny),
             (_RET, 0, 0, _ALLOW)]
    return prog


def install_seccomp():
    """Load the filter into this process (inherited by its children and threads); False where there is none."""
    import ctypes

    prog = seccomp_filter(os.uname().machine)
    if prog is None:
        return False

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    array = (SockFilter * len(prog))(*[SockFilter(*ins) for ins in prog])
    fprog = SockFprog(len(prog), ctypes.cast(array, ctypes.POINTER(SockFilter)))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # NO_NEW_PRIVS, SECCOMP
        raise OSError(ctypes.get_errno(), "could not install the seccomp filter")
    return True


def become(uid):
    """Drop to `uid` (a fresh one per execution when the host runs bwrap as root: see run.py): no groups, no
    capabilities left."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


# ---- the program process -------------------------------------------------------------------------------


def set_limits(limits):
    mb = 1 << 20
    for name, soft, hard in (
        ("RLIMIT_CORE", 0, 0),
        ("RLIMIT_CPU", limits["cpu_s"], limits["cpu_s"] + 1),
        ("RLIMIT_AS", limits["memory_mb"] * mb, limits["memory_mb"] * mb),
        ("RLIMIT_NPROC", limits["processes"], limits["processes"]),
        ("RLIMIT_NOFILE", limits["open_files"], limits["open_files"]),
        ("RLIMIT_FSIZE", limits["file_mb"] * mb, limits["file_mb"] * mb),
        ("RLIMIT_MEMLOCK", 0, 0),
        ("RLIMIT_MSGQUEUE", 0, 0),
    ):
        resource.setrlimit(getattr(resource, name), (soft, hard))


def program(a, out_w, err_w, req_r, res_w):
    """The forked program process: own descriptors only, limits, then the untrusted source. Never returns."""
    code = 1
    try:
        stdin = os.memfd_create("stdin") if a["stdin"] is not None else os.open("/dev/null", os.O_RDONLY)
        if a["stdin"] is not None:
            write_all(stdin, a["stdin"].encode())
            os.lseek(stdin, 0, os.SEEK_SET)
        keep = [stdin, out_w, err_w] + ([req_r, res_w] if a["mode"] == "tests" else [])
        keep = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in keep]  # out of the way of 0-4 first
        for target, fd in enumerate(keep):  # fds 0-2 were the host's pipes: replaced
            os.dup2(fd, target)
        os.closerange(len(keep), 1 << 16)  # everything else the judge had open
        if not a["sandboxed"]:
            os.setpgid(0, 0)  # its own group, so the judge can kill it and its children
        if a["uid"] is not None:
            become(a["uid"])
        set_limits(a["limits"])
        if a["seccomp"] and not install_seccomp():
            print("r1kit sandbox: no seccomp filter for this architecture", file=sys.stderr)
        namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        if a["mode"] == "program":
            code = run_main(a["source"], namespace)
        else:
            code = serve(a["source"], namespace)
    except BaseException:  # the harness itself failed: say so on stderr
        try:
            sys.excepthook(*sys.exc_info())
        except BaseException:
            pass
    finally:
        flush()
        os._exit(code)


def exit_code(e):
    """Python's own rule for `SystemExit(code)`: None is 0, an int is itself, anything else is printed, 1."""
    if e.code is None:
        return 0
    if type(e.code) is int:
        return e.code & 0xFF
    try:
        print(e.code, file=sys.stderr)
    except BaseException:
        pass
    return 1


def run_main(source, namespace):
    try:
        exec(compile(source, "<program>", "exec"), namespace)
        return 0
    except SystemExit as e:
        return exit_code(e)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        return 1


def flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def serve(source, namespace):
    """Run the source, say which names it defined, then answer the judge's calls until it hangs up."""
    try:
        exec(compile(source, "<program>", "exec"), namespace)
    except SystemExit as e:
        return exit_code(e)
    except BaseException as e:
        sys.excepthook(*sys.exc_info())
        flush()
        send_message(4, {"load": "error", "detail": f"{type(e).__name__}: {e}"[:2000]})
        return 1
    names = sorted(k for k, v in namespace.items() if callable(v) and not k.startswith("__"))
    flush()  # the program is killed, not exited, once the tests are done: its output goes out now
    send_message(4, {"load": "ok", "names": names})
    while True:
        try:
            request = json.loads(read_frame(3))
        except EOFError:
            return 0
        try:
            answer = {"id": request["id"]}
            fn = namespace.get(request["name"])
            if fn is None:
                raise NameError(f"the program defines no {request['name']!r}")
            args, kwargs = decode(request["args"]), decode(request["kwargs"])
            answer["value"] = encode(fn(*args, **kwargs))
        except BaseException as e:
            answer.update({"raise": type(e).__name__, "message": str(e)[:2000]})
        flush()
        send_message(4, answer)


# ---- the judge -----------------------------------------------------------------------------------------


def prctl(option, value, what):
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({what}) failed")


def non_dumpable():
    """PR_SET_DUMPABLE 0: no process without CAP_SYS_PTRACE may ptrace the judge, read its memory or open its
    /proc/PID/{mem,environ,fd/*} (the program runs with no capabilities)."""
    prctl(4, 0, "PR_SET_DUMPABLE, 0")


def die_with_bwrap():
    """PR_SET_PDEATHSIG SIGKILL again: changing uid clears the one bwrap's --die-with-parent set. (Were bwrap gone
    in between, reading the request's second part fails and the judge exits: the namespace goes with it.)"""
    prctl(1, SIGKILL, "PR_SET_PDEATHSIG")


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
        (n,) = _FRAME.unpack(self.res[:4])
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
        data = json.dumps({"id": call_id, "name": name, "args": encode(list(args)),
                           "kwargs": encode(kwargs)}).encode()
        try:
            watch.send(_FRAME.pack(len(data)) + data)
        except OSError:
            raise ProgramDied(f"{name}(): the program is gone") from None
        msg = watch.pump(want_message=True)
        if msg is None:
            raise ProgramDied(f"{name}(): the program exited during the call")
        try:
            answer = json.loads(msg)
            if answer["id"] != call_id:
                raise ValueError("an answer to another call")
            if "value" in answer:
                return decode(answer["value"])
            kind, message = str(answer["raise"]), str(answer["message"])
        except Exception:
            raise ProgramError(f"{name}(): the program answered with something that is not its answer") from None
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


def run_tests(watch, b):
    """Wait for the program to load, then run the tests here, the program's functions reached through proxies."""
    msg = watch.pump(want_message=True)
    if msg is None:
        return "error", "the program exited before the tests ran"
    try:
        loaded = json.loads(msg)
        ok, names = loaded["load"] == "ok", [str(n) for n in loaded.get("names", [])]
    except Exception:
        return "error", "the program sent something other than its load report"
    if not ok:
        return "error", str(loaded.get("detail", "the program failed to load"))[:2000]
    namespace = {"__name__": "__tests__"}
    exec(compile(b["setup"], "<setup>", "exec"), namespace)
    for name in b["call"] if b["call"] is not None else [n for n in names if n not in namespace]:
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
    """Everything but the judge: kill(-1) from pid 1 of a pid namespace reaches every process in it."""
    try:
        if sandboxed:
            os.kill(-1, SIGKILL)
        else:
            os.killpg(pid, SIGKILL)
    except ProcessLookupError:
        pass


def watch_host(pid, sandboxed):
    """The host holds fd 0 open until it has the report: EOF before that means it gave up on this execution (or
    died), and the judge ends everything at once. (A uid change cleared the parent-death signal; see run.py.)"""
    try:
        while os.read(0, 1 << 12):
            pass
    except OSError:
        pass
    kill_all(pid, sandboxed)
    os._exit(3)


def main():
    start = time.monotonic()
    non_dumpable()
    a = marshal.loads(read_frame(0))
    limits = a["limits"]
    if a["mode"] == "tests":
        global json
        json = Json()
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
    if a["uid"] is not None:
        become(a["uid"])
        die_with_bwrap()
    b = marshal.loads(read_frame(0))  # the secrets, read only now that the program's memory is its own
    _thread.start_new_thread(watch_host, (pid, a["sandboxed"]))
    resource.setrlimit(resource.RLIMIT_CPU, (int(limits["wall_s"]) * 2 + 2,) * 2)
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
    done, wait_status, usage = os.wait4(pid, os.WNOHANG)
    on_its_own = done == pid  # it ended before the judge killed it
    kill_all(pid, a["sandboxed"])
    if not on_its_own:
        _, wait_status, usage = os.wait4(pid, 0)
    while a["sandboxed"]:  # orphans were re-parented to pid 1: reap them too
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    try:
        watch.drain()
    except Stop:
        pass
    code = os.waitstatus_to_exitcode(wait_status)
    cpu = usage.ru_utime + usage.ru_stime
    killed = SIGNAL_NAMES.get(-code, f"signal {-code}")
    if on_its_own and code < 0 and (-code == SIGXCPU or (-code == SIGKILL and cpu >= limits["cpu_s"] - 0.05)):
        status, detail = "timeout", f"CPU time limit ({limits['cpu_s']} s)"
    elif status is None:  # program mode, it exited
        if code == 0:
            status = "pass"
        elif code < 0:
            status, detail = "error", f"killed by {killed}"
        else:
            lines = bytes(watch.out[err_r]).decode("utf-8", "replace").strip().splitlines()
            status, detail = "error", lines[-1][:2000] if lines else f"exit status {code}"
    elif status in ("fail", "error") and on_its_own and code < 0:
        status, detail = "error", f"{detail}; the program was killed by {killed}"
    all_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    fields = {"nonce": b["nonce"], "status": status, "detail": detail.encode("utf-8", "replace"),
              "stdout": bytes(watch.out[out_r]), "stderr": bytes(watch.out[err_r]),
              "exit_code": code if code >= 0 else None, "signal": -code if code < 0 else None,
              "program_cpu_s": round(all_cpu.ru_utime + all_cpu.ru_stime, 4),
              "max_rss_kb": usage.ru_maxrss}
    write_all(1, report(fields))
    if not a["sandboxed"]:  # unsafe local mode: the judge's process group goes last, the judge with it
        os.killpg(0, SIGKILL)
    os._exit(0)
