"""Cascade router, bucket baseline, balance and refinement as pure policies over views."""

from __future__ import annotations

import numpy as np
import pytest

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.decisions import MigrationMode
from sglang_cascade.core.views import ClusterView, InstanceLoad, RequestView
from sglang_cascade.policies.balance import BalanceConfig, MemberPicker, StagePairBalancer
from sglang_cascade.policies.bucket import MAX, BucketConfig, BucketRouter
from sglang_cascade.policies.refinement import RangeRefiner, RefinementConfig
from sglang_cascade.policies.registry import PolicyContext, make_router


@pytest.fixture(scope="module")
def cm():
    return CostModel.for_names("llama-3-8b", "h100")


def ctx(cm, n, **kw):
    return PolicyContext(cost_model=cm, num_instances=n, **kw)


def cluster(n, now=0.0, **per):
    loads = [InstanceLoad(i, kv_capacity=100000, published_at=now) for i in range(n)]
    for i, kw in per.items():
        for k, v in kw.items():
            setattr(loads[int(i)], k, v)
    return ClusterView(loads, now)


def fixed(cm, n=4, **opts):
    return make_router("cascade", ctx(cm, n), bounds="100/500", counts="1/2/1", **opts)


# ---------------------------------------------------------------------------------------------- cascade


def test_route_by_prompt_stage_and_edges(cm):
    r = fixed(cm)
    cv = cluster(4)
    assert r.route(RequestView("a", 0, 10), cv, 0.0) == 0
    assert r.route(RequestView("b", 0, 100), cv, 0.0) in (1, 2)  # exactly at the bound: next stage
    assert r.route(RequestView("c", 0, 10**6), cv, 0.0) == 3  # longer than every range: last stage
    assert r.migration_bound(RequestView("c", 0, 10**6), 3) is None


def test_migration_once_per_boundary_and_forward_only(cm):
    r = fixed(cm)
    cv = cluster(4)
    req = RequestView("a", 0, 90)
    src = r.route(req, cv, 0.0)
    assert r.migration_bound(req, src) == 100
    req.output_len = 10  # length 100 reaches the bound
    m = r.migrate(req, src, cv, 0.1)
    assert m is not None and m.dst in (1, 2) and m.src == src
    assert m.mode in (MigrationMode.KV_TRANSFER, MigrationMode.RECOMPUTE)
    assert r.migration_bound(req, m.dst) == 500
    # asking again on the new instance before the next bound: no move
    assert r.migrate(req, m.dst, cv, 0.2) is None
    # jumping over two bounds at once (bounds moved): straight to the last stage, one migration
    req2 = RequestView("b", 0, 50)
    s2 = r.route(req2, cv, 0.0)
    req2.output_len = 600
    m2 = r.migrate(req2, s2, cv, 0.3)
    assert m2.dst == 3


def test_no_migration_ablation(cm):
    r = fixed(cm, migration=0)
    assert r.migration_bound(RequestView("a", 0, 50), 0) is None


def test_migration_modes_options(cm):
    for mode, want in (("recompute", MigrationMode.RECOMPUTE), ("kv_transfer", MigrationMode.KV_TRANSFER)):
        r = fixed(cm, mode=mode)
        cv = cluster(4)
        req = RequestView("a", 0, 99)
        s = r.route(req, cv, 0.0)
        req.output_len = 1
        assert r.migrate(req, s, cv, 0.0).mode is want


def test_one_instance_and_unknown_option(cm):
    r = make_router("cascade", ctx(cm, 1, length_sample=[(100, 50)] * 20, arrival_rate=1.0))
    assert r.plan.num_stages == 1
    assert r.route(RequestView("a", 0, 10**5), cluster(1), 0.0) == 0
    assert r.migration_bound(RequestView("a", 0, 10**5), 0) is None
    with pytest.raises(ValueError):
        make_router("cascade:bogus=1", ctx(cm, 2))


def test_dp_plan_from_context(cm):
    rng = np.random.default_rng(0)
    sample = [(int(rng.integers(50, 4000)), int(rng.integers(20, 800))) for _ in range(2000)]
    r = make_router("cascade", ctx(cm, 8, length_sample=sample, arrival_rate=20.0))
    assert sum(r.plan.counts()) == 8
    assert sorted(i for m in r.plan.members for i in m) == list(range(8))
    assert r.last_plan_info["dp_time_s"] == 0.0  # the router reads no clock


