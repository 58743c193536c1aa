"""Prefill-pool sizes checked by simulation (``cascade:pool_check``, the default with ``prefill_pool=auto``): where the
long prompts' prefill is at least ``CHECK_SHARE`` of the busy time, the start-up and drift re-plans score pool sizes
(the pool model's and spread ones) against pooled and the DP's plan on a replay, and the router runs the chosen
pool; elsewhere nothing changes (the unchecked DP)."""

from __future__ import annotations

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.traces import TraceRequest, load_trace
from sglang_cascade.planning.factory import make_sim_checker
from sglang_cascade.policies.migration import MigrationConfig, StallSpec
from sglang_cascade.policies.plan_candidates import POOLED, Candidate, CandidateSpec, build_candidates
from sglang_cascade.policies.plan_check import PlanCheckConfig, PlanCheckJob, PlanScore, decide
from sglang_cascade.policies.prefill_pool import (
    CHECK_SHARE,
    checked_pool_sizes,
    largest_refined_pool,
    pool_check_applies,
    size_prefill_pool,
)
from sglang_cascade.policies.registry import PolicyContext, make_router
from sglang_cascade.policies.stage_model import QoEConfig
from sglang_cascade.testing.recording_checker import DeferredChecker

CM = CostModel.for_names("llama-3.1-8b", "h100")
HEAVY = [(30000, 50)] * 50 + [(500, 50)] * 50  # long prompts' prefill ~85% of the busy time
MOONCAKE = [(r.prompt_len, r.output_len) for r in load_trace("mooncake", num_requests=400)]
SHAREGPT = [(r.prompt_len, r.output_len) for r in load_trace("sharegpt", num_requests=400)]


def test_the_sizes_scored_are_the_models_then_a_spread_of_the_cluster():
    assert checked_pool_sizes(8, 3, 4) == [3, 4, 5, 6]  # 0.375 x 8 = 3 is the model's already
    assert checked_pool_sizes(8, 0, 4) == [4, 5, 3, 6]  # no model size: the spread alone
    assert checked_pool_sizes(16, 12, 3) == [12, 8, 10]
    assert checked_pool_sizes(2, 0, 4) == [1] and checked_pool_sizes(1, 0, 4) == []
    assert checked_pool_sizes(8, 7, 0) == []


def test_the_check_applies_where_long_prefills_are_half_the_work():
    assert pool_check_applies(HEAVY, 4.0, 8, CM, QoEConfig(), 8192)
    assert pool_check_applies(HEAVY, 1.0, 8, CM, QoEConfig(), 8192)  # at low utilization too: the replay decides
    assert not size_prefill_pool(HEAVY, 1.0, 8, CM, QoEConfig(), 8192).size  # (the unchecked model: no pool there)
    assert pool_check_applies(MOONCAKE, 5.0, 8, CM, QoEConfig(), 8192)  # ~67% of the busy time: checked ...
    assert size_prefill_pool(MOONCAKE, 5.0, 8, CM, QoEConfig(), 8192).size == 0  # ... though the model sizes none
    assert not pool_check_applies(SHAREGPT, 40.0, 8, CM, QoEConfig(), 8192)  # short prompts: never
    assert not pool_check_applies(HEAVY, 4.0, 8, CM, QoEConfig(), 40000)  # nothing is long enough


def _spec(sample, rate, n=8, pool_sizes=4, **kw) -> CandidateSpec:
    args = dict(bounds=[], counts=[n], order=list(range(n)), pool=0)
    args.update(kw)
    return CandidateSpec(
        sample, rate, n, QoEConfig(), 16, None, 0, 6, stall=StallSpec(MigrationConfig()), pool_sizes=pool_sizes, **args
    )


def test_candidates_carry_pool_sizes_and_the_models_size_is_the_dp_best():
    got = build_candidates(_spec(HEAVY, 4.0), CM)
    pools = [c for c in got.candidates if c.pool and not c.name.endswith("dp")]
    model = size_prefill_pool(HEAVY, 4.0, 8, CM, QoEConfig(), 8192).size
    assert model > 0 and [c.pool for c in pools] == checked_pool_sizes(8, model, 4)
    assert all(c.name == f"pool{c.pool}" and c.counts == [8 - c.pool] and c.bounds == [] for c in pools)
    assert got.dp_best == f"pool{model}"  # what the unchecked router would run: dp_margin protects it
    assert "prefill seconds" in got.plan_info["prefill_pool_model"]
    # where the model sizes none, the DP's own best stays the dp_best
    got = build_candidates(_spec(MOONCAKE, 5.0, pool_dp=False), CM)
    near = size_prefill_pool(MOONCAKE, 5.0, 8, CM, QoEConfig(), 8192, min_share=CHECK_SHARE).size
    assert near > 0 and [c.pool for c in got.candidates if c.pool] == checked_pool_sizes(8, near, 4)
    assert not got.dp_best.startswith("pool")
    # the plan in force with a pool is a candidate of its own; no pool sizes without pool_sizes
    got = build_candidates(_spec(HEAVY, 4.0, pool_sizes=0, counts=[5], pool=3), CM)
    assert [(c.name, c.counts, c.pool) for c in got.candidates][:2] == [(POOLED, [8], 0), ("current", [5], 3)]
    assert not any(c.pool for c in got.candidates[2:])


