"""The plan check's CPU budget governor: at most ``budget`` core-seconds of checker CPU per minute of traffic.

Each answered check charges what it cost (``PlanCheckJob.cost_s``: the CPU the process / thread checker
measured, or the simulator checker's deterministic model), and the next timer or drift check may start only
``60 x cost / budget`` seconds of traffic after the charged one started: over any stretch of traffic the
checks' CPU stays within the budget (plus the one check in flight). While a background checker is busy (a
check queued or running, its cost not known yet) no new check starts either (``CascadeRouter._wait_reason``).
``budget <= 0``: no governor. Times are the policy's ``now`` (virtual in the simulator, monotonic seconds in
the router).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CheckBudget:
    budget: float  # core-seconds per minute of traffic (PlanCheckConfig.check_cpu_budget); <= 0: off
    not_before: float = 0.0  # no timer / drift check before this time
    spent_s: float = 0.0  # CPU seconds charged so far
    charged: int = 0  # checks charged
    last_cost_s: float = 0.0
    first_at: float | None = None  # the first charged check's start
    deferred_drift: int = 0  # drift checks refused (the plan in force stayed)
    deferred_timer: int = 0  # timer checks that were due but waited

    @property
    def on(self) -> bool:
        return self.budget > 0

    def allows(self, now: float) -> bool:
        return not self.on or now >= self.not_before

    def charge(self, at: float, cost_s: float) -> None:
        """A check started at ``at`` cost ``cost_s`` CPU seconds."""
        cost = max(0.0, float(cost_s))
        self.spent_s += cost
        self.charged += 1
        self.last_cost_s = cost
        self.first_at = at if self.first_at is None else min(self.first_at, at)
        if self.on:
            self.not_before = max(self.not_before, at + 60.0 * cost / self.budget)

    def state(self, now: float) -> dict:
        """For ``/get_loads`` and the decision log: the budget, what was spent, when the next check may run."""
        minutes = (now - self.first_at) / 60.0 if self.first_at is not None and now > self.first_at else 0.0
        return {
            "cpu_budget_core_s_per_min": self.budget,
            "spent_core_s": round(self.spent_s, 4),
            "checks_charged": self.charged,
            "last_cost_s": round(self.last_cost_s, 4),
            "core_s_per_traffic_min": round(self.spent_s / minutes, 4) if minutes > 0 else None,
            "next_check_at": round(self.not_before, 3) if self.on else None,
            "next_check_in_s": round(max(0.0, self.not_before - now), 3) if self.on else 0.0,
            "deferred_drift": self.deferred_drift,
            "deferred_timer": self.deferred_timer,
        }
