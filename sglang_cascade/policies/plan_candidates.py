"""The candidate plans of a plan check, built from a small picklable :class:`CandidateSpec`.

The stage DP and ``top_partitions`` take tens of ms at 16 instances (~0.1 s at 64), so the cascade router
does not run them when a check fires: its ``PlanCheckJob`` carries a spec (length sample, rate, the DP's
options, the plan in force, the migration stalls as a picklable :class:`~.migration.StallSpec`) and the
checker - on its thread or in its child process - calls :func:`build_candidates` before it scores them.
Engine-free: every checker uses this one function, with its own copy of the cost model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..core.costmodel import CostModel
from .migration import StallSpec
from .stage_dp import plan_partition, top_partitions
from .stage_model import QoEConfig
from .stages import StagePlan

POOLED = "pooled"
CURRENT = "current"


@dataclass
class Candidate:
    name: str  # "pooled", "current", "dp1", "dp2", ...
    bounds: list[int]
    counts: list[int]
    predicted: float | None = None  # the DP objective (None: not from the DP)


@dataclass
class CandidateSpec:
    """What the DP needs to propose candidates; plain data, so a job pickles to a checker process."""

    sample: list[tuple[int, int]]  # (prompt, output) lengths
    rate: float  # req/s
    num_instances: int
    qoe: QoEConfig
    buckets: int
    max_stages: int | None  # the DP's own best (CascadeRouterConfig.max_stages; None: the DP chooses)
    top_k: int  # PlanCheckConfig.check_top_k
    top_max_stages: int  # PlanCheckConfig.check_max_stages
    bounds: list[int]  # the plan in force
    counts: list[int]
    order: list[int]  # its instances, stage by stage (candidate plans keep neighbours together)
    stall: StallSpec  # the router's migration stalls (MigrationPlanner.stall_spec)


@dataclass
class CandidateSet:
    candidates: list[Candidate]
    dp_best: str  # the candidate the DP itself ranks first ("" when that is none of them)
    plan_info: dict  # the DP's best plan: objective, qoe, dp_time_s, bounds, counts


def best_plan(
    sample: Sequence[tuple[int, int]],
    rate: float,
    n: int,
    cm: CostModel,
    qoe: QoEConfig,
    buckets: int,
    max_stages: int | None,
    stall: Callable[[int], float],
    ids: Sequence[int] | None = None,
) -> tuple[StagePlan, dict]:
    """The DP's best plan and its summary (``CascadeRouter.last_plan_info``)."""
    res = plan_partition(
        sample, rate, n, cm, qoe, buckets=buckets, max_stages=max_stages, migration_stall=stall, instance_ids=ids
    )
    info = {
        "objective": res.objective,
        "qoe": res.qoe,
        "dp_time_s": res.dp_time_s,
        "bounds": res.plan.bounds,
        "counts": res.plan.counts(),
    }
    return res.plan, info


def build_candidates(spec: CandidateSpec, cm: CostModel) -> CandidateSet:
    """The pooled plan, the plan in force (when staged), the DP's best and its next best partitions
    (``top_k`` distinct ones in all), named pooled / current / dp2, dp3, ..."""
    stall = spec.stall.planner(cm).stall_at_length
    out = [Candidate(POOLED, [], [spec.num_instances])]
    if len(spec.counts) > 1:
        out.append(Candidate(CURRENT, list(spec.bounds), list(spec.counts)))
    best, info = best_plan(
        spec.sample, spec.rate, spec.num_instances, cm, spec.qoe, spec.buckets, spec.max_stages, stall, spec.order
    )
    found = [(best, info.get("objective"))] if best.num_stages > 1 else []
    found += top_partitions(
        spec.sample,
        spec.rate,
        spec.num_instances,
        cm,
        spec.qoe,
        buckets=spec.buckets,
        k=spec.top_k,
        max_stages=spec.top_max_stages,
        migration_stall=stall,
        instance_ids=spec.order,
    )
    seen = {(tuple(c.bounds), tuple(c.counts)): c.name for c in out}
    dp_best = seen.get((tuple(best.bounds), tuple(best.counts())), "")
    for plan, cost in found:
        key = (tuple(plan.bounds), tuple(plan.counts()))
        if key not in seen and len(out) < 2 + spec.top_k:
            seen[key] = f"dp{len(out)}"
            out.append(Candidate(f"dp{len(out)}", list(plan.bounds), plan.counts(), cost))
            if plan is best:
                dp_best = seen[key]
    return CandidateSet(out, dp_best, info)
