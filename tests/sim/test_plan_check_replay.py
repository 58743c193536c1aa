"""The plan check's replay as the issue-14 fourth pass fixed it: every recent arrival (unfinished ones too),
the cluster's in-flight state as a warm start, an optional longer span, and the DP's choice standing unless
another staged plan beats it by the hysteresis margin. Each test fails on the code before that pass."""

from __future__ import annotations

import numpy as np

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.traces import TraceRequest, load_trace
from sglang_cascade.core.views import ClusterView, InstanceLoad, RequestView
from sglang_cascade.planning.factory import make_sim_checker
from sglang_cascade.planning.sim_checker import warm_rows
from sglang_cascade.policies.plan_check import (
    POOLED,
    Candidate,
    PlanCheckConfig,
    PlanCheckJob,
    PlanScore,
    decide,
    resolve_replay,
)
from sglang_cascade.policies.plan_replay import ArrivalRecorder, build_replay, draw_output, extend_arrivals
from sglang_cascade.policies.registry import PolicyContext, make_router
from sglang_cascade.sim import SimConfig, simulate
from sglang_cascade.testing.recording_checker import RecordingChecker

CM = CostModel.for_names("llama-3-8b", "h100")


def test_replay_all_keeps_unfinished_arrivals_with_longer_outputs():
    rec = ArrivalRecorder(keep=10)
    for i in range(10):
        rec.arrived(f"r{i}", 2.0 + 0.1 * i, 100 + i)
    for i in (0, 3):
        rec.finished(f"r{i}", 7)
    finished_only, _ = build_replay(rec.source(0, 0.0, open_replay=False, warm=False), [(1, 5)])
    assert len(finished_only) == 2  # finished only: 2 of the 10 arrivals (the replay's old input)
    running = [(0, "r5", 105, 300, 405)]  # r5 generated 300 tokens so far
    got, _ = build_replay(rec.source(0, 0.0, True, False, running), [(1, 5), (1, 50), (1, 400), (1, 900)])
    assert len(got) == 10 and got[0] == (0.0, 100, 7) and got[3][2] == 7
    assert abs(got[-1][0] - 0.9) < 1e-9  # the whole window's span: the rate is kept
    assert got[5][2] in (400, 900)  # generated 300 tokens: its length is drawn above that
    assert all(o in (5, 50, 400, 900) for _, _, o in got[1:3])
    rec.arrived("r10", 3.0, 110)  # the window slides: the oldest arrival and its output are forgotten
    assert len(build_replay(rec.source(0, 0.0, True, False), [(1, 5)])[0]) == 10 and "r0" not in rec.outputs


def test_draw_output_is_above_what_was_generated():
    outs = np.array([10, 20, 30])
    rng = np.random.default_rng(0)
    assert all(draw_output(outs, 15, rng) in (20, 30) for _ in range(20))
    assert draw_output(outs, 30, rng) == 61  # none longer in the sample: twice what it generated, + 1


def test_extend_arrivals_repeats_the_window_over_the_span():
    arr = [(0.0, 10, 1), (1.0, 11, 2), (2.0, 12, 3)]
    got = extend_arrivals(arr, 10.0)
    assert got[:3] == arr and got[3] == (3.0, 10, 1) and got[-1][0] <= 10.0 and len(got) == 11
    assert extend_arrivals(arr, 0.0) == arr and extend_arrivals(arr, 1.5) == arr


def test_the_dp_choice_stands_unless_beaten_by_the_hysteresis_margin():
    def s(name, score, counts):
        return PlanScore(name, [500] * (len(counts) - 1), counts, score, score, 1.0, score)

    job = PlanCheckJob([], [(0.0, 1, 1), (1.0, 1, 1)], 8, "init", 0.0, dp_best="dp1")
    scores = [s(POOLED, 10.0, [8]), s("dp1", 5.77, [3, 3, 2]), s("dp3", 5.54, [3, 1, 1, 1, 2])]  # 4% better
    d = decide(job, scores, POOLED, PlanCheckConfig())
    assert d.chosen == "dp1" and d.counts == [3, 3, 2] and "within" in d.reason
    assert decide(job, scores, POOLED, PlanCheckConfig(dp_margin=False)).chosen == "dp3"  # the old rule
    scores[2] = s("dp3", 5.0, [3, 1, 1, 1, 2])  # 13% better: adopted
    assert decide(job, scores, POOLED, PlanCheckConfig()).chosen == "dp3"
    # staging pays through dp3 (5% under pooled) though the DP's dp1 alone would not (2%): dp1, not pooled
    scores = [s(POOLED, 17.74, [8]), s("dp1", 17.41, [2, 5, 1]), s("dp3", 16.80, [1, 1, 2, 2, 1, 1])]
    assert decide(job, scores, POOLED, PlanCheckConfig()).chosen == "dp1"


