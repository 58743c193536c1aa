"""Optimal single-instance schedules (CP-SAT), the feasibility checker shared with the simulator, brute
force for tiny cases, and the scheduler-analysis report. See docs/optimal.md."""

from .feasibility import Violation, check_problem_schedule, check_schedule
from .linearize import LinearTimeModel, fit_linear_time
from .model import SolveResult, solve
from .problem import Iteration, Problem, Req, Schedule

__all__ = [
    "Violation",
    "check_schedule",
    "check_problem_schedule",
    "LinearTimeModel",
    "fit_linear_time",
    "SolveResult",
    "solve",
    "Iteration",
    "Problem",
    "Req",
    "Schedule",
]
