"""The plan check on a proportional sub-cluster (``check_instances``): counts scaled, arrivals thinned over
the same time span, and the simulator checker scoring on that many instances (cheaper, same candidates)."""

from __future__ import annotations

import pytest

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.traces import load_trace
from sglang_cascade.planning.factory import make_sim_checker
from sglang_cascade.policies.plan_check import Candidate, PlanCheckJob, proportional_counts
from sglang_cascade.policies.plan_replay import thin_arrivals
from sglang_cascade.policies.registry import PolicyContext, make_router
from sglang_cascade.testing.recording_checker import RecordingChecker

CM = CostModel.for_names("llama-3-8b", "h100")


@pytest.mark.parametrize(
    "counts,m,want",
    [
        ([16], 4, [4]),
        ([4, 12], 4, [1, 3]),
        ([2, 6, 8], 4, [1, 1, 2]),
        ([1, 15], 4, [1, 3]),
        ([3, 5], 8, [3, 5]),
        ([1, 1, 6], 4, [1, 1, 2]),  # the floor overshot: was [0, 1, 3] (an empty stage: the replay crashed)
        ([1, 1, 1, 5], 4, [1, 1, 1, 1]),
    ],
)
def test_proportional_counts_keep_every_stage_and_the_total(counts, m, want):
    assert proportional_counts(counts, m) == want


def test_proportional_counts_refuse_more_stages_than_instances():
    assert proportional_counts([4, 4, 4, 4, 4], 4) is None


def test_thin_arrivals_keep_the_span_and_the_fraction():
    arr = [(i * 0.1, 100 + i, 10) for i in range(1000)]
    got = thin_arrivals(arr, 0.25)
    assert len(got) == 250 and got[0][0] == 0.0
    assert got[-1][0] == pytest.approx(99.6, abs=0.5)  # still ~100 s of traffic at a quarter of the rate
    assert thin_arrivals(arr, 1.0) == arr


def _job(sub: int) -> PlanCheckJob:
    reqs = load_trace("sharegpt", num_requests=800, rate=60.0, seed=1)
    arrivals = [(r.arrival, r.prompt_len, r.output_len) for r in reqs]
    cands = [Candidate("pooled", [], [16]), Candidate("dp1", [600], [4, 12]), Candidate("dp2", [300, 900], [2, 6, 8])]
    return PlanCheckJob(cands, arrivals, 16, "timer", 0.0, 0.2, sub)


def test_sim_checker_scores_on_the_sub_cluster_faster_with_the_original_plans():
    chk = make_sim_checker(CM)
    full = chk.score(_job(0))
    w_full = chk.last_work
    sub = chk.score(_job(4))
    w_sub = chk.last_work
    assert [s.name for s in sub] == [s.name for s in full] == ["pooled", "dp1", "dp2"]
    assert [s.counts for s in sub] == [[16], [4, 12], [2, 6, 8]]  # scores name the full-size plans
    assert all(s.score > 0 and s.score != float("inf") for s in sub)
    # cheaper by the work it does (deterministic, unlike wall or CPU time on a shared CI machine): a quarter
    # of the requests, far fewer simulated iterations, a smaller modelled check cost
    assert w_sub.requests * 4 == w_full.requests and w_sub.replays == w_full.replays == 3
    assert w_sub.iterations < 0.5 * w_full.iterations and w_sub.cpu_s() < 0.5 * w_full.cpu_s()
    # same per-instance load: the pooled sub-cluster's mean E2E is within 2x of the full cluster's
    assert 0.5 < sub[0].e2e_mean / full[0].e2e_mean < 2.0


def test_cascade_passes_check_instances_to_its_jobs():
    reqs = load_trace("sharegpt", num_requests=500)
    chk = RecordingChecker()
    ctx = PolicyContext(CM, 16, 0, [(r.prompt_len, r.output_len) for r in reqs], 60.0, None, chk)
    make_router("cascade:plan_check=1,check_instances=4", ctx)
    assert chk.jobs and chk.jobs[0].sub_instances == 4 and chk.jobs[0].num_instances == 16