def test_in_stage_least_loaded_uses_own_pending(cm):
    picker = MemberPicker(cm, BalanceConfig())
    loads = cluster(3, now=0.0, **{"0": {"num_running": 300, "kv_used": 90000, "num_waiting": 20}}).loads
    picks = [picker.pick([0, 1, 2], loads) for _ in range(6)]
    assert 0 not in picks  # the loaded member is avoided
    assert picks.count(1) == picks.count(2) == 3  # stale loads: own sends spread the burst
    fresh = InstanceLoad(1, num_running=0, kv_capacity=100000, published_at=1.0)
    picker.on_publish(fresh)
    assert picker.pending[1] == 0


def test_pairwise_shift_toward_overloaded_side(cm):
    cfg = BalanceConfig(patience=2, cooldown_s=0.0)
    agent = StagePairBalancer(0, cm, cfg)
    heavy = {"0": {"num_running": 200, "kv_used": 80000, "num_waiting": 30}}
    loads = cluster(4, **heavy).loads  # stage 0 = [0], stage 1 = [1]
    d1 = agent.decide(1000, 0, None, [0], [1], loads, 0.0)
    assert d1.kind == "none"  # hysteresis: one observation is not enough
    d2 = agent.decide(1000, 0, None, [0], [1], loads, 1.0)
    assert d2.kind == "shift" and d2.new_bound < 1000  # left overloaded: it gives away lengths
    loads = cluster(4, **{"1": heavy["0"]}).loads
    agent.decide(1000, 0, None, [0], [1], loads, 2.0)
    d3 = agent.decide(1000, 0, 5000, [0], [1], loads, 3.0)
    assert d3.kind == "shift" and 1000 < d3.new_bound <= 5000 - cfg.min_stage_width


def test_agents_can_ignore_a_transient_prefill_backlog(cm):
    """One long prompt queued on a stage with light decode: with agent_waiting_weight=1 the agent reads it
    as an overloaded stage and moves the boundary; with 0 (decode pressure only) it leaves it."""
    backlog = {"0": {"num_running": 4, "kv_used": 4000, "num_waiting": 1, "outstanding_tokens": 40000}}
    loads = cluster(2, **backlog).loads
    for weight, kind in ((1.0, "shift"), (0.0, "none")):
        agent = StagePairBalancer(0, cm, BalanceConfig(patience=1, cooldown_s=0.0, agent_waiting_weight=weight))
        assert agent.decide(1000, 0, None, [0], [1], loads, 0.0).kind == kind


def test_pairwise_handover_instance(cm):
    cfg = BalanceConfig(patience=1, cooldown_s=0.0)
    agent = StagePairBalancer(0, cm, cfg)
    loads = cluster(3, **{"0": {"num_running": 300, "kv_used": 90000, "num_waiting": 100}}).loads
    d = agent.decide(1000, 0, None, [0], [1, 2], loads, 0.0)
    assert d.kind == "handover" and d.instance in (1, 2) and d.from_stage == 1 and d.to_stage == 0


def test_router_rebalance_applies_shift_and_handover(cm):
    r = fixed(cm, refine=0)
    for a in r.agents:
        a.cfg.patience, a.cfg.cooldown_s = 1, 0.0
    hot = {"0": {"num_running": 300, "kv_used": 90000, "num_waiting": 50}}
    r.rebalance(cluster(4, **hot), {}, 0.0)
    assert r.plan.bounds[0] < 100 or len(r.plan.members[0]) == 2
    before = r.plan.bounds[1]
    r2 = fixed(cm, refine=0)
    for a in r2.agents:
        a.cfg.patience, a.cfg.cooldown_s = 1, 0.0
    r2.rebalance(cluster(4, **{"3": hot["0"]}), {}, 0.0)
    assert r2.plan.bounds[1] > before or len(r2.plan.members[2]) == 2


def test_central_ablation_moves_instance_across_stages(cm):
    r = fixed(cm, refine=0, central=1)
    r.bal_cfg.cooldown_s = 0.0
    hot = {"3": {"num_running": 300, "kv_used": 90000, "num_waiting": 50}}
    r.rebalance(cluster(4, **hot), {}, 0.0)
    assert len(r.plan.members[2]) == 2 and len(r.plan.members[1]) == 1


