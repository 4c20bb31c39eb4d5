"""What a new user types and installs stays true: README commands, CI, the lock, the version flag."""

import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def code_block_after(heading: str) -> list[str]:
    section = README.split(heading, 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_quick_start_is_two_commands_and_ci_runs_the_same_test_command():
    setup, tests = code_block_after("## Quick start")
    assert setup == "scripts/setup.sh && .venv/bin/onionpost demo"
    assert code_block_after("## Tests") == [tests]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci, f"the README's test command {tests!r} is not a line of .ci/run"
    assert "bash scripts/setup.sh --dev" in ci


def test_every_declared_dependency_is_pinned_in_the_lock_with_hashes():
    lock = (ROOT / "requirements" / "lock.txt").read_text()
    pinned = {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", lock, re.M)}
    declared = [*PYPROJECT["project"]["dependencies"], *PYPROJECT["project"]["optional-dependencies"]["test"]]
    missing = [r for r in declared if requirement_name(r) not in pinned]
    assert not missing, f"not in requirements/lock.txt (run scripts/lock.sh): {missing}"
    assert lock.count("--hash=sha256:") >= len(pinned)


def test_the_locked_build_backend_is_the_one_pyproject_asks_for():
    build_in = [line for line in (ROOT / "requirements" / "build.in").read_text().splitlines()
                if line and not line.startswith("#")]
    assert build_in == PYPROJECT["build-system"]["requires"]


def test_every_package_folder_is_installed_under_onionpost():
    if not (ROOT / "onionproto").is_dir():
        pytest.skip("runs in the repository (scripts/check_latest.sh runs the tests beside an installed wheel)")
    tool = PYPROJECT["tool"]["setuptools"]
    assert all(name == "onionpost" or name.startswith("onionpost.") for name in tool["packages"])
    for package, folder in tool["package-dir"].items():
        assert (ROOT / folder / "__init__.py").exists(), (package, folder)
    folders = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    mapped = {Path(folder).parts[0] for folder in tool["package-dir"].values()}
    assert folders <= mapped, f"package folders not installed as onionpost.*: {folders - mapped}"


def test_version_flag():
    result = subprocess.run([sys.executable, "-m", "onionpost", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"onionpost {version('onionpost')}"
