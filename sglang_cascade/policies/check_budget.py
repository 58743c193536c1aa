"""The plan check's CPU budget governor: at most ``budget`` core-seconds of checker CPU per minute of traffic.

A token bucket with no burst, paid in advance: traffic minutes count from the first arrival (``open``); a
timer or drift check may start only when the credit earned so far, ``budget x minutes``, covers what the
checks already cost plus what the next one is expected to cost (``estimate_s``: the last check's cost, or
before any, the modelled cost of a check of that size, ``check_cost.CheckWork``). Each answered check charges
what it cost (``PlanCheckJob.cost_s``: the CPU the process / thread checker measured, or the simulator
checker's deterministic model). So at any time the checks' CPU stays within ``budget x traffic minutes``,
give or take how far the last check's cost was from its estimate (it is repaid before the next one starts).
While a background checker is busy (a check queued or running) no new check starts either
(``CascadeRouter._wait_reason``). The start-up check (the router's constructor, before any traffic) is
charged apart (``startup_s``): it is not traffic-time CPU. ``budget <= 0``: no governor. Times are the
policy's ``now`` (virtual in the simulator, monotonic seconds in the router).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class CheckBudget:
    budget: float  # core-seconds per minute of traffic (PlanCheckConfig.check_cpu_budget); <= 0: off
    opened_at: float | None = None  # the first arrival: traffic minutes count from here
    spent_s: float = 0.0  # CPU seconds charged by the checks since traffic started
    startup_s: float = 0.0  # the start-up check's (before any traffic; not under the budget)
    charged: int = 0  # checks charged (the start-up one included)
    last_cost_s: float = 0.0
    deferred_drift: int = 0  # drift checks refused (the plan in force stayed)
    deferred_timer: int = 0  # timer checks that were due but waited

    @property
    def on(self) -> bool:
        return self.budget > 0

    def open(self, now: float) -> None:
        """Traffic starts (the first arrival); later calls change nothing."""
        if self.opened_at is None:
            self.opened_at = now

    def next_at(self, estimate_s: float) -> float:
        """When the credit covers the checks so far plus one costing ``estimate_s`` (inf before traffic)."""
        if self.opened_at is None:
            return math.inf
        return self.opened_at + 60.0 * (self.spent_s + max(0.0, estimate_s)) / self.budget

    def allows(self, now: float, estimate_s: float) -> bool:
        return not self.on or now >= self.next_at(estimate_s)

    def next_check_at(self, estimate_s: float) -> float | None:
        """``next_at`` for reports: None without a governor or before traffic."""
        at = self.next_at(estimate_s) if self.on else math.inf
        return None if math.isinf(at) else at

    def charge(self, cost_s: float, startup: bool = False) -> None:
        """A check cost ``cost_s`` CPU seconds (``startup``: the constructor's, before traffic)."""
        cost = max(0.0, float(cost_s))
        if startup:
            self.startup_s += cost
        else:
            self.spent_s += cost
        self.charged += 1
        self.last_cost_s = cost

    def state(self, now: float, estimate_s: float) -> dict:
        """For ``/get_loads`` and the decision log: the budget, what was spent, when the next check may run."""
        minutes = (now - self.opened_at) / 60.0 if self.opened_at is not None and now > self.opened_at else 0.0
        nxt = self.next_check_at(estimate_s)
        return {
            "cpu_budget_core_s_per_min": self.budget,
            "traffic_minutes": round(minutes, 4),
            "spent_core_s": round(self.spent_s, 4),
            "startup_core_s": round(self.startup_s, 4),
            "checks_charged": self.charged,
            "last_cost_s": round(self.last_cost_s, 4),
            "next_cost_estimate_s": round(estimate_s, 4),
            "core_s_per_traffic_min": round(self.spent_s / minutes, 4) if minutes > 0 else None,
            "next_check_at": None if nxt is None else round(nxt, 3),
            "next_check_in_s": 0.0 if nxt is None else round(max(0.0, nxt - now), 3),
            "deferred_drift": self.deferred_drift,
            "deferred_timer": self.deferred_timer,
        }
