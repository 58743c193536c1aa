"""The offline stage planner: an exact DP over the per-segment cost table of policies/stage_model.py.

``plan_partition`` turns a length sample and an arrival rate into the best ``StagePlan`` (the QoE it
maximizes is defined in policies/stage_model.py and docs/cascade.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.costmodel import CostModel
from .stage_model import LengthStats, QoEConfig, StageModel
from .stages import StagePlan


@dataclass
class PartitionResult:
    plan: StagePlan
    objective: float  # the DP cost (lower is better)
    qoe: float  # 1 - violation
    breakdown: dict
    dp_time_s: float
    edges: list[float]


def dp_partition(C: np.ndarray, N: int, max_stages: int | None = None) -> tuple[float, list[tuple[int, int, int]]]:
    """Exact DP: cover buckets [0, B) with contiguous segments, each with >= 1 instance, N in total.

    ``C[i, j, m]`` is the cost of segment [i, j) with m instances. Returns (cost, [(i, j, m), ...]).
    f[j, n] = best cost of covering buckets [0, j) with n instances (any number of stages; each stage
    has >= 1 instance so there are at most N). With ``max_stages`` the table gains a stage index.
    The min over (i, m) is vectorized: O(B^2 N^2) work in O(B) numpy steps.
    """
    B = C.shape[0] - 1
    if N < 1:
        raise ValueError("need at least one instance")
    if C.shape[2] < N + 1:
        raise ValueError("cost table has fewer instance counts than N")
    step = _dp_step(C, N)
    if max_stages is None:
        f = _empty_prefix(B, N)
        choices = [_extend(step, f, f)]  # in place: row j only reads the finished rows < j
        cost = float(f[B, N])
    else:
        cost, choices = _dp_by_stage_count(step, B, N, max(1, min(B, N, max_stages)))
    if not np.isfinite(cost):
        raise ValueError("no feasible partition")
    return cost, _backtrack(B, N, choices)


def _dp_step(C: np.ndarray, N: int) -> Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """step(prev, j): for every instance total n, the best last segment [i, j) with m instances after the
    prefix table ``prev`` -> (cost, i, m), each an array over n.

    The candidates are laid out in (n, i, m) order, so the argmin over the flattened (i, m) axis breaks
    ties exactly like the reference (smallest i, then smallest m). The prefix cost of (n, i, m) is
    prev[i, n - m]: with each row of ``prev`` stored behind N infinities (n - m < 0), that is a strided
    view of the padded table (stride +1 along n, -1 along m), added to the segment costs without a gather."""
    B = C.shape[0] - 1
    nn = np.arange(N + 1)
    Ct = np.ascontiguousarray(np.transpose(C[:, :, 1 : N + 1], (1, 0, 2)))  # (j, i, m)
    pad = np.full((B + 1, 2 * N + 1), np.inf)  # pad[i, N + t] = prev[i, t]; pad[i, < N] = inf
    s0, s1 = pad.strides
    buf = np.empty((N + 1) * B * N)

    def step(prev: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pad[:j, N:] = prev[:j]
        # (n, i, m) -> pad[i, N + n - m], m = 1..N: starts at pad[0, N - 1]
        view = np.lib.stride_tricks.as_strided(pad[:, N - 1 :], shape=(N + 1, j, N), strides=(s1, s0, -s1))
        out = buf[: (N + 1) * j * N].reshape(N + 1, j, N)
        np.add(view, Ct[j, :j][None, :, :], out=out)
        flat = out.reshape(N + 1, -1)  # (n, i*m)
        arg = np.argmin(flat, axis=1)
        return flat[nn, arg], arg // N, arg % N + 1

    return step


def _empty_prefix(B: int, N: int) -> np.ndarray:
    f = np.full((B + 1, N + 1), np.inf)
    f[0, 0] = 0.0
    return f


def _extend(step, prev: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[j] = the best cover of [0, j) ending in one more segment after ``prev``; returns the choices."""
    B, N = out.shape[0] - 1, out.shape[1] - 1
    ch = np.zeros((B + 1, N + 1, 2), dtype=np.int64)
    for j in range(1, B + 1):
        out[j], ch[j, :, 0], ch[j, :, 1] = step(prev, j)
    return ch


