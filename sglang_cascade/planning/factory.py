"""Checkers wired to the simulator (for drivers other than the simulator itself: the router, the CLI)."""

from __future__ import annotations

from ..core.costmodel import CostModel
from ..sim.cluster import simulate
from .sim_checker import SimCheckerConfig, SimPlanChecker
from .threaded import ThreadedPlanChecker


def make_sim_checker(cost_model: CostModel, cfg: SimCheckerConfig | None = None) -> SimPlanChecker:
    return SimPlanChecker(cost_model, cfg or SimCheckerConfig(), simulate)


def make_background_checker(cost_model: CostModel, cfg: SimCheckerConfig | None = None) -> ThreadedPlanChecker:
    return ThreadedPlanChecker(make_sim_checker(cost_model, cfg))