def _score(name, s, pool=0, counts=None):
    return PlanScore(name, [], counts or [8 - pool], s, s, 1.0, s, None, pool)


def test_decide_adopts_a_pool_and_keeps_the_one_in_force():
    job = PlanCheckJob([], [], 8, "init", 0.0, replay_requests=100, replay_rate=1.0)
    cfg = PlanCheckConfig()
    d = decide(job, [_score(POOLED, 10.0), _score("pool4", 8.0, 4), _score("pool5", 9.0, 5)], POOLED, cfg)
    assert d.changed and d.chosen == "pool4" and d.pool == 4 and d.counts == [4]
    d = decide(job, [_score(POOLED, 10.0), _score("pool4", 9.9, 4)], POOLED, cfg)
    assert d.chosen == POOLED and d.pool == 0  # within stage_gain of pooled
    cur = _score("current", 8.1, 3)
    d = decide(job, [_score(POOLED, 10.0), cur, _score("pool4", 8.0, 4), _score("pool3", 8.1, 3)], "current", cfg)
    assert not d.changed and d.pool == 3  # inside the hysteresis band: the pool in force stays
    d = decide(job, [_score(POOLED, 10.0), cur, _score("pool3", 7.0, 3)], "current", cfg)
    assert not d.changed and d.pool == 3  # the same plan as the one in force, under another name


def _long_trace(n_req=160, rate=3.0):
    reqs = []
    for i in range(n_req):
        p = 24000 if i % 3 == 0 else 600  # (not every other one: a sub-cluster's thinning keeps every other)
        reqs.append(TraceRequest(f"r{i}", i / rate, p, 40))
    return reqs


def test_the_simulator_checker_replays_a_pool_candidate_with_its_pool():
    arrivals = [(r.arrival, r.prompt_len, r.output_len) for r in _long_trace()]
    cands = [Candidate(POOLED, [], [4]), Candidate("pool1", [], [3], pool=1), Candidate("pool2", [], [2], pool=2)]
    chk = make_sim_checker(CM)
    scores = {s.name: s for s in chk.score(PlanCheckJob(cands, arrivals, 4, "init", 0.0))}
    assert set(scores) == {POOLED, "pool1", "pool2"} and scores["pool2"].pool == 2
    assert len({round(s.score, 6) for s in scores.values()}) == 3  # three different replays
    # on a sub-cluster of 2 the pool scales with the stages (1 of 2 for both pools: one replay, the same score)
    sub = {s.name: s for s in chk.score(PlanCheckJob(cands, arrivals, 4, "init", 0.0, sub_instances=2))}
    assert sub["pool1"].score == sub["pool2"].score != sub[POOLED].score
    assert sub["pool2"].counts == [2] and sub["pool2"].pool == 2  # full-size names and counts kept


def test_the_router_checks_pool_sizes_at_start_and_runs_the_chosen_pool():
    checker = make_sim_checker(CM)
    ctx = PolicyContext(CM, 8, 0, HEAVY, 4.0, None, checker)
    r = make_router("cascade", ctx)
    d = r.last_decision
    assert d.trigger == "init" and any(s.pool for s in d.scores) and checker.jobs == 1
    size = len(r.pool.members) if r.pool is not None else 0
    assert size == d.pool and sum(d.counts) == 8 - size
    assert sorted(r.plan.order() + (r.pool.members if r.pool else [])) == list(range(8))
    if size:
        assert r.pool.members == list(range(8 - size, 8))  # the last ones of the order, as in the replay
        assert "plan check (init)" in r.last_plan_info["prefill_pool_why"]
    # pool_check=0: the pool model's size, unchecked
    r0 = make_router("cascade", PolicyContext(CM, 8, 0, HEAVY, 4.0, None, make_sim_checker(CM)), pool_check=0)
    assert r0.checker is None and len(r0.pool.members) == size_prefill_pool(HEAVY, 4.0, 8, CM, QoEConfig(), 8192).size


