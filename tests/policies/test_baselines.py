"""Baseline policies over hand-built views: SGLang's scheduler, SMG's routers, Llumnix."""

from __future__ import annotations

import pytest

from sglang_cascade.core import CostModel
from sglang_cascade.core.decisions import MigrationMode
from sglang_cascade.core.views import ClusterView, InstanceLoad, InstanceView, Phase, RequestView
from sglang_cascade.policies.baselines import LlumnixConfig, LlumnixRouter, SglangConfig, SglangScheduler, smg_load
from sglang_cascade.policies.registry import PolicyContext, make_instance_scheduler, make_router

CTX = PolicyContext(cost_model=CostModel.for_names("llama-3-8b", "h100"), num_instances=4, seed=0)


def _req(rid, prompt, out=0, phase=Phase.WAITING, kv=None, max_new=None):
    r = RequestView(
        rid=rid, arrival=0.0, prompt_len=prompt, output_len=out, max_new_tokens=max_new, phase=phase, instance=0
    )
    r.kv_tokens = kv if kv is not None else (prompt + out - 1 if phase == Phase.RUNNING else 0)
    return r


def _inst(cap=100000, waiting=(), running=(), chunk=8192):
    v = InstanceView(
        iid=0, kv_capacity=cap, waiting=list(waiting), running=list(running), max_prefill_tokens=chunk, max_running=4096
    )
    v.recount_kv_used()
    return v


def test_registry_builds_every_baseline_with_its_config():
    assert isinstance(make_instance_scheduler("sglang", CTX), SglangScheduler)
    for name in ("round_robin", "random", "power_of_two", "least_load", "llumnix"):
        assert make_router(name, CTX).name == name
    s = make_instance_scheduler("sglang:init_new_token_ratio=0.5", CTX)
    assert s.ratio == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown option"):
        make_router("llumnix:bogus=1", CTX)


def test_sglang_ratio_constants_match_sglang_defaults():
    s = SglangScheduler(SglangConfig())
    assert s.ratio_init == pytest.approx(0.7)
    assert s.ratio_min == pytest.approx(0.7 * 0.14)
    assert s.ratio_decay == pytest.approx((0.7 - 0.098) / 600)


def test_sglang_prefill_first_fcfs_and_chunking():
    s = SglangScheduler(SglangConfig())
    running = [_req("run", 100, 5, Phase.RUNNING)]
    w = [_req("a", 3000), _req("b", 4000), _req("c", 5000), _req("d", 10)]
    v = _inst(waiting=w, running=running)
    plan = s.schedule(v, 0.0)
    assert not plan.decode  # prefill first: no decode while something is admissible
    assert [(c.req.rid, c.tokens) for c in plan.prefill] == [("a", 3000), ("b", 4000), ("c", 1192)]
    assert s.chunked is w[2]  # the chunked request; "d" waits behind it (FCFS)
    # next round: the chunked request continues first
    w[2].kv_tokens = 1192
    v.waiting = [w[2], w[3]]
    v.running = running + [w[0], w[1]]
    for r in (w[0], w[1]):
        r.phase, r.kv_tokens, r.output_len = Phase.RUNNING, r.prompt_len, 1
    v.recount_kv_used()
    plan = s.schedule(v, 0.1)
    assert [(c.req.rid, c.tokens) for c in plan.prefill] == [("c", 3808), ("d", 10)]


def test_sglang_admission_reserves_new_token_ratio_of_running_outputs():
    s = SglangScheduler(SglangConfig(clip_max_new_tokens=4096))
    # running request with max_new 1000, 0 generated: reserves 1000 * 0.7 = 700 tokens
    running = [_req("run", 1000, 0, Phase.RUNNING, kv=1000, max_new=1000)]
    # new request: extend 1000 + max_new 1000 + 1 page = 2001 must be < free - 700
    cap = 1000 + 700 + 2001  # remaining = 2001: not strictly less -> refused
    v = _inst(cap=cap, waiting=[_req("w", 1000, max_new=1000)], running=running)
    plan = s.schedule(v, 0.0)
    assert not plan.prefill and [r.rid for r in plan.decode] == ["run"]
    assert s.batch_is_full  # SGLang stops trying until a request leaves
    s2 = SglangScheduler(SglangConfig())
    v2 = _inst(
        cap=cap + 1,
        waiting=[_req("w", 1000, max_new=1000)],
        running=[_req("run", 1000, 0, Phase.RUNNING, kv=1000, max_new=1000)],
    )
    assert [c.req.rid for c in s2.schedule(v2, 0.0).prefill] == ["w"]


