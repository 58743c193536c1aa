"""The simulator checker's modelled CPU cost of one plan check, deterministic (so simulations with the
policy's CPU budget governor, ``PlanCheckConfig.check_cpu_budget``, stay reproducible): a linear model in the
work the check did, fitted to ``time.process_time`` by ``scripts/calibrate_check_cost.py`` (docs/cascade.md,
"CPU budget"). The live checkers (process, thread) report the CPU they measured instead; the policy's
governor uses the model only to expect the cost of a first check (``check_budget.py``)."""

from __future__ import annotations

from dataclasses import astuple, dataclass

# the model's CPU seconds per unit of each CheckWork field, in field order: fitted by
# scripts/calibrate_check_cost.py (non-negative least squares over 24 jobs, this 2-core machine, 2026-12-04:
# ShareGPT lengths at 25-50 req/s and short outputs at 200 / 800 req/s, the router benchmark's traffic; the fit
# put 0 on the terms marked so; it is 0.86-1.66x the measured CPU per job, docs/results/check_cost_fit.csv)
CPU_S = {
    "iterations": 0.0,  # per simulated engine iteration, summed over a replay's instances (fitted 0)
    "requests": 55.5e-6,  # per replayed request
    "tokens": 0.206e-6,  # per output token of the replayed requests
    "replays": 0.0,  # per replay: building and starting one simulation (fitted 0)
    "dp_runs": 0.0685,  # per candidate build: the stage model's tables, the DP, top_partitions
    "dp_instances": 0.0,  # per instance of a candidate build's cluster (fitted 0)
}


@dataclass
class CheckWork:
    iterations: int = 0  # simulated iterations over every replay of the job
    requests: int = 0  # replayed requests over every replay
    tokens: int = 0  # their output tokens (the decode steps the replays simulate)
    replays: int = 0  # replays run (candidates that scale to the same sub-plan share one)
    dp_runs: int = 0  # 1 when the checker built the candidates from the job's spec (0: the job had them)
    dp_instances: int = 0  # the DP's instance count when it ran

    def features(self) -> tuple[int, ...]:
        return astuple(self)

    def cpu_s(self) -> float:
        return float(sum(x * c for x, c in zip(self.features(), CPU_S.values())))