def test_no_pool_sizes_where_the_pool_does_not_apply():
    checker = make_sim_checker(CM)
    r = make_router("cascade", PolicyContext(CM, 8, 0, SHAREGPT, 40.0, None, checker))
    d = r.last_decision  # check_staging (default): pooled against the DP's best, no pool size scored
    assert checker.jobs == 1 and d.trigger == "init" and {s.name for s in d.scores} >= {POOLED}
    assert not any(s.pool for s in d.scores) and r.pool is None
    checker = make_sim_checker(CM)
    r = make_router("cascade", PolicyContext(CM, 8, 0, SHAREGPT, 40.0, None, checker), check_staging=0)
    assert checker.jobs == 0 and r.last_decision.chosen == "dp" and r.pool is None  # the DP, unchecked
    # a fixed pool or a fixed plan: never checked (the decision says which pool runs)
    for opts, pool in (({"prefill_pool": "2"}, 2), ({"counts": "4/4", "bounds": "2048"}, 0)):
        checker = make_sim_checker(CM)
        r = make_router("cascade", PolicyContext(CM, 8, 0, HEAVY, 4.0, None, checker), **opts)
        assert checker.jobs == 0 and r.checker is None and r.last_decision.pool == pool


def _prefer_pool(want: int):
    """A checker's scores: pool<want> 5.0, every other candidate 10.0 (the DP's candidates built as a checker does)."""

    def score(job):
        from sglang_cascade.policies.plan_check import resolve_job

        resolve_job(job, CM)
        return [_score(c.name, 5.0 if c.pool == want else 10.0, c.pool, c.counts) for c in job.candidates]

    return score


def test_a_bootstrap_check_resizes_the_pool_and_held_requests_follow():
    from sglang_cascade.core.views import ClusterView, InstanceLoad, RequestView

    chk = DeferredChecker(_prefer_pool(3))  # answers when the test calls work()
    r = make_router("cascade", PolicyContext(CM, 8, 0, [], 4.0, None, chk), min_replay=5)
    assert r.pool is None and not chk.jobs  # no length sample yet: pooled, no check
    cluster = ClusterView([InstanceLoad(i) for i in range(8)], 0.0)
    t = 0.0
    for i, (p, o) in enumerate(HEAVY * 6):  # enough finished requests (500) for the bootstrap re-plan
        req = RequestView(f"q{i}", t, p)
        r.route(req, cluster, t)
        req.output_len = o
        r.on_finish(req, t + 0.1)
        t += 0.25  # 4 req/s
    r.rebalance(ClusterView(cluster.loads, t), {}, t)
    assert len(chk.jobs) == 1 and chk.jobs[0].spec.pool_sizes == 4  # the bootstrap re-plan went to the checker
    assert r.pool is None  # ... and nothing changes until it answers
    chk.work()
    r.rebalance(ClusterView(cluster.loads, t + 1), {}, t + 1)
    assert r.last_decision.chosen == "pool3" and r.last_decision.pool == 3
    assert r.pool.members == r._order()[-3:] and r.plan.counts() == [5]
    # a long prompt now goes to the pool's hold queue and is released to a pool member
    req = RequestView("long", t + 1, 30000)
    from sglang_cascade.core.decisions import HOLD

    assert r.route(req, ClusterView(cluster.loads, t + 1), t + 1) == HOLD
    sent = r.release(ClusterView(cluster.loads, t + 1), t + 1)
    assert [(x.rid, r.pool.holds(iid)) for x, iid in sent] == [("long", True)]
    assert r.placed["long"] == sent[0][1]  # the plan check's warm start knows where it went


def test_the_score_weighs_slo_misses_when_asked_and_replays_use_the_deployments_slo():
    import math

    from sglang_cascade.planning.sim_checker import SimCheckerConfig
    from sglang_cascade.policies.plan_check import plan_score
    from sglang_cascade.testing.recording_checker import RecordingChecker

    assert plan_score(2.0, 10.0, 0.2) == plan_score(2.0, 10.0, 0.2, 0.8, 0.0) == 4.0
    assert math.isclose(plan_score(2.0, 10.0, 0.2, 0.8, 5.0), 8.0)  # 20% missing x 5: twice the E2E score
    assert plan_score(float("inf"), 1.0, 0.2, 1.0, 5.0) == float("inf")
    rec = RecordingChecker()
    make_router("cascade", PolicyContext(CM, 8, 0, HEAVY, 4.0, None, rec), check_slo_weight=5)
    assert rec.jobs and rec.jobs[0].slo_weight == 5.0
    # the replay's attainment follows the deployment's length-scaled TTFT SLO (SimConfig.slo_ttft_scale)
    arrivals = [(r.arrival, r.prompt_len, r.output_len) for r in _long_trace()]
    cand = [Candidate(POOLED, [], [4])]
    got = {}
    for scale in (0.0, 3.0):
        chk = make_sim_checker(CM, SimCheckerConfig(slo_ttft=0.5, slo_ttft_scale=scale))
        got[scale] = chk.score(PlanCheckJob(cand, arrivals, 4, "init", 0.0, slo_weight=5.0))[0]
    assert got[3.0].slo_attainment > got[0.0].slo_attainment and got[3.0].score < got[0.0].score


