"""Iteration timing: the Segment an instance runs for a plan, costed with the CostModel.

A plan with prefill chunks (or a single decode step) is one iteration. A pure-decode plan whose scheduler
promises ``stable_steps > 1`` identical steps runs as one *segment* of up to that many steps: exact
per-step times (``cum``) when asked for, else an affine fit ``a + slope*k`` that is halved until its
midpoint is within ``affine_tolerance`` of the cost model.
"""

from __future__ import annotations

from ..core.costmodel import CostModel
from ..core.decisions import IterationPlan
from ..core.views import InstanceView
from .config import SimConfig
from .instance import Segment


class IterationTiming:
    """Turns a validated plan into the Segment in flight (no simulator state is read or written)."""

    __slots__ = ("iteration_time", "tolerance")

    def __init__(self, cost_model: CostModel, cfg: SimConfig):
        self.iteration_time = cost_model.iteration_time
        self.tolerance = cfg.affine_tolerance

    def prefill_segment(
        self, now: float, plan: IterationPlan, decode: list, kv_sum: int, kv_max: int, xfer: float
    ) -> Segment:
        """One mixed iteration: the prefill chunks of ``plan`` plus one decode step of ``decode``."""
        prefill = plan.prefill
        tokens = 0
        work = 0.0
        causal = 0.0
        for c in prefill:
            n = c.tokens
            tokens += n
            work += n * (c.req.kv_tokens + n / 2.0)  # core.costmodel.prefill_attn_work
            causal += n * n / 2.0
        if len(prefill) > 1:  # the causal part of a multi-chunk batch is costed separately
            dur = self.iteration_time(tokens, work, len(decode), kv_sum, kv_max, prefill_causal=causal)
        else:
            dur = self.iteration_time(tokens, work, len(decode), kv_sum, kv_max)
        return Segment(now, plan, decode, 1, max(dur, xfer), 0.0, None, kv_sum, xfer)

    def decode_segment(
        self,
        now: float,
        plan: IterationPlan,
        decode: list,
        kv_sum: int,
        kv_max: int,
        xfer: float,
        steps: int,
        exact: bool,
    ) -> Segment:
        """``steps`` decode steps of ``decode`` (1: a plain iteration that may overlap a KV move)."""
        b = len(decode)
        it = self.iteration_time
        if steps == 1:
            dur = it(0, 0.0, b, kv_sum, kv_max)
            return Segment(now, plan, decode, 1, max(dur, xfer), 0.0, None, kv_sum, xfer)
        if exact:
            cum = []
            acc = 0.0
            for k in range(steps):
                acc += it(0, 0.0, b, kv_sum + b * k, kv_max + k)
                cum.append(acc)
            return Segment(now, plan, decode, steps, 0.0, 0.0, cum, kv_sum, 0.0)
        steps, a, slope = self.affine(b, kv_sum, kv_max, steps)
        return Segment(now, plan, decode, steps, a, slope, None, kv_sum, 0.0)

    def affine(self, b: int, kv_sum: int, kv_max: int, steps: int) -> tuple[int, float, float]:
        """Affine fit of decode step time over a segment; halves the segment until the midpoint fits."""
        it = self.iteration_time
        a = it(0, 0.0, b, kv_sum, kv_max)
        tol = self.tolerance
        while True:
            last = it(0, 0.0, b, kv_sum + b * (steps - 1), kv_max + steps - 1)
            slope = (last - a) / (steps - 1)
            if steps <= 4:
                return steps, a, slope
            mid = (steps - 1) // 2
            tm = it(0, 0.0, b, kv_sum + b * mid, kv_max + mid)
            if abs(a + slope * mid - tm) <= tol * tm:
                return steps, a, slope
            steps = mid + 1


def stable_steps(view: InstanceView, plan: IterationPlan, decode: list) -> int:
    """Steps a pure-decode plan may run unchanged: its promise, cut at the first finish, migration bound
    (driver-private ``target`` / ``bound_next``) or full KV."""
    b = len(decode)
    steps = min(plan.stable_steps, (view.kv_capacity - view.kv_used) // b)
    for r in decode:
        left = r.target - r.output_len
        if left < steps:
            steps = left
            if steps <= 1:
                return 1
        if r.bound_next:
            left = r.bound_next - r.length
            if left < steps:
                steps = max(1, left)
    return max(1, steps)
