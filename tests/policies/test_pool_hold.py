"""The prefill pool's hold queue (``cascade:pool_hold``, policies/pool_hold.py): the router keeps the pool's prompts
and sends each to a member only once that member has no prefill outstanding (late binding), in deadline order,
preferring a prompt the ready member's cache holds; a first token restarts the member's queue estimate."""

from __future__ import annotations

import pytest

from sglang_cascade.core import CostModel
from sglang_cascade.core.decisions import HOLD
from sglang_cascade.core.views import ClusterView, InstanceLoad, RequestView
from sglang_cascade.policies.pool_hold import PoolHold
from sglang_cascade.policies.prefill_pool import PrefillPool
from sglang_cascade.policies.prefix_affinity import PrefixTrees
from sglang_cascade.policies.registry import PolicyContext, make_router


def _secs(tokens: int) -> float:
    return tokens / 1000.0  # 1 s per 1,000 prompt tokens


def _pool(members=(0, 1), trees=None) -> PrefillPool:
    return PrefillPool(list(members), 1000, _secs, trees)


def _loads(n=2) -> list[InstanceLoad]:
    return [InstanceLoad(i) for i in range(n)]


def test_held_prompts_go_in_deadline_order_one_per_member_until_its_first_token():
    pool, loads, hold = _pool(), _loads(), PoolHold(depth=1, order=3.0, slo_ttft=2.0)
    big = RequestView("big", 0.0, 30_000)  # deadline 0 + 3 x 30 s = 90
    mid = RequestView("mid", 1.0, 5_000)  # 1 + 15 = 16
    small = RequestView("small", 2.0, 2_000)  # 2 + max(2, 6) = 8
    tiny = RequestView("tiny", 3.0, 1_000)  # 3 + max(2, 3) = 6
    for r in (big, mid, small, tiny):
        hold.add(r, _secs(r.prompt_len), r.arrival)
    sent = hold.release(pool, loads, 3.0)
    assert [r.rid for r, _ in sent] == ["tiny", "small"]  # the two earliest deadlines, one on each member
    assert {i for _, i in sent} == {0, 1} and len(hold) == 2
    assert hold.release(pool, loads, 3.5) == [] and hold.release_at(pool, loads, 3.5) > 3.5  # both members busy
    iid = {r.rid: i for r, i in sent}["tiny"]
    hold.first_token(pool, iid, "tiny", 4.0)
    assert pool.busy_until[iid] == 4.0  # the member's queue estimate restarts from the first token
    assert hold.release_at(pool, loads, 4.0) == 4.0
    assert [(r.rid, i) for r, i in hold.release(pool, loads, 4.0)] == [("mid", iid)]
    fcfs = PoolHold(depth=1, order=0.0, slo_ttft=2.0)  # order 0: first come, first served
    for r in (big, mid, small, tiny):
        fcfs.add(r, _secs(r.prompt_len), r.arrival)
    assert [r.rid for r, _ in fcfs.release(_pool(), loads, 3.0)] == ["big", "mid"]


def test_a_member_whose_first_token_never_comes_is_ready_again_after_the_grace():
    pool, loads, hold = _pool((0,)), _loads(1), PoolHold(depth=1, grace_s=5.0)
    for k in range(2):
        hold.add(RequestView(f"r{k}", 0.0, 4_000), 4.0, 0.0)
    assert len(hold.release(pool, loads, 0.0)) == 1
    assert pool.busy_until[0] == 4.0 and hold.release_at(pool, loads, 1.0) == 9.0  # its estimate + the grace
    assert hold.release(pool, loads, 8.9) == []
    assert [r.rid for r, _ in hold.release(pool, loads, 9.0)] == ["r1"]
    hold.first_token(pool, None, "r0", 10.0)  # found by its rid alone (a finish: no instance given)
    assert pool.busy_until[0] == 14.0  # r1's 4 s still outstanding


def test_an_unhealthy_member_takes_nothing_and_depth_two_sends_two():
    pool, loads = _pool(), _loads()
    loads[0].healthy = False
    hold = PoolHold(depth=2)
    for k in range(3):
        hold.add(RequestView(f"r{k}", float(k), 2_000), 2.0, float(k))
    assert [(r.rid, i) for r, i in hold.release(pool, loads, 3.0)] == [("r0", 1), ("r1", 1)]
    # the next wake-up is the healthy member's estimate + the grace, not the unhealthy one's (long past)
    assert hold.release_at(pool, loads, 6.0) == pool.busy_until[1] + hold.grace_s > 6.0