def test_pool_sizes_can_come_with_the_dps_plan_over_the_other_instances():
    mixed = [(200, 600)] * 300 + [(3000, 600)] * 100 + [(30000, 40)] * 100  # staging pays on the decode side
    got = build_candidates(_spec(mixed, 6.0, pool_dp=True), CM)
    staged = [c for c in got.candidates if c.name.endswith("dp") and c.pool]
    assert staged and all(len(c.counts) > 1 and sum(c.counts) == 8 - c.pool and c.bounds for c in staged)
    assert len({c.name for c in got.candidates}) == len(got.candidates)
    plain = build_candidates(_spec(mixed, 6.0, pool_dp=False), CM)
    assert not any(c.name.endswith("dp") and c.pool for c in plain.candidates)


def test_the_best_pool_sizes_neighbours_are_refined_in_its_form():
    from sglang_cascade.policies.plan_candidates import pool_neighbours

    mixed = [(200, 600)] * 300 + [(3000, 600)] * 100 + [(30000, 40)] * 100
    spec = _spec(mixed, 6.0, n=16)
    got = build_candidates(spec, CM)
    seen = {c.key() for c in got.candidates}
    best = next(c for c in got.candidates if c.name == "pool8dp")  # 1/2 of 16 with the DP's plan beside it
    more = pool_neighbours(spec, CM, best, seen)
    assert sorted(c.pool for c in more) == [7, 9]
    for c in more:  # the DP's plan over the other 16 - k where it stages, else one stage
        assert sum(c.counts) == 16 - c.pool and (c.name == f"pool{c.pool}dp") == (len(c.counts) > 1)
        assert c.key() in seen  # marked as scored
    assert pool_neighbours(spec, CM, best, seen) == []  # both scored now
    top = Candidate("pool12", [], [4], pool=12)  # the largest spread size (3/4 of 16): only the smaller neighbour
    assert [c.pool for c in pool_neighbours(spec, CM, top, set())] == [11]
    assert [c.name for c in pool_neighbours(spec, CM, Candidate("pool3", [], [13], pool=3), set())] == [
        "pool2",
        "pool4",
    ]
    assert pool_neighbours(spec, CM, Candidate(POOLED, [], [16]), set()) == []  # no pool: nothing to refine


def test_the_simulator_checker_scores_the_best_pool_sizes_neighbours():
    arrivals = [(r.arrival, r.prompt_len, r.output_len) for r in _long_trace(rate=12.0)]
    spec = _spec([(p, o) for _, p, o in arrivals], 12.0, n=6, pool_sizes=1)  # one spread size: 3 or 4 of 6
    names = {}
    for refine in (True, False):
        spec.pool_refine = refine
        job = PlanCheckJob([], arrivals, 6, "init", 0.0, spec=spec)
        names[refine] = {s.name: s for s in make_sim_checker(CM).score(job)}
        assert [c.name for c in job.candidates] == list(names[refine])  # the answer carries the refined ones
    first = {k: v.score for k, v in names[True].items() if k in names[False]}
    assert first == {k: v.score for k, v in names[False].items()}  # the first round is the same replay
    best = min(names[False].values(), key=lambda s: s.score)
    assert best.pool  # long prompts at 12 req/s: a pool wins the first round ...
    extra = {names[True][x].pool for x in set(names[True]) - set(names[False])}
    near = {k for k in (best.pool - 1, best.pool + 1) if 1 <= k <= largest_refined_pool(6)}
    assert extra and extra == near - {s.pool for s in names[False].values()}  # ... then its neighbours
    # a decision over the refined scores may take a neighbour
    d = decide(job, list(names[True].values()), POOLED, PlanCheckConfig())
    assert d.chosen == min(names[True].values(), key=lambda s: s.score).name


