"""Discrete-event simulator of N SGLang-like instances behind a router (see docs/simulator.md)."""

from .cluster import Simulator, simulate, simulate_instance
from .config import IterationRecord, SimConfig, SimError, SimResult

__all__ = ["SimConfig", "SimResult", "IterationRecord", "SimError", "Simulator", "simulate", "simulate_instance"]
