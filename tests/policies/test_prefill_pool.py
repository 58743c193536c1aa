"""Cascade's prefill pool (``cascade:prefill_pool=auto|<count>``, policies/prefill_pool.py): long prompts are
prefilled on the pool's instances and move to the decode side after their first token."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.decisions import MigrationMode
from sglang_cascade.core.traces import TraceRequest, load_trace
from sglang_cascade.core.views import ClusterView, InstanceLoad, RequestView
from sglang_cascade.policies.balance import PrefillTimes
from sglang_cascade.policies.pool_model import best_pool_size, pool_latencies
from sglang_cascade.policies.prefill_pool import KV_HEADROOM, PrefillPool, parse_pool_option, size_prefill_pool
from sglang_cascade.policies.prefix_affinity import PrefixTrees
from sglang_cascade.policies.registry import PolicyContext, make_router
from sglang_cascade.policies.stage_model import QoEConfig
from sglang_cascade.sim import SimConfig, simulate


@pytest.fixture(scope="module")
def cm():
    return CostModel.for_names("llama-3-8b", "h100")


def cluster(n, now=0.0):
    return ClusterView([InstanceLoad(i, kv_capacity=400000, published_at=now) for i in range(n)], now)


def test_the_option_parses_and_refuses_nonsense():
    assert parse_pool_option("off") == 0 and parse_pool_option(0) == 0
    assert parse_pool_option("auto") is None
    assert parse_pool_option("3") == 3
    with pytest.raises(ValueError, match="prefill_pool"):
        parse_pool_option("many")
    with pytest.raises(ValueError, match=">= 0"):
        parse_pool_option("-1")


def test_fixed_pool_prefills_long_prompts_and_hands_them_to_the_decode_side(cm):
    r = make_router("cascade", PolicyContext(cost_model=cm, num_instances=4), counts="2", prefill_pool="2", pool_hold=0)
    cv = cluster(4)
    long_a, long_b = RequestView("a", 0, 20000), RequestView("b", 0, 20000)
    short = RequestView("s", 0, 300)
    got_a, got_b = r.route(long_a, cv, 0.0), r.route(long_b, cv, 0.0)
    assert {got_a, got_b} == {2, 3}  # the pool is the last two; the second prompt queues on the idle member
    assert r.route(short, cv, 0.0) in (0, 1)  # short prompts stay on the decode side
    assert r.migration_bound(long_a, got_a) == 20001  # leaves right after its first token
    assert r.migration_bound(short, 0) is None  # one decode stage: no bound
    long_a.output_len = 1
    m = r.migrate(long_a, got_a, cv, 0.5)
    assert m is not None and m.dst in (0, 1) and m.mode == MigrationMode.KV_TRANSFER
    assert r.stats["pool_prefills"] == 2
    few = make_router("cascade", PolicyContext(cost_model=cm, num_instances=2), prefill_pool="3")
    assert few.pool.members == [1] and few.plan.members == [[0]]  # two workers left: one prefills, one decodes
    assert make_router("cascade", PolicyContext(cost_model=cm, num_instances=1), prefill_pool="3").pool is None


def test_auto_pool_and_the_options_it_does_not_combine_with(cm):
    ctx = PolicyContext(cost_model=cm, num_instances=4)
    assert make_router("cascade", ctx, counts="4").pool is None  # auto (the default) with a fixed plan: no pool
    # with the plan checker an auto pool's sizes are among its candidates (pool_check); pool_check=0: no pool
    assert make_router("cascade", ctx, plan_check=True).pool_count is None
    assert make_router("cascade", ctx, plan_check=True, pool_check=False).pool_count == 0
    with pytest.raises(ValueError, match="plan_check"):
        make_router("cascade", ctx, prefill_pool="2", plan_check=True)
    heavy = [(30000, 50)] * 50 + [(500, 50)] * 50
    r = make_router("cascade", PolicyContext(cost_model=cm, num_instances=8, length_sample=heavy, arrival_rate=4.0))
    assert r.pool is not None and r.pool.members == list(range(8 - len(r.pool.members), 8))
    assert r.plan.num_stages == 1 and sorted(r.plan.members[0] + r.pool.members) == list(range(8))
    assert "prefill seconds" in r.last_plan_info["prefill_pool_why"]


def test_sizing_follows_the_long_prompts_share_of_the_work(cm):
    qoe = QoEConfig()
    heavy = [(30000, 50)] * 50 + [(500, 50)] * 50  # the long prompts' prefill is nearly all the work
    light = [(500, 300)] * 100  # no prompt reaches the pool's minimum
    at = {rate: size_prefill_pool(heavy, rate, 8, cm, qoe, 8192) for rate in (0.5, 4.0)}
    assert at[0.5].size == 0 and "no pool" in at[0.5].why  # a lightly loaded cluster keeps the DP's plan
    assert 4 <= at[4.0].size <= 7, at[4.0].why
    best = best_pool_size(pool_latencies(heavy, 4.0, 8, cm, qoe, 8192)).size  # the model's size, KV allowing
    assert at[4.0].size <= best and f"best size {best} of 8" in at[4.0].why
    assert size_prefill_pool(light, 40.0, 8, cm, qoe, 8192).size == 0
    assert size_prefill_pool(heavy, 4.0, 1, cm, qoe, 8192).size == 0  # one instance: nothing to split


def test_simulated_pool_moves_each_long_request_once_and_serves_everything():
    reqs = list(load_trace("mooncake")[:200])
    cfg = SimConfig(model="llama-3.1-8b", gpu="h100", instances=4, router="cascade:counts=2,prefill_pool=2")
    res = simulate(reqs, cfg)
    assert len(res.requests) == len(reqs) and all(r.output_len == r.target for r in res.requests)
    long_ids = {r.rid for r in reqs if r.prompt_len >= 8192}
    assert long_ids and res.metrics["migrations"] >= len(long_ids) * 0.9  # a move refused for KV may stay put
    for r in res.requests:  # every request finishes on the decode side unless its move was refused
        if r.rid not in long_ids:
            assert r.instance in (0, 1) and r.migrations == 0
        else:
            assert r.migrations <= 1


def test_a_moves_fixed_cost_delays_the_moved_request_by_that_much():
    """``SimConfig.migration_overhead_s``: every KV move's stop-and-copy takes that much longer (a lone request)."""
    req = [TraceRequest("long", 0.0, 12000, 40)]
    e2e = {}
    for over in (0.0, 0.5):
        cfg = SimConfig(
            model="llama-3.1-8b", instances=2, router="cascade:counts=1,prefill_pool=1", migration_overhead_s=over
        )
        res = simulate(req, cfg)
        assert res.metrics["migrations"] == 1 and res.requests[0].instance == 0
        e2e[over] = res.requests[0].finish_time
    assert e2e[0.5] - e2e[0.0] == pytest.approx(0.5, abs=0.02)


