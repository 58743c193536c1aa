"""scripts/trace_prefix_reuse.py: the share of prompt blocks an unbounded prefix cache could reuse."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import trace_prefix_reuse as tpr

from sglang_cascade.core.traces import TraceRequest


def test_reuse_counts_only_each_prompts_leading_run_of_seen_blocks():
    trace = [
        TraceRequest("a", 0.0, 300, 1, hash_ids=[1, 2, 3]),
        TraceRequest("b", 1.0, 400, 1, hash_ids=[1, 2, 4, 3]),  # 1, 2 reused; 3 after a new block is not
        TraceRequest("c", 2.0, 200, 1, hash_ids=[9, 1]),  # starts new: nothing reused
    ]
    assert tpr.reuse(trace) == pytest.approx(2 / 9)
    assert tpr.reuse([TraceRequest("x", 0.0, 10, 1)]) == 0.0
