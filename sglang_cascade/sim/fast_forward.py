"""Fast-forward: a segment of identical decode steps runs as one event, and is brought up to date lazily.

While a segment is in flight nothing of its requests changes in the simulator's state. When something
happens to the instance (``_wake``) the segment is cut short at the step in progress; when a router needs
exact request views (``_advance``) the completed steps are applied and the rest goes on unchanged.
"""

from __future__ import annotations

from .instance import SimInstance

EV_ITER = 0  # the event kind of a segment's end (sim.event_loop)


class LazyRunning(dict):
    """The ``running`` map given to ``rebalance``: an instance's request views are brought up to date (the
    completed steps of its segment applied) when the router first looks at them."""

    def __init__(self, sim, t: float):
        super().__init__((i.iid, i.view.running) for i in sim.insts)
        self.sim, self.t, self.done = sim, t, set()

    def _fresh(self, i):
        if i not in self.done and 0 <= i < self.sim.n:
            self.done.add(i)
            self.sim._advance(self.sim.insts[i], self.t)

    def __getitem__(self, i):
        self._fresh(i)
        return dict.__getitem__(self, i)

    def get(self, i, default=None):
        self._fresh(i)
        return dict.get(self, i, default)

    def values(self):
        for i in dict.keys(self):
            self._fresh(i)
        return dict.values(self)

    def items(self):
        for i in dict.keys(self):
            self._fresh(i)
        return dict.items(self)


class FastForward:
    """Simulator mixin. Uses: the methods ``_start``, ``_push``, ``_touch``, ``_record``."""

    def _wake(self, inst: SimInstance, t: float) -> None:
        """Something changed on inst at time t: start an iteration if idle, else cut a segment short."""
        seg = inst.seg
        if seg is None:
            self._start(inst, t)
        elif seg.steps > 1:
            c = seg.completed_by(t)
            k = min(seg.steps, c + 1)
            if k < seg.steps:
                seg.steps = k
                seg.end = seg.start + seg.offset(k)
                inst.version += 1
                self._push(seg.end, EV_ITER, inst, inst.version)

    def _advance(self, inst: SimInstance, t: float) -> None:
        """Apply the steps of the segment in flight completed by t, so request views are exact at t (used
        before a router looks at running requests); the rest of the segment goes on unchanged."""
        seg = inst.seg
        if seg is None or seg.steps <= 1:
            return
        c = seg.completed_by(t)
        if c <= 0 or c >= seg.steps:
            return
        self._touch(inst, t)
        v = inst.view
        b = seg.batch
        off = seg.offset(c)
        inst.busy_time += off
        inst.kv_area += off * v.kv_used + off * b * c / 2.0
        if inst.records is not None:
            steps, seg.steps = seg.steps, c
            self._record(inst, seg)
            seg.steps = steps
            seg.xfer = (0.0, None, None, None)
        tc = seg.start + off
        for r in seg.decode:
            r.output_len += c
            r.kv_tokens += c
            r.last_decode = tc
        v.kv_used += b * c
        v.iteration += c
        if seg.cum is not None:
            seg.cum = [x - off for x in seg.cum[c:]]
        else:
            seg.a += seg.b * c
        seg.start = tc
        seg.steps -= c
        seg.kv_sum0 += b * c