def test_sglang_ratio_decays_per_decode_step_including_fast_forwarded_steps():
    s = SglangScheduler(SglangConfig())
    v = _inst(running=[_req("r", 100, 3, Phase.RUNNING)])
    plan = s.schedule(v, 0.0)
    assert plan.stable_steps > 1
    assert s.ratio == pytest.approx(0.7 - s.ratio_decay)
    v.iteration += 10  # the driver ran the plan for 10 steps
    s.schedule(v, 1.0)
    assert s.ratio == pytest.approx(0.7 - 11 * s.ratio_decay)


def test_sglang_ratio_resets_when_the_engine_idles():
    s = SglangScheduler(SglangConfig())
    r = _req("r", 100, 3, Phase.RUNNING)
    v = _inst(running=[r])
    for _ in range(5):
        s.schedule(v, 0.0)
        v.iteration += 1
    assert s.ratio < 0.7
    v.running.clear()
    s.on_finish(r, v, 1.0)
    assert s.ratio == pytest.approx(0.7)


def test_sglang_retracts_fewest_outputs_then_longest_prompt_and_resets_ratio():
    s = SglangScheduler(SglangConfig())
    rs = [
        _req("old", 100, 50, Phase.RUNNING, max_new=1000),
        _req("young_long", 900, 2, Phase.RUNNING, max_new=1000),
        _req("young_short", 200, 2, Phase.RUNNING, max_new=1000),
        _req("mid", 300, 10, Phase.RUNNING, max_new=1000),
    ]
    v = _inst(running=rs)
    v.kv_capacity = v.kv_used + 1  # room for 1 token, 4 needed
    plan = s.schedule(v, 0.0)
    assert [r.rid for r in plan.preempt] == ["young_long"]  # one retraction frees 901 tokens: enough
    assert {r.rid for r in plan.decode} == {"old", "young_short", "mid"}
    keep = [rs[0], rs[2], rs[3]]
    expect = (sum(r.output_len for r in keep) + 20 * 3) / (3 * 1000 + 1)
    assert s.ratio == pytest.approx(expect)
    assert s.on_kv_exhausted(v, 0.0, 4) == [rs[1]]


def test_sglang_decode_stable_steps_bounded_by_free_kv():
    s = SglangScheduler(SglangConfig())
    v = _inst(running=[_req("a", 100, 1, Phase.RUNNING), _req("b", 100, 1, Phase.RUNNING)])
    v.kv_capacity = v.kv_used + 21
    assert s.schedule(v, 0.0).stable_steps == 10


def _cluster(loads, now=1.0):
    return ClusterView([InstanceLoad(iid=i, published_at=0.0, **kw) for i, kw in enumerate(loads)], now)


def test_round_robin_and_random_cycle_over_healthy():
    rr = make_router("round_robin", CTX)
    c = _cluster([{}, {}, {}, {}])
    c.loads[2].healthy = False
    assert [rr.route(_req(str(i), 10), c, 0.0) for i in range(6)] == [0, 1, 3, 0, 1, 3]
    rnd = make_router("random", CTX)
    picks = {rnd.route(_req(str(i), 10), c, 0.0) for i in range(200)}
    assert picks == {0, 1, 3}


def test_least_load_uses_num_tokens_plus_dispatch_delta_reset_on_poll():
    ll = make_router("least_load", CTX)
    c = _cluster([{"kv_used": 1000}, {"kv_used": 500, "outstanding_tokens": 300}, {"kv_used": 900}, {"kv_used": 2000}])
    assert smg_load(c.loads[1]) == 800
    assert ll.route(_req("a", 200), c, 0.0) == 1  # 800
    assert ll.route(_req("b", 200), c, 0.0) == 2  # 1 is now 1000 (delta), 2 is 900
    assert ll.route(_req("c", 50), c, 0.0) == 0  # 0:1000, 1:1000, 2:1100 -> first of the ties
    # a new publication overwrites the cached load and resets the deltas
    c.loads[1] = InstanceLoad(iid=1, kv_used=100, published_at=0.05)
    assert ll.route(_req("d", 10), c, 0.0) == 1
    no_delta = make_router("least_load:count_dispatched=0", CTX)
    c2 = _cluster([{"kv_used": 10}, {"kv_used": 20}, {"kv_used": 30}, {"kv_used": 40}])
    assert {no_delta.route(_req(str(i), 500), c2, 0.0) for i in range(5)} == {0}  # herding on stale loads


