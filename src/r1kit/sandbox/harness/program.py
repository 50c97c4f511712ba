"""The program process: forked by the judge, confined, then running the untrusted source.

Part of the shipped harness (see r1kit.sandbox.harness). In order: keep only its own pipes (as fds 0-4), its own
process group, first in line for the OOM killer, drop to the program's uid and every capability, rlimits, the
seccomp filter, SIGINT back to Python's default; then the source, as `__main__` (program mode) or as a module
whose functions it serves to the judge's calls (tests mode). It never returns: os._exit.
"""

import _signal
import fcntl
import os
import sys

from r1kit.sandbox.harness.confine import become, install_seccomp, set_capabilities, set_limits
from r1kit.sandbox.harness.wire import (
    FRAME,
    MAX_MESSAGE,
    decode,
    dumps,
    encode,
    loads,
    read_frame,
    send_message,
    write_all,
)


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
        os.setpgid(0, 0)  # its own group: kill(0, sig) and killpg reach the program's processes, not the judge
        sys.stdout.reconfigure(line_buffering=True)  # a line printed before a kill (time, CPU) is not lost
        prefer_for_oom_kill()
        if a["uid"] is not None:
            become(a["uid"])
        elif a["sandboxed"]:
            set_capabilities(())  # as non-root, the judge already dropped them; nothing left either way
        set_limits(a["limits"])
        if a["seccomp"] and not install_seccomp():
            print("r1kit sandbox: no seccomp filter for this architecture", file=sys.stderr)
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)  # the judge ignores SIGINT; the program need not
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


def prefer_for_oom_kill():
    """oom_score_adj 1000 (raising one's own needs no privilege): when the execution's memory cgroup is full, the
    kernel kills a program process, not the judge, which then reports the limit."""
    try:
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
        try:
            os.write(fd, b"1000")
        finally:
            os.close(fd)
    except OSError:
        pass


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
            request = loads(read_frame(3), bounded=False)  # from the judge: trusted
        except EOFError:
            return 0
        try:
            answer = {"id": request["id"]}
            fn = namespace.get(request["name"])
            if fn is None:
                raise NameError(f"the program defines no {request['name']!r}")
            args, kwargs = decode(request["args"], bounded=False), decode(request["kwargs"], bounded=False)
            answer["value"] = encode(fn(*args, **kwargs))
            data = dumps(answer)
            if len(data) > MAX_MESSAGE:
                raise ValueError(f"the return value is over {MAX_MESSAGE >> 20} MB as data (the judge reads no more)")
        except BaseException as e:
            data = dumps({"id": request["id"], "raise": type(e).__name__, "message": str(e)[:2000]})
        flush()
        write_all(4, FRAME.pack(len(data)) + data)
