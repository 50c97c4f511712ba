"""The sandbox's API: limits, errors without bubblewrap, the unsafe opt-in, the pool, the report check, the
seccomp program and the plain-data codec. (Hostile programs: test_sandbox_adversarial.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from r1kit.errors import UserError
from r1kit.sandbox import Job, Limits, Result, run_many, run_python, same_output
from r1kit.sandbox import bwrap as sandbox_bwrap
from r1kit.sandbox import run as sandbox_run
from r1kit.sandbox.harness import confine, wire
from sandbox_helpers import requires_sandbox

FAST = Limits(cpu_s=1, wall_s=2.0)


def test_limits_are_checked():
    with pytest.raises(UserError, match="wall_s"):
        Limits(wall_s=0)
    with pytest.raises(UserError, match="memory_mb"):
        Limits(memory_mb=-1)
    with pytest.raises(UserError, match="processes"):
        Limits(processes=1)


def test_no_bubblewrap_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(sandbox_run, "_bwrap_status", lambda: (None, "the code sandbox needs bubblewrap"))
    with pytest.raises(UserError) as e:
        run_python("print(1)")
    message = str(e.value)
    assert "\n" not in message and "bubblewrap" in message and "--unsafe-local-exec" in message


def test_unsafe_local_exec_runs_unconfined_but_still_judges(monkeypatch, capsys):
    monkeypatch.setattr(sandbox_run, "_bwrap_status", lambda: (None, "no bwrap here"))
    monkeypatch.setattr(sandbox_run, "_warned_unsafe", type(sandbox_run._warned_unsafe)())
    ok = run_python("def add(a, b):\n    return a + b\n", tests="assert add(2, 3) == 5", limits=FAST,
                    unsafe_local_exec=True)
    forged = run_python("import sys\nsys.exit(0)\n", tests="assert add(2, 3) == 5", limits=FAST,
                        unsafe_local_exec=True)
    run_python("print(1)", limits=FAST, unsafe_local_exec=True)
    assert ok.status == "pass" and forged.status == "error"
    assert capsys.readouterr().err.count("UNCONFINED") == 1  # loud, once


def test_unsafe_local_exec_kills_its_process_group(monkeypatch):
    monkeypatch.setattr(sandbox_run, "_bwrap_status", lambda: (None, "no bwrap here"))
    r = run_python("import time\ntime.sleep(60)", limits=Limits(cpu_s=1, wall_s=1.0), unsafe_local_exec=True)
    assert r.status == "timeout" and r.wall_s < 3


@requires_sandbox
def test_run_many_keeps_the_order_and_runs_in_parallel():
    jobs = [Job(f"import time\ntime.sleep(0.3)\nprint({i})", limits=FAST) for i in range(8)]
    t0 = time.perf_counter()
    results = run_many(jobs, workers=8)
    wall = time.perf_counter() - t0
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(8)]
    assert all(r.passed for r in results)
    assert wall < 8 * 0.3  # sleeping jobs overlap


@requires_sandbox
def test_results_carry_time_and_output():
    r = run_python("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsum(range(10 ** 6))", limits=FAST)
    assert r.passed and r.stdout == "out\n" and r.stderr == "err\n" and r.exit_code == 0
    assert 0 < r.cpu_s < 2 and 0 < r.wall_s < 2 and r.extra["max_rss_kb"] > 0
    bad = run_python("raise ValueError('nope')", limits=FAST)
    assert bad.status == "error" and bad.detail == "ValueError: nope" and bad.exit_code == 1
    code = run_python("import sys\nsys.exit(3)", limits=FAST)
    assert code.status == "error" and code.exit_code == 3


@requires_sandbox
def test_output_printed_before_a_kill_is_kept():
    """stdout is line-buffered in the program: what it printed before a time or CPU kill reaches the result."""
    r = run_python("print('before')\nwhile True: pass", limits=Limits(cpu_s=1, wall_s=2.0))
    assert r.status == "timeout" and r.stdout == "before\n"


@requires_sandbox
def test_expected_stdout_is_compared_on_the_host():
    assert run_python("print(' 42 ')", expected_stdout=" 42", limits=FAST).status == "pass"
    r = run_python("print(41)", expected_stdout="42", limits=FAST)
    assert r.status == "fail" and "differs" in r.detail


@requires_sandbox
def test_user_namespace_mode(monkeypatch):
    """The mode a non-root user gets (here run by root, so only its plumbing is checked, not RLIMIT_NPROC)."""
    monkeypatch.setattr(sandbox_bwrap, "as_root", lambda: False)
    argv = sandbox_bwrap.bwrap_argv("/usr/bin/bwrap", FAST)
    assert "--unshare-user" in argv
    mount = ["CAP_SYS_ADMIN"] if sandbox_bwrap.judge_mounts_tmp() else []  # the judge's mount of /tmp
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--cap-add"] == mount
    assert run_python("def add(a, b):\n    return a + b\n", tests="assert add(1, 2) == 3", limits=FAST).passed
    assert run_python("import sys\nsys.exit(0)", tests="assert add(1, 2) == 3", limits=FAST).status == "error"


def test_root_mode_keeps_only_the_judges_capabilities(monkeypatch):
    monkeypatch.setattr(sandbox_bwrap, "as_root", lambda: True)
    monkeypatch.setattr(sandbox_bwrap, "bwrap_help", lambda bwrap: "")
    argv = sandbox_bwrap.bwrap_argv("/usr/bin/bwrap", FAST)
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    mount = ["CAP_SYS_ADMIN"] if sandbox_bwrap.judge_mounts_tmp() else []
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--cap-add"] == ["CAP_SETUID", "CAP_SETGID", "CAP_KILL",
                                                                              *mount]
    assert "--unshare-user" not in argv and "--unshare-net" in argv and "--remount-ro" in argv


def test_report_needs_this_calls_nonce():
    line = b'{"nonce":"abc","status":"pass","detail":"","stdout":"aGk=","stderr":"","exit_code":0}'
    assert sandbox_run._parse_report(b"noise\n" + line + b"\n", "abc")["stdout"] == "hi"
    assert sandbox_run._parse_report(line, "abd") is None
    assert sandbox_run._parse_report(line.replace(b'"pass"', b'"great"'), "abc") is None
    assert sandbox_run._parse_report(line.replace(b'"aGk="', b'"not base64!"'), "abc") is None
    assert sandbox_run._parse_report(b"", "abc") is None


def test_same_output():
    assert same_output("1\r\n2  \n\n", "1\n2")
    assert not same_output("1\n2", "1\n3") and not same_output("12", "1 2")


def test_result_passed():
    assert Result("pass").passed and not Result("timeout").passed


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_seccomp_program_is_well_formed(machine):
    prog = confine.seccomp_filter(machine)
    assert prog[0] == (0x20, 0, 0, 4) and prog[1][3] == confine._ARCH[machine]
    for i, (code, jt, jf, _) in enumerate(prog):
        if code & 0x07 == 0x05:  # a jump: both targets inside the program
            assert i + 1 + max(jt, jf) < len(prog)
    assert prog[-1] == (0x06, 0, 0, confine._ALLOW)
    col = 0 if machine == "x86_64" else 1
    denied = {k for code, _, _, k in prog if code == 0x15}
    assert {confine._DENY["unshare"][col], confine._DENY["ptrace"][col], confine._CLONE[col]} <= denied
    assert confine.seccomp_filter("riscv64") is None


def run_bpf(prog, nr, *args, arch=confine._ARCH["x86_64"]):
    """Interpret a classic-BPF seccomp program on one system call (the low 32 bits of each argument)."""
    data = {0: nr, 4: arch, **{16 + 8 * i: a for i, a in enumerate(args)}}
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == 0x20:
            acc, pc = data.get(k, 0), pc + 1
        elif code == 0x06:
            return k
        else:
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += 1 + (jt if taken else jf)


def test_seccomp_program_decides_like_the_table():
    """The denied get EPERM, clone only without namespaces, sockets only AF_UNIX, scheduling only of itself."""
    prog = confine.seccomp_filter("x86_64")
    eperm, allow = confine._ERRNO | confine._EPERM, confine._ALLOW
    assert run_bpf(prog, 272) == eperm  # unshare
    assert run_bpf(prog, 101) == eperm  # ptrace
    assert run_bpf(prog, 0) == allow  # read
    assert run_bpf(prog, 56, 0x003D0F00) == allow  # clone of a thread
    assert run_bpf(prog, 56, 0x10000000 | 0x11) == eperm  # clone(CLONE_NEWUSER)
    assert run_bpf(prog, 435) == confine._ERRNO | confine._ENOSYS  # clone3
    assert run_bpf(prog, 302, 0) == allow and run_bpf(prog, 302, 1) == eperm  # prlimit64
    assert run_bpf(prog, 0x40000000 + 1) == eperm  # x32
    assert run_bpf(prog, 0, arch=0x40000003) == confine._KILL  # i386
    for nr in (29, 68, 64, 319):  # shmget, msgget, semget, memfd_create
        assert run_bpf(prog, nr) == eperm
    afnosupport = confine._ERRNO | confine._EAFNOSUPPORT
    for nr in (41, 53):  # socket, socketpair
        assert run_bpf(prog, nr, 1) == allow  # AF_UNIX
        assert [run_bpf(prog, nr, family) for family in (2, 10, 16, 17, 40)] == [afnosupport] * 5  # inet..vsock
    assert run_bpf(prog, 203, 0) == allow and run_bpf(prog, 203, 1) == eperm  # sched_setaffinity
    assert run_bpf(prog, 144, 0) == allow and run_bpf(prog, 144, 1) == eperm  # sched_setscheduler
    assert run_bpf(prog, 141, 0, 0) == allow  # setpriority(PRIO_PROCESS, self)
    assert run_bpf(prog, 141, 0, 1) == eperm and run_bpf(prog, 141, 1, 0) == eperm  # another pid; a group
    assert run_bpf(prog, 251, 1, 0) == allow and run_bpf(prog, 251, 1, 1) == eperm  # ioprio_set
    arm = confine.seccomp_filter("aarch64")
    assert run_bpf(arm, 198, 2, arch=confine._ARCH["aarch64"]) == afnosupport  # socket(AF_INET) on aarch64
    assert run_bpf(arm, 194, arch=confine._ARCH["aarch64"]) == eperm  # shmget on aarch64


def test_codec_round_trip_and_refusals():
    value = (1, [2.5, None, True], {"k": {1, 2}, 3: b"\x00"}, frozenset({4}), 1 + 2j, 2 ** 80, -(10 ** 5000))
    assert wire.decode(wire.encode(value)) == value
    with pytest.raises(TypeError):
        wire.encode(object())
    for junk in ({"x": 1}, {"t": 1}, {"d": [[1]]}, {"c": ["a", 1]}, {"t": [], "s": []}, {"s": [[1]]}):
        with pytest.raises(ValueError):
            wire.decode(junk)


def test_subclasses_cross_as_their_base_type():
    import collections
    import enum

    class Liar(int):
        def __eq__(self, other):
            return True

    Point = collections.namedtuple("Point", "x y")
    counts = collections.Counter("abca")
    ordered = collections.OrderedDict([("b", 1), ("a", 2)])
    tree = wire.encode([Liar(3), Point(1, 2), counts, ordered, collections.defaultdict(int, a=1),
                        collections.deque([1, 2]), enum.IntEnum("E", "A B").B, bytearray(b"x")])
    back = wire.decode(tree)
    assert back == [3, (1, 2), {"a": 2, "b": 1, "c": 1}, {"b": 1, "a": 2}, {"a": 1}, [1, 2], 2, b"x"]
    assert [type(v) for v in back] == [int, tuple, dict, dict, dict, list, int, bytes]
    assert list(back[3]) == ["b", "a"]  # an OrderedDict keeps its order


def test_decoding_is_bounded():
    """What the judge reads from the program: size, depth, count and hash floods refused, in linear time."""
    with pytest.raises(ValueError, match="over 2 MB"):
        wire.loads(b"[" + b"0," * (1 << 20) + b"0]")
    with pytest.raises(ValueError, match="parts"):
        wire.decode([0] * (wire.MAX_VALUES + 1))
    deep = []
    for _ in range(wire.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(ValueError, match="deep"):
        wire.decode(deep)
    p = 2 ** 61 - 1  # ints that differ by multiples of 2^61 - 1 hash alike
    colliding = {"s": [wire.encode(i * p) for i in range(1, 10_001)]}
    with pytest.raises(ValueError, match="share a hash"):
        wire.decode(colliding)
    assert wire.decode({"s": [-1, -2]}) == {-1, -2}  # honest data: hash(-1) == hash(-2)
    assert wire.decode([0] * 1000, bounded=False) == [0] * 1000


def test_the_cli_flag_allows_unconfined_runs(monkeypatch):
    from r1kit.cli.main import build_parser

    args = build_parser().parse_args(["eval", "--model", "m", "--task", "pysynth", "--unsafe-local-exec"])
    assert args.unsafe_local_exec
    assert not build_parser().parse_args(["rl", "--model", "m"]).unsafe_local_exec
    monkeypatch.setattr(sandbox_run, "_bwrap_status", lambda: (None, "no bwrap here"))
    monkeypatch.setattr(sandbox_run, "_unsafe_allowed", type(sandbox_run._unsafe_allowed)())
    monkeypatch.setattr(sandbox_run, "_warned_unsafe", type(sandbox_run._warned_unsafe)())
    with pytest.raises(UserError):
        sandbox_run.check_sandbox()
    sandbox_run.allow_unsafe_local_exec()
    assert sandbox_run.check_sandbox() == "unsafe-local"


def test_the_harness_ships_as_one_code_object_assembled_from_its_parts():
    import ast
    import marshal

    from r1kit.sandbox import harness

    source = harness.source()
    assert "import r1kit" not in source and "from r1kit" not in source  # sibling imports blanked
    code = marshal.loads(harness.frame()[4:])
    assert "main" in code.co_names
    allowed = {"_collections", "_json", "_signal", "_thread", "binascii", "builtins", "ctypes", "fcntl", "keyword",
               "marshal", "os", "resource", "select", "struct", "sys", "time"}
    owner: dict[str, str] = {}
    for part in harness.PARTS:
        text = (harness.HERE / part).read_text()
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert {a.name for a in node.names} <= allowed, (part, ast.dump(node))
            elif isinstance(node, ast.ImportFrom):
                assert node.module.startswith("r1kit.sandbox.harness."), (part, node.module)
        for node in tree.body:  # no two parts define the same top-level name (they share one namespace)
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            else:
                continue
            for name in names:
                assert owner.setdefault(name, part) == part, f"{name} is defined in {owner[name]} and {part}"
        assert len(text.splitlines()) <= 450


def test_cgroup_v2_plumbing(tmp_path, monkeypatch):
    """The v2 path on a stand-in directory (this machine's memory controller is on v1): the files it writes and
    reads. The kernel's side is what the adversarial suite measures where a cgroup exists."""
    from r1kit.sandbox import cgroup

    parent = tmp_path / "cg"
    parent.mkdir()
    (parent / "cgroup.controllers").write_text("cpu memory pids\n")
    (parent / "cgroup.subtree_control").write_text("memory pids\n")
    assert cgroup._v2_parent(parent) == parent
    (parent / "cgroup.controllers").write_text("cpu\n")
    assert cgroup._v2_parent(parent) is None  # no memory controller delegated: no cgroup
    monkeypatch.setattr(cgroup, "hierarchy", lambda: cgroup.Hierarchy("v2", {"unified": parent}))
    group = cgroup.Cgroup.create("r1kit-x", 128, 20)
    d = parent / "r1kit-x"
    assert (d / "memory.max").read_text() == str(128 << 20) and (d / "pids.max").read_text() == "20"
    assert (d / "memory.swap.max").read_text() == "0"
    (d / "cgroup.procs").write_text("")
    (d / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\n")
    (d / "memory.peak").write_text(str(64 << 20))
    (d / "memory.events").write_text("low 0\noom 1\noom_kill 2\n")
    assert group.kill_and_wait(1.0) and (d / "cgroup.kill").read_text() == "1"
    assert (group.cpu_s(), group.memory_peak_mb(), group.oom_kills()) == (1.5, 64.0, 2)
    for f in d.iterdir():
        f.unlink()
    group.remove()
    assert not d.exists()


def test_cgroup_mount_parsing(monkeypatch, tmp_path):
    from r1kit.sandbox import cgroup

    assert cgroup._below("/sys/fs/cgroup/memory", "/", "/a/b") == Path("/sys/fs/cgroup/memory/a/b")
    assert cgroup._below("/sys/fs/cgroup/memory", "/a", "/a/b") == Path("/sys/fs/cgroup/memory/b")
    assert cgroup._below("/sys/fs/cgroup/memory", "/a", "/c") is None
    mounts = cgroup._mounts()
    assert all(fstype in ("cgroup", "cgroup2") for _, _, fstype, _ in mounts)
