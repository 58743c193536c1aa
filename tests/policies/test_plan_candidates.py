"""The plan check's candidates are built by the checker, off the request path (issue 14): the cascade
router's jobs carry a picklable ``CandidateSpec`` and a ``ReplaySource``; ``route``/``rebalance`` (and the
constructor) never run the stage DP or ``top_partitions`` nor build the replay when a checker is there; the spec pickles and builds the same candidates
(the migration stalls included, measured ones too) as the DP run by the router itself."""

from __future__ import annotations

import pickle

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.decisions import MigrationMode
from sglang_cascade.core.traces import load_trace
from sglang_cascade.core.views import ClusterView, InstanceLoad
from sglang_cascade.planning.factory import make_sim_checker
from sglang_cascade.policies import plan_check, stage_dp
from sglang_cascade.policies.migration_costs import MigrationCosts
from sglang_cascade.policies.plan_candidates import POOLED, build_candidates
from sglang_cascade.policies.plan_check import PlanCheckJob
from sglang_cascade.policies.plan_replay import build_replay, extend_arrivals
from sglang_cascade.policies.registry import PolicyContext, make_router
from sglang_cascade.testing.dp_calls import wrap_dp
from sglang_cascade.testing.recording_checker import DeferredChecker, feed_finished

CM = CostModel.for_names("llama-3-8b", "h100")
SAMPLE = [(r.prompt_len, r.output_len) for r in load_trace("sharegpt", num_requests=1000)]
OPTS = "cascade:plan_check=1,check_interval_s=10,min_replay=5,check_span_s=0,replay_requests=200"


def count_dp_calls(monkeypatch, state: dict) -> None:
    """A DP call while ``state["router"]`` is set counts in ``state["router_calls"]``, else in
    ``state["checker_calls"]``."""

    def wrap(fn):
        def counting(*a, **k):
            state["router_calls" if state["router"] else "checker_calls"].append(fn.__name__)
            return fn(*a, **k)

        return counting

    wrap_dp(monkeypatch, wrap)


def test_route_and_rebalance_never_run_the_dp_or_build_the_replay_with_a_checker(monkeypatch):
    state = {"router": True, "router_calls": [], "checker_calls": []}
    count_dp_calls(monkeypatch, state)
    built = []  # the replay (output draws, the span's copies) is built by the checker too
    monkeypatch.setattr(
        plan_check, "build_replay", lambda src, s: built.append(state["router"]) or build_replay(src, s)
    )
    chk = DeferredChecker(make_sim_checker(CM).score)  # scores for real when the test calls work()
    r = make_router(OPTS, PolicyContext(CM, 4, 0, SAMPLE, 20.0, None, chk))  # the init check
    cluster = ClusterView([InstanceLoad(i) for i in range(4)], 0.0)
    feed_finished(r, cluster)
    r.rebalance(cluster, {}, 11.0)  # the timer check fires
    r._replan(SAMPLE[:300])  # a drift check (the refiner's callback inside rebalance)
    assert [j.trigger for j in chk.jobs] == ["init", "timer", "drift"]
    assert all(j.spec is not None and not j.candidates for j in chk.jobs)
    assert all(j.source is not None and not j.arrivals for j in chk.jobs)  # a copy of the recorded state only
    assert state["router_calls"] == [] and built == []
    state["router"] = False
    chk.work()  # the checker builds the candidates: the DP runs there
    assert "plan_partition" in state["checker_calls"] and "top_partitions" in state["checker_calls"]
    assert built == [False, False, False] and all(j.arrivals and j.replay_requests == len(j.arrivals) for j in chk.jobs)
    state["router"] = True
    r.rebalance(cluster, {}, 12.0)  # the answers apply
    assert state["router_calls"] == []
    d = r.last_decision
    assert d.trigger == "drift" and d.scores and d.scores[0].name == POOLED
    assert d.replay_requests == chk.jobs[-1].replay_requests > 0 and d.replay_rate > 0
    assert r.plan.bounds == d.bounds and r.plan.counts() == d.counts
    assert r.last_plan_info["counts"] and sum(r.last_plan_info["counts"]) == 4
    assert chk.jobs[-1].candidates[0].name == POOLED and chk.jobs[-1].plan_info == r.last_plan_info


def test_the_spec_pickles_and_builds_the_routers_own_dp_candidates():
    costs = MigrationCosts()  # measured stalls: the frozen copy must answer the same
    for t, s in ((500, 0.02), (2000, 0.05), (4000, 0.09), (8000, 0.2)):
        costs.observe(MigrationMode.KV_TRANSFER, t, s)
        costs.observe(MigrationMode.RECOMPUTE, t, 2 * s)
        costs.observe_link(t * 131072, s / 2)
    ctx = PolicyContext(CM, 8, 0, SAMPLE, 30.0, None, None, migration_costs=costs)
    r = make_router("cascade:plan_check=1,check_top_k=3", ctx)
    spec = r._spec(SAMPLE, 30.0)
    job = PlanCheckJob([], [(0.0, 100, 10), (1.0, 200, 20)], 8, "timer", 3.0, spec=spec)
    back = pickle.loads(pickle.dumps(job))
    assert back.spec == spec and back.arrivals == job.arrivals
    stall, live = back.spec.stall.planner(CM).stall_at_length, r.planner.stall_at_length
    assert costs.stall(MigrationMode.KV_TRANSFER, 1000) is not None  # the measurements are in use
    assert all(stall(n) == live(n) for n in (1, 64, 700, 3000, 20000, 120000))
    got = build_candidates(back.spec, CM)
    assert got == build_candidates(spec, CM)
    # the same candidates as the DP run in the router with its live planner (the code before issue 14's move)
    order = [i for m in r.plan.members for i in m]
    best = stage_dp.plan_partition(SAMPLE, 30.0, 8, CM, r.qoe, buckets=64, migration_stall=live, instance_ids=order)
    top = stage_dp.top_partitions(SAMPLE, 30.0, 8, CM, r.qoe, 64, 3, 6, migration_stall=live, instance_ids=order)
    want = [(POOLED, [], [8])] + ([("current", r.plan.bounds, r.plan.counts())] if r.plan.num_stages > 1 else [])
    found = [(best.plan, best.objective)] if best.plan.num_stages > 1 else []
    for p, _ in found + top:
        if (p.bounds, p.counts()) not in [(b, c) for _, b, c in want] and len(want) < 5:
            want.append((f"dp{len(want)}", p.bounds, p.counts()))
    assert [(c.name, c.bounds, c.counts) for c in got.candidates] == want and len(want) > 2
    assert got.plan_info["objective"] == best.objective and got.plan_info["counts"] == best.plan.counts()
    names = {(tuple(b), tuple(c)): n for n, b, c in want}
    assert got.dp_best == names[(tuple(best.plan.bounds), tuple(best.plan.counts()))]


def test_extend_arrivals_stops_at_the_first_empty_copy():
    class Counting(list):
        passes = 0

        def __iter__(self):
            Counting.passes += 1
            return super().__iter__()

    arr = Counting([(0.0, 10, 1), (1.0, 11, 2), (2.0, 12, 3)])
    got = extend_arrivals(arr, 9.5)  # copies at 3, 6, 9 (cut short at 9.5): then nothing more fits
    assert Counting.passes <= 6  # was 1,000 passes (the loop ran until its cap: ~90 ms per check at 2,000)
    assert got == [(t + 3.0 * k, p, o) for k in range(4) for t, p, o in arr][:10]
