"""scripts/eval_e2e_floor.py: the contention-free E2E floor no router can beat."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import eval_e2e_floor as ef

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.traces import TraceRequest
from sglang_cascade.sim import SimConfig, simulate


def _cm():
    return CostModel.for_names("llama-3.1-8b", "h100", 1)


def test_floor_is_a_lone_request_and_a_cached_prefix_lowers_it():
    cm = _cm()
    a = TraceRequest("a", 0.0, 3000, 5, hash_ids=[1, 2, 3, 4, 5, 6])
    b = TraceRequest("b", 1.0, 3000, 5, hash_ids=[1, 2, 3, 4, 5, 7])  # five leading blocks seen: 2560 tokens
    f = ef.floors([a, b], cm, 8192, 512, {})
    decode = sum(cm.iteration_time(0, 0.0, 1, kv, kv) for kv in range(3001, 3005))
    assert f[0] == pytest.approx(cm.batch_time(prefill=[(3000, 0)]) + decode)
    assert f[1] == pytest.approx(cm.batch_time(prefill=[(440, 2560)]) + decode)
    chunked = ef.floors([TraceRequest("c", 0.0, 3000, 1)], cm, 1024, 512, {})[0]
    assert chunked == pytest.approx(cm.isolated_prefill_time(3000, 1024))


def test_no_simulated_router_beats_the_floor():
    rng = np.random.default_rng(0)
    trace = [
        TraceRequest(f"r{i}", 0.05 * i, int(rng.integers(100, 6000)), int(rng.integers(2, 60)),
                     hash_ids=[int(rng.integers(0, 3))] + [1000 + i])
        for i in range(120)
    ]  # fmt: skip
    cm = _cm()
    floor = ef.floors(trace, cm, 8192, 512, {})
    for router in ("least_load", "cascade"):
        res = simulate(trace, SimConfig(model="llama-3.1-8b", gpu="h100", instances=2, router=router))
        e2e = {r.rid: r.finish_time - r.arrival for r in res.requests}
        assert all(e2e[t.rid] >= f - 1e-9 for t, f in zip(trace, floor)), router
        assert np.mean([e2e[t.rid] for t in trace]) > floor.mean()  # two instances at 20 req/s: queueing


def test_best_baseline_ignores_cascades_variants():
    runs = {"least_load": ([1.5, 2.5], [9.0]), "cache_aware": ([2.5], [7.0]), "cascade": ([1.0], [1.0])}
    assert ef.best(runs, 0) == ("least_load", 2.0)  # the seeds' mean
    assert ef.best(runs, 1) == ("cache_aware", 7.0)