def test_simulator_warm_start_runs_in_flight_requests_on_with_their_kv():
    trace = [TraceRequest("a", 0.0, 200, 20)]
    cfg = SimConfig(model="llama-3-8b", gpu="h100", instances=2, router="round_robin")
    cold = simulate(trace, cfg).metrics
    warm = [(0, 4000, 100, 150, 4099), (1, 4000, 0, 50, 0)]  # one decoding (KV held), one queued
    res = simulate(trace, SimConfig(**{**cfg.__dict__, "warm_start": tuple(warm)}))
    m = res.metrics
    assert m["completed"] == 3 and m["admitted"] == 3
    by = {r.rid: r for r in res.requests}
    assert (
        by["warm0"].instance == 0
        and by["warm1"].instance == 1
        and by["warm0"].output_len == 150
        and by["warm1"].output_len == 50
    )
    # the running one needs no prefill: its 50 decode steps end before the queued one's prefill + 50 steps
    assert by["warm0"].finish_time < by["warm1"].finish_time
    assert m["e2e_mean"] > cold["e2e_mean"]  # the replay's requests now share the cluster with them


def test_sim_checker_replays_on_the_warm_cluster():
    reqs = load_trace("sharegpt", num_requests=300, rate=20.0, seed=1)
    arrivals = [(r.arrival, r.prompt_len, r.output_len) for r in reqs]
    cands = [Candidate(POOLED, [], [4]), Candidate("dp1", [600], [2, 2])]
    job = PlanCheckJob(cands, arrivals, 4, "timer", 30.0)
    cold = make_sim_checker(CM).score(job)
    job.inflight = [(k % 4, 3000, 10, 600, 3009) for k in range(60)]  # a loaded cluster: 15 long decodes each
    hot = make_sim_checker(CM).score(job)
    assert [s.name for s in hot] == [POOLED, "dp1"]
    assert all(h.e2e_mean > c.e2e_mean for h, c in zip(hot, cold))
    assert warm_rows(job.inflight, 4, 2)[:2] == ((0, 3000, 10, 600, 3009), (0, 3000, 10, 600, 3009))
    assert len(warm_rows(job.inflight, 4, 2)) == 30


def test_cascade_job_carries_open_arrivals_and_in_flight_state():
    reqs = load_trace("sharegpt", num_requests=1000)
    chk = RecordingChecker()
    ctx = PolicyContext(CM, 4, 0, [(r.prompt_len, r.output_len) for r in reqs], 20.0, None, chk)
    r = make_router("cascade:check_interval_s=10,min_replay=2,plan_check=1,check_span_s=0", ctx)
    cluster = ClusterView([InstanceLoad(i) for i in range(4)], 0.0)
    views = []
    for i in range(8):
        v = RequestView(f"q{i}", 0.5 * i, 100 + i)
        v.instance = r.route(v, cluster, 0.5 * i)
        views.append(v)
    for v in views[:2]:  # two finish; of the other six, q2 runs (40 tokens generated), the rest are queued
        v.output_len = 9
        r.on_finish(v, 4.0)
    views[2].output_len, views[2].kv_tokens = 40, 141
    running = {i: [] for i in range(4)}
    running[views[2].instance].append(views[2])
    r.rebalance(cluster, running, 11.0)
    job = chk.jobs[-1]
    resolve_replay(job)  # what every checker does first
    assert job.trigger == "timer" and len(job.arrivals) == 8  # before: the 2 finished arrivals only
    order = [i for m in r.plan.members for i in m]
    assert len(job.inflight) == 6
    run = [x for x in job.inflight if x[2] > 0]
    assert run == [(order.index(views[2].instance), 102, 40, run[0][3], 141)] and run[0][3] > 40
    assert sorted(x[1] for x in job.inflight if x[2] == 0) == [103, 104, 105, 106, 107]
    old = make_router("cascade:check_interval_s=10,min_replay=2,plan_check=1,check_open=0,check_warm=0", ctx)
    assert old.check_cfg.check_open is False and old.check_cfg.check_warm is False
