"""Run model-written Python so that nothing escapes and no verdict can be forged: bubblewrap, a per-execution
cgroup, rlimits, seccomp, and a judge process apart from the program.

    run_python(source, tests="assert f(2) == 7", call=["f"], limits=Limits(wall_s=2)) -> Result(status="pass"|...)
    run_many([Job(...), ...])  # a thread pool, one bwrap per execution, two workers per core

A policy under RL finds every way out that exists, so this is the security boundary of the project. Layer 0: no
torch. Host side: limits.py (Limits, Job, Result), run.py (the API, one execution, the pool), bwrap.py (the
command, the uids), cgroup.py (the execution's cgroup). Inside: harness/ (wire, confine, program, judge), shipped
as one marshalled code object (harness/__init__.py says how it is assembled).

The shape of one execution
--------------------------
bwrap makes fresh pid, network, IPC, UTS and cgroup namespaces (and a user namespace when r1kit does not run as
root), a new session, and a root of read-only binds: the interpreter's prefix and the system libraries, with the
interpreter's site-packages hidden; /tmp (cwd, HOME), a tmpfs capped in bytes (`tmp_mb`) and inodes
(`tmp_files`), is the only writable place; a fresh /proc of the new pid namespace; a /dev of null, zero, full,
random, urandom. The environment is cleared. Where the host may make cgroups, bwrap is moved into the
execution's own before the request is sent, so every process of the execution is born inside it. Its pid 1 is the
*judge*, which makes itself non-dumpable and deaf to SIGINT, mounts /tmp, and forks the *program* process. The
program keeps only its own pipes, its own process group, drops to its uid and every capability, sets hard = soft
rlimits (CPU, address space, processes, open files, file size, core, memlock, message queues = 0), installs the
seccomp filter, and runs the untrusted source. The judge drains its output (capped), enforces the wall deadline,
and, in tests mode, runs the tests in its own interpreter, calling the program's functions through proxies that
carry plain data only. At the end the judge kills every process of the sandbox (kill(-1) from pid 1), reaps
them, and writes one report line with the call's nonce. The host gives up at wall + 3 s (it closes the judge's
stdin: the judge kills and reaps all and exits; one stuck in C code is SIGKILLed a second later), and it returns
only once every process of the execution is gone: its cgroup is empty, or, with none, bwrap saw pid 1 exit (the
kernel lets a pid 1 exit only after every other process of its namespace has).

Uids. Run by root, bwrap makes no user namespace (its uid 0 would be uid 0 outside, and the kernel never applies
RLIMIT_NPROC to uid 0: a fork bomb would run free). The judge starts with CAP_SETUID, CAP_SETGID, CAP_KILL and
CAP_SYS_ADMIN only; it mounts /tmp, and then it and the program drop to two fresh uids (random per execution, so
concurrent executions count their processes apart). The judge keeps CAP_KILL alone (to end the program's
processes); the program keeps nothing, and as another uid it cannot signal, renice, pin, prlimit, ptrace or read
the judge. Run by a normal user, bwrap makes a user namespace in which the judge and the program are both uid
1000 (mapped to that user, whose RLIMIT_NPROC the kernel applies, counted in that namespace only); the judge keeps
CAP_SYS_ADMIN of that namespace just to mount /tmp and drops it before it forks. Sharing a uid, the judge is kept
out of the program's reach otherwise: pid 1 of a pid namespace gets no signal from inside it that it has no
handler for (and it has none, SIGINT included); it is non-dumpable (no ptrace, /proc/1/mem, /proc/1/fd, no
process_vm_readv); seccomp refuses prlimit, sched_setaffinity, sched_setscheduler/setparam/setattr, setpriority
and ioprio_set on anything but the caller itself.

Seccomp (harness/confine.py, x86_64 and aarch64; elsewhere no filter, said on stderr, and bwrap mounts /tmp
without an inode cap, with --disable-userns instead) refuses: new namespaces (unshare, setns, clone with
namespace flags, clone3), mount and the new mount API, pivot_root, chroot, ptrace, process_vm_readv/writev, bpf,
perf_event_open, userfaultfd, io_uring, keyctl, kexec, module loading, swapon, reboot, acct, open_by_handle_at;
memory no rlimit sees (SysV shm, message queues and semaphores; memfd_create, memfd_secret); every socket family
but AF_UNIX (no inet, netlink, packet, vsock: vsock is not isolated by a network namespace); the scheduling calls
above on another process. The rest is allowed (an allow-list would break ordinary Python).

What holds where
----------------
Paths: root (no user namespace, fresh uids) or a normal user (user namespace); with a cgroup (v2 where this
process may make delegated children with the memory and pids controllers, v1 where the memory hierarchy is
writable, i.e. root on a v1 host such as this one) or none (`Result.extra["cgroup"]` says which).

| what | root, cgroup | user, delegated v2 cgroup | no cgroup (either user) |
|---|---|---|---|
| RAM of the execution (anonymous, tmpfs, page cache, kernel memory of files, pipes, sockets; judge included) | `memory_mb` in all | `memory_mb` in all | `memory_mb` per process (RLIMIT_AS) |
| tasks | `processes` (RLIMIT_NPROC of the program's uid) + pids.max | same, + pids.max | `processes` (RLIMIT_NPROC) |
| `cpu_s` | every process (cpuacct / cpu.stat), killed ones too | same | every process the judge reaped (all, unless the host had to SIGKILL a judge stuck in C code) |
| nothing alive after the call | the cgroup is empty | the cgroup is empty | pid 1 has exited, so its namespace is empty |
| /tmp | `tmp_mb`, `tmp_files` | same | same |
| the judge out of reach | another uid | same uid; pid 1, non-dumpable, seccomp | as the row's user |

Without a cgroup, in one line: memory is capped per process, not per execution, so an execution may hold up to
`processes` x `memory_mb` + `tmp_mb` (default 16 x 512 MB + 32 MB; RAM only as touched), plus the kernel's
buffers of its pipes and sockets (at most `open_files` descriptors a process). Everything else here holds on every
path.

The trust boundary (tests mode)
-------------------------------
Trusted: the host, the judge process, the tests and the setup code (they come from the task, not the model).
Untrusted: everything in the program process and its children. The program never holds the tests, the expected
values or the nonce: the judge forks it before reading them, it runs in another address space, and the judge
builds only builtin values from what the program sends (None, bool, int, float, complex, str, bytes, list, tuple,
dict, set, frozenset; a subclass crosses as its base type: Counter/OrderedDict/defaultdict as dict, namedtuple
as tuple, deque as list, IntEnum as int, bytearray as bytes; ints of any size, in hexadecimal beyond 2^63). The
verdict is the judge's: `pass` only when the tests ran to their end in the judge. How each attack fails
(tests/test_sandbox_adversarial.py has one test for each, run on both paths):

- sys.exit(0) / os._exit(0) before the asserts: the program process ends, the judge never got its functions:
  `error`; inside a function: the call fails, the test fails (`error`, the program died).
- printing "PASSED" or a fake report: the program's stdout is data in the report, never the report itself.
- writing a fake report to the host's pipe: the program closed its copies; /proc/1/fd is closed to it (the
  judge is non-dumpable); and the host believes only the line with this call's nonce, which the program never saw.
- monkeypatching assert / AssertionError / builtins / sys.excepthook / sys.settrace / atexit: those are the
  program's interpreter's; the tests run in the judge's.
- monkeypatching unittest (TestCase.assertEqual, TestResult.wasSuccessful): the judge imports its own unittest.
- deleting or redefining the test function (`check`): it exists only in the judge.
- shadowing what the tests use (a program's `range`, `abs`, `all`, `len`, or a setup helper): the tests reach the
  program through the names in `call` only; left out, `call` is the program's functions minus every builtin,
  keyword and setup name, so the tests' namespace holds nothing the program chose. (The tasks name `call`.)
- raising SystemExit from `__del__` (or in a function): Python ignores it in `__del__`; in a call it is an
  exception of the call; neither runs in the judge.
- reading the expected outputs: they are in the judge's memory only (non-dumpable: no /proc/1/mem, no ptrace,
  seccomp refuses process_vm_readv), never on disk, not in the program's memory, frames or files; the test
  source is never written anywhere the program can read.
- returning an object whose `__eq__` always says True (or an `int` subclass that lies): the judge rebuilds plain
  builtin values; the lie does not cross.
- raising StopIteration to end a `map()` in the tests early: exceptions cross as builtin Exception classes only,
  never StopIteration, SystemExit or KeyboardInterrupt (they become ProgramError).
- sending answers ahead of the questions: every call carries a fresh random id, and only an answer with it counts.
- killing or interrupting the judge (SIGKILL or SIGINT to the parent, to 1, to -1 or the process group): pid 1
  gets none of them (and as root they are another uid's); a dead judge writes no report: `error`, never `pass`.
- flooding the judge: a message over 2 MB (checked before parsing), over 200,000 values or 100 levels, a set or
  dict whose keys share one hash more than 8 times (ints hash predictably: 60,000 of one hash made building the
  set quadratic), a load report of over 1,000 names: refused (harness/wire.py); the judge's own address space
  (256 MB or memory_mb) and CPU time (2 x wall + 2 s) are capped besides.
- timing out on purpose: `timeout`, which scores 0 like everything but `pass`.

Program mode (no tests) judges the exit status and, with `expected_stdout`, the output, compared on the host: the
expected text never enters the sandbox.

Containment (the same tests file): fork and thread bombs stop at RLIMIT_NPROC; memory at RLIMIT_AS per process and
at the cgroup for all of them (the kernel kills a program process, whose oom_score_adj is 1000: `error`, "memory
limit of the execution"); CPU at RLIMIT_CPU (SIGXCPU, then SIGKILL); sleeping, blocking and SIGTERM-ignoring
programs at the wall deadline; output at the output cap (killed); files at RLIMIT_FSIZE and the /tmp caps (bytes
and inodes); descriptors at RLIMIT_NOFILE; raising a limit fails (hard = soft, no CAP_SYS_RESOURCE); the network
namespace has only its own loopback and the program only AF_UNIX sockets (no route to the host's 127.0.0.1, no
DNS, no abstract unix sockets of the host); the file system has no /etc, /home, /work, run or checkpoint
directories, and symlinks lead only inside the sandbox; the environment holds HOME, LANG, PATH, TMPDIR only; a
`setsid` double-forked daemon dies with the namespace, and no process of the execution's uids is alive when
`run_python` returns (checked after every case).

What is not contained (known): without a cgroup, memory per execution (above); the CPU share of the machine until
the limits (`cpu_s` per process, `processes` of them, until `wall_s`); the kernel is shared (a kernel exploit is
out of scope; seccomp narrows the surface); timing side channels; the interpreter's standard library can be read;
as a normal user, the judge shares the program's uid (kept out of reach as above, not by the kernel's uid check).
Without bwrap nothing of the above but the rlimits and the judge/program split holds: `run_python` raises a
one-line UserError naming the package unless `unsafe_local_exec=True` (`--unsafe-local-exec`), which runs the
program unconfined on this machine after a loud warning.
"""

from r1kit.sandbox.limits import Job, Limits, Result
from r1kit.sandbox.run import allow_unsafe_local_exec, check_sandbox, run_many, run_python, same_output

__all__ = ["Job", "Limits", "Result", "allow_unsafe_local_exec", "check_sandbox", "run_many", "run_python",
           "same_output"]
