"""policies/prefix_affinity.py and cascade's ``affinity`` option: a staged cascade prefers the member that was
sent the prompt's leading blocks, by the prefill seconds its radix cache saves."""

from __future__ import annotations

import pytest

from sglang_cascade.core import CostModel
from sglang_cascade.core.traces import load_trace
from sglang_cascade.core.views import ClusterView, InstanceLoad, RequestView
from sglang_cascade.policies.balance import PrefillTimes
from sglang_cascade.policies.prefix_affinity import PrefixTrees, affinity_credit
from sglang_cascade.policies.registry import PolicyContext, make_router
from sglang_cascade.sim import SimConfig, simulate

CM = CostModel.for_names("llama-3.1-8b", "h100")


def test_trees_match_leading_runs_and_keep_the_most_recent():
    t = PrefixTrees(2, cap_blocks=3)
    t.insert(0, [1, 2, 3])
    assert t.matched(0, [1, 2, 9]) == 2 and t.matched(1, [1]) == 0
    t.insert(0, [4])  # capacity 3: the oldest (1) goes
    assert t.matched(0, [1, 2]) == 0 and t.matched(0, [2, 3, 4]) == 3
    t.insert(1, [5, 6], cap_blocks=1)
    assert list(t.trees[1]) == [6]


def test_credit_is_the_prefill_time_saved_in_slo_units():
    t = PrefixTrees(3, 100)
    t.insert(1, [1, 2, 3, 4])
    t.insert(2, [1, 2])
    ps = PrefillTimes(CM)
    credit, saved = affinity_credit(t, [0, 1, 2], [1, 2, 3, 4], 8000, ps, weight=2.0, slo_ttft=2.0)
    assert 0 not in credit and saved == {1: 7999, 2: 4000}
    assert credit[1] == pytest.approx(-2.0 * (ps(8000) - ps(1)) / 2.0)
    assert credit[1] < credit[2] < 0  # more blocks held, more credit
    assert affinity_credit(t, [1], [], 8000, ps, 1.0, 2.0) == ({}, {})
    assert affinity_credit(t, [1], [1], 8000, ps, 0.0, 2.0) == ({}, {})


def _router(affinity: float):
    ctx = PolicyContext(CM, 4, 0, [(1000, 100)] * 50, 4.0)
    return make_router(f"cascade:bounds=4096,counts=2/2,refine=0,balance=0,affinity={affinity:g}", ctx)


def test_cascade_sends_a_shared_prefix_back_to_the_member_that_holds_it():
    loads = [InstanceLoad(i, kv_capacity=400_000) for i in range(4)]
    cv = ClusterView(loads, 0.0)
    doc = list(range(30))
    for affinity, same in ((1.0, True), (0.0, False)):
        r = _router(affinity)
        first = r.route(RequestView("a", 0.0, 16000, block_hashes=tuple(doc + [100])), cv, 0.0)
        assert first in (2, 3)  # a 16K prompt enters the long stage
        nxt = r.route(RequestView("b", 0.0, 16000, block_hashes=tuple(doc + [101])), cv, 0.0)
        assert (nxt == first) is same  # without affinity the picker spreads by pending prefill
        other = r.route(RequestView("c", 0.0, 16000, block_hashes=tuple(range(500, 531))), cv, 0.0)
        assert other != first or not same  # nothing shared: no pull


def test_affinity_pays_where_the_engine_reuses_prefixes():
    """On a Mooncake window with the radix cache modelled, affinity raises the hit rate and lowers mean E2E."""
    reqs = load_trace("mooncake", num_requests=1500, rate=6.0)
    got = {}
    for a in (0, 1):
        cfg = SimConfig(model="llama-3.1-8b", instances=8, router=f"cascade:affinity={a}", scheduler="sglang")
        got[a] = simulate(reqs, cfg).metrics
    assert got[1]["prefix_hit_rate"] > 2 * got[0]["prefix_hit_rate"]
    assert got[1]["e2e_mean"] < got[0]["e2e_mean"]


def test_one_stage_affinity_is_least_load_with_cached_tokens_off_the_load():
    """Pooled (one stage): least_load's choice, each worker's load less affinity x the prompt tokens its cache
    would save; a request without hashes gets exactly least_load's decision."""
    ctx = PolicyContext(CM, 3, 0, [(1000, 100)] * 50, 4.0)
    r = make_router("cascade:counts=3,affinity=3", ctx)
    loads = [InstanceLoad(i, kv_capacity=400_000, published_at=1.0) for i in range(3)]
    cv = ClusterView(loads, 1.0)
    doc = tuple(range(20))
    first = r.route(RequestView("a", 0.0, 10000, block_hashes=doc + (100,)), cv, 1.0)
    assert first == 0  # all equal: the first worker, as least_load
    # worker 0 now carries 10K dispatched tokens; a 10K prompt sharing 20 of 21 blocks saves ~9.5K there:
    # 10K - 3 x 9.5K < 0 -> back to worker 0; least_load alone would pick worker 1
    assert r.route(RequestView("b", 0.0, 10000, block_hashes=doc + (101,)), cv, 1.0) == 0
    assert r.route(RequestView("c", 0.0, 10000), cv, 1.0) == 1  # no hashes: least_load's choice
    assert r.route(RequestView("d", 0.0, 10000, block_hashes=tuple(range(900, 921))), cv, 1.0) == 2


def test_ties_go_to_the_smallest_cache_so_sessions_spread_over_an_idle_cluster():
    """An idle cluster (every load equal and unchanging): new prefixes go to the worker holding the fewest blocks,
    as cache_aware's smallest tree, instead of all to the first worker; a session's next turn still follows its
    cached prefix. Both in one stage and staged."""
    for opts, n in (("counts=2", 2), ("bounds=100000,counts=2/1", 3)):
        ctx = PolicyContext(CM, n, 0, [(1000, 100)] * 50, 4.0)
        r = make_router(f"cascade:{opts},affinity=3,refine=0,balance=0", ctx)
        loads = [InstanceLoad(i, kv_capacity=400_000, published_at=float(i)) for i in range(n)]
        placed = {}
        for s in range(2):  # two sessions' first turns, then their second turns
            placed[s] = r.route(
                RequestView(f"s{s}", 0.0, 2000, block_hashes=tuple(range(100 * s, 100 * s + 10))),
                ClusterView(loads, 0.0),
                0.0,
            )
            r.pooled.delta = [0] * n  # (one stage: forget the dispatch deltas, so the loads stay tied)
            r.picker.pending.clear()
        assert placed[0] != placed[1] and {placed[0], placed[1]} <= {0, 1}, (opts, placed)
        for s in range(2):
            nxt = r.route(
                RequestView(f"t{s}", 0.0, 3000, block_hashes=tuple(range(100 * s, 100 * s + 15))),
                ClusterView(loads, 0.0),
                0.0,
            )
            assert nxt == placed[s], opts
