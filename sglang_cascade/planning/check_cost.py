"""The simulator checker's modelled CPU cost of one plan check, deterministic (so simulations with the
policy's CPU budget governor, ``PlanCheckConfig.check_cpu_budget``, stay reproducible): a linear model in the
work the check did, fitted to ``time.process_time`` by ``scripts/calibrate_check_cost.py`` (docs/cascade.md,
"CPU budget"). The live checkers (process, thread) report the CPU they measured instead."""

from __future__ import annotations

from dataclasses import dataclass

# fitted by scripts/calibrate_check_cost.py (least squares, no intercept; see docs/cascade.md "CPU budget")
CPU_S_PER_ITERATION = 20e-6  # one simulated engine iteration (summed over the replay's instances)
CPU_S_PER_REQUEST = 100e-6  # one replayed request (arrival, routing, finish)
CPU_S_PER_DP_CELL = 30e-9  # buckets^2 x instances^2 of the candidates' DP (plan_partition + top_partitions)


@dataclass
class CheckWork:
    iterations: int = 0  # simulated iterations over every replay of the job
    requests: int = 0  # replayed requests over every replay
    dp_cells: int = 0  # buckets^2 x instances^2 when the checker built the candidates (0: the job had them)

    def cpu_s(self) -> float:
        return (
            self.iterations * CPU_S_PER_ITERATION
            + self.requests * CPU_S_PER_REQUEST
            + self.dp_cells * CPU_S_PER_DP_CELL
        )