# ------------------------------------------------------------------------------------------- refinement


def _mix(rng, n, scale):
    return [(int(rng.integers(50, 500) * scale), int(rng.integers(50, 300) * scale)) for _ in range(n)]


def test_refinement_converges_on_drift_and_is_quiet_when_stationary():
    rng = np.random.default_rng(3)
    cfg = RefinementConfig(interval_s=1.0, window=800, min_samples=200, replan_ks=1.1)
    base = _mix(rng, 2000, 1.0)
    ref = RangeRefiner(cfg, base)
    bounds = [300, 600]
    ref.set_reference(base, bounds)
    # stationary: boundaries stay within the dead band, and no direction flips
    b = list(bounds)
    history = []
    for t in range(30):
        for s in _mix(rng, 100, 1.0):
            ref.observe(*s)
        nb = ref.tick(b, float(t))
        if nb:
            history.append([x - y for x, y in zip(nb, b)])
            b = nb
    assert all(abs(x - y) / y < 0.15 for x, y in zip(b, bounds))
    flips = sum(1 for h1, h2 in zip(history, history[1:]) for a, c in zip(h1, h2) if a * c < 0)
    assert flips == 0
    # drift: every length doubles; the boundaries follow (about x2) with bounded steps
    steps = []
    for t in range(30, 90):
        for s in _mix(rng, 100, 2.0):
            ref.observe(*s)
        nb = ref.tick(b, float(t))
        if nb:
            steps += [abs(x - y) / y for x, y in zip(nb, b)]
            b = nb
    assert max(steps) <= cfg.max_step + 1e-9
    assert 1.7 < b[0] / bounds[0] < 2.3 and 1.7 < b[1] / bounds[1] < 2.3


def test_refinement_replans_on_large_drift():
    rng = np.random.default_rng(4)
    cfg = RefinementConfig(interval_s=1.0, window=400, min_samples=100, replan_ks=0.2, replan_cooldown_s=0.0)
    ref = RangeRefiner(cfg)
    ref.set_reference(_mix(rng, 1000, 1.0), [300])
    calls = []
    for s in _mix(rng, 400, 8.0):
        ref.observe(*s)
    out = ref.tick([300], 10.0, replan=lambda w: calls.append(len(w)) or [2400])
    assert out is None and calls == [400] and ref.replans == 1 and ref.shares is not None


# ----------------------------------------------------------------------------------------------- bucket


def test_bucket_initial_boundaries_and_adjust_like_smg(cm):
    b = BucketRouter(3, BucketConfig(balance_abs_threshold=300, bucket_adjust_interval_secs=3))
    assert b.boundary[0] == (0, 1364) and b.boundary[1] == (1365, 2729) and b.boundary[2][1] == MAX
    cv = cluster(3)
    for L in (5, 10, 15, 20, 24, 26):  # SMG test_adjust_boundary_1, phase 1
        b.route(RequestView("x", 0, L), cv, 0.0)
    b.route(RequestView("y", 0, 1), cv, 3.0)  # timer fires at t=3 before routing
    assert b.boundary[0] == (0, 20) and b.boundary[1] == (21, 26) and b.boundary[2] == (27, MAX)


def test_bucket_imbalance_routes_to_least_window_load(cm):
    b = BucketRouter(3, BucketConfig(balance_abs_threshold=32, bucket_adjust_interval_secs=10))
    cv = cluster(3)
    assert b.route(RequestView("a", 0, 33), cv, 0.0) == 0
    assert b.route(RequestView("b", 0, 34), cv, 0.0) == 1  # imbalanced: least load
    assert b.route(RequestView("c", 0, 34), cv, 0.0) == 2
    # after the 10 s adjustment boundaries are [0,33] [34,67] [68,MAX] (SMG test_load_balancing_conditions)
    b.route(RequestView("d", 0, 33), cv, 10.0)
    assert b.boundary[0][1] == 33 and b.boundary[1][1] == 67
    assert b.migration_bound(RequestView("d", 0, 33), 0) is None


def test_bucket_registered(cm):
    r = make_router("bucket:bucket_adjust_interval_secs=2", ctx(cm, 4))
    assert r.cfg.bucket_adjust_interval_secs == 2.0 and len(r.boundary) == 4
    with pytest.raises(ValueError):
        make_router("bucket:nope=1", ctx(cm, 4))


