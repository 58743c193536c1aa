"""Per-instance simulation state: the InstanceView a scheduler reads plus the driver's private counters.

An instance runs one iteration (or a fast-forwarded *segment* of identical decode iterations) at a time.
A segment of K decode steps of batch B starting at ``start`` with step durations ``a + b*k`` (k = 0..K-1;
or exact per-step times) ends at ``start + a*K + b*K(K-1)/2``; it can be cut short at the step in progress
when something happens to the instance (arrival, migration, ...).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass

from ..core.decisions import IterationPlan
from ..core.interfaces import InstanceScheduler
from ..core.views import InstanceLoad, InstanceView, Phase, RequestView


@dataclass(slots=True, eq=False)
class SimRequest(RequestView):
    """RequestView plus the driver-private truth policies never see."""

    target: int = 0  # true output length (the request finishes when output_len reaches it)
    bound_next: int = 0  # length at which the migration bound is checked next (0: no bound known)
    staged: bool = False  # SimConfig.stage_first_kv: its KV is exported as its prefill ends (it moves right then)


class Segment:
    """The iteration(s) in flight on one instance."""

    __slots__ = ("start", "steps", "a", "b", "cum", "plan", "decode", "batch", "kv_sum0", "end", "xfer")

    def __init__(
        self,
        start: float,
        plan: IterationPlan,
        decode: list,
        steps: int,
        a: float,
        b: float,
        cum: list[float] | None,
        kv_sum0: int,
        xfer: float,
    ):
        self.start = start
        self.plan = plan
        self.decode = decode
        self.batch = len(decode)
        self.steps = steps
        self.a = a
        self.b = b
        self.cum = cum  # exact cumulative end offsets per step, or None for the affine form
        self.kv_sum0 = kv_sum0
        self.xfer = xfer
        self.end = start + self.offset(steps)

    def stretch(self, f: float) -> None:
        """Every step ``f`` times longer (SimConfig.co_run_slowdown: another instance on the host is busy)."""
        self.a *= f
        self.b *= f
        if self.cum is not None:
            self.cum = [c * f for c in self.cum]
        self.end = self.start + self.offset(self.steps)

    def offset(self, c: int) -> float:
        """Time from start to the end of step c (1-based count)."""
        if c <= 0:
            return 0.0
        if self.cum is not None:
            return self.cum[c - 1]
        return self.a * c + self.b * c * (c - 1) / 2.0

    def step_duration(self, k: int) -> float:
        if self.cum is not None:
            return self.cum[k] - (self.cum[k - 1] if k else 0.0)
        return self.a + self.b * k

    def completed_by(self, t: float) -> int:
        """Steps finished at time t (0..steps)."""
        dt = t - self.start
        if dt <= 0:
            return 0
        if self.cum is not None:
            return bisect_right(self.cum, dt + 1e-15)
        a, b = self.a, self.b
        if b <= 1e-18:
            c = int(dt / a) if a > 0 else self.steps
        else:  # largest c with a*c + b*c(c-1)/2 <= dt
            aa, bb = b / 2.0, a - b / 2.0
            c = int((-bb + math.sqrt(bb * bb + 4 * aa * dt)) / (2 * aa))
        c = max(0, min(c, self.steps))
        while c < self.steps and self.offset(c + 1) <= dt:
            c += 1
        while c > 0 and self.offset(c) > dt:
            c -= 1
        return c


class SimInstance:
    __slots__ = (
        "iid",
        "view",
        "sched",
        "seg",
        "version",
        "prefill_left",
        "pred_active",
        "host_used",
        "incoming",
        "pending",
        "pub",
        "pub_tick",
        "last_commit",
        "kv_area",
        "busy_time",
        "records",
        "max_kv_seen",
        "settled_plans",
        "lagged",
    )

    def __init__(self, iid: int, view: InstanceView, sched: InstanceScheduler, record: bool):
        self.iid = iid
        self.view = view
        self.sched = sched
        self.seg: Segment | None = None
        self.version = 0
        self.prefill_left = 0  # sum of tokens_to_prefill over view.waiting (kept incrementally)
        self.pred_active = False  # some request here carries a predicted length: loads sum it (O(n))
        self.host_used = 0
        self.incoming = 0  # KV tokens of in-flight KV-transfer migrations copied here (included in view.kv_used)
        self.pending: list = []  # actions to apply at the next iteration boundary
        self.pub: InstanceLoad | None = None
        self.pub_tick = -1
        self.last_commit = 0.0
        self.kv_area = 0.0  # integral of kv_used over time (token-seconds)
        self.busy_time = 0.0
        self.records: list | None = [] if record else None
        self.max_kv_seen = 0
        self.settled_plans = 0  # plans the shared plan rules changed (policies/plan_rules.py)
        self.lagged: list | None = None  # SimConfig.result_lag: (request, 0 first token | 1 finish) seen late

    def add_waiting(self, r: SimRequest, t: float) -> None:
        """r arrives here (routed, or moved by recompute): the scheduler hears of it, it joins the queue."""
        v = self.view
        r.instance = self.iid
        r.phase = Phase.WAITING
        self.sched.on_arrival(r, v, t)
        v.waiting.append(r)
        self.prefill_left += r.length - r.kv_tokens
        if r.predicted_output_len is not None:
            self.pred_active = True

    def free_request(self, r: SimRequest) -> None:
        """Remove r from whatever list of this instance holds it and free its KV (GPU or host)."""
        v = self.view
        ph = r.phase
        if ph == Phase.RUNNING:
            v.running.remove(r)
            v.kv_used -= r.kv_tokens
        elif ph == Phase.WAITING:
            v.waiting.remove(r)
            self.prefill_left -= r.length - r.kv_tokens
            v.kv_used -= r.kv_tokens
        elif ph == Phase.PARKED:
            v.parked.remove(r)
            self.host_used -= r.kv_tokens

    def load_at(self, t: float) -> InstanceLoad:
        """The load this instance would publish at time t (t >= its last commit), O(1) unless predictions."""
        v = self.view
        kv = v.kv_used
        done = 0
        seg = self.seg
        if seg is not None and seg.steps > 1:
            done = seg.completed_by(t)
            kv += seg.batch * done
        out = self.prefill_left
        if self.pred_active:
            for r in v.waiting:
                p = r.predicted_output_len
                if p is not None and p > r.output_len:
                    out += p - r.output_len
            for r in v.running:
                p = r.predicted_output_len
                if p is not None and p > r.output_len:
                    out += p - r.output_len
            if done:
                for r in seg.decode:
                    p = r.predicted_output_len
                    if p is not None and p > r.output_len:
                        out -= min(done, p - r.output_len)
        return InstanceLoad(
            iid=self.iid,
            num_running=len(v.running),
            num_waiting=len(v.waiting),
            num_parked=len(v.parked),
            kv_used=kv,
            kv_capacity=v.kv_capacity,
            outstanding_tokens=out,
            range_lo=v.range_lo,
            range_hi=v.range_hi,
            published_at=t,
        )
