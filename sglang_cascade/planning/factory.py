"""Checkers wired to the simulator (for drivers other than the simulator itself: the router, the CLI)."""

from __future__ import annotations

import os

from ..core.costmodel import CostModel
from ..sim.cluster import simulate
from .process import ProcessPlanChecker
from .sim_checker import SimCheckerConfig, SimPlanChecker
from .threaded import ThreadedPlanChecker

MODE_ENV = "SGLANG_CASCADE_PLAN_CHECK_MODE"
MODES = ("process", "thread")


def make_sim_checker(cost_model: CostModel, cfg: SimCheckerConfig | None = None) -> SimPlanChecker:
    return SimPlanChecker(cost_model, cfg or SimCheckerConfig(), simulate)


def plan_check_mode(mode: str | None = None) -> str:
    """``mode``, else ``$SGLANG_CASCADE_PLAN_CHECK_MODE``, else "process"."""
    m = (mode or os.environ.get(MODE_ENV) or "process").strip().lower()
    if m not in MODES:
        raise ValueError(f"{MODE_ENV}={m!r}: expected one of {MODES}")
    return m


def make_background_checker(
    cost_model: CostModel, cfg: SimCheckerConfig | None = None, mode: str | None = None
) -> ProcessPlanChecker | ThreadedPlanChecker:
    """The HTTP router's checker, off the request path: "process" (default) runs the simulator in one
    niced child process (``ProcessPlanChecker``); "thread" on a background thread of the router process
    (``ThreadedPlanChecker``, shares the GIL with the request loop)."""
    if plan_check_mode(mode) == "thread":
        return ThreadedPlanChecker(make_sim_checker(cost_model, cfg))
    return ProcessPlanChecker(cost_model, cfg or SimCheckerConfig())
