"""The sandbox's API: limits, errors without bubblewrap, the unsafe opt-in, the pool, the report check, the
seccomp program and the plain-data codec. (Hostile programs: test_sandbox_adversarial.py.)"""

from __future__ import annotations

import time

import pytest

from r1kit.errors import UserError
from r1kit.sandbox import Job, Limits, Result, run_many, run_python, same_output
from r1kit.sandbox.harness import judge as harness
from r1kit.sandbox import run as sandbox_run
from sandbox_helpers import requires_sandbox

FAST = Limits(cpu_s=1, wall_s=2.0)


def test_limits_are_checked():
    with pytest.raises(UserError, match="wall_s"):
        Limits(wall_s=0)
    with pytest.raises(UserError, match="memory_mb"):
        Limits(memory_mb=-1)
    with pytest.raises(UserError, match="processes"):
        Limits(processes=2)


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
def test_expected_stdout_is_compared_on_the_host():
    assert run_python("print(' 42 ')", expected_stdout=" 42", limits=FAST).status == "pass"
    r = run_python("print(41)", expected_stdout="42", limits=FAST)
    assert r.status == "fail" and "differs" in r.detail


@requires_sandbox
def test_user_namespace_mode(monkeypatch):
    """The mode a non-root user gets (here run by root, so only its plumbing is checked, not RLIMIT_NPROC)."""
    monkeypatch.setattr(sandbox_run, "_as_root", lambda: False)
    argv = sandbox_run._bwrap_argv("/usr/bin/bwrap", FAST)
    assert "--unshare-user" in argv and "--cap-add" not in argv
    assert run_python("def add(a, b):\n    return a + b\n", tests="assert add(1, 2) == 3", limits=FAST).passed
    assert run_python("import sys\nsys.exit(0)", tests="assert add(1, 2) == 3", limits=FAST).status == "error"


def test_root_mode_keeps_only_setuid_capabilities(monkeypatch):
    monkeypatch.setattr(sandbox_run, "_as_root", lambda: True)
    monkeypatch.setattr(sandbox_run, "_bwrap_help", lambda bwrap: "")
    argv = sandbox_run._bwrap_argv("/usr/bin/bwrap", FAST)
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--cap-add"] == ["CAP_SETUID", "CAP_SETGID"]
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
    prog = harness.seccomp_filter(machine)
    assert prog[0] == (0x20, 0, 0, 4) and prog[1][3] == harness._ARCH[machine]
    for i, (code, jt, jf, _) in enumerate(prog):
        if code & 0x07 == 0x05:  # a jump: both targets inside the program
            assert i + 1 + max(jt, jf) < len(prog)
    assert prog[-1] == (0x06, 0, 0, harness._ALLOW)
    col = 0 if machine == "x86_64" else 1
    denied = {k for code, _, _, k in prog if code == 0x15}
    assert {harness._DENY["unshare"][col], harness._DENY["ptrace"][col], harness._CLONE[col]} <= denied
    assert harness.seccomp_filter("riscv64") is None


def test_seccomp_program_decides_like_the_table():
    """Interpret the BPF program on a few system calls: the denied get EPERM, clone only without namespaces."""

    def run(prog, nr, arg0=0, arch=harness._ARCH["x86_64"]):
        data = {0: nr, 4: arch, 16: arg0}
        pc, acc = 0, 0
        while True:
            code, jt, jf, k = prog[pc]
            if code == 0x20:
                acc, pc = data[k], pc + 1
            elif code == 0x06:
                return k
            else:
                taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
                pc += 1 + (jt if taken else jf)

    prog = harness.seccomp_filter("x86_64")
    eperm = harness._ERRNO | harness._EPERM
    assert run(prog, 272) == eperm  # unshare
    assert run(prog, 101) == eperm  # ptrace
    assert run(prog, 0) == harness._ALLOW  # read
    assert run(prog, 56, arg0=0x003D0F00) == harness._ALLOW  # clone of a thread
    assert run(prog, 56, arg0=0x10000000 | 0x11) == eperm  # clone(CLONE_NEWUSER)
    assert run(prog, 435) == harness._ERRNO | harness._ENOSYS  # clone3
    assert run(prog, 302, arg0=0) == harness._ALLOW and run(prog, 302, arg0=1) == eperm  # prlimit64
    assert run(prog, 0x40000000 + 1) == eperm  # x32
    assert run(prog, 0, arch=0x40000003) == harness._KILL  # i386


def test_codec_round_trip_and_refusals():
    value = (1, [2.5, None, True], {"k": {1, 2}, 3: b"\x00"}, frozenset({4}), 1 + 2j, 2 ** 80)
    assert harness.decode(harness.encode(value)) == value

    class Liar(int):
        pass

    with pytest.raises(TypeError):
        harness.encode(Liar(3))
    with pytest.raises(TypeError):
        harness.encode(object())
    for junk in ({"x": 1}, {"t": 1}, {"d": [[1]]}, {"c": ["a", 1]}, {"t": [], "s": []}):
        with pytest.raises(ValueError):
            harness.decode(junk)


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
