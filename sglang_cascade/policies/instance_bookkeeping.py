"""Bookkeeping of the ``cascade`` instance scheduler: keeping its tracks, ledger and aligned index in step
with the driver's views (prefill completions, requests that landed with KV, requests that left without
``on_finish``, a full rebuild when the lists disagree), and the O(n) invariant checks (tests, ``check=1``).

A mixin of :class:`~.instance.CascadeScheduler`.
"""

from __future__ import annotations

from ..core.decisions import IterationPlan
from ..core.views import InstanceView, Phase
from .admission import GPU_STATE, HOST_STATE, INF, PREFILL_STATE, KVLedger, Track
from .aligned import AlignedIndex
from .instance_step import StepContext


class Bookkeeping:
    def _catch_up_fast_forward(self, inst: InstanceView) -> None:
        """Fast-forwarded segments (``stable_steps`` > 1): the driver advanced ``inst.iteration`` by the
        steps run; the buckets the last plan served decoded that many more tokens."""
        if (
            self._inst_iter is not None
            and inst.iteration - self._inst_iter > 1
            and self._plan is not None
            and not self._plan.prefill
        ):
            extra = inst.iteration - self._inst_iter - 1
            for b in self._served:
                b.cnt += extra
        self._inst_iter = inst.iteration

    def _complete_prefills(self, step: StepContext) -> list[Track]:
        """Requests whose prefill completed join the aligned index. Returns those already at their KV
        limit (handled after the reconciliation: nothing is planned before it)."""
        tight: list[Track] = []
        if not self.prefilling:
            return tight
        for t in [t for t in self.prefilling.values() if t.prefill_done]:
            if t.req.phase == Phase.RUNNING:
                del self.prefilling[t.req.rid]
                t.state = GPU_STATE
                self.index.add_gpu(t, stamp=step.iteration)
                if t.claim and t.req.kv_tokens + 1 > t.limit:
                    tight.append(t)
            elif t.req.tokens_to_prefill > 0:
                t.prefill_done = False
        return tight

    def _sync_with_views(self, step: StepContext) -> None:
        """Adopt requests that landed with their KV; reconcile when the counts disagree with the views."""
        inst = step.inst
        if self._incoming:
            self._adopt(inst, step.plan)
        if self._counts_disagree(inst):
            self._reconcile(inst)

    def _counts_disagree(self, inst: InstanceView) -> bool:
        return (
            self.index.n_gpu != len(inst.running)
            or self.index.n_host != len(inst.parked)
            or len(self.waitq) + len(self.prefilling) + len(self.rejected) != len(inst.waiting)
        )

    def _adopt(self, inst: InstanceView, plan: IterationPlan) -> None:
        """Requests that landed running with their KV (KV-transfer migration): reserve what is left."""
        incoming, self._incoming = self._incoming, []
        here = {id(r) for r in inst.running}  # O(n), only when migrations landed (they may leave again)
        for r in incoming:
            if id(r) not in here or r.rid in self.tracks:
                continue
            t = Track(req=r, seq=self._next_seq(), state=GPU_STATE)
            if self.cfg.admission.reserve and self.ledger is not None:
                target = max(r.kv_tokens + 1, self._claim_target(r))
                t.pred_bucket = self._pred_bucket(r)
                if not self.ledger.try_own(t, target):
                    # the router placed it regardless of our reservations: take what is free (>= what it
                    # holds + 1; a negative free pool blocks admissions until finishes repay it)
                    self.ledger._add_owner(t, max(r.kv_tokens + 1, min(target, self.ledger.free)))
                    self._debt = self.ledger.free < 0
                self._set_reserve(plan, t)
            self.tracks[r.rid] = t
            self.index.add_gpu(t, stamp=self._it)

    def _reconcile(self, inst: InstanceView) -> None:
        """Requests left without on_finish (migrated away) or lists changed behind our back: drop the
        departed ones (O(n), only when counts disagree); rebuild everything if that is not enough."""
        running = {r.rid for r in inst.running}
        parked = {r.rid for r in inst.parked}
        waiting = {r.rid for r in inst.waiting}
        for t in list(self.tracks.values()):
            rid = t.req.rid
            if (t.state == GPU_STATE and rid not in running) or (t.state == PREFILL_STATE and rid not in waiting):
                self._drop(t)
        for t in list(self.host.values()):
            if t.req.rid not in parked:
                del self.host[t.req.rid]
                self.host_used -= t.req.kv_tokens
                self.index.remove(t)
        for rid in list(self.waitq.rids):
            if rid not in waiting:
                self.waitq.discard(rid)
        self.rejected &= waiting
        if self._counts_disagree(inst):
            self._resync(inst)

    def _resync(self, inst: InstanceView) -> None:
        """Rebuild from the views (O(n)): used when the driver's lists disagree with our bookkeeping
        (first call, a driver-side retraction we were not told about, a restarted scheduler)."""
        self.stats.resyncs += 1
        self.ledger = KVLedger(inst.kv_capacity, self.cfg.admission)
        self.index = AlignedIndex(self.cfg.batching)
        old = {**self.tracks, **self.host}
        for t in old.values():  # re-grouped below if still on GPU
            t.req.group = -1
        self.tracks, self.host, self.prefilling = {}, {}, {}
        self.host_used = 0
        for r in sorted(inst.running, key=lambda x: old[x.rid].seq if x.rid in old else INF):
            t = self._fresh_track(old, r, GPU_STATE)
            self.tracks[r.rid] = t
            if self.cfg.admission.reserve:
                target = max(r.kv_tokens + 1, self._claim_target(r))
                t.pred_bucket = self._pred_bucket(r)
                if not self.ledger.try_own(t, target):
                    self.ledger.try_own(t, min(target, max(r.kv_tokens + 1, self.ledger.free)))
                    if t.claim == 0:  # over-committed by the driver: claim what it holds (reported)
                        self._claim_in_debt(t)
            self.index.add_gpu(t, stamp=self._it)
        for r in inst.parked:
            t = self._fresh_track(old, r, HOST_STATE)
            self.host[r.rid] = t
            self.host_used += r.kv_tokens
            self.index.add_host(t)
        for r in inst.waiting:
            if r.kv_tokens > 0 and r.rid in old and old[r.rid].state == PREFILL_STATE:  # a partial prefill
                t = old[r.rid]
                t.claim, t.lender, t.borrowers, t.loaned = 0, None, [], 0
                if self.cfg.admission.reserve and not self.ledger.try_own(t, self._claim_target(r)):
                    self._claim_in_debt(t)
                self.tracks[r.rid] = t
                self.prefilling[r.rid] = t
        self.rejected &= {r.rid for r in inst.waiting}
        self.waitq.rebuild(inst.waiting, skip=set(self.prefilling) | self.rejected)

    def _fresh_track(self, old: dict[str, Track], r, state) -> Track:
        """``r``'s track (kept from before a rebuild, else new) with no claim or loans, in ``state``."""
        t = old.get(r.rid) or Track(req=r, seq=self._next_seq())
        t.req, t.state, t.claim, t.lender, t.borrowers, t.loaned = r, state, 0, None, [], 0
        return t

    def _claim_in_debt(self, t: Track) -> None:
        self.ledger._add_owner(t, t.req.kv_tokens + 1)
        self._debt = True

    def check_invariants(self, inst: InstanceView, plan: IterationPlan) -> None:
        """O(n) consistency checks (tests / ``check=1``)."""
        if self.ledger is not None and self.cfg.admission.reserve:
            self.ledger.check(debt_ok=self._debt)
            decoding = {id(r) for r in plan.decode}
            for t in self.tracks.values():
                if t.state == GPU_STATE and id(t.req) in decoding and (t.claim or t.lender is not None):
                    limit = t.claim if t.lender is not None else t.limit
                    assert t.req.kv_tokens + 1 <= limit, (t.req.rid, t.req.kv_tokens, t.claim, t.loaned)
        assert self.host_used <= max(0, inst.host_kv_capacity) or not self.host, (self.host_used,)
        parked = {r.rid for r in plan.park}
        decoding = {r.rid for r in plan.decode}
        assert not parked & decoding and not {r.rid for r in plan.preempt} & decoding