def test_a_ready_member_takes_the_prompt_its_cache_holds_within_the_window():
    trees = PrefixTrees(2, 1000)
    trees.insert(1, [7, 8, 9, 10])  # member 1 holds this prefix
    pool, loads = _pool((0, 1), trees), _loads()
    pool.busy_until[0] = 100.0
    hold = PoolHold(depth=1, window=3)
    hold.out[0] = {"busy": 100.0}  # member 0 has a prefill outstanding: only 1 is ready
    plain = [RequestView(f"p{k}", float(k), 4_000, block_hashes=[k + 100, k + 200]) for k in range(3)]
    cached = RequestView("cached", 3.0, 4_000, block_hashes=[7, 8, 9, 10])
    for r in [*plain, cached]:
        hold.add(r, 4.0, r.arrival)
    assert [r.rid for r, _ in hold.release(pool, loads, 3.0)] == ["p0"]  # fourth in line: outside a window of 3
    hold.first_token(pool, 1, "p0", 4.0)
    hold.window = 4
    assert [(r.rid, i) for r, i in hold.release(pool, loads, 4.0)] == [("cached", 1)]  # jumps p1 and p2
    hold.first_token(pool, 1, "cached", 5.0)
    assert [r.rid for r, _ in hold.release(pool, loads, 5.0)] == ["p1"]  # then deadline order again


@pytest.fixture(scope="module")
def cm():
    return CostModel.for_names("llama-3.1-8b", "h100")


def test_the_cascade_router_holds_pool_prompts_and_releases_them_as_first_tokens_arrive(cm):
    r = make_router("cascade", PolicyContext(cost_model=cm, num_instances=3), counts="1", prefill_pool="2")
    assert r.cfg.pool_hold == 1 and r.pool.members == [1, 2]
    cl = ClusterView([InstanceLoad(i) for i in range(3)], 0.0)
    longs = [RequestView(f"l{k}", 0.1 * k, 20_000 + 1_000 * k) for k in range(3)]
    assert [r.route(x, cl, x.arrival) for x in longs] == [HOLD] * 3
    assert r.route(RequestView("short", 0.3, 100), cl, 0.3) == 0  # never held: the decode side
    assert r.release_at(0.3) == 0.3
    sent = r.release(cl, 0.3)
    assert [x.rid for x, _ in sent] == ["l0", "l1"] and sorted(i for _, i in sent) == [1, 2]
    assert r.release(cl, 0.4) == [] and r.stats["pool_prefills"] == 2
    l0, iid = sent[0]
    l0.kv_tokens = l0.prompt_len
    l0.output_len = 1
    m = r.migrate(l0, iid, cl, 5.0)  # its first token: it moves to the decode side, and its member is free
    assert m is not None and m.dst == 0
    assert r.release_at(5.0) == 5.0 and r.release(cl, 5.0) == [(longs[2], iid)]
    r.on_finish(sent[1][0], 6.0)  # a finish (or an abort) frees its member as well
    assert r.hold.out[sent[1][1]] == {}


def test_held_prompts_go_to_the_decode_side_when_the_plan_drops_the_pool(cm):
    r = make_router("cascade", PolicyContext(cost_model=cm, num_instances=3), counts="1", prefill_pool="2")
    cl = ClusterView([InstanceLoad(i) for i in range(3)], 0.0)
    for k in range(3):
        assert r.route(RequestView(f"l{k}", 0.0, 20_000), cl, 0.0) == HOLD
    r._set_pool([])  # a new plan without a pool
    assert sorted(x.rid for x, _ in r.release(cl, 1.0)) == ["l0", "l1", "l2"] and len(r.hold) == 0
    off = make_router(
        "cascade", PolicyContext(cost_model=cm, num_instances=3), counts="1", prefill_pool="2", pool_hold=0
    )
    assert off.route(RequestView("l", 0.0, 20_000), cl, 0.0) in (1, 2) and off.release_at(0.0) is None
