"""Router pieces without servers: circuit breaker, load parsing, replica messages, migration bodies, prefix hashes."""

from __future__ import annotations

import msgspec
import pytest

from sglang_cascade.core.views import RequestView
from sglang_cascade.router.gen_state import GenState
from sglang_cascade.router.health import apply_loads
from sglang_cascade.router.migration import RecomputeMigrator, make_migrator
from sglang_cascade.router.replicas import (
    ReplicaSync,
    ReplicaUpdate,
    StageRange,
    WorkerShare,
    decode_update,
    encode_update,
)
from sglang_cascade.router.workers import BreakerConfig, CircuitBreaker, WorkerPool


def test_circuit_breaker_opens_half_opens_and_closes():
    b = CircuitBreaker(BreakerConfig(failure_threshold=3, success_threshold=2, timeout_s=10, window_s=100))
    for t in range(3):
        assert b.allows(t)
        b.record(False, t)
    assert b.state == "open" and not b.allows(5)
    assert b.allows(13) and b.state == "half_open"
    b.record(False, 13)  # a failure in half-open re-opens
    assert b.state == "open" and not b.allows(14)
    assert b.allows(24)
    b.record(True, 24)
    b.record(True, 25)
    assert b.state == "closed"
    off = CircuitBreaker(BreakerConfig(failure_threshold=1, enabled=False))
    off.record(False, 0)
    assert off.allows(0)


def test_pool_membership_and_load_view():
    pool = WorkerPool(default_capacity=1000)
    a, b = pool.add("http://a:1/"), pool.add("http://b:2")
    with pytest.raises(ValueError, match="already"):
        pool.add("http://a:1")
    with pytest.raises(ValueError, match="http://"):
        pool.add("c:3")
    apply_loads(
        a,
        {
            "loads": [
                {"num_running_reqs": 3, "num_waiting_reqs": 1, "num_used_tokens": 500, "max_total_num_tokens": 4000},
                {"num_running_reqs": 2, "num_waiting_reqs": 0, "num_used_tokens": 100, "max_total_num_tokens": 4000},
            ]
        },
        now=1.0,
    )
    b.in_flight, b.in_flight_tokens = 2, 300
    b.peers["r2"] = (5, 700, 9.5)  # fresh peer share
    b.peers["r3"] = (100, 100, 0.0)  # stale: ignored
    view = pool.cluster_view(10.0)
    assert (view.loads[0].num_running, view.loads[0].num_waiting, view.loads[0].kv_used, view.loads[0].kv_capacity) == (
        5,
        1,
        600,
        8000,
    )
    assert (view.loads[1].num_running, view.loads[1].kv_used, view.loads[1].kv_capacity) == (7, 1000, 1000)
    v0 = pool.version
    pool.remove("http://a:1")
    assert pool.version == v0 + 1 and b.iid == 0 and a.removed and not a.usable(0)
    with pytest.raises(KeyError):
        pool.remove("http://a:1")


def test_replica_update_roundtrip_and_apply():
    pool = WorkerPool()
    w = pool.add("http://w:1")
    u = ReplicaUpdate(
        replica_id="x",
        seq=3,
        sent_at=1.0,
        workers=[WorkerShare("http://w:1", 4, 400), WorkerShare("http://unknown:9", 1, 1)],
        ranges=[StageRange("http://w:1", 0, 0, 512)],
    )
    u2 = decode_update(encode_update(u))
    assert u2 == u
    sync = ReplicaSync(pool, "me", None, [])
    sync.apply(u2, now=5.0)
    assert w.peers["x"] == (4, 400, 5.0) and sync.peer_ranges["x"][1][0].hi == 512
    sync.apply(ReplicaUpdate(replica_id="me", seq=1, sent_at=0, workers=[WorkerShare("http://w:1", 9, 9)]), 6.0)
    assert "me" not in w.peers  # own messages are ignored
    with pytest.raises(msgspec.ValidationError):
        decode_update(msgspec.msgpack.encode({"replica_id": 3}))


def test_recompute_continuation_body():
    body = {
        "text": "hello",
        "rid": "c1",
        "stream": False,
        "return_prompt_token_ids": True,
        "sampling_params": {
            "max_new_tokens": 50,
            "min_new_tokens": 10,
            "temperature": 0.7,
            "top_p": 0.9,
            "stop": ["\n"],
        },
        "lora_path": "x",
    }
    st = GenState(
        rid="c1", body=body, max_new=50, view=RequestView("c1", 0.0, 3), prompt_ids=[1, 2, 3], out_ids=[7, 8, 9, 10]
    )
    m = make_migrator("recompute")
    assert isinstance(m, RecomputeMigrator)
    out = m.continuation(st, None, "c1.1.5")
    assert out["input_ids"] == [1, 2, 3, 7, 8, 9, 10] and "text" not in out and out["rid"] == "c1.1.5"
    assert out["sampling_params"] == {
        "max_new_tokens": 46,
        "min_new_tokens": 6,
        "temperature": 0.7,
        "top_p": 0.9,
        "stop": ["\n"],
    }
    assert out["stream"] is True and out["lora_path"] == "x" and "return_prompt_token_ids" not in out
    assert body["sampling_params"]["max_new_tokens"] == 50  # the client's body is not mutated
    assert make_migrator("kv_transfer").mode.value == "kv_transfer"
    with pytest.raises(ValueError, match="bogus"):
        make_migrator("bogus")
    st.prompt_ids = None
    with pytest.raises(RuntimeError, match="prompt token ids"):
        m.continuation(st, None, "r")


def test_auto_migrator_follows_the_plan_and_feeds_the_measured_costs():
    import asyncio

    from sglang_cascade.core.decisions import Migration, MigrationMode
    from sglang_cascade.policies.migration_costs import CostsConfig, MigrationCosts
    from sglang_cascade.router.migration import AutoMigrator

    costs = MigrationCosts(CostsConfig(min_moves=1, min_spread=1.0))
    m = make_migrator("auto", costs)
    assert isinstance(m, AutoMigrator)
    pool = WorkerPool(BreakerConfig())
    src, dst = pool.add("http://a:1"), pool.add("http://b:2")
    view = RequestView("c1", 0.0, 3)
    st = GenState(rid="c1", body={}, max_new=8, view=view, prompt_ids=[1, 2, 3], out_ids=[7])
    bulk_calls = []

    async def fake_bulk(http, st_, s, d, rid):
        bulk_calls.append(rid)

    m.bulk = fake_bulk

    async def run():
        st.move_plan = Migration(view, 0, 1, MigrationMode.RECOMPUTE)
        assert m.start(None, st, src, dst, "c1.1") is None  # the planner chose recompute: nothing to copy
        await m.finish(None, st, src, dst, "c1.1", None)
        assert (st.move_mode, st.move_fallback) == ("recompute", "")
        st.move_plan = Migration(view, 0, 1, MigrationMode.KV_TRANSFER)
        fut = m.start(None, st, src, dst, "c1.2")
        assert fut is not None
        await fut
        assert bulk_calls == ["c1.2"]
        m._addr[dst.url] = None  # the destination turned out to have no plugin endpoint
        assert m.start(None, st, src, dst, "c1.3") is None  # known absent: no try
        await m.finish(None, st, src, dst, "c1.3", None)
        assert (st.move_mode, st.move_fallback) == ("recompute", "plugin_absent")

    asyncio.run(run())
    m.observe("kv_transfer", 500, 0.05)
    assert costs.stall(MigrationMode.KV_TRANSFER, 500) == pytest.approx(0.05)
    assert costs.stall(MigrationMode.RECOMPUTE, 500) is None