def _dp_by_stage_count(step, B: int, N: int, max_k: int) -> tuple[float, list[np.ndarray]]:
    """The DP with exactly k segments for k = 1..max_k; returns the best cost and the choice tables of
    its 1st..k-th segments."""
    fk = _empty_prefix(B, N)
    chs, best = [], (np.inf, 0)
    for k in range(1, max_k + 1):
        nf = np.full((B + 1, N + 1), np.inf)
        chs.append(_extend(step, fk, nf))
        if nf[B, N] < best[0]:
            best = (float(nf[B, N]), k)
        fk = nf
    return best[0], chs[: best[1]]


def dp_best_per_stage_count(C: np.ndarray, N: int, max_k: int) -> list[tuple[int, float, list[tuple[int, int, int]]]]:
    """For k = 1..max_k: the best partition with exactly k stages -> [(k, cost, segments)], feasible only.
    One pass of the stage-count DP (the same tables ``dp_partition(C, N, max_stages)`` builds)."""
    B = C.shape[0] - 1
    step = _dp_step(C, N)
    fk, chs, out = _empty_prefix(B, N), [], []
    for k in range(1, max(1, min(B, N, max_k)) + 1):
        nf = np.full((B + 1, N + 1), np.inf)
        chs.append(_extend(step, fk, nf))
        if np.isfinite(nf[B, N]):
            out.append((k, float(nf[B, N]), _backtrack(B, N, list(chs))))
        fk = nf
    return out


def _backtrack(B: int, N: int, choices: list[np.ndarray]) -> list[tuple[int, int, int]]:
    """Segments from the last back: ``choices[-1]`` picks the last one, ``choices[-2]`` the one before...;
    a single table serves every segment."""
    segs, j, n, k = [], B, N, len(choices) - 1
    while j > 0:
        i, m = choices[k][j, n]
        segs.append((int(i), int(j), int(m)))
        j, n, k = int(i), n - int(m), max(0, k - 1)
    return segs[::-1]


def brute_force_partition(C: np.ndarray, N: int) -> tuple[float, list[tuple[int, int, int]]]:
    """Enumerate every partition (tests only; exponential)."""
    B = C.shape[0] - 1
    best = [np.inf, None]

    def rec(i: int, n: int, acc: float, segs: list):
        if i == B:
            if n == 0 and acc < best[0]:
                best[0], best[1] = acc, list(segs)
            return
        for j in range(i + 1, B + 1):
            for m in range(1, n + 1):
                segs.append((i, j, m))
                rec(j, n - m, acc + C[i, j, m], segs)
                segs.pop()

    rec(0, N, 0.0, [])
    return float(best[0]), best[1]


def top_partitions(
    sample: Sequence[tuple[int, int]],
    rate: float,
    num_instances: int,
    cm: CostModel,
    cfg: QoEConfig | None = None,
    buckets: int = 64,
    k: int = 3,
    max_stages: int = 6,
    migration_stall=None,
    instance_ids: Sequence[int] | None = None,
) -> list[tuple[StagePlan, float]]:
    """The DP's best few multi-stage partitions, best first: the best plan for each stage count
    2..``max_stages`` (distinct plans), ``k`` of them by predicted objective. The pooled (one-stage) plan is
    not among them: callers add it themselves (it needs no DP)."""
    if rate <= 0 or num_instances < 2 or not sample:
        return []
    cfg = cfg or QoEConfig()
    if migration_stall is None:
        from .migration import MigrationPlanner

        migration_stall = MigrationPlanner(cm).stall_at_length
    stats = LengthStats(sample)
    edges = stats.token_quantile_edges(buckets)
    C, _ = StageModel(stats, edges, rate, cm, cfg, migration_stall).segment_costs(num_instances)
    found = []
    for _k, cost, segs in dp_best_per_stage_count(C, num_instances, max_stages)[1:]:
        bounds = [int(edges[i]) for (i, _, _) in segs[1:]]
        if len(set(bounds)) != len(bounds) or any(b <= 0 for b in bounds):
            continue
        plan = StagePlan.from_counts(bounds, [m for (_, _, m) in segs], instance_ids)
        if all(plan.bounds != p.bounds or plan.counts() != p.counts() for p, _ in found):
            found.append((plan, cost))
    return sorted(found, key=lambda x: x[1])[:k]


