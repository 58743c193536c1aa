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
from .prefill_pool import CHECK_SHARE, MIN_SHARE, checked_pool_sizes, largest_refined_pool, size_prefill_pool
from .stage_dp import plan_partition, top_partitions
from .stage_model import QoEConfig
from .stages import StagePlan

POOLED = "pooled"
CURRENT = "current"


@dataclass
class Candidate:
    name: str  # "pooled", "current", "dp1", "dp2", ..., "pool3" (a prefill pool of 3)
    bounds: list[int]
    counts: list[int]  # the stages' instances; with a pool, of the n - pool others
    predicted: float | None = None  # the DP objective (None: not from the DP)
    pool: int = 0  # prefill-pool instances (the last ones of the plan's order; prefill_pool.py)

    def key(self) -> tuple:
        return (tuple(self.bounds), tuple(self.counts), self.pool)


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
    pool: int = 0  # the prefill pool in force (its instances follow ``order``)
    pool_sizes: int = 0  # how many prefill-pool sizes to score (``pool_check``; 0: none): ``pool_candidates``
    prefill_min: int = 8192  # the pool's prompts (CascadeRouterConfig.prefill_min)
    pool_decode_rho: float = 0.75  # the pool model's decode-side margin (CascadeRouterConfig.pool_decode_rho)
    pool_dp: bool = True  # each pool size also with the DP's staged plan over the other instances (pool_check_dp)
    pool_refine: bool = True  # then the best pool size's neighbours (pool_check_refine): ``pool_neighbours``
    dp: bool = True  # the DP's plans too; False: pooled and the plan in force only (check_staging's timer check)


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
    """The pooled plan, the plan in force (when staged or with a pool), and (``spec.dp``, else nothing more) the
    DP's best and its next best partitions (``top_k`` distinct ones in all), named pooled / current / dp2, dp3, ..., then per pool size k
    (``pool_candidates``) a pool of k with one stage over the other instances, named pool<k>, and with ``pool_dp``
    the DP's plan over them where it stages, named pool<k>dp."""
    stall = spec.stall.planner(cm).stall_at_length
    out = [Candidate(POOLED, [], [spec.num_instances])]
    if len(spec.counts) > 1 or spec.pool:
        out.append(Candidate(CURRENT, list(spec.bounds), list(spec.counts), pool=spec.pool))
    if not spec.dp:
        return CandidateSet(out, "", {})
    best, info = best_plan(
        spec.sample, spec.rate, spec.num_instances, cm, spec.qoe, spec.buckets, spec.max_stages, stall, spec.order
    )
    found = [(best, info.get("objective"))] if best.num_stages > 1 else []
    if spec.top_k > 0:
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
    seen = {c.key(): c.name for c in out}
    dp_best = seen.get((tuple(best.bounds), tuple(best.counts()), 0), "")
    for plan, cost in found:
        key = (tuple(plan.bounds), tuple(plan.counts()), 0)
        if key not in seen and len(out) < 2 + max(1, spec.top_k):
            seen[key] = f"dp{len(out)}"
            out.append(Candidate(f"dp{len(out)}", list(plan.bounds), plan.counts(), cost))
            if plan is best:
                dp_best = seen[key]
    sizes, model, why = pool_candidates(spec, cm)
    for k in sizes:
        for c in (_pool_candidate(spec, cm, k, False, stall), _pool_candidate(spec, cm, k, True, stall)):
            if c is not None and seen.setdefault(c.key(), c.name) == c.name:
                out.append(c)
    if model:  # the unchecked router would run the pool model's size: the DP's own choice here (dp_margin)
        dp_best = seen.get((tuple(), (spec.num_instances - model,), model), dp_best)
    if why:
        info = {**info, "prefill_pool_model": why}
    return CandidateSet(out, dp_best, info)


def _pool_candidate(spec: CandidateSpec, cm: CostModel, k: int, dp: bool, stall) -> Candidate | None:
    """A pool of k with one stage over the other n - k instances (pool<k>), or with ``dp`` (and ``spec.pool_dp``)
    the DP's plan over them (pool<k>dp, what a fixed ``prefill_pool=k`` runs; None where it does not stage)."""
    if not dp:
        return Candidate(f"pool{k}", [], [spec.num_instances - k], pool=k)
    if not spec.pool_dp:
        return None
    n = spec.num_instances - k
    plan, _ = best_plan(spec.sample, spec.rate, n, cm, spec.qoe, spec.buckets, spec.max_stages, stall, spec.order[:n])
    return Candidate(f"pool{k}dp", list(plan.bounds), plan.counts(), pool=k) if plan.num_stages > 1 else None


def pool_neighbours(spec: CandidateSpec, cm: CostModel, best: Candidate, seen: set[tuple]) -> list[Candidate]:
    """The refinement round of a pool check (``pool_check_refine``): the sizes next to the best-ranked pool
    candidate's, k - 1 and k + 1 (at most ``prefill_pool.largest_refined_pool``), in its form (with the DP's plan
    beside the pool where the DP stages there, else one stage), those not in ``seen`` (candidate keys). The first round's spread sizes are 1/8 of N apart; at 8B
    Mooncake x 16, 30 req/s, a pool of 11 meets the SLOs for 0.914 of the requests against 10's 0.886
    (docs/results/pool_check_probes.txt)."""
    if not best.pool or spec.pool_sizes <= 0:
        return []
    stall = spec.stall.planner(cm).stall_at_length
    out = []
    for k in (best.pool - 1, best.pool + 1):
        if not 1 <= k <= largest_refined_pool(spec.num_instances):
            continue
        c = _pool_candidate(spec, cm, k, best.name.endswith("dp"), stall) or _pool_candidate(spec, cm, k, False, stall)
        if c.key() not in seen:
            seen.add(c.key())
            out.append(c)
    return out


def pool_candidates(spec: CandidateSpec, cm: CostModel) -> tuple[list[int], int, str]:
    """(the pool sizes to score, the size the unchecked router would run or 0, the pool model's reason): the
    model's size where the long prompts' prefill is at least ``CHECK_SHARE`` of the busy time, then spread ones
    (``prefill_pool.checked_pool_sizes``), ``spec.pool_sizes`` in all."""
    if spec.pool_sizes <= 0:
        return [], 0, ""
    n, qoe = spec.num_instances, spec.qoe
    sized = size_prefill_pool(
        spec.sample, spec.rate, n, cm, qoe, spec.prefill_min, spec.pool_decode_rho, min_share=CHECK_SHARE
    )
    model = sized.size if sized.share >= MIN_SHARE else 0
    return checked_pool_sizes(n, sized.size, spec.pool_sizes), model, sized.why
