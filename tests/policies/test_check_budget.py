"""The plan check's CPU budget governor (issue 14: <= 1 core-second of checker CPU per minute of traffic):
a token bucket paid in advance - a timer / drift check starts only when ``budget x traffic minutes`` covers
the checks so far plus the next one's expected cost (the last cost, or the modelled cost before any); a
refused drift keeps the plan (and says why), and ``check_cpu_budget=0`` is the old behaviour."""

from __future__ import annotations

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.traces import load_trace
from sglang_cascade.core.views import ClusterView, InstanceLoad
from sglang_cascade.planning.factory import make_sim_checker
from sglang_cascade.policies import check_cost
from sglang_cascade.policies.check_budget import CheckBudget
from sglang_cascade.policies.plan_check import PlanScore, resolve_job
from sglang_cascade.policies.registry import PolicyContext, make_router
from sglang_cascade.testing.recording_checker import feed_finished

CM = CostModel.for_names("llama-3-8b", "h100")
SAMPLE = [(r.prompt_len, r.output_len) for r in load_trace("sharegpt", num_requests=1000)]


class CostlyChecker:
    """Answers at once (pooled scores best) and says each check cost ``cost_s`` CPU seconds."""

    def __init__(self, cost_s: float):
        self.cost_s, self.jobs, self.pending = cost_s, [], []

    def submit(self, job):
        resolve_job(job, CM)
        job.cost_s = self.cost_s
        self.jobs.append(job)
        self.pending.append((job, [PlanScore(c.name, c.bounds, c.counts, 1.0, 1.0, 1.0, 1.0) for c in job.candidates]))

    def results(self):
        out, self.pending = self.pending, []
        return out

    def close(self):
        pass


def _router(chk, budget: float):
    opts = f"cascade:plan_check=1,check_interval_s=10,min_replay=5,check_span_s=0,check_cpu_budget={budget:g}"
    r = make_router(opts, PolicyContext(CM, 4, 0, SAMPLE, 20.0, None, chk))
    cluster = ClusterView([InstanceLoad(i) for i in range(4)], 0.0)
    feed_finished(r, cluster)
    return r, cluster


def _check_times(chk, r, cluster, until: float) -> list[float]:
    t = 1.0
    while t <= until:
        r.rebalance(cluster, {}, t)
        t += 1.0
    return [j.at for j in chk.jobs]


def test_budget_arithmetic_pays_the_next_check_in_advance():
    b = CheckBudget(1.0)
    assert not b.allows(100.0, 0.0)  # no traffic yet: no traffic-time check
    b.open(10.0)
    b.open(50.0)  # traffic minutes count from the first arrival
    assert b.allows(10.0, 0.0) and not b.allows(39.9, 0.5) and b.allows(40.0, 0.5)  # 0.5 core-s = 30 s of credit
    b.charge(0.5)
    assert b.next_at(0.5) == 70.0 and not b.allows(69.9, 0.5)  # the spent 0.5 plus the next 0.5
    b.charge(3.0, startup=True)  # the constructor's check: apart, not under the budget
    assert b.next_at(0.5) == 70.0 and b.startup_s == 3.0 and b.charged == 2
    s = b.state(70.0, 0.5)
    assert s["spent_core_s"] == 0.5 and s["next_check_in_s"] == 0.0 and s["core_s_per_traffic_min"] == 0.5
    assert b.state(20.0, 0.5)["next_check_in_s"] == 50.0 and s["startup_core_s"] == 3.0
    off = CheckBudget(0.0)
    off.charge(100.0)
    assert off.allows(10.0, 5.0) and off.state(10.0, 5.0)["next_check_at"] is None and off.spent_s == 100.0


def test_governor_spaces_timer_checks_by_cost_over_budget():
    chk = CostlyChecker(cost_s=2.0)  # 2 core-s per check at 1 core-s per minute: one check per 120 s
    r, cluster = _router(chk, 1.0)
    times = _check_times(chk, r, cluster, 300.0)
    assert times == [0.0, 120.0, 240.0]  # init, then timer checks (due every 10 s) only when the budget allows
    assert r.budget.deferred_timer == 3 and r.budget.charged == 3  # waits from t=10, 130 and 250
    d = r.last_decision
    assert d.cost_s == 2.0 and d.next_check_at == 360.0 and "next check at t>=360.0s" in d.log_line()
    assert r.budget_state(300.0)["next_check_in_s"] == 60.0


class VaryingChecker(CostlyChecker):
    """Each check costs the next of ``costs`` (cycled)."""

    def __init__(self, costs):
        super().__init__(0.0)
        self.costs, self.k = list(costs), 0

    def submit(self, job):
        self.cost_s = self.costs[self.k % len(self.costs)]
        self.k += 1
        super().submit(job)


