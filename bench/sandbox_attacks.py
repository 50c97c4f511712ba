"""The attacks of issue 22 against `r1kit.sandbox`, each with the figure it reaches on this path (root or a normal
user; with a cgroup or none): forged verdicts, memory past the limits, processes outliving the call, CPU time
unaccounted, a flooded judge, correct programs judged wrong. tests/test_sandbox_adversarial.py asserts the limits;
this prints how far each attack got.

    .venv/bin/python bench/sandbox_attacks.py --json bench/results/sandbox_attacks.json
    python tests/sandbox_as_user.py USER  # the suite as a normal user; for this script as one, see BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from r1kit.sandbox import Limits, run_python

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from sandbox_helpers import processes_of  # noqa: E402

WRONG_ADD = "def add(a, b):\n    return a - b\n"
RAW = "import os, struct, json\ndef send(data):\n    os.write(4, struct.pack('>I', len(data)) + data)\n"
HOG = ("import os, time\nfor i in range({n}):\n    if os.fork() == 0:\n        try:\n            x = bytearray({mb} << 20)\n"
       "            for j in range(0, len(x), 4096):\n                x[j] = 1\n            os.write(1, b'+')\n"
       "            time.sleep(2)\n        except MemoryError:\n            pass\n        os._exit(0)\n"
       "while True:\n    try:\n        os.wait()\n    except ChildProcessError:\n        break\n")


def attacks() -> list[tuple[str, str, dict]]:
    """(name, the figure before the fix as issue 22 measured it, run_python arguments)."""
    add = "assert add(2, 3) == 5\nassert add(-4, 4) == 0\n"
    return [
        ("shadow range/abs/all (call left out)", "a wrong add passed", dict(
            source="def range(*a):\n    return []\ndef abs(x):\n    return 0\ndef all(x):\n    return True\n" + WRONG_ADD,
            tests="for i in range(3):\n    assert add(i, 1) == i + 1\nassert abs(add(2, 3) - 5) < 1\n")),
        ("SysV shm, MB reached (memory_mb 512)", "1,536 MB", dict(
            source="import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.shmat.restype = ctypes.c_void_p\n"
                   "mb = 0\nwhile mb < 4096:\n    i = libc.shmget(0, 64 << 20, 0o1600)\n    if i < 0:\n        break\n"
                   "    ctypes.memset(libc.shmat(i, None, 0), 1, 64 << 20)\n    mb += 64\nprint(mb)\n")),
        ("memfd, MB in one process (memory_mb 512)", "944 MB", dict(
            source="import os\nmb = 0\ntry:\n    fd = os.memfd_create('x')\n    while mb < 4096:\n"
                   "        os.write(fd, b'x' * (1 << 20))\n        mb += 1\nexcept OSError:\n    pass\nprint(mb)\n")),
        ("empty files in /tmp (count; kernel memory)", "272,500 files, ~340 MB", dict(
            source="n = 0\ntry:\n    while n < 400000:\n        open(f'/tmp/f{n}', 'w').close()\n        n += 1\n"
                   "except OSError:\n    pass\nprint(n)\n", limits=Limits(cpu_s=10, wall_s=20))),
        ("8 processes x 150 MB (memory_mb 256)", "per process only", dict(
            source=HOG.format(n=8, mb=150), limits=Limits(cpu_s=5, wall_s=10, memory_mb=256))),
        ("pin + renice the judge, 6 spinners: alive after return", "8-12 processes, 5-6 s", dict(
            source="import os\nfor f in (lambda: os.sched_setaffinity(1, {0}), lambda: os.setpriority(0, 1, 19)):\n"
                   "    try:\n        f()\n    except OSError:\n        pass\nfor _ in range(6):\n"
                   "    if os.fork() == 0:\n        while True:\n            pass\n" + WRONG_ADD, tests=add)),
        ("cpu_s of spinners when the host kills", "0.002 s", dict(
            source="import os, time\ndef spin():\n    r, w = os.pipe()\n    for _ in range(2):\n"
                   "        if os.fork() == 0:\n            while time.process_time() < 0.25:\n                pass\n"
                   "            os.write(w, b'x')\n            while True:\n                pass\n    got = b''\n"
                   "    while len(got) < 2:\n        got += os.read(r, 2)\n    return True\n",
            tests="assert spin()\nimport time\ntime.sleep(60)\n", limits=Limits(cpu_s=30, wall_s=8))),
        ("SIGINT to the judge", "judge killed (error)", dict(
            source="import os, signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nfor p in (1, 0, -1):\n    try:\n"
                   "        os.kill(p, signal.SIGINT)\n    except OSError:\n        pass\n" + WRONG_ADD, tests=add)),
        ("8 MB answer: judge's peak RSS", "417 MB", dict(
            source=RAW + "def add(a, b):\n    send(b'{\"id\": \"0\", \"value\": \"' + b'x' * (8 << 20) + b'\"}')\n"
                         "    return 0\n", tests=add)),
        ("forged list of 150,000 names: judge's peak RSS", "193 MB (400,000)", dict(
            source=RAW + "send(json.dumps({'load': 'ok', 'names': [f'n{i}' for i in range(150000)]}).encode())\n"
                         "import time\ntime.sleep(5)\n", tests=add)),
        ("set of 60,000 ints of one hash", "ran until the host killed it", dict(
            source=RAW + "import sys\ndef add(a, b):\n    p = 2 ** 61 - 1\n"
                         "    items = [{'i': format(i * p, 'x')} for i in range(1, 60001)]\n"
                         "    call_id = sys._getframe(1).f_locals['request']['id']\n"
                         "    send(json.dumps({'id': call_id, 'value': {'s': items}}).encode())\n    return 0\n",
            tests=add)),
        ("Counter, namedtuple, 10^5000 returned", "error (cannot pass a Counter; int over 4,300 digits)", dict(
            source="import collections\ndef f():\n    return collections.Counter('aab'), "
                   "collections.namedtuple('P', 'x')(1), 10 ** 5000\n",
            tests="c, p, n = f()\nassert c == {'a': 2, 'b': 1} and p == (1,) and n == 10 ** 5000\n")),
        ("vsock socket", "created", dict(
            source="import socket\nsocket.socket(40, socket.SOCK_STREAM)\nprint('made')\n")),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    rows = []
    for name, before, kw in attacks():
        kw.setdefault("limits", Limits(cpu_s=2, wall_s=4))
        t0 = time.perf_counter()
        r = run_python(**kw)
        seconds = time.perf_counter() - t0
        alive = len(processes_of(r.extra["uids"]))
        rows.append({"attack": name, "before": before, "status": r.status, "detail": r.detail[:120],
                     "stdout": r.stdout.strip()[:60], "alive_after": alive, "cpu_s": round(r.cpu_s, 3),
                     "wall_s": round(seconds, 2), **{k: r.extra.get(k) for k in (
                         "cgroup", "memory_peak_mb", "oom_kills", "judge_max_rss_kb")}})
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"uid": os.getuid(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
