"""Run the sandbox's tests as an unprivileged user, from root: the user-namespace path most users get.

    python tests/sandbox_as_user.py USER [pytest arguments]

`make test` runs this when SANDBOX_TEST_USER names a user (.ci/run creates one). The user needs an interpreter it
may run: this virtualenv's when it can, else the system's python3.X of the same version (a venv's base interpreter
may sit under /root, which the user cannot enter), with this virtualenv's site-packages and src/ on its path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_sandbox.py", "tests/test_sandbox_adversarial.py"]


def as_user(user: str, argv: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", "env", "-i", *[f"{k}={v}" for k, v in (env or {}).items()],
                           *argv], cwd=ROOT, **kw)


def interpreter(user: str) -> str:
    """A Python of this one's version that `user` can run."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [sys.executable, os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
                  shutil.which(f"python{version}", path="/usr/local/bin:/usr/bin:/bin")]
    for candidate in filter(None, candidates):
        probe = as_user(user, [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                        capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    sys.exit(f"sandbox_as_user: no Python {version} that {user} may run (tried {', '.join(filter(None, candidates))})")


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    user = sys.argv[1]
    if os.geteuid() != 0:
        sys.exit("sandbox_as_user: run as root (it switches to USER with runuser)")
    if as_user(user, ["test", "-r", str(ROOT / TESTS[1])]).returncode != 0:
        sys.exit(f"sandbox_as_user: {user} cannot read {ROOT} (clone the repository where other users may read it)")
    python = interpreter(user)
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{ROOT / 'src'}:{sysconfig.get_paths()['purelib']}",
           "R1KIT_REQUIRE_SANDBOX": os.environ.get("R1KIT_REQUIRE_SANDBOX", "")}
    print(f"sandbox_as_user: the sandbox's tests as {user} (a user namespace), with {python}", flush=True)
    done = as_user(user, [python, "-m", "pytest", "-p", "no:cacheprovider", *TESTS, *sys.argv[2:]], env)
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