def test_replan_to_fewer_stages_keeps_migrations_valid(cm):
    r = make_router("cascade", ctx(cm, 4), bounds="100/200/300", counts="1/1/1/1")
    cv = cluster(4)
    req = RequestView("a", 0, 350)
    src = r.route(req, cv, 0.0)
    assert src == 3
    r._replan([(50, 10)] * 300)  # the mix collapsed: the DP now wants fewer stages
    assert r.plan.num_stages <= 4
    req.output_len = 1000
    m = r.migrate(req, src, cv, 1.0)
    assert m is None or 0 <= m.dst < 4


def test_plan_change_moves_requests_past_new_bound(cm):
    r = fixed(cm, refine=0)
    for a in r.agents:
        a.cfg.patience, a.cfg.cooldown_s, a.cfg.handover_ratio = 1, 0.0, 1e9  # shift, not handover
    cv = cluster(4, **{"0": {"num_running": 300, "kv_used": 90000, "num_waiting": 50}})
    near = RequestView("near", 0, 95)  # below the old bound 100, above the lowered one
    short = RequestView("short", 0, 10)
    for q in (near, short):
        assert r.route(q, cluster(4), 0.0) == 0
    migs = r.rebalance(cv, {0: [near, short], 1: [], 2: [], 3: []}, 0.0)
    assert r.plan.bounds[0] < 95
    assert [m.req.rid for m in migs] == ["near"] and migs[0].dst in r.plan.members[1]


def test_no_sample_bootstraps_a_plan_from_observations(cm):
    r = make_router("cascade", ctx(cm, 4))
    assert r.plan.num_stages == 1  # nothing known yet: one stage of every instance
    rng = np.random.default_rng(5)
    cv = cluster(4)
    for i in range(600):
        q = RequestView(f"q{i}", 0.0, int(rng.choice([64, 6000])), 0)
        r.route(q, cv, 0.01 * i)
        q.output_len = 256
        r.on_finish(q, 0.01 * i + 1)
    r.rebalance(cv, {}, 10.0)
    assert r.stats["replans"] == 1 and sum(r.plan.counts()) == 4
    assert sorted(i for m in r.plan.members for i in m) == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------- prefill-aware entry


def test_spill_prefills_on_an_earlier_stage_then_moves_forward(cm):
    # stage 1 (instances 1, 2) has a long prefill queue; stage 0 (instance 0) is idle
    busy = {"num_running": 20, "kv_used": 20000, "num_waiting": 40, "outstanding_tokens": 120000}
    cv = cluster(4, **{"1": busy, "2": busy})
    r = fixed(cm)
    req = RequestView("a", 0, 300)  # its prompt belongs to stage 1
    assert r.route(req, cv, 0.0) == 0 and r.stats["spilled"] == 1
    req.output_len = 1  # prefill done on instance 0: length 301 is past stage 0's bound 100
    req.kv_tokens = 300
    m = r.migrate(req, 0, cv, 0.1)
    assert m is not None and m.dst in (1, 2)  # forward to its own stage, never further back
    # short prompts have no earlier stage; long prompts never go to a *later* stage
    assert r.route(RequestView("b", 0, 10), cv, 0.0) == 0
    assert r.route(RequestView("c", 0, 10**5), cv, 0.0) in (0, 3)
    # ablations: no spill without migration, or with spill=0
    for opts in ({"spill": 0}, {"migration": 0}):
        assert fixed(cm, **opts).route(RequestView("d", 0, 300), cv, 0.0) in (1, 2)


def test_spill_harm_keeps_a_long_prompt_off_a_busy_earlier_stage(cm):
    """``spill_harm``: a spilled prompt's prefill stalls the earlier stage's running decodes, so a long prompt
    stays in its own (queued) stage while a short one still spills."""
    busy = {"num_running": 20, "kv_used": 20000, "num_waiting": 40, "outstanding_tokens": 120000}
    decoding = {"num_running": 30, "kv_used": 3000}  # stage 0: many short requests decoding, no queue
    cv = cluster(4, **{"0": decoding, "1": busy, "2": busy, "3": busy})
    assert fixed(cm, spill_harm=0).route(RequestView("long", 0, 20000), cv, 0.0) == 0  # no charge: it spills
    harm = fixed(cm, spill_harm=0.3, harm_own=0)
    assert harm.route(RequestView("long", 0, 20000), cv, 0.0) == 3  # its own stage
    assert harm.route(RequestView("mid", 0, 300), cv, 0.0) == 0 and harm.stats["spilled"] == 1


