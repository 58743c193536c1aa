"""Plans checked by simulation (policies/plan_check.py): adoption with margins, the decision record, and the
cascade router's use of an injected checker (a scripted one here: policies stay engine-free)."""

from __future__ import annotations

import json

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.traces import load_trace
from sglang_cascade.policies.plan_check import (
    CURRENT,
    POOLED,
    PlanCheckConfig,
    PlanCheckJob,
    PlanScore,
    decide,
    resolve_job,
)
from sglang_cascade.policies.plan_replay import ArrivalRecorder, build_replay, synthetic_arrivals
from sglang_cascade.policies.registry import PolicyContext, make_router
from sglang_cascade.policies.stage_dp import dp_best_per_stage_count, dp_partition, top_partitions

CM = CostModel.for_names("llama-3-8b", "h100")


def _job(trigger="timer"):
    return PlanCheckJob([], [(0.0, 100, 10), (1.0, 100, 10)], 8, trigger, 5.0)


def _s(name, score, counts=(2, 6), bounds=(500,)):
    return PlanScore(name, list(bounds), list(counts), score, score, 1.0, score)


def test_pooled_is_chosen_when_staging_loses_or_gains_too_little():
    cfg = PlanCheckConfig()
    d = decide(_job(), [_s(POOLED, 10.0, (8,), ()), _s("dp1", 11.0), _s("dp2", 12.0)], POOLED, cfg)
    assert d.chosen == POOLED and not d.changed and "staging does not pay" in d.reason
    # a 2% gain is inside stage_gain (3%): still pooled
    d = decide(_job(), [_s(POOLED, 10.0, (8,), ()), _s("dp1", 9.8)], POOLED, cfg)
    assert d.chosen == POOLED and "does not pay" in d.reason
    # from a staged plan in force, a clearly better pooled plan is adopted
    d = decide(_job(), [_s(POOLED, 5.0, (8,), ()), _s(CURRENT, 8.0), _s("dp1", 7.0, (3, 5))], "current", cfg)
    assert d.chosen == POOLED and d.changed and d.counts == [8]


def test_current_plan_is_kept_inside_the_hysteresis_band():
    cfg = PlanCheckConfig(hysteresis=0.05, stage_gain=0.03)
    scores = [_s(POOLED, 12.0, (8,), ()), _s(CURRENT, 8.0, (2, 6)), _s("dp1", 7.8, (3, 5))]  # 2.5% better
    d = decide(_job(), scores, CURRENT, cfg)
    assert d.chosen == CURRENT and not d.changed and "band" in d.reason
    scores[2] = _s("dp1", 7.0, (3, 5))  # 12.5% better: adopted
    d = decide(_job(), scores, CURRENT, cfg)
    assert d.chosen == "dp1" and d.changed and d.counts == [3, 5]


def test_decision_record_json_and_log_line():
    d = decide(_job("drift"), [_s(POOLED, 10.0, (8,), ()), _s("dp1", 6.0)], POOLED, PlanCheckConfig())
    j = json.loads(json.dumps(d.to_json()))
    assert j["chosen"] == "dp1" and j["trigger"] == "drift" and j["changed"] is True
    assert j["replay_requests"] == 2 and len(j["scores"]) == 2 and j["scores"][1]["name"] == "dp1"
    assert "dp1" in d.log_line() and "drift" in d.log_line()


def test_best_per_stage_count_matches_the_constrained_dp():
    import numpy as np

    rng = np.random.default_rng(1)
    B, N = 6, 5
    C = rng.random((B + 1, B + 1, N + 1)) + 0.1
    for k, cost, segs in dp_best_per_stage_count(C, N, 4):
        assert len(segs) == k
        assert abs(sum(C[i, j, m] for i, j, m in segs) - cost) < 1e-9
        best_upto_k = dp_partition(C, N, k)[0]
        assert best_upto_k <= cost + 1e-9


def test_top_partitions_are_distinct_multi_stage_plans():
    reqs = load_trace("sharegpt", num_requests=1500)
    plans = top_partitions([(r.prompt_len, r.output_len) for r in reqs], 30.0, 8, CM, k=3)
    assert 1 <= len(plans) <= 3
    assert all(p.num_stages > 1 and sum(p.counts()) == 8 for p, _ in plans)
    assert len({(tuple(p.bounds), tuple(p.counts())) for p, _ in plans}) == len(plans)
    assert [c for _, c in plans] == sorted(c for _, c in plans)


def test_recorder_replays_finished_arrivals_and_synthetic_replay_is_deterministic():
    rec = ArrivalRecorder(keep=3)
    for i in range(5):
        rec.arrived(f"r{i}", 10.0 + i, 100 + i)
    for i in (4, 0, 2, 3):
        rec.finished(f"r{i}", 7)
    rec.finished("nope", 3)
    finished_only = build_replay(rec.source(0, 0.0, open_replay=False, warm=False), [])
    assert finished_only == ([(0.0, 100, 7), (2.0, 102, 7), (3.0, 103, 7)], [])  # the last 3 finished
    a = synthetic_arrivals([(10, 5), (20, 6)], 4.0, 50, seed=3)
    assert a == synthetic_arrivals([(10, 5), (20, 6)], 4.0, 50, seed=3) and a[0][0] == 0.0 and len(a) == 50


