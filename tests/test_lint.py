"""The project's lint and format rules (pyproject's [tool.ruff]) hold on every Python file we ship."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREES = ["sglang_cascade", "tests", "scripts", "examples"]
RUFF = shutil.which("ruff")

pytestmark = pytest.mark.skipif(RUFF is None, reason="ruff is not installed (pip install -e '.[test]')")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RUFF, *args, *TREES], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_check_passes():
    res = _run("check", "--output-format", "concise")
    assert res.returncode == 0, res.stdout + res.stderr


def test_ruff_format_is_applied():
    res = _run("format", "--check")
    assert res.returncode == 0, "run `ruff format sglang_cascade tests scripts examples`:\n" + res.stdout + res.stderr