def test_harm_own_places_a_long_prefill_where_it_stalls_fewer_decodes(cm):
    """``harm_own=1`` (default): the stall term also weighs the request's own stage: a long prompt goes to the
    member with fewer running requests even behind a queue; without it the least-pressured (many decodes) member
    wins; a member whose KV is above ``harm_kv_max`` is not charged."""
    many = {"num_running": 60, "kv_used": 6000}
    few = {"num_running": 1, "kv_used": 100, "num_waiting": 1, "outstanding_tokens": 30000}
    cv = cluster(5, **{"3": many, "4": few})

    def router(**opts):
        return make_router("cascade", ctx(cm, 5), bounds="100/500", counts="1/2/2", spill=0, **opts)

    assert router(spill_harm=0).route(RequestView("a", 0, 20000), cv, 0.0) == 3
    assert router(spill_harm=1.0, harm_own=0).route(RequestView("a", 0, 20000), cv, 0.0) == 3  # no spill: no charge
    assert router(spill_harm=1.0, harm_own=1).route(RequestView("a", 0, 20000), cv, 0.0) == 4
    assert router().route(RequestView("a", 0, 20000), cv, 0.0) == 4  # the defaults charge the own stage too
    many_full = {"num_running": 60, "kv_used": 60000}
    cv_full = cluster(5, **{"3": many_full, "4": few})  # instance 3's KV above harm_kv_max: no charge there
    assert router(spill_harm=1.0, harm_own=1, harm_kv_max=0.5).route(RequestView("a", 0, 20000), cv_full, 0.0) == 3


def test_spill_needs_a_clear_gain(cm):
    # equal pressure everywhere: the spill penalty keeps the request in its own stage
    same = {"num_running": 20, "kv_used": 20000}
    cv = cluster(4, **{str(i): same for i in range(4)})
    r = fixed(cm)
    assert r.route(RequestView("a", 0, 300), cv, 0.0) in (1, 2) and "spilled" not in r.stats


def test_pressure_counts_queued_prefill_tokens_and_own_sends(cm):
    from sglang_cascade.policies.balance import instance_pressure

    cfg = BalanceConfig()
    small = InstanceLoad(0, num_running=10, kv_used=10000, num_waiting=2, outstanding_tokens=200, kv_capacity=100000)
    big = InstanceLoad(1, num_running=10, kv_used=10000, num_waiting=2, outstanding_tokens=60000, kv_capacity=100000)
    assert instance_pressure(big, cm, cfg) > instance_pressure(small, cm, cfg)
    assert instance_pressure(small, cm, cfg, pending=1, pending_tokens=30000) > instance_pressure(
        small, cm, cfg, pending=1, pending_tokens=10
    )
    # the stretch term (prefill_horizon_s > 0) adds to the pressure of a prefill backlog
    stretch = BalanceConfig(prefill_horizon_s=0.5)
    assert instance_pressure(big, cm, stretch) > instance_pressure(big, cm, cfg)
    # the dispatcher adds the prompt tokens it sent to a member until that member publishes again
    picker = MemberPicker(cm, cfg)
    loads = cluster(2).loads
    assert picker.pick([0, 1], loads, tokens=16000) == 0
    assert picker.pick([0, 1], loads, tokens=100) == 1
    assert picker.pending_tokens == {0: 16000, 1: 100}


def test_plan_version_bumps_on_every_plan_change(cm):
    r = fixed(cm, cooldown_s=0.0)
    v0 = r.plan_version
    heavy = {"num_running": 200, "kv_used": 80000, "num_waiting": 30}
    cv = cluster(4, **{"0": heavy})
    r.rebalance(cluster(4), {}, 0.0)
    assert r.plan_version == v0  # nothing changed
    for t in (1.0, 2.0, 3.0):
        r.rebalance(cv, {}, t)
    assert r.plan_version > v0 and r.stats["shifts"] + r.stats["handovers"] >= 1
