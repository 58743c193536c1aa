"""The simulator as a plan checker: the candidates come with the job or from the DP on the job's spec
(``policies.plan_candidates``), then every candidate plan runs the replay once, with the shipped cascade
router fixed to that plan (``bounds``/``counts`` and its ``prefill_pool`` size, no refinement, no nested check)
over the deployment's instance scheduler; its score is mean E2E + tail_weight x p99 E2E (policies/plan_check.py).

``run`` is the simulator entry point (``sim.simulate``), passed in so the simulator can build this checker
without an import circle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.costmodel import CostModel
from ..core.traces import TraceRequest
from ..policies.check_cost import CheckWork
from ..policies.plan_candidates import pool_neighbours
from ..policies.plan_check import (
    PlanCheckJob,
    PlanScore,
    plan_score,
    proportional_counts,
    rank_key,
    resolve_job,
)
from ..policies.plan_replay import thin, thin_arrivals
from ..sim.config import SimConfig

# options of the outer cascade that a replay must not inherit (the replay runs one fixed plan, unchecked)
_PLAN_KEYS = ("bounds", "counts", "refine", "plan_check", "prefill_pool", "pool_check")


@dataclass
class SimCheckerConfig:
    scheduler: str = "sglang"
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    router_options: dict[str, Any] = field(default_factory=dict)  # the live cascade's options
    kv_capacity: int | None = None
    slo_ttft: float = 2.0
    slo_ttft_scale: float = 0.0  # SimConfig.slo_ttft_scale (the replays' SLO attainment, check_slo_weight)
    slo_tpot: float = 0.1
    publish_interval: float = 0.05
    max_prefill_tokens: int = 8192
    seed: int = 0


def warm_rows(inflight, n: int, m: int) -> tuple:
    """The job's in-flight requests as the replay's ``SimConfig.warm_start``: slot = instance. On a
    sub-cluster of m < n instances, every (n/m)-th request (by slot) on slot x m / n."""
    rows = sorted(tuple(int(x) for x in r) for r in inflight)
    if m < n:
        rows = [(min(m - 1, r[0] * m // n), *r[1:]) for r in thin(rows, m / n)]
    return tuple(rows)


@dataclass
class _Replay:
    """One job's replay: the trace, the (sub-)cluster size, the options every run shares, the warm start, the
    runs so far by plan (shared by candidates that scale to one sub-plan) and the work they did."""

    trace: list
    m: int
    base: dict
    warm: tuple
    work: CheckWork
    runs: dict = field(default_factory=dict)


class SimPlanChecker:
    """Synchronous: ``submit`` scores the job at once; ``results`` hands the scored jobs back."""

    def __init__(self, cost_model: CostModel, cfg: SimCheckerConfig, run: Callable):
        self.cm, self.cfg, self.run = cost_model, cfg, run
        self._done: list[tuple[PlanCheckJob, list[PlanScore]]] = []
        self.jobs = 0
        self.last_work = CheckWork()  # what the last job did (its modelled cost: ``job.cost_s``)

    def score(self, job: PlanCheckJob) -> list[PlanScore]:
        """Scores every candidate; with ``job.sub_instances`` (< num_instances) on that many instances, the
        arrivals thinned and the stage counts scaled in proportion. A plan with more stages than the
        sub-cluster has instances is not scored; plans that scale to the same sub-plan share one replay.
        A job with a ``source`` gets its replay built here first, one with a ``spec`` its candidates from the
        DP (``plan_check.resolve_job``). Sets
        ``job.cost_s`` to the check's modelled CPU seconds (``check_cost.CheckWork``: deterministic)."""
        work = self.last_work = CheckWork()
        if resolve_job(job, self.cm):
            work.dp_runs, work.dp_instances = 1, job.spec.num_instances
        job.cost_s = work.cpu_s()
        n = job.num_instances
        m = job.sub_instances if 0 < job.sub_instances < n else n
        arrivals = thin_arrivals(job.arrivals, m / n)
        trace = [TraceRequest(f"replay{i}", float(t), int(p), int(o)) for i, (t, p, o) in enumerate(arrivals)]
        if not trace:
            return []
        base = {k: v for k, v in self.cfg.router_options.items() if k not in _PLAN_KEYS}
        replay = _Replay(trace, m, base, warm_rows(job.inflight, n, m), work)
        out = self._score_all(job, job.candidates, replay)
        spec = job.spec
        if out and spec is not None and spec.pool_refine:  # the best pool size's neighbours (pool_check_refine)
            best = min(out, key=lambda s: rank_key(s, job.slo_target))
            named = {c.name: c for c in job.candidates}
            if best.pool and best.name in named:
                more = pool_neighbours(spec, self.cm, named[best.name], {c.key() for c in job.candidates})
                job.candidates = job.candidates + more
                out += self._score_all(job, more, replay)
        self.jobs += 1
        job.cost_s = work.cpu_s()
        return out

    def _score_all(self, job: PlanCheckJob, candidates, replay: _Replay) -> list[PlanScore]:
        """Every candidate's score on the replay (plans that scale to the same sub-plan share one run)."""
        out = []
        for c in candidates:
            counts = proportional_counts(c.counts + [c.pool] if c.pool else c.counts, replay.m)
            if counts is None:
                continue
            counts, pool = (counts[:-1], counts[-1]) if c.pool else (counts, 0)
            key = (tuple(c.bounds), tuple(counts), pool)
            if key not in replay.runs:
                opts = {**replay.base, "bounds": "/".join(map(str, c.bounds)), "counts": "/".join(map(str, counts))}
                opts.update(refine=False, plan_check=False, prefill_pool=pool)
                replay.runs[key] = self.run(replay.trace, self._sim_config(replay.m, opts, replay.warm)).metrics
                work = replay.work
                work.iterations += int(replay.runs[key]["iterations"])
                work.requests += len(replay.trace)
                work.tokens += sum(x.output_len for x in replay.trace)
                work.replays += 1
            mt = replay.runs[key]
            mean, p99 = float(mt["e2e_mean"]), float(mt["e2e_p99"])
            if mt["completed"] < len(replay.trace):
                mean = p99 = float("inf")
            score = plan_score(mean, p99, job.tail_weight, float(mt["slo_attainment"]), job.slo_weight)
            out.append(
                PlanScore(
                    c.name, c.bounds, c.counts, mean, p99, float(mt["slo_attainment"]), score, c.predicted, c.pool
                )
            )
        return out

    def _sim_config(self, n: int, router_options: dict, warm: tuple = ()) -> SimConfig:
        c = self.cfg
        return SimConfig(
            instances=n,
            router="cascade",
            scheduler=c.scheduler,
            scheduler_options=dict(c.scheduler_options),
            router_options=router_options,
            cost_model=self.cm,
            kv_capacity=c.kv_capacity,
            slo_ttft=c.slo_ttft,
            slo_ttft_scale=c.slo_ttft_scale,
            slo_tpot=c.slo_tpot,
            publish_interval=c.publish_interval,
            max_prefill_tokens=c.max_prefill_tokens,
            seed=c.seed,
            plan_check=False,
            warm_start=warm,
        )

    def submit(self, job: PlanCheckJob) -> None:
        self._done.append((job, self.score(job)))

    def results(self) -> list[tuple[PlanCheckJob, list[PlanScore]]]:
        out, self._done = self._done, []
        return out

    def close(self) -> None:
        self._done = []
