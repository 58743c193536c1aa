"""Runtime range refinement: stage boundaries follow the observed length mix.

The router observes every finished request's (prompt, output) pair in a sliding window. Every
``interval_s`` the refiner compares the window's decode-token length distribution with the one the
current plan was made for (the *reference*):

- **Small drift**: each boundary keeps the share of decode tokens below it that it had in the reference
  (quantile matching: ``b_target = F_window^-1(F_ref(b))``), so stages keep their share of the load as
  lengths drift. Boundaries move toward their targets with **hysteresis** (no move when the relative gap
  is below ``deadband``) and a **bounded step** (at most ``max_step`` x the boundary per interval); a
  boundary reverses direction only after ``reverse_cooldown`` intervals and only for a gap above
  ``reverse_factor`` x ``deadband``, so sampling noise cannot make it oscillate.
- **Large drift** (Kolmogorov-Smirnov distance between the two token-length CDFs above ``replan_ks``):
  the DP is re-run on the window (caller-supplied ``replan`` callback) and the new plan becomes the
  reference.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .stage_model import LengthStats


@dataclass
class RefinementConfig:
    interval_s: float = 5.0  # how often boundaries are reconsidered
    window: int = 2000  # finished requests kept
    min_samples: int = 500  # no refinement before this many observations (finished requests: short ones
    # finish first, so a small early window is biased toward short lengths)
    deadband: float = 0.05  # relative gap below which a boundary does not move
    max_step: float = 0.1  # max relative move per interval
    reverse_cooldown: int = 3  # intervals before a boundary may move the opposite way
    reverse_factor: float = 2.0  # ... and then only if the gap exceeds this x deadband
    replan_ks: float = 0.25  # KS distance that triggers a full DP re-plan
    replan_cooldown_s: float = 30.0


def token_cdf(stats: LengthStats, grid: np.ndarray) -> np.ndarray:
    return stats.G(grid) / max(1.0, stats.total_decode)


def ks_distance(a: LengthStats, b: LengthStats, points: int = 256) -> float:
    hi = max(a.max_len, b.max_len) + 1
    grid = np.geomspace(1, hi, points)
    return float(np.max(np.abs(token_cdf(a, grid) - token_cdf(b, grid))))


@dataclass
class RangeRefiner:
    """Tracks, for each boundary, the share of decode tokens below it that it should keep."""

    cfg: RefinementConfig
    reference: Sequence[tuple[int, int]] = ()
    window: deque = field(default_factory=deque)
    shares: list[float] | None = None  # per boundary: token-CDF share it keeps
    last_tick: float = -1e18
    last_replan: float = -1e18
    last_dir: dict = field(default_factory=dict)  # boundary index -> (direction, tick)
    ticks: int = 0
    moves: int = 0
    replans: int = 0

    def __post_init__(self) -> None:
        self.window = deque(maxlen=self.cfg.window)
        self._ref_stats = LengthStats(self.reference) if len(self.reference) else None

    def observe(self, prompt: int, output: int) -> None:
        self.window.append((int(prompt), int(output)))

    def set_reference(self, sample: Sequence[tuple[int, int]], bounds: Sequence[int] | None = None) -> None:
        self.reference = list(sample)
        self._ref_stats = LengthStats(self.reference) if self.reference else None
        self.last_dir.clear()
        self.shares = None
        if bounds is not None and self._ref_stats is not None:
            self.shares = [float(x) for x in token_cdf(self._ref_stats, np.asarray(bounds, dtype=np.float64))]

    def rebase(self, k: int, bound: int) -> None:
        """Another component (the pairwise balancer) moved boundary k: keep the share it has now."""
        if self.shares is None or k >= len(self.shares):
            return
        src = LengthStats(list(self.window)) if len(self.window) >= self.cfg.min_samples else self._ref_stats
        if src is not None:
            self.shares[k] = float(token_cdf(src, np.asarray([bound], dtype=np.float64))[0])
        self.last_dir[k] = (0, self.ticks)

    def targets(self, stats: LengthStats) -> list[int]:
        """Boundaries that keep each boundary's token share under the window's mix."""
        grid = np.unique(np.geomspace(1, stats.max_len + 1, 4096).round())
        cdf = token_cdf(stats, grid)
        idx = np.clip(np.searchsorted(cdf, np.asarray(self.shares), side="left"), 0, len(grid) - 1)
        return [int(g) for g in grid[idx]]

    def tick(
        self, bounds: list[int], now: float, replan: Callable[[list[tuple[int, int]]], list[int] | None] | None = None
    ) -> list[int] | None:
        """New bounds (or None: unchanged). On large drift calls ``replan(window)``, which returns the new
        plan's bounds (the caller installs that plan)."""
        if now - self.last_tick < self.cfg.interval_s or len(self.window) < self.cfg.min_samples or not bounds:
            return None
        self.last_tick = now
        self.ticks += 1
        stats = LengthStats(list(self.window))
        if self._ref_stats is None or self.shares is None or len(self.shares) != len(bounds):
            self.set_reference(list(self.window), bounds)
            return None
        if (
            replan is not None
            and now - self.last_replan >= self.cfg.replan_cooldown_s
            and ks_distance(self._ref_stats, stats) > self.cfg.replan_ks
        ):
            self.last_replan = now
            self.replans += 1
            sample = list(self.window)
            nb = replan(sample)
            self.set_reference(sample, nb if nb is not None else bounds)
            return None
        targets = self.targets(stats)
        new = list(bounds)
        for k, (b, t) in enumerate(zip(bounds, targets)):
            gap = (t - b) / max(1, b)
            if abs(gap) < self.cfg.deadband:
                continue
            d = 1 if gap > 0 else -1
            prev = self.last_dir.get(k)
            if (
                prev
                and prev[0] == -d
                and (
                    self.ticks - prev[1] < self.cfg.reverse_cooldown
                    or abs(gap) < self.cfg.reverse_factor * self.cfg.deadband
                )
            ):
                continue
            step = max(1, int(abs(b * self.cfg.max_step)))
            new[k] = b + d * min(step, abs(t - b))
            self.last_dir[k] = (d, self.ticks)
        for k in range(len(new)):  # keep strictly increasing and positive
            lo = new[k - 1] + 1 if k else 1
            new[k] = max(new[k], lo)
        if new == list(bounds):
            return None
        self.moves += 1
        return new
