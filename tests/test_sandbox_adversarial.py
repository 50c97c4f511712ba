"""Hostile programs against the sandbox (r1kit.sandbox): every one must be contained (the check after it) and must
score 0, i.e. not `pass`. Benign programs must pass, so the sandbox is not simply failing everything.

Each hostile program is judged by tests it cannot pass honestly (it does not define a correct `add`), so a pass
could only come from a forged verdict. Limits are tight so the suite stays fast on two cores.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

import pytest

from r1kit.sandbox import Limits, run_python
from sandbox_helpers import HARNESS_MARK, processes_with, requires_sandbox, survivors

pytestmark = requires_sandbox

ADD_TESTS = "assert add(2, 3) == 5\nassert add(-4, 4) == 0\n"
FAST = Limits(cpu_s=1, wall_s=2.0)
WRONG_ADD = "def add(a, b):\n    return a - b\n"


def judge(source: str, tests: str = ADD_TESTS, limits: Limits = FAST, **kw):
    """Run a hostile program against the add tests; it must score 0 and leave no process behind."""
    t0 = time.perf_counter()
    result = run_python(source, tests=tests, limits=limits, **kw)
    assert result.status != "pass", result
    assert time.perf_counter() - t0 < limits.wall_s + 4, "the call outlived its limits"
    left = survivors(settle_s=0.0)
    assert not left, f"sandbox processes outlived the call: {left}"
    return result


# ---- resources -------------------------------------------------------------------------------------------


def test_fork_bomb():
    r = judge("import os\nwhile True:\n    os.fork()\n")
    assert r.status == "error" and "Resource temporarily unavailable" in r.stderr


def test_forks_capped_by_the_process_limit():
    src = ("import os, time\nn = 0\ntry:\n    while n < 500:\n        if os.fork() == 0:\n            time.sleep(30)\n"
           "            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint('forked', n)\n" + WRONG_ADD)
    r = judge(src, limits=Limits(cpu_s=1, wall_s=2.0, processes=8))
    assert r.status == "fail"
    assert int(r.stdout.split()[1]) <= 8 - 2  # the judge and the program count too


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
    assert int(r.stdout) <= 12 - 2


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
    r = judge("import os\nprint(os.path.expanduser('~'), os.listdir('/root'))\n" + WRONG_ADD)
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
        assert r.status == "error" and ("Connection refused" in r.detail or "unreachable" in r.detail)
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
    assert run_python("def add(a, b):\n    return a + b\n", tests=tests, limits=FAST).status == "pass"


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
    assert run_python("def add(a, b):\n    return a + b\n", tests=ADD_TESTS, limits=FAST).status == "pass"


def test_benign_stdin_program_passes():
    src = "import sys\nnums = [int(x) for x in sys.stdin.read().split()]\nprint(sum(nums))\nprint('done')\n"
    r = run_python(src, stdin="1 2 3\n4\n", expected_stdout="10\ndone\n", limits=FAST)
    assert r.status == "pass" and r.stdout == "10\ndone\n"
    assert run_python(src, stdin="1 2\n", expected_stdout="10\ndone", limits=FAST).status == "fail"


def test_benign_tmp_files_threads_and_a_child_process():
    src = ("import os, threading\nopen('/tmp/a.txt', 'w').write('hello')\nout = []\n"
           "t = threading.Thread(target=lambda: out.append(open('/tmp/a.txt').read()))\nt.start()\nt.join()\n"
           "pid = os.fork()\nif pid == 0:\n    os._exit(7)\nassert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7\n"
           "def add(a, b):\n    return a + b if out == ['hello'] else None\n")
    assert run_python(src, tests=ADD_TESTS, limits=FAST).status == "pass"


def test_benign_standard_library():
    src = ("import collections, datetime, decimal, fractions, functools, hashlib, heapq, itertools, json, math\n"
           "import random, re, string, bisect, statistics, typing\n"
           "def add(a, b):\n    return int(fractions.Fraction(a) + int(decimal.Decimal(b)))\n")
    assert run_python(src, tests=ADD_TESTS, limits=FAST).status == "pass"


def test_benign_plain_values_round_trip():
    src = ("def echo(x):\n    return x\n"
           "def shapes():\n    return (1, [2.5, None], {'a': {1, 2}}, frozenset({3}), b'\\x00', 2 ** 100, -0.0, True, 1j)\n")
    tests = ("v = (1, [2.5, None], {'a': {1, 2}}, frozenset({3}), b'\\x00', 2 ** 100, -0.0, True, 1j)\n"
             "assert shapes() == v and type(shapes()[0]) is int and shapes()[7] is True\n"
             "assert echo({(1, 2): [3]}) == {(1, 2): [3]} and echo('é') == 'é' and echo(float('inf')) == float('inf')\n")
    r = run_python(src, tests=tests, limits=FAST)
    assert r.status == "pass", r


def test_benign_exception_types_reach_the_tests():
    src = "def root(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x ** 0.5\n"
    tests = "try:\n    root(-1)\n    raise AssertionError('no error')\nexcept ValueError as e:\n    assert 'negative' in str(e)\n"
    assert run_python(src, tests=tests, limits=FAST).status == "pass"


def test_benign_recursion_and_some_cpu():
    src = ("def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
           "def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n")
    r = run_python(src, tests="assert fib(22) == 17711\nassert depth(900) == 900\n", limits=FAST)
    assert r.status == "pass" and r.cpu_s > 0


def test_benign_output_under_the_cap_and_unicode():
    src = "print('λ→✓ ' * 1000)\ndef add(a, b):\n    return a + b\n"
    r = run_python(src, tests=ADD_TESTS, limits=FAST)
    assert r.status == "pass" and r.stdout.startswith("λ→✓ ")


def test_benign_helpers_from_a_trusted_setup():
    """HumanEval's shape: the tests use helpers of the prompt (setup), and call the candidate by another name."""
    setup = "def poly(xs, x):\n    return sum(c * x ** i for i, c in enumerate(xs))\n"
    src = setup + "def find_zero(xs):\n    return -xs[0] / xs[1]\n"
    tests = "def check(candidate):\n    assert abs(poly([2, 4], candidate([2, 4]))) < 1e-9\ncheck(find_zero)\n"
    assert run_python(src, tests=tests, setup=setup, call=["find_zero"], limits=FAST).status == "pass"


def test_no_sandbox_process_left_after_the_suite():
    assert not processes_with(HARNESS_MARK)
