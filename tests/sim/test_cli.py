from __future__ import annotations

import subprocess
import sys

import pytest

from sglang_cascade.cli import main
from sglang_cascade.core import CostModel
from sglang_cascade.policies.registry import PolicyContext, make_router


def test_cli_lists_commands_and_rejects_unknown(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("simulate", "compare", "plan", "optimal", "analyze", "costmodel", "router"):
        assert cmd in out
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_unknown_policy_name_is_a_clear_error():
    ctx = PolicyContext(cost_model=CostModel.for_names("llama-3-8b", "h100"))
    with pytest.raises(ValueError, match="unknown router 'nope'; choose one of"):
        make_router("nope", ctx)


def test_console_module_runs():
    out = subprocess.run([sys.executable, "-m", "sglang_cascade", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "simulate" in out.stdout
