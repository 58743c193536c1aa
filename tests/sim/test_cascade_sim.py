"""Cascade and bucket routers inside the simulator: no request lost or duplicated, stages respected."""

from __future__ import annotations

import pytest

from sglang_cascade.core.traces import TraceRequest, load_trace
from sglang_cascade.sim import SimConfig, simulate
from sglang_cascade.sim.cluster import build


def _check_all_once(trace, res):
    rids = [r.rid for r in res.requests]
    assert len(rids) == len(set(rids)), "a request finished twice"
    assert set(rids) | {t.rid for t in res.rejected} == {t.rid for t in trace}, "a request was lost"
    true_out = {t.rid: t.output_len for t in trace}
    assert all(r.output_len == true_out[r.rid] for r in res.requests)


@pytest.mark.parametrize(
    "router",
    [
        "cascade",  # the default: the plan checker may keep one stage (no move) where staging does not pay
        "cascade:check_staging=0,mode=recompute",  # the DP's stages, unchecked: moves happen
        "cascade:check_staging=0,mode=kv_transfer",
        "cascade:check_staging=0,central=1",
        "cascade:migration=0",
        "bucket",
    ],
)
def test_no_request_lost_or_duplicated(router):
    trace = load_trace("sharegpt", num_requests=400, rate=25.0, seed=1)
    res = simulate(trace, SimConfig(instances=4, router=router, check_invariants=True))
    _check_all_once(trace, res)
    if "check_staging=0" in router:
        assert res.metrics["migrations"] > 0
    if "migration=0" in router or router == "bucket":
        assert res.metrics["migrations"] == 0


def test_migrations_follow_stage_bounds():
    # fixed stages: [0, 300) on instance 0, [300, 1000) on 1, [1000, inf) on 2
    trace = [TraceRequest(f"r{i}", 0.05 * i, 100 + 10 * i, 1200) for i in range(12)]
    trace.append(TraceRequest("exact", 0.7, 300, 5))  # exactly at a bound: stage 1
    trace.append(TraceRequest("huge", 0.8, 5000, 5))  # longer than every range: last stage
    cfg = SimConfig(
        instances=3,
        router="cascade",
        router_options={"bounds": "300/1000", "counts": "1/1/1", "refine": 0, "balance": 0},
    )
    sim = build(cfg, trace)
    sim.run(trace)
    done = {r.rid: r for r in sim.finished}
    assert len(done) == len(trace)
    for i in range(12):
        r = done[f"r{i}"]
        assert r.instance == 2  # ended in the last stage
        assert r.migrations == 2  # once per boundary, never more
    assert done["exact"].instance == 1 and done["exact"].migrations == 0
    assert done["huge"].instance == 2 and done["huge"].migrations == 0


def test_one_instance_cascade_and_one_length():
    trace = [TraceRequest(f"r{i}", 0.1 * i, 512, 64) for i in range(30)]
    res = simulate(trace, SimConfig(instances=1, router="cascade"))
    _check_all_once(trace, res)
    assert res.metrics["migrations"] == 0
    res = simulate(trace, SimConfig(instances=4, router="cascade"))
    _check_all_once(trace, res)
