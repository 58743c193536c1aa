"""The process checker (the live router's default) builds the plan check's candidates in its child: the
router's process never runs the stage DP (here it would raise), and the child's candidates, DP summary and
scores come back and decide the plan; the CPU budget governor charges the CPU the child measured."""

from __future__ import annotations

import time

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.traces import load_trace
from sglang_cascade.core.views import ClusterView, InstanceLoad
from sglang_cascade.planning.process import ProcessPlanChecker
from sglang_cascade.planning.sim_checker import SimCheckerConfig
from sglang_cascade.policies.plan_candidates import POOLED
from sglang_cascade.policies.registry import PolicyContext, make_router
from sglang_cascade.testing.dp_calls import wrap_dp

CM = CostModel.for_names("llama-3-8b", "h100")


def test_the_child_builds_the_candidates_and_the_decision_applies(monkeypatch):
    def refuse(fn):
        def raising(*a, **k):
            raise AssertionError(f"{fn.__name__} ran in the router's process")

        return raising

    wrap_dp(monkeypatch, refuse)
    sample = [(r.prompt_len, r.output_len) for r in load_trace("sharegpt", num_requests=1000)]
    opts = "cascade:plan_check=1,replay_requests=200,check_span_s=0"
    chk = ProcessPlanChecker(CM, SimCheckerConfig(router_options={"replay_requests": 200}))
    try:
        t = time.time()
        r = make_router(opts, PolicyContext(CM, 4, 0, sample, 20.0, None, chk))
        assert time.time() - t < 1.0  # the constructor does not wait for the check
        assert r.last_decision.chosen == POOLED and "pending" in r.last_decision.reason
        cluster = ClusterView([InstanceLoad(i) for i in range(4)], 0.0)
        t0 = time.time()
        while not r.last_decision.scores and time.time() - t0 < 60:
            time.sleep(0.05)
            r.rebalance(cluster, {}, 0.1)
        d = r.last_decision
        assert d.trigger == "init" and [s.name for s in d.scores][0] == POOLED and len(d.scores) >= 2
        assert r.last_plan_info["counts"] and sum(r.last_plan_info["counts"]) == 4  # the child's DP summary
        assert r.plan.bounds == d.bounds and r.plan.counts() == d.counts
        assert chk.jobs == 1 and chk.failures == 0
        # the governor charged the child's measured CPU (not the simulator's model), as the start-up check's
        assert d.cost_s == chk.cpu_s > 0 and r.budget.startup_s == chk.cpu_s and r.budget.spent_s == 0.0
        assert d.next_check_at is None  # no traffic yet: traffic-time checks wait for it
    finally:
        chk.close()
