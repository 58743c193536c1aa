"""The simulator as a plan checker: every candidate plan runs the replay once, with the shipped cascade
router fixed to that plan (``bounds``/``counts``, no refinement, no nested check) over the deployment's
instance scheduler; its score is mean E2E + tail_weight x p99 E2E (policies/plan_check.py).

``run`` is the simulator entry point (``sim.simulate``), passed in so the simulator can build this checker
without an import circle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.costmodel import CostModel
from ..core.traces import TraceRequest
from ..policies.plan_check import PlanCheckJob, PlanScore, plan_score
from ..sim.config import SimConfig

# options of the outer cascade that a replay must not inherit (the replay runs one fixed plan, unchecked)
_PLAN_KEYS = ("bounds", "counts", "refine", "plan_check")


@dataclass
class SimCheckerConfig:
    scheduler: str = "sglang"
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    router_options: dict[str, Any] = field(default_factory=dict)  # the live cascade's options
    kv_capacity: int | None = None
    slo_ttft: float = 2.0
    slo_tpot: float = 0.1
    publish_interval: float = 0.05
    max_prefill_tokens: int = 8192
    seed: int = 0


class SimPlanChecker:
    """Synchronous: ``submit`` scores the job at once; ``results`` hands the scored jobs back."""

    def __init__(self, cost_model: CostModel, cfg: SimCheckerConfig, run: Callable):
        self.cm, self.cfg, self.run = cost_model, cfg, run
        self._done: list[tuple[PlanCheckJob, list[PlanScore]]] = []
        self.jobs = 0

    def score(self, job: PlanCheckJob) -> list[PlanScore]:
        trace = [TraceRequest(f"replay{i}", float(t), int(p), int(o)) for i, (t, p, o) in enumerate(job.arrivals)]
        if not trace:
            return []
        base = {k: v for k, v in self.cfg.router_options.items() if k not in _PLAN_KEYS}
        out = []
        for c in job.candidates:
            opts = {**base, "bounds": "/".join(map(str, c.bounds)), "counts": "/".join(map(str, c.counts))}
            opts.update(refine=False, plan_check=False)
            m = self.run(trace, self._sim_config(job.num_instances, opts)).metrics
            mean, p99 = float(m["e2e_mean"]), float(m["e2e_p99"])
            if m["completed"] < len(trace):
                mean = p99 = float("inf")
            score = plan_score(mean, p99, job.tail_weight)
            out.append(PlanScore(c.name, c.bounds, c.counts, mean, p99, float(m["slo_attainment"]), score, c.predicted))
        self.jobs += 1
        return out

    def _sim_config(self, n: int, router_options: dict) -> SimConfig:
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
            slo_tpot=c.slo_tpot,
            publish_interval=c.publish_interval,
            max_prefill_tokens=c.max_prefill_tokens,
            seed=c.seed,
            plan_check=False,
        )

    def submit(self, job: PlanCheckJob) -> None:
        self._done.append((job, self.score(job)))

    def results(self) -> list[tuple[PlanCheckJob, list[PlanScore]]]:
        out, self._done = self._done, []
        return out

    def close(self) -> None:
        self._done = []
