"""Replay a problem instance under a heuristic instance scheduler in the simulator, check the recorded
schedule with the feasibility checker, and re-cost it under the problem's linear time model so it can be
compared with the CP-SAT optimum like with like."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.costmodel import CostModel
from ..core.traces import TraceRequest
from .feasibility import Violation, check_schedule
from .problem import Problem, Schedule, retime


@dataclass(slots=True)
class ReplayResult:
    name: str
    schedule: Schedule  # re-costed under the linear model
    violations: list[Violation]
    makespan: float  # linear model (s)
    mean_e2e: float  # linear model (s)
    sim_makespan: float  # the simulator's own clock (cost model)
    sim_mean_e2e: float
    preemptions: int
    iterations: int
    lin_rel_err_max: float = 0.0  # |linear - cost model| / cost model over this schedule's iterations
    lin_rel_err_mean: float = 0.0
    extra: dict = field(default_factory=dict)

    def objective(self, objective: str) -> float:
        return self.makespan if objective == "makespan" else self.mean_e2e


def make_scheduler(name: str, problem: Problem, cm: CostModel, seed: int = 0):
    """A registry scheduler name (``sglang``, ``cascade``, with ``:opts``) or ``reserve`` (oracle, no
    preemption, see heuristics.py)."""
    if name.split(":", 1)[0] == "reserve":
        from ..core.options import split_name
        from .heuristics import ReserveConfig, ReserveScheduler

        _, opts = split_name(name)
        s = ReserveScheduler(
            ReserveConfig(oracle={r.rid: r.output for r in problem.requests}, mixed=bool(opts.get("mixed", 1)))
        )
        s.name = name
        return s
    from ..policies.registry import PolicyContext, make_instance_scheduler

    ctx = PolicyContext(
        cost_model=cm,
        num_instances=1,
        seed=seed,
        length_sample=[(r.prompt, r.output) for r in problem.requests],
        kv_capacity=problem.kv_capacity,
    )
    return make_instance_scheduler(name, ctx)


def replay(problem: Problem, name: str, cm: CostModel, seed: int = 0) -> ReplayResult:
    from ..sim import SimConfig, simulate_instance

    trace = [TraceRequest(r.rid, r.arrival, r.prompt, r.output) for r in problem.requests]
    sched = make_scheduler(name, problem, cm, seed)
    # every request carries max_new_tokens = the longest output of the instance (a client-side cap):
    # SGLang-style admission needs a finite estimate on tiny scaled instances
    cfg = SimConfig(
        instances=1,
        max_prefill_tokens=problem.token_budget,
        record_schedule=True,
        seed=seed,
        kv_capacity=problem.kv_capacity,
        max_new_tokens=max(r.output for r in problem.requests),
        mixed_chunk=True,  # the solver's batches may mix prefill and decode; so may the heuristics' (the
        # `sglang` scheduler still plans SGLang's default, unmixed: its PolicyContext says no mixed chunk)
    )
    res = simulate_instance(trace, sched, cm, kv_capacity=problem.kv_capacity, record_schedule=True, cfg=cfg)
    if res.rejected:
        raise RuntimeError(f"{name}: simulator rejected {len(res.rejected)} request(s)")
    recs = res.schedules[0]
    viol = check_schedule(
        problem.requests,
        recs,
        token_budget=problem.token_budget,
        kv_capacity=problem.kv_capacity,
        preemption=True,
        cost_model=cm,
        rel_tol=1e-6,
    )
    lin = retime(problem, recs)
    # linearisation error on this schedule: linear model vs the simulator's cost-model durations
    errs = []
    real = [r for r in recs if r.prefill or r.decode]
    for w, b in zip(lin.work, real):
        if b.duration > 0:
            errs.append(abs(problem.time_model.time(*w) - b.duration) / b.duration)
    fin = {r.rid: r.finish_time for r in res.requests}
    arr = {r.rid: r.arrival for r in problem.requests}
    n_pre = sum(len(r.preempted) for r in recs)
    return ReplayResult(
        name=name,
        schedule=lin,
        violations=viol,
        makespan=lin.makespan(),
        mean_e2e=lin.mean_e2e(problem),
        sim_makespan=max(fin.values()),
        sim_mean_e2e=sum(fin[k] - arr[k] for k in arr) / len(arr),
        preemptions=n_pre,
        iterations=len(real),
        lin_rel_err_max=max(errs, default=0.0),
        lin_rel_err_mean=(sum(errs) / len(errs)) if errs else 0.0,
    )
