"""Run model-written Python so that nothing escapes and no verdict can be forged: bubblewrap, rlimits, seccomp.

    run_python(source, tests="assert f(2) == 7", limits=Limits(wall_s=2)) -> Result(status="pass"|"fail"|...)
    run_many([Job(...), ...])  # a thread pool, one bwrap per execution, one worker per core

A policy under RL finds every way out that exists, so this is the security boundary of the project. Layer 0: no
torch. Files: run.py (the host side: the bwrap command, the request, the report, the pool), harness.py (what runs
inside: the judge and the program).

The shape of one execution
--------------------------
bwrap makes fresh pid, network, IPC, UTS and cgroup namespaces (and a user namespace when r1kit does not run as
root), a new session, and a root of read-only binds: the interpreter's prefix and the system libraries, with the
interpreter's site-packages hidden; a private size-capped tmpfs /tmp (cwd, HOME) is the only writable place; a
fresh /proc of the new pid namespace; a minimal /dev. The environment is cleared (bwrap itself is started with a
minimal one too). Its pid 1 is the *judge* (harness.py), which makes itself non-dumpable, then forks the
*program* process. The program process keeps only its own pipes, drops to the sandbox uid, sets hard = soft
rlimits (CPU, address space, processes, open files, file size, core = 0, memlock = 0), installs the seccomp
filter, and runs the untrusted source. The judge drains its stdout/stderr (capped), enforces the wall deadline,
and, in tests mode, runs the tests in its own interpreter, calling the program's functions through proxies that
carry plain data only. At the end the judge kills every process of the sandbox (kill(-1) from pid 1) and writes
one report line with the call's nonce. The host waits at most wall + 3 s, then SIGKILLs the judge and bwrap.

Why the uid: run by root, bwrap's user namespace maps the sandbox to uid 0 outside, and the kernel never applies
RLIMIT_NPROC to uid 0 (a fork bomb would run free). So, as root, bwrap keeps only CAP_SETUID/CAP_SETGID for the
judge, and the judge and the program each drop to one fresh uid per execution (random, so concurrent executions
count their processes apart); no capability is left after that. As a normal user the user namespace's uid maps
to that user, whose RLIMIT_NPROC the kernel applies, and bwrap's --disable-userns forbids nested namespaces.

Seccomp: used, because it closes what the rest leaves open. Without it the program (no capabilities, but
unprivileged user namespaces exist on most kernels) could make its own user + mount namespace and mount a tmpfs
with no size cap, filling RAM with files each under RLIMIT_FSIZE; it could prlimit() the judge (same uid); and
it would keep the kernel's largest attack surfaces. The filter (harness.seccomp_filter, x86_64 and aarch64;
elsewhere none, said on stderr) refuses unshare, setns, clone with namespace flags, clone3 (libc falls back to
clone), mount and the new mount API, pivot_root, chroot, ptrace, process_vm_readv/writev, bpf, perf_event_open,
userfaultfd, io_uring, keyctl, kexec, module loading, swapon, reboot, acct, open_by_handle_at and prlimit64 on
another process; the rest is allowed (an allow-list would break ordinary Python).

The trust boundary (tests mode)
-------------------------------
Trusted: the host, the judge process, the tests and the setup code (they come from the task, not the model).
Untrusted: everything in the program process and its children. The program never holds the tests, the expected
values or the nonce: the judge forks it before reading them, it runs in another address space, and the judge
builds only builtin values (None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset) from
what the program sends. The verdict is the judge's: `pass` only when the tests ran to their end in the judge.
How each attack fails (tests/test_sandbox_adversarial.py has one test for each):

- sys.exit(0) / os._exit(0) before the asserts: the program process ends, the judge never got its functions:
  `error`; inside a function: the call fails, the test fails (`error`, the program died).
- printing "PASSED" or a fake report: the program's stdout is data in the report, never the report itself.
- writing a fake report to the host's pipe: the program closed its copies; /proc/1/fd is closed to it (the
  judge is non-dumpable); and the host believes only the line with this call's nonce, which the program never saw.
- monkeypatching assert / AssertionError / builtins / sys.excepthook / sys.settrace / atexit: those are the
  program's interpreter's; the tests run in the judge's.
- monkeypatching unittest (TestCase.assertEqual, TestResult.wasSuccessful): the judge imports its own unittest.
- deleting or redefining the test function (`check`): it exists only in the judge.
- raising SystemExit from `__del__` (or in a function): Python ignores it in `__del__`; in a call it is an
  exception of the call; neither runs in the judge.
- reading the expected outputs: they are in the judge's memory only (non-dumpable: no /proc/1/mem, no ptrace,
  seccomp refuses process_vm_readv), never on disk, not in the program's memory, frames or files; the test
  source is never written anywhere the program can read.
- returning an object whose `__eq__` always says True (or an `int` subclass that lies): only exact builtin types
  cross, rebuilt by the judge.
- raising StopIteration to end a `map()` in the tests early: exceptions cross as builtin Exception classes only,
  never StopIteration, SystemExit or KeyboardInterrupt (they become ProgramError).
- sending answers ahead of the questions: every call carries a fresh random id, and only an answer with it counts.
- killing the judge (os.kill(os.getppid(), 9), kill(-1)): pid 1 of a pid namespace ignores signals from inside
  it; and a dead judge writes no report, so the result is `error`, never `pass`.
- timing out on purpose: `timeout`, which scores 0 like everything but `pass`.

Program mode (no tests) judges the exit status and, with `expected_stdout`, the output, compared on the host: the
expected text never enters the sandbox.

Containment (the same tests file): fork bombs and thread bombs stop at RLIMIT_NPROC; memory at RLIMIT_AS; CPU at
RLIMIT_CPU (SIGXCPU, then SIGKILL); sleeping, blocking and SIGTERM-ignoring programs at the wall deadline
(SIGKILL); output at the output cap (killed); files at RLIMIT_FSIZE and the /tmp tmpfs size; descriptors at
RLIMIT_NOFILE; raising a limit fails (hard = soft, no CAP_SYS_RESOURCE); the network namespace has only its own
loopback (no route to the host's 127.0.0.1, no DNS, no abstract unix sockets of the host); the file system has no
/etc, /home, /work, run or checkpoint directories, and symlinks lead only inside the sandbox; the environment
holds HOME, LANG, PATH, TMPDIR only; a `setsid` double-forked daemon dies with pid 1 (kill(-1), then the
namespace); a judge stuck in its tests is SIGKILLed by the host and its namespace goes with it.

What is not contained (known): the program can use up to `processes` x `memory_mb` of address space (default 16 x
512 MB; RAM is only touched as used) and its CPU share until the limits; the kernel is shared (a kernel exploit
is out of scope; seccomp narrows the surface); timing side channels; the interpreter's standard library can be
read. Without bwrap nothing of the above but the rlimits and the judge/program split holds: `run_python` raises
a one-line UserError naming the package unless `unsafe_local_exec=True` (`--unsafe-local-exec`), which runs the
program unconfined on this machine after a loud warning.
"""

from r1kit.sandbox.limits import Job, Limits, Result
from r1kit.sandbox.run import allow_unsafe_local_exec, check_sandbox, run_many, run_python, same_output

__all__ = ["Job", "Limits", "Result", "allow_unsafe_local_exec", "check_sandbox", "run_many", "run_python",
           "same_output"]