class ScriptedChecker:
    """Scores candidates from a table (staged plans lose unless told otherwise); answers later if deferred."""

    def __init__(self, staged_score=20.0, deferred=False):
        self.staged_score, self.deferred = staged_score, deferred
        self.jobs, self.pending, self.closed = [], [], False

    def submit(self, job):
        resolve_job(job, CM)  # every checker's first step: the DP's candidates from the job's spec
        self.jobs.append(job)
        scores = [
            PlanScore(c.name, c.bounds, c.counts, s, s, 1.0, s)
            for c in job.candidates
            for s in [10.0 if c.name == POOLED else self.staged_score]
        ]
        self.pending.append((job, scores))

    def results(self):
        if self.deferred:
            return []
        out, self.pending = self.pending, []
        return out

    def close(self):
        self.closed = True


def _ctx(checker, n=4):
    reqs = load_trace("sharegpt", num_requests=1000)
    return PolicyContext(CM, n, 0, [(r.prompt_len, r.output_len) for r in reqs], 20.0, None, checker)


def test_cascade_checks_at_start_and_says_why():
    chk = ScriptedChecker(staged_score=20.0)
    r = make_router("cascade", _ctx(chk), plan_check=True)
    assert r.plan.num_stages == 1 and r.last_decision.chosen == POOLED
    assert "staging does not pay" in r.last_decision.reason
    job = chk.jobs[0]
    assert job.trigger == "init" and job.candidates[0].name == POOLED and len(job.candidates) >= 2
    assert len(job.arrivals) == 1200  # the synthetic start-up replay: one check interval (60 s) at 20 req/s ...
    chk3 = ScriptedChecker(staged_score=20.0)
    make_router("cascade", _ctx(chk3), plan_check=True, check_interval_s=600)
    assert len(chk3.jobs[0].arrivals) == 2000  # ... at most replay_requests
    chk4 = ScriptedChecker(staged_score=20.0)
    make_router("cascade", _ctx(chk4), plan_check=True, check_interval_s=1, check_span_s=0)
    assert len(chk4.jobs[0].arrivals) == 200  # ... at least min_replay
    chk2 = ScriptedChecker(staged_score=5.0)
    r2 = make_router("cascade", _ctx(chk2), plan_check=True)
    assert r2.plan.num_stages > 1 and r2.last_decision.chosen.startswith("dp")


def test_cascade_adopts_a_deferred_answer_on_rebalance_and_fixed_plans_are_never_checked():
    from sglang_cascade.core.views import ClusterView, InstanceLoad

    chk = ScriptedChecker(staged_score=5.0, deferred=True)
    r = make_router("cascade", _ctx(chk), plan_check=True)
    assert r.plan.num_stages == 1 and r.last_decision.chosen == POOLED  # nothing answered yet
    chk.deferred = False
    v0 = r.plan_version
    r.rebalance(ClusterView([InstanceLoad(i) for i in range(4)], 1.0), {}, 1.0)
    assert r.plan.num_stages > 1 and r.plan_version > v0 and r.last_decision.trigger == "init"
    fixed = make_router("cascade:bounds=500,counts=2/2", _ctx(ScriptedChecker()))
    assert fixed.checker is None and fixed.last_decision.chosen == "fixed"


def _eight_finished(r):
    """Route and finish eight requests (t = 0 .. 4.5 s) through ``r``; the 4-instance cluster view they used."""
    from sglang_cascade.core.views import ClusterView, InstanceLoad, RequestView

    cluster = ClusterView([InstanceLoad(i) for i in range(4)], 0.0)
    for i in range(8):
        req = RequestView(f"q{i}", 0.5 * i, 100 + i)
        r.route(req, cluster, 0.5 * i)
        req.output_len = 9
        r.on_finish(req, 0.5 * i + 1)
    return cluster


def test_cascade_timer_check_uses_recorded_arrivals():
    chk = ScriptedChecker(staged_score=20.0)
    r = make_router("cascade:check_interval_s=10,min_replay=5,plan_check=1,check_span_s=0", _ctx(chk))
    cluster = _eight_finished(r)
    r.rebalance(cluster, {}, 5.0)
    assert len(chk.jobs) == 1  # timer not yet due
    r.rebalance(cluster, {}, 11.0)
    assert len(chk.jobs) == 2 and chk.jobs[1].trigger == "timer" and len(chk.jobs[1].arrivals) == 8
    assert r.last_decision.trigger == "timer" and r.last_decision.chosen == POOLED


def test_check_staging_rechecks_a_staged_plan_on_its_timer():
    """The default's start-up check stages (the script scores staged best); later traffic makes pooled best: the
    timer check (every check_interval_s while staged) brings one stage back. check_staging=0: no timer check."""
    opts = "check_interval_s=10,min_replay=5,check_span_s=0,check_cpu_budget=0"
    for staging in (1, 0):
        chk = ScriptedChecker(staged_score=5.0)  # staged plans beat pooled (10.0) at start-up
        r = make_router(f"cascade:{opts},check_staging={staging}", _ctx(chk))
        assert r.plan.num_stages > 1 and len(chk.jobs) == staging  # check_staging=0: the DP, unchecked
        cluster = _eight_finished(r)
        chk.staged_score = 20.0  # now staging does not pay
        r.rebalance(cluster, {}, 5.0)
        assert len(chk.jobs) == staging  # not due yet
        r.rebalance(cluster, {}, 11.0)
        if staging:
            assert [j.trigger for j in chk.jobs] == ["init", "staging"] and r.plan.num_stages == 1
            assert {c.name for c in chk.jobs[1].candidates} == {POOLED, CURRENT}  # no DP plan built or replayed
            assert r.last_decision.chosen == POOLED
            r.rebalance(cluster, {}, 30.0)
            assert len(chk.jobs) == 2  # one stage in force: no timer (drift re-plans are checked instead)
        else:
            assert not chk.jobs and r.plan.num_stages > 1