def test_a_long_prompt_cached_on_the_decode_side_is_prefilled_there(cm):
    """``pool_cached`` (default on): a moved request's prompt joins its destination's prefix tree (the KV import puts
    it in that radix cache); a later prompt extending it by fewer than ``prefill_min`` new tokens is prefilled there
    instead of in the pool (no move); more new tokens, or the option off, and the pool takes it."""
    doc = tuple(range(1, 40))  # 39 blocks of the conversation so far

    def setup(**opts):
        r = make_router(
            "cascade", PolicyContext(cost_model=cm, num_instances=4), counts="2", prefill_pool="2", pool_hold=0, **opts
        )
        cv = cluster(4)
        first = RequestView("a", 0, 20000, block_hashes=doc)
        src = r.route(first, cv, 0.0)
        first.output_len = 1
        m = r.migrate(first, src, cv, 0.5)
        assert src in (2, 3) and m is not None and m.dst in (0, 1)
        return r, cv, m.dst

    r, cv, dst = setup()
    turn = RequestView("b", 1.0, 21000, block_hashes=doc + (40, 41))  # ~1,000 new tokens after the cached turn
    assert r.route(turn, cv, 1.0) == dst and r.stats["pool_cached"] == 1
    assert r.migration_bound(turn, dst) is None  # prefilled where it decodes: nothing to move
    fresh = RequestView("c", 1.0, 40000, block_hashes=doc + tuple(range(100, 140)))  # ~20,000 new tokens
    assert r.route(fresh, cv, 1.0) in (2, 3) and r.stats["pool_cached"] == 1
    off, cv, _ = setup(pool_cached="0")
    assert off.route(RequestView("b", 1.0, 21000, block_hashes=doc + (40, 41)), cv, 1.0) in (2, 3)
    assert "pool_cached" not in off.stats