def _pooled_instead(model: StageModel, n: int, cfg: QoEConfig) -> bool:
    """Whether a staged plan should give way to the pooled one: splitting by length improves decode batches,
    but prefill work is the same wherever it runs, and a near-saturated prefill queue split into smaller
    groups only waits longer. So one stage when the pooled cluster is near saturation (utilization >=
    ``prefill_bound``) and prefill is most of its work (prefill share >= ``prefill_bound`` x utilization):
    70B Mooncake past the knee, docs/results/cascade_eval.md. Bursts of mixed traffic (azure_conv at 20x:
    prefill share up to 0.96, but of a utilization of 1.5) and prefill-heavy traffic at moderate load
    (Mooncake 70B at 0.6-0.9x) keep the DP's plan: staging wins there."""
    if cfg.prefill_bound <= 0:
        return False
    pooled = model.describe(0, model.B, n)
    rho = pooled["rho"]
    return rho >= cfg.prefill_bound and pooled["prefill_busy"] >= cfg.prefill_bound * rho


def plan_partition(
    sample: Sequence[tuple[int, int]],
    rate: float,
    num_instances: int,
    cm: CostModel,
    cfg: QoEConfig | None = None,
    buckets: int = 64,
    max_stages: int | None = None,
    migration_stall=None,
    instance_ids: Sequence[int] | None = None,
    clock: Callable[[], float] | None = None,
) -> PartitionResult:
    """Best stage plan for a length sample at ``rate`` req/s on ``num_instances`` instances.

    Policies read no clock: pass ``clock`` (e.g. ``time.perf_counter``, as the CLI does) to have the
    table and DP timed in ``dp_time_s`` / ``breakdown``; without it those times are 0.
    """
    clock = clock or (lambda: 0.0)
    if rate <= 0:
        raise ValueError(f"arrival rate must be positive, got {rate}")
    cfg = cfg or QoEConfig()
    if migration_stall is None:
        from .migration import MigrationPlanner

        migration_stall = MigrationPlanner(cm).stall_at_length
    t0 = clock()
    stats = LengthStats(sample)
    edges = stats.token_quantile_edges(buckets)
    model = StageModel(stats, edges, rate, cm, cfg, migration_stall)
    C, _ = model.segment_costs(num_instances)
    t1 = clock()
    cost, segs = dp_partition(C, num_instances, max_stages)
    if cfg.min_gain > 0 and len(segs) > 1:
        # fewer stages unless more buy a clear predicted gain: the model's error is of the order of
        # min_gain, and every extra stage costs pooling (a smaller, burstier group) and migrations
        for k in range(1, len(segs)):
            ck, sk = dp_partition(C, num_instances, k)
            if ck <= cost + abs(cost) * cfg.min_gain:
                cost, segs = ck, sk
                break
    if len(segs) > 1 and _pooled_instead(model, num_instances, cfg):
        cost, segs = float(C[0, model.B, num_instances]), [(0, model.B, num_instances)]
    t2 = clock()
    dt = t2 - t0
    # merge: drop empty bound duplicates; segments are contiguous by construction
    bounds = [int(edges[i]) for (i, _, _) in segs[1:]]
    counts = [m for (_, _, m) in segs]
    plan = StagePlan.from_counts(bounds, counts, instance_ids)
    per_stage = [model.describe(i, j, m) for (i, j, m) in segs]
    viol = sum(s["violation"] for s in per_stage)
    lat = sum(s["latency_s_per_req"] for s in per_stage)
    breakdown = {
        "table_time_s": t1 - t0,
        "dp_only_time_s": t2 - t1,
        "violation": viol,
        "mean_latency_s": lat,
        "overloaded_stages": sum(s["overloaded"] for s in per_stage),
        "stages": per_stage,
    }
    return PartitionResult(plan, cost, max(0.0, 1.0 - viol), breakdown, dt, [float(e) for e in edges])


def predict_stages(
    sample: Sequence[tuple[int, int]],
    rate: float,
    bounds: Sequence[int],
    counts: Sequence[int],
    cm: CostModel,
    cfg: QoEConfig | None = None,
    migration_stall=None,
) -> list[dict]:
    """The stage model's prediction (``StageModel.describe``: decode batch, TPOT, TTFT, utilization...) for
    each stage of a fixed plan: the model evaluated on the plan's own bounds as bucket edges."""
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"{len(bounds)} bounds need {len(bounds) + 1} counts, got {len(counts)}")
    cfg = cfg or QoEConfig()
    edges = np.array([0.0, *map(float, bounds), np.inf])
    model = StageModel(LengthStats(sample), edges, rate, cm, cfg, migration_stall)
    model.segment_costs(max(counts))
    return [model.describe(k, k + 1, int(m)) for k, m in enumerate(counts)]