def test_power_of_two_picks_the_lower_of_two_distinct():
    p2 = make_router("power_of_two", CTX)
    c = _cluster([{"kv_used": 0}, {"kv_used": 100}, {"kv_used": 200}, {"kv_used": 300}])
    picks = [p2.route(_req(str(i), 10), c, 0.0) for i in range(400)]
    assert 3 not in picks  # the most loaded instance never wins a pair
    assert picks.count(0) == pytest.approx(400 * 3 / 6, rel=0.2)  # 0 wins every pair it is in (3 of 6)


def test_llumnix_freeness_dispatch_and_pair_migration():
    cfg = LlumnixConfig()
    lx = LlumnixRouter(4, 0, cfg)
    cap = 16000
    loads = [
        {"kv_capacity": cap, "kv_used": 15900, "num_running": 10},  # 100/16/10 = 0.6 blocks/req: source
        {"kv_capacity": cap, "kv_used": 1000, "num_running": 2},  # 468 blocks/req: freest destination
        {"kv_capacity": cap, "kv_used": 8000, "num_running": 4, "num_waiting": 1, "outstanding_tokens": 2000},
        {"kv_capacity": cap, "kv_used": 15950, "num_running": 20},  # 0.16 blocks/req: most loaded source
    ]
    c = _cluster(loads)
    assert lx.freeness(c.loads[2]) == pytest.approx((8000 / 16 - 2000 / 16) / 5)
    assert lx.route(_req("x", 100), c, 0.0) == 1
    running = {
        0: [_req("a", 3000, 5, Phase.RUNNING), _req("b", 200, 5, Phase.RUNNING)],
        3: [_req("c", 500, 1, Phase.RUNNING), _req("d", 100, 1, Phase.RUNNING)],
        1: [],
        2: [],
    }
    migs = lx.rebalance(c, running, 0.0)
    # least free source (3) pairs with the freest destination (1), next source (0) with the next (2);
    # each moves its shortest running request by KV transfer
    assert [(m.src, m.dst, m.req.rid) for m in migs] == [(3, 1, "d"), (0, 2, "b")]
    assert all(m.mode == MigrationMode.KV_TRANSFER for m in migs)
    assert lx.rebalance_interval == pytest.approx(0.05)
    idle = _cluster([{"kv_capacity": cap}, {"kv_capacity": cap, "kv_used": 10, "num_running": 1}, {}, {}])
    assert lx.freeness(idle.loads[0]) == float("inf")


def test_sglang_max_new_tokens_without_a_limit_is_clipped_to_the_context():
    s = make_instance_scheduler("sglang", CTX)  # llama-3-8b: context 8192 -> max_req_len 8191
    assert s.max_req_len == 8191
    r = _req("w", 7000)
    assert s._max_new(r) == 8191 - 7000 - 1
    assert s._max_new(_req("x", 100, max_new=300)) == 300
    # admission needs 7000 + min(1190, 4096) + 1 < remaining: 8191 tokens of pool are enough
    v = _inst(cap=8192, waiting=[r])
    assert [c.req.rid for c in s.schedule(v, 0.0).prefill] == ["w"]


def test_sglang_admission_reserves_all_remaining_tokens_of_ignore_eos_requests():
    """SGLang 0.5.23 (``PrefillAdder._get_running_request_total_token_offset``): a running request with ignore_eos
    reserves its whole remaining output, not new_token_ratio of it; the replay client sends ignore_eos."""
    cap = 1000 + 700 + 2002  # free - 0.7 * 1000 = 2002 > 2001: admitted under the ratio
    for ignore_eos, admitted in ((False, ["w"]), (True, [])):
        run = _req("run", 1000, 0, Phase.RUNNING, kv=1000, max_new=1000)
        run.ignore_eos = ignore_eos
        v = _inst(cap=cap, waiting=[_req("w", 1000, max_new=1000)], running=[run])
        assert [c.req.rid for c in SglangScheduler(SglangConfig()).schedule(v, 0.0).prefill] == admitted