def test_the_decode_sides_kv_need_is_read_at_the_tpot_the_model_predicts_for_the_chosen_pool():
    """Little's law over the decode side's predicted TPOT with the chosen pool, not the SLO's TPOT: at the SLO's
    0.1 s these 100K-token prompts would need 4 decode instances for their KV and cap the pool at 4 (the old rule,
    which kept a 70B x 8 Mooncake pool at 5 where 6 meets the SLOs more often: docs/results/cascade_eval_pool5.md)."""
    cm8, qoe = CostModel.for_names("llama-3.1-8b", "h100"), QoEConfig()
    heavy = [(100000, 150)] * 50 + [(500, 150)] * 50
    rate = 1.5
    best = best_pool_size(pool_latencies(heavy, rate, 8, cm8, qoe, 8192))
    kv = rate * np.mean([o * (p + o / 2) for p, o in heavy]) / (KV_HEADROOM * cm8.kv_capacity_tokens())
    need = max(1, math.ceil(kv * min(best.decode_tpot_s, qoe.slo_tpot)))
    assert math.ceil(kv * qoe.slo_tpot) >= 4 and need < 4
    sized = size_prefill_pool(heavy, rate, 8, cm8, qoe, 8192)
    assert f"the decode side needs >= {need} for its KV" in sized.why
    assert sized.size == min(best.size, 8 - need) > 4


def test_pool_dispatch_weighs_the_prefill_work_a_cached_prefix_saves(cm):
    """``pool_work_weight``: a member holding the prompt's prefix wins over an idle one when the seconds its cache
    saves, counted once for this request's first token and ``pool_work_weight`` times as pool capacity, outweigh
    its longer queue; with the weight 0 (the earliest first token alone) the idle member wins."""
    prefill_s = PrefillTimes(cm)
    doc = tuple(range(1, 41))  # 40 cached blocks of a 41-block, 20,500-token prompt
    loads = [InstanceLoad(i, kv_capacity=400000) for i in range(2)]
    full, rest = prefill_s(20500), prefill_s(500)  # all of it, or its new last block only

    def pool(weight):
        trees = PrefixTrees(2, 1000)
        trees.insert(0, doc, None)  # member 0's cache holds the prefix
        p = PrefillPool([0, 1], 8192, prefill_s, trees, weight)
        # member 0 is busy for longer than the seconds its cache saves, but less than twice that
        p.busy_until[0] = 1.5 * (full - rest)
        return p

    req = RequestView("a", 0.0, 20500, block_hashes=doc + (99,))
    assert pool(0.0).pick(req, loads, 0.0)[0] == 1  # its own first token comes sooner on the idle member
    p = pool(1.0)
    iid, saved = p.pick(req, loads, 0.0)
    assert iid == 0 and saved[0] == 20000
    assert p.busy_until[0] == pytest.approx(1.5 * (full - rest) + rest)  # the queue books what it computes
    busier = pool(1.0)
    busier.busy_until[0] = 2.5 * (full - rest)  # past twice the saving: the idle member, whatever the weight
    assert busier.pick(req, loads, 0.0)[0] == 1


def test_a_request_leaving_the_pool_goes_where_most_kv_is_free():
    """``pool_move_room`` (default on): the decode-side member with the largest free share of its KV, counting the
    KV of the moves sent to it since its last publication; with the option off, the pressure pick, which a short
    prompt queued on the emptier member steers away from it although the move brings no prompt to prefill."""
    cm70 = CostModel.for_names("llama-3.1-70b", "h100", 4)

    def setup(**opts):
        ctx = PolicyContext(cost_model=cm70, num_instances=4)
        r = make_router("cascade", ctx, counts="2", prefill_pool="2", pool_hold=0, **opts)
        loads = [  # member 1 holds less KV but has a prompt queued
            InstanceLoad(0, num_running=4, kv_used=300000, kv_capacity=400000, published_at=0.1),
            InstanceLoad(1, 12, 1, kv_used=100000, kv_capacity=400000, outstanding_tokens=6000, published_at=0.1),
            InstanceLoad(2, kv_capacity=400000, published_at=0.1),
            InstanceLoad(3, kv_capacity=400000, published_at=0.1),
        ]
        return r, ClusterView(loads, 0.1)

    def move(r, cv, rid, tokens):
        req = RequestView(rid, 0.0, tokens)
        src = r.route(req, cv, 0.1)
        req.output_len, req.kv_tokens = 1, tokens + 1
        m = r.migrate(req, src, cv, 0.2)
        assert src in (2, 3) and m is not None
        return m.dst

    r, cv = setup()
    assert move(r, cv, "a", 120000) == 1  # 75% free against 25%
    assert move(r, cv, "b", 120000) == 1  # 45% free after the first move, still the most
    assert move(r, cv, "c", 120000) == 0  # 15% free after both: member 0's 25% wins
    off, cv = setup(pool_move_room="0")
    assert move(off, cv, "a", 120000) == 0  # the pressure pick: member 1's queued prefill


