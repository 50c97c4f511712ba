"""The sandbox's data: what one execution may use (Limits), what it is asked (Job), and its verdict (Result).

Layer 0, no imports but r1kit.errors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from r1kit.errors import UserError

STATUSES = ("pass", "fail", "timeout", "error")


@dataclass(frozen=True)
class Limits:
    """What one execution may use. Every per-process limit is an rlimit set with hard = soft in the program's
    process, so neither it nor its children can raise it; the per-execution ones hold where a cgroup does (see
    r1kit.sandbox: where each holds)."""

    cpu_s: int = 2  # CPU seconds per process (RLIMIT_CPU: SIGXCPU, then SIGKILL a second later)
    wall_s: float = 5.0  # wall seconds for the whole execution: loading the program and running every test
    # RAM of the whole execution (its cgroup: anonymous, shared and tmpfs memory, page cache, kernel memory of
    # its files, pipes and sockets; the judge's included) and address space of each process (RLIMIT_AS)
    memory_mb: int = 512
    processes: int = 16  # processes + threads of the program and its children (RLIMIT_NPROC; the cgroup's pids.max)
    open_files: int = 64  # descriptors per process (RLIMIT_NOFILE)
    file_mb: int = 16  # largest file the program may write (RLIMIT_FSIZE)
    tmp_mb: int = 32  # size of the private, writable /tmp (a tmpfs: the only writable place)
    tmp_files: int = 10_000  # files and directories /tmp may hold (the tmpfs's nr_inodes)
    output_kb: int = 256  # stdout + stderr; beyond it the program is killed (status error)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise UserError(f"sandbox limit {name} must be a positive number, got {value!r}")
        if self.processes < 2:
            raise UserError("sandbox limit processes must be at least 2 (the program and one more)")


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
    cpu_s: float = 0.0  # CPU seconds of every process of the execution (its cgroup's; else bwrap's, reaped ones)
    wall_s: float = 0.0
    # max_rss_kb (program process), program_cpu_s, judge_max_rss_kb, cgroup (v1 | v2 | none), memory_peak_mb and
    # oom_kills (with a cgroup), uids (the sandbox's, as the host sees them)
    extra: dict = field(default_factory=dict, compare=False)

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
