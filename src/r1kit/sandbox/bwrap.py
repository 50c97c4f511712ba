"""The bubblewrap command of one execution, and the uids it runs under.

Run by root, bwrap makes no user namespace (see r1kit.sandbox for why): the judge starts as uid 0 with only
CAP_SETUID, CAP_SETGID, CAP_KILL and (to mount the capped /tmp) CAP_SYS_ADMIN, and then it and the program drop
to two fresh uids of their own. Run by anyone else, bwrap makes a user namespace in which both are uid 1000; the
judge keeps CAP_SYS_ADMIN of that namespace only to mount /tmp, then drops it. The judge mounts /tmp (a tmpfs
capped in bytes and inodes) where the harness has a seccomp table (x86_64, aarch64); elsewhere bwrap mounts it
(bytes only) and forbids nested user namespaces with --disable-userns, which seccomp forbids otherwise (and which
would make the mount impossible: bwrap nests a second user namespace that does not own the mount namespace).
Layer 0.
"""

from __future__ import annotations

import glob
import os
import secrets
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from r1kit.sandbox.harness.confine import seccomp_filter
from r1kit.sandbox.limits import Limits

SANDBOX_UID = 1000  # the judge's and the program's uid inside the user namespace (non-root path)
FRESH_UIDS = (1 << 20, 1 << 29)  # run as root: each execution's two uids are drawn from [2^20, 2^20 + 2^29)
HOST_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}  # bwrap itself sees no secrets either
SANDBOX_ENV = {"HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"}
# The interpreter starts with this bootstrap, which reads the harness as a marshalled code object from fd 0 (see
# r1kit.sandbox.harness); the request's two frames follow it on fd 0.
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
PYTHON_FLAGS = ["-I", "-S", "-B", "-X", "utf8", "-c", BOOTSTRAP]
# /dev: five devices and the fd links, in the read-only root (so nothing can be made there). Not bwrap's --dev: for
# its devpts, bwrap then nests a second user namespace, which does not own the mount namespace (no /tmp mount).
DEV = ["--perms", "0755", "--dir", "/dev"] + [a for name in ("null", "zero", "full", "random", "urandom")
                                              for a in ("--dev-bind", f"/dev/{name}", f"/dev/{name}")] + [
    "--symlink", "/proc/self/fd", "/dev/fd", "--symlink", "/proc/self/fd/0", "/dev/stdin",
    "--symlink", "/proc/self/fd/1", "/dev/stdout", "--symlink", "/proc/self/fd/2", "/dev/stderr"]


def as_root() -> bool:
    return os.geteuid() == 0


def fresh_uids() -> tuple[int, int]:
    """(judge's uid, program's uid) for one execution run by root: a random pair, so concurrent executions count
    their processes apart (RLIMIT_NPROC is per uid) and the program cannot signal, renice or pin the judge."""
    judge = FRESH_UIDS[0] + 2 * secrets.randbelow(FRESH_UIDS[1] // 2)
    return judge, judge + 1


@lru_cache(maxsize=1)
def judge_mounts_tmp() -> bool:
    """Whether the judge mounts /tmp itself (inode cap): where the harness has a seccomp table for this machine."""
    return seccomp_filter(os.uname().machine) is not None


@lru_cache(maxsize=4)
def bwrap_help(bwrap: str) -> str:
    return subprocess.run([bwrap, "--help"], capture_output=True, text=True, env=HOST_ENV).stdout


@lru_cache(maxsize=1)
def python_mounts() -> tuple[str, list[str]]:
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


def bwrap_argv(bwrap: str, limits: Limits) -> list[str]:
    exe, mounts = python_mounts()
    mount_tmp = judge_mounts_tmp()
    if as_root():  # no user namespace: the judge keeps only what it needs to mount /tmp and drop to fresh uids
        argv = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_KILL"]
    else:
        argv = [bwrap, "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
        if not mount_tmp and "--disable-userns" in bwrap_help(bwrap):
            argv.append("--disable-userns")  # no nested user namespaces: less kernel to attack
    if mount_tmp:
        argv += ["--cap-add", "CAP_SYS_ADMIN"]  # the judge's mount of /tmp; dropped before the program forks
        tmp = ["--perms", "1777", "--dir", "/tmp"]
    else:
        tmp = ["--perms", "1777", "--size", str(int(limits.tmp_mb) << 20), "--tmpfs", "/tmp"]
    argv += ["--die-with-parent", "--new-session", "--as-pid-1", "--hostname", "sandbox", *mounts,
             "--proc", "/proc", *DEV, *tmp, "--remount-ro", "/",
             "--chdir", "/tmp", "--clearenv"]
    for key, value in SANDBOX_ENV.items():
        argv += ["--setenv", key, value]
    return argv + ["--", exe, *PYTHON_FLAGS]