def test_the_pool_valve_hands_a_member_to_a_full_decode_side_and_takes_it_back_when_light(cm):
    """``pool_valve`` (opt-in): two observations of the decode side's mean KV use at or above the threshold hand it
    the pool member whose queue ends first; two at or below threshold - 0.3 take the decode member holding least KV
    back, never beyond the planned size; one change per cooldown."""
    from sglang_cascade.policies.prefill_pool import PoolValve

    pool = PrefillPool([2, 3], 8192, PrefillTimes(cm))
    pool.busy_until.update({2: 5.0, 3: 1.0})

    def loads(used0, used1):
        return [InstanceLoad(0, kv_used=used0, kv_capacity=100), InstanceLoad(1, kv_used=used1, kv_capacity=100)] + [
            InstanceLoad(i, kv_capacity=100) for i in (2, 3)
        ]

    v = PoolValve(0.8)
    assert v.step(pool, [[0, 1]], loads(90, 80), 2, 0.0) is None  # one observation is not a streak
    assert v.step(pool, [[0, 1]], loads(90, 80), 2, 0.5) == ("out", [2], [0, 1, 3])  # 3's queue ends first
    pool = pool.resized([2])
    full = [InstanceLoad(i, kv_used=95, kv_capacity=100) for i in range(4)]
    assert v.step(pool, [[0, 1, 3]], full, 2, 3.0) is None
    assert v.step(pool, [[0, 1, 3]], full, 2, 3.5) is None  # a streak, but the pool's last member stays
    light = [InstanceLoad(i, kv_used=u, kv_capacity=100) for i, u in enumerate((40, 30, 0, 20))]
    assert v.step(pool, [[0, 1, 3]], light, 2, 4.0) is None
    assert v.step(pool, [[0, 1, 3]], light, 2, 4.6) == ("in", [2, 3], [0, 1])  # member 3 holds least KV
    assert v.step(pool, [[0, 1, 3]], light, 2, 5.0) is None  # within the cooldown of that change
    assert v.step(pool.resized([2, 3]), [[0, 1]], light, 2, 9.0) is None  # back at the planned size
    assert PoolValve(0.8).step(None, [[0, 1]], full, 2, 0.0) is None  # no pool
    assert PoolValve(0.8).step(pool, [[0], [1]], full, 2, 0.0) is None  # a staged decode side: not touched
    off = PoolValve(0.0)
    assert [off.step(pool, [[0, 1]], full, 2, t) for t in (0.0, 5.0, 10.0)] == [None] * 3


def test_the_router_applies_the_pool_valve_to_its_plan(cm):
    r = make_router("cascade", PolicyContext(cost_model=cm, num_instances=4), prefill_pool="2", pool_valve="0.8")
    assert r.pool.members == [2, 3] and r.plan.members == [[0, 1]]
    full = ClusterView(
        [InstanceLoad(i, kv_used=95, kv_capacity=100, published_at=t) for i, t in enumerate([1.0] * 4)], 1.0
    )
    for t in (1.0, 1.5):
        assert r.rebalance(full, {}, t) == []  # nothing moves: requests stay where they are
    assert len(r.pool.members) == 1 and sorted(r.plan.members[0]) == [0, 1, r.plan.members[0][-1]]
    assert (
        r.stats["pool_valve_out"] == 1
        and r.migration_bound(RequestView("x", 0.0, 20000), r.plan.members[0][-1]) is None
    )
    off = make_router("cascade", PolicyContext(cost_model=cm, num_instances=4), prefill_pool="2")
    for t in (1.0, 1.5):
        off.rebalance(full, {}, t)
    assert off.pool.members == [2, 3]  # the default: no valve