def test_checks_cpu_stays_within_budget_times_traffic_minutes_at_every_start():
    chk = VaryingChecker([1.5, 0.5, 3.0, 1.0])
    r, cluster = _router(chk, 2.0)  # 2 core-s per traffic minute
    times = _check_times(chk, r, cluster, 1200.0)
    assert len(times) > 8
    paid = 0.0  # traffic-time checks started before (charged when they answered, at once here)
    for j in chk.jobs[1:]:  # the first is the start-up check (before traffic)
        # the check starting now was expected to cost the last one's: the credit covered both
        assert paid + chk.jobs[chk.jobs.index(j) - 1].cost_s <= 2.0 * j.at / 60.0 + 1e-9
        paid += j.cost_s
    # over the whole run: within the credit, give or take the last check's distance from its estimate
    assert r.budget.spent_s == paid and paid <= 2.0 * 1200.0 / 60.0 + max(chk.costs) - min(chk.costs)
    assert r.budget.startup_s == chk.jobs[0].cost_s == 1.5


def test_the_first_check_without_a_start_up_check_waits_for_its_modelled_cost():
    chk = CostlyChecker(cost_s=0.1)
    opts = "cascade:plan_check=1,check_interval_s=10,min_replay=5,check_span_s=0,check_cpu_budget=1"
    r = make_router(opts, PolicyContext(CM, 4, 0, [], 20.0, None, chk))  # no length sample: no start-up check
    cluster = ClusterView([InstanceLoad(i) for i in range(4)], 0.0)
    feed_finished(r, cluster)
    est = r._cost_estimate()  # nothing charged yet: the model's cost of replaying 8 arrivals on 5 candidates
    assert est > check_cost.CPU_S["dp_runs"] and r.budget.charged == 0
    r._replan(SAMPLE[:300])  # a drift check at t=0: no credit yet
    assert chk.jobs == [] and r.budget.deferred_drift == 1 and r.last_decision.next_check_at == 60.0 * est
    _check_times(chk, r, cluster, 10.0)
    assert [j.at for j in chk.jobs] == [float(int(60.0 * est) + 1)]  # the first second the credit covers it


def test_budget_zero_is_the_old_timer():
    chk = CostlyChecker(cost_s=2.0)
    r, cluster = _router(chk, 0.0)
    times = _check_times(chk, r, cluster, 45.0)
    assert times == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert r.last_decision.next_check_at is None and r.budget.deferred_timer == 0


def test_a_drift_without_budget_keeps_the_plan_says_why_and_runs_when_allowed():
    chk = CostlyChecker(cost_s=1.0)  # next check allowed at t=60
    r, cluster = _router(chk, 1.0)
    r.rebalance(cluster, {}, 5.0)
    plan = (list(r.plan.bounds), r.plan.counts())
    bounds = r._replan(SAMPLE[:300])  # the refiner's drift callback
    assert bounds == plan[0] and len(chk.jobs) == 1 and r.budget.deferred_drift == 1
    d = r.last_decision
    assert d.trigger == "drift" and d.changed is False and "CPU budget" in d.reason and d.next_check_at == 60.0
    assert (list(r.plan.bounds), r.plan.counts()) == plan
    r.rebalance(cluster, {}, 59.0)
    assert len(chk.jobs) == 1
    r.rebalance(cluster, {}, 60.0)  # allowed now: the deferred drift check runs (before the timer's)
    assert [j.trigger for j in chk.jobs] == ["init", "drift"] and r.last_decision.trigger == "drift"
    assert r.last_decision.scores


def test_sim_checker_cost_is_modelled_and_deterministic():
    r = make_router("cascade:plan_check=1", PolicyContext(CM, 4, 0, SAMPLE, 20.0))
    arrivals = [(0.05 * i, p, o) for i, (p, o) in enumerate(SAMPLE[:200])]
    costs = []
    for _ in range(2):
        from sglang_cascade.policies.plan_check import PlanCheckJob

        job = PlanCheckJob([], arrivals, 4, "timer", 0.0, spec=r._spec(SAMPLE, 20.0))
        chk = make_sim_checker(CM)
        chk.score(job)
        costs.append(job.cost_s)
        w = chk.last_work
        assert w.iterations > 0 and w.requests == 200 * len(
            {(tuple(c.bounds), tuple(c.counts)) for c in job.candidates}
        )
        assert (w.dp_runs, w.dp_instances) == (1, 4) and w.replays == len(job.candidates)
        assert job.cost_s == w.cpu_s() > 0
    assert costs[0] == costs[1]


def test_no_new_check_while_a_background_check_is_busy():
    class Busy(CostlyChecker):  # a background checker whose job is still running (no answer, cost unknown)
        busy = True

        def results(self):
            return [] if self.busy else super().results()

    chk = Busy(cost_s=0.0)
    r, cluster = _router(chk, 1.0)
    _check_times(chk, r, cluster, 30.0)
    r._replan(SAMPLE[:300])
    assert [j.trigger for j in chk.jobs] == ["init"] and r.budget.deferred_timer == 1
    assert "still queued or running" in r.last_decision.reason
    chk.busy = False
    r.rebalance(cluster, {}, 31.0)  # answered; the deferred drift check runs
    assert [j.trigger for j in chk.jobs] == ["init", "drift"]
    off = Busy(cost_s=0.0)
    r, cluster = _router(off, 0.0)
    assert len(_check_times(off, r, cluster, 30.0)) == 4  # budget 0: the old behaviour, busy or not
