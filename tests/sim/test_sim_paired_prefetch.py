"""Paired GPU-to-GPU prefetch in the simulator: instances 2k and 2k+1 share host<->GPU KV moves."""

from __future__ import annotations

from sglang_cascade.core import CostModel
from sglang_cascade.core.traces import load_trace
from sglang_cascade.sim import SimConfig, simulate
from sglang_cascade.sim.parking import kv_move_fn


def test_paired_move_is_faster_than_direct_pcie_for_large_moves():
    cm = CostModel.for_names("llama-3-8b", "h100")
    direct, paired = kv_move_fn(cm), kv_move_fn(cm, paired=True)
    assert paired(2048, "h2d") < direct(2048, "h2d")
    assert paired(1, "h2d") <= direct(1, "h2d")  # never slower: the faster path is taken


def test_parking_with_paired_prefetch_loses_nothing_and_is_not_slower():
    trace = load_trace("sharegpt", num_requests=300, rate=12.0, seed=1)
    out = {}
    for paired in (False, True):
        cfg = SimConfig(
            model="llama-3-8b",
            gpu="h100",
            instances=2,
            router="round_robin",
            scheduler="cascade",
            kv_capacity=24000,
            host_kv_tokens=200000,
            paired_prefetch=paired,
            check_invariants=True,
        )
        out[paired] = simulate(trace, cfg).metrics
    for m in out.values():
        assert m["completed"] == 300 and m["parks"] > 0 and m["parks"] == m["resumes"]
    assert out[True]["e2e_mean"] <= out[False]["e2e_mean"] * 1.0001
