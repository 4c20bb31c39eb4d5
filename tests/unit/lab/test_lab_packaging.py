"""The lab is installed as onionpost.lab and its extra is in both locks (scripts/lock.sh)."""

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

pytestmark = pytest.mark.timeout(30)


def pinned(lock: str) -> set[str]:
    text = (ROOT / "requirements" / lock).read_text()
    return {m.group(1).lower().replace("_", "-") for m in re.finditer(r"^([A-Za-z0-9_.-]+)==\S+", text, re.M)}


@pytest.mark.parametrize("lock", ["lock.txt", "dev-lock.txt"])
def test_the_lab_extra_is_pinned_in_both_locks(lock):
    lab = PYPROJECT["project"]["optional-dependencies"]["lab"]
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in lab}
    assert {"dpkt", "numpy", "scikit-learn", "matplotlib"} <= names
    assert names <= pinned(lock), f"run scripts/lock.sh: {names - pinned(lock)} missing from {lock}"


def test_lab_folder_is_the_onionpost_lab_package():
    tool = PYPROJECT["tool"]["setuptools"]
    assert "onionpost.lab" in tool["packages"]
    assert tool["package-dir"]["onionpost.lab"] == "lab"
