"""Measured migration stalls: what each move mechanism really cost on this deployment.

A driver that moves requests for real (the HTTP router) reports, per finished move, its mechanism, the
context length moved and the stall the client saw (last token from the source -> first token from the
destination). :class:`MigrationCosts` keeps, per mechanism, a decayed least-squares line
``stall = a + b * tokens`` and answers :meth:`MigrationCosts.stall` once it has seen enough moves at
different lengths; until then it answers None and :class:`~.migration.MigrationPlanner` uses its model
(cost model prefill for recompute, link curve for KV transfer). The simulator gives its planner no
measurements: the model is what it simulates.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..core.decisions import MigrationMode


@dataclass
class CostsConfig:
    decay: float = 0.9  # weight kept by older moves at each new one (recent moves count most)
    min_moves: int = 3  # moves of a mechanism before its line replaces the model
    min_spread: float = 1.5  # ... and the longest seen >= min_spread x the shortest (the slope is measured)


class StallLine:
    """Weighted least squares ``stall = a + b * tokens`` over decayed observations."""

    __slots__ = ("w", "x", "y", "xx", "xy", "n", "lo", "hi")

    def __init__(self):
        self.w = self.x = self.y = self.xx = self.xy = 0.0
        self.n = 0
        self.lo = self.hi = 0

    def add(self, tokens: int, stall_s: float, decay: float) -> None:
        for k in ("w", "x", "y", "xx", "xy"):
            setattr(self, k, getattr(self, k) * decay)
        t = float(tokens)
        self.w += 1.0
        self.x += t
        self.y += stall_s
        self.xx += t * t
        self.xy += t * stall_s
        self.lo = tokens if self.n == 0 else min(self.lo, tokens)
        self.hi = max(self.hi, tokens)
        self.n += 1

    def coef(self) -> tuple[float, float]:
        """(a, b) with a >= 0 and b >= 0 (a stall never shrinks with length)."""
        den = self.w * self.xx - self.x * self.x
        if self.w <= 0:
            return 0.0, 0.0
        if den <= 1e-12 * max(1.0, self.xx * self.w):
            return max(0.0, self.y / self.w), 0.0
        b = (self.w * self.xy - self.x * self.y) / den
        if b < 0:  # noise: a flat line through the mean
            return max(0.0, self.y / self.w), 0.0
        a = (self.y - b * self.x) / self.w
        if a < 0:  # through the origin instead
            return 0.0, max(0.0, self.xy / self.xx)
        return a, b


class MigrationCosts:
    """Per-mechanism measured stall lines; thread-safe (the router observes from its event loop while a
    plan checker thread may read)."""

    def __init__(self, cfg: CostsConfig | None = None):
        self.cfg = cfg or CostsConfig()
        self.lines = {m: StallLine() for m in (MigrationMode.RECOMPUTE, MigrationMode.KV_TRANSFER)}
        self._lock = threading.Lock()

    def observe(self, mode: MigrationMode, tokens: int, stall_s: float) -> None:
        if tokens <= 0 or not stall_s >= 0.0:
            return
        with self._lock:
            self.lines[mode].add(int(tokens), float(stall_s), self.cfg.decay)

    def stall(self, mode: MigrationMode, tokens: int) -> float | None:
        """Measured stall of moving ``tokens`` by ``mode``, or None while too few moves were seen."""
        with self._lock:
            line = self.lines[mode]
            if line.n < self.cfg.min_moves or line.hi < self.cfg.min_spread * max(1, line.lo):
                return None
            a, b = line.coef()
        return a + b * tokens

    def snapshot(self) -> dict:
        """Per mechanism: moves seen and the fitted line (for /get_loads and logs)."""
        with self._lock:
            out = {}
            for m, line in self.lines.items():
                a, b = line.coef()
                out[m.value] = {"moves": line.n, "a_s": a, "b_s_per_token": b, "tokens": [line.lo, line.hi]}
            return out
