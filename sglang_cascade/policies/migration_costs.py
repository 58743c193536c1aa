"""Measured migration stalls: what each move mechanism really cost on this deployment.

A driver that moves requests for real (the HTTP router) reports, per finished move, its mechanism, the
context length moved and the stall the client saw (last token from the source -> first token from the
destination). :class:`MigrationCosts` keeps, per mechanism, a decayed least-squares line
``stall = a + b * tokens`` and answers :meth:`MigrationCosts.stall` once it has seen enough moves at
different lengths; until then it answers None and :class:`~.migration.MigrationPlanner` uses its model
(cost model prefill for recompute, link curve for KV transfer). It also fits the link itself from the
timed KV copies (seconds vs bytes): :meth:`MigrationCosts.link` is a ``LinkCurve``-like
:class:`MeasuredLink` that :meth:`~.migration.MigrationPlanner.link_time` uses once fitted, and that a
simulator can be given as its link (``MigrationConfig.link``, ``sim/migration.py: d2d_fn``). The simulator's
default gives its planner no measurements: the model is what it simulates.
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


@dataclass(frozen=True)
class MeasuredLink:
    """A KV link fitted from real copies: ``fixed_s + bytes * s_per_byte`` (a ``LinkCurve``-like object)."""

    fixed_s: float
    s_per_byte: float

    def time_s(self, nbytes: int) -> float:
        return self.fixed_s + self.s_per_byte * max(0, nbytes)


@dataclass(frozen=True)
class FrozenCosts:
    """:class:`MigrationCosts` at one moment, read-only: the same ``stall`` and ``link`` answers, picklable."""

    lines: tuple[tuple[str, tuple[float, float] | None], ...]  # (mode value, fitted (a, b) or None)
    measured_link: MeasuredLink | None

    def stall(self, mode: MigrationMode, tokens: int) -> float | None:
        ab = dict(self.lines).get(mode.value)
        return None if ab is None else ab[0] + ab[1] * tokens

    def link(self) -> MeasuredLink | None:
        return self.measured_link


class MigrationCosts:
    """Per-mechanism measured stall lines; thread-safe (the router observes from its event loop while a
    plan checker thread may read)."""

    def __init__(self, cfg: CostsConfig | None = None):
        self.cfg = cfg or CostsConfig()
        self.lines = {m: StallLine() for m in (MigrationMode.RECOMPUTE, MigrationMode.KV_TRANSFER)}
        self.link_line = StallLine()  # copy seconds vs bytes (x = bytes)
        self._lock = threading.Lock()

    def observe(self, mode: MigrationMode, tokens: int, stall_s: float) -> None:
        if tokens <= 0 or not stall_s >= 0.0:
            return
        with self._lock:
            self.lines[mode].add(int(tokens), float(stall_s), self.cfg.decay)

    def observe_link(self, nbytes: int, seconds: float) -> None:
        """One KV copy (export + import of ``nbytes``) took ``seconds`` on the real link."""
        if nbytes <= 0 or not seconds >= 0.0:
            return
        with self._lock:
            self.link_line.add(int(nbytes), float(seconds), self.cfg.decay)

    def _fitted(self, line: StallLine) -> tuple[float, float] | None:
        if line.n < self.cfg.min_moves or line.hi < self.cfg.min_spread * max(1, line.lo):
            return None
        return line.coef()

    def stall(self, mode: MigrationMode, tokens: int) -> float | None:
        """Measured stall of moving ``tokens`` by ``mode``, or None while too few moves were seen."""
        with self._lock:
            ab = self._fitted(self.lines[mode])
        return None if ab is None else ab[0] + ab[1] * tokens

    def link(self) -> MeasuredLink | None:
        """The measured link (``time_s(bytes)``, like a ``migration_link`` curve), or None until fitted."""
        with self._lock:
            ab = self._fitted(self.link_line)
        return None if ab is None else MeasuredLink(*ab)

    def frozen(self) -> FrozenCosts:
        """A picklable copy of what :meth:`stall` and :meth:`link` answer now (a plan check's job carries it
        to the checker: this object's lock does not pickle)."""
        with self._lock:
            lines = tuple((m.value, self._fitted(line)) for m, line in self.lines.items())
            ab = self._fitted(self.link_line)
        return FrozenCosts(lines, None if ab is None else MeasuredLink(*ab))

    def snapshot(self) -> dict:
        """Per mechanism: moves seen and the fitted line (for /get_loads and logs)."""
        with self._lock:
            out = {}
            for m, line in self.lines.items():
                a, b = line.coef()
                out[m.value] = {"moves": line.n, "a_s": a, "b_s_per_token": b, "tokens": [line.lo, line.hi]}
            return out