def test_an_slo_target_ranks_plans_meeting_it_first_and_margins_hold_within_a_rank():
    from sglang_cascade.policies.plan_check import rank_key

    def sc(name, score, att, pool=0):
        return PlanScore(name, [], [8 - pool], score, score, att, score, None, pool)

    job = PlanCheckJob([], [], 8, "init", 0.0, replay_requests=100, replay_rate=1.0)
    cfg = PlanCheckConfig()
    scores = [sc(POOLED, 10.0, 0.5), sc("pool4", 7.0, 0.85, 4), sc("pool5", 7.3, 0.92, 5)]
    assert decide(job, scores, POOLED, cfg).chosen == "pool4"  # no target: the score alone
    job.slo_target = 0.9
    d = decide(job, scores, POOLED, cfg)
    assert d.chosen == "pool5" and d.pool == 5 and "SLOs met for 0.920" in d.reason
    assert rank_key(scores[2], 0.9) < rank_key(scores[1], 0.9) and rank_key(scores[1], 0.0) < rank_key(scores[2], 0.0)
    # within one rank the margins stand: pool5 meets the target as the plan in force does, and is inside the band
    cur = sc("current", 7.4, 0.91, 4)
    assert decide(job, [sc(POOLED, 10.0, 0.5), cur, scores[2]], "current", cfg).chosen == "current"
    # a plan of a better rank clears the hysteresis: the plan in force misses the target
    cur = sc("current", 7.0, 0.8, 4)
    assert decide(job, [sc(POOLED, 10.0, 0.5), cur, scores[2]], "current", cfg).chosen == "pool5"
    # where nothing meets the target, the score decides as before
    low = [sc(POOLED, 10.0, 0.5), sc("pool4", 7.0, 0.6, 4), sc("pool5", 7.3, 0.7, 5)]
    assert decide(job, low, POOLED, cfg).chosen == "pool4"
    from sglang_cascade.testing.recording_checker import RecordingChecker

    rec = RecordingChecker()  # the router's jobs carry its target
    make_router("cascade", PolicyContext(CM, 8, 0, HEAVY, 4.0, None, rec), check_slo_target=0.9)
    assert rec.jobs and rec.jobs[0].slo_target == 0.9


def test_check_replans_sends_every_traces_replans_to_the_checker():
    from sglang_cascade.policies.cascade_config import wants_plan_checker

    checker = make_sim_checker(CM)
    r = make_router("cascade", PolicyContext(CM, 8, 0, SHAREGPT, 40.0, None, checker), check_replans=1, check_staging=0)
    d = r.last_decision
    assert checker.jobs == 1 and d.trigger == "init" and POOLED in {s.name for s in d.scores}
    assert not any(s.pool for s in d.scores)  # no pool sizes where pool_check does not apply
    assert r.plan.counts() == d.counts and r.pool is None
    assert wants_plan_checker({"check_replans": 1, "pool_check": 0}) and not wants_plan_checker({"pool_check": 0})
    assert wants_plan_checker({"prefill_pool": "off"}) and not wants_plan_checker(
        {"prefill_pool": "off", "check_staging": 0}
    )
    for fixed in ({"prefill_pool": 2}, {"bounds": "1024", "counts": "4/4"}):  # nothing to re-plan: no checker
        assert not wants_plan_checker({"check_replans": 1, "pool_check": 0, **fixed})
        fx = make_router(
            "cascade", PolicyContext(CM, 8, 0, SHAREGPT, 40.0, None, make_sim_checker(CM)), check_replans=1, **fixed
        )
        assert fx.checker is None


def test_check_staging_checks_only_the_choice_to_stage():
    from sglang_cascade.policies.stages import StagePlan

    checker = make_sim_checker(CM)
    ctx = PolicyContext(CM, 8, 0, SHAREGPT, 40.0, None, checker)
    r = make_router("cascade", ctx, check_cpu_budget=0)  # check_staging is the default
    assert checker.jobs == 1 and r.last_decision.trigger == "init"  # the start-up plan: pooled or staged, checked
    assert POOLED in {s.name for s in r.last_decision.scores}
    r.plan = StagePlan.from_counts([1024], [4, 4], list(range(8)))
    r._index()
    replans = r.stats["replans"]
    r._replan(SHAREGPT)  # a staged plan in force: the drift re-plan is the DP's, unchecked
    assert checker.jobs == 1 and r.stats["replans"] == replans + 1
    r.plan = StagePlan([], [list(range(8))])
    r._index()
    r._replan(SHAREGPT)  # one stage in force: whether to stage again is the checker's
    assert checker.jobs == 2 and r.stats["replans"] == replans + 1 and r.last_decision.trigger == "drift"
