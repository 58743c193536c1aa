"""The ``cascade`` instance scheduler: admission with KV reservation and pipelining, aligned decode
batches, and a CPU-offloaded request pool, composed over InstanceView / RequestView / IterationPlan.

Per iteration (:meth:`CascadeScheduler.schedule`):

1. *Bookkeeping*: requests whose prefill completed join the aligned index; events that came due (a
   request crossed its KV-length bucket, or reached its reservation limit) are handled: re-bucket,
   recall loans, extend reservations, and when the pool is exhausted park/preempt by the fixed rule of
   admission.py. Only due events are touched, never every request (see aligned.py).
2. *Prefill queue*: in-progress chunked prefills continue, then waiting requests are admitted in
   KV-holding-first order while their predicted KV fits (own reservation or a loan), up to
   ``max_prefill_tokens`` prefill tokens.
3. *Decode queue*: the aligned batch (head bucket + cheap merges), after resuming its parked members;
   parked members of the next bucket are prefetched.

Options (factory keywords, also ``"cascade:pipelining=0,aligned=0,offload=0,predictor=oracle"``):
``reserve``, ``pipelining``, ``holdfirst``, ``aligned``, ``merge``, ``offload``, ``overadmit``,
``prefetch`` (0/1), ``pipelining`` (0, 1 = owner loans, 2 = owner loans + pool-level profile; needs
``reserve=1``), ``predictor`` (bucket | oracle | fixed, or an object implementing
predictor.LengthPredictor), ``quantile``, ``bucket_ratio`` (predictor), ``kv_base``, ``kv_ratio``
(aligned buckets), ``max_batch``, ``loan_margin``, ``pool_factor``, ``check`` (assert invariants every
iteration; tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.decisions import IterationPlan, PrefillChunk
from ..core.interfaces import InstanceScheduler
from ..core.views import InstanceView, Phase, RequestView
from .admission import GPU, HOST, INF, PREFILL, AdmissionConfig, KVLedger, Track, WaitQueues
from .aligned import AlignedConfig, AlignedIndex, KBucket
from .offload import OffloadConfig
from .predictor import LengthPredictor, PredictorConfig, make_predictor


@dataclass
class CascadeConfig:
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    aligned: AlignedConfig = field(default_factory=AlignedConfig)
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    predictor_name: str = "bucket"
    check: bool = False  # verify invariants every iteration (tests; O(n))


@dataclass
class SchedStats:
    iterations: int = 0
    admitted: int = 0
    admitted_on_loan: int = 0
    loans_recalled: int = 0
    borrower_evictions: int = 0  # recalled borrowers that had to leave the GPU (misprediction cost)
    extensions: int = 0
    overrun_evictions: int = 0  # requests parked/preempted to cover someone's overrun
    preempted: int = 0
    parked: int = 0
    resumed: int = 0
    prefetched: int = 0
    kv_exhausted_calls: int = 0
    admitted_pooled: int = 0  # pipelining=2: admitted on the predicted KV profile without a reservation
    resyncs: int = 0
    max_in_flight: int = 0
    max_running: int = 0
    too_long: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class CascadeScheduler(InstanceScheduler):
    name = "cascade"

    def __init__(self, cost_model, cfg: CascadeConfig | None = None, predictor: LengthPredictor | None = None,
                 warm_start: list[tuple[int, int]] | None = None):
        self.cm = cost_model
        self.cfg = cfg or CascadeConfig()
        self.predictor = predictor or make_predictor(self.cfg.predictor_name, self.cfg.predictor, warm_start)
        self.ledger: KVLedger | None = None
        self.index = AlignedIndex(self.cfg.aligned)
        self.waitq = WaitQueues(self.cfg.admission.holdfirst)
        self.tracks: dict[str, Track] = {}  # on GPU or prefilling, in admission order
        self.host: dict[str, Track] = {}  # parked, in park order
        self.prefilling: dict[str, Track] = {}
        self.host_used = 0
        self.stats = SchedStats()
        self._seq = 0
        self._it = 0
        self._plan: IterationPlan | None = None
        self._profile = None
        self._host_freed = 0
        self._served: list[KBucket] = []  # buckets decoded by the last plan
        self._inst_iter: int | None = None  # InstanceView.iteration at the last schedule()
        self._moved: set[str] = set()
        self._pred0: dict[str, int] = {}
        self.rejected: set[str] = set()
        self._iid = -1
        self._debt = False  # the driver placed KV beyond our reservations (migrations, resync)
        self._incoming: list[RequestView] = []  # running requests that arrived with KV (migrations)  # longer than GPU KV capacity: never admitted (reported)  # prediction made at first admission (accuracy stats)

    # ------------------------------------------------------------------------------------------ hooks
    def on_arrival(self, req: RequestView, inst: InstanceView, now: float) -> None:
        if req.phase == Phase.RUNNING and req.kv_tokens > 0:  # landed with its KV (live migration)
            self._incoming.append(req)
        else:
            self.waitq.push_new(req)

    def on_finish(self, req: RequestView, inst: InstanceView, now: float) -> None:
        t = self.tracks.pop(req.rid, None) or self.host.pop(req.rid, None)
        if t is not None:
            if t.state == HOST:
                self.host_used -= t.req.kv_tokens
            self._leave_gpu(t)
            self.index.remove(t)
            self.prefilling.pop(req.rid, None)
        self.waitq.discard(req.rid)
        pred0 = self._pred0.pop(req.rid, None)
        cur = req.predicted_output_len
        req.predicted_output_len = pred0 if pred0 is not None else cur
        self.predictor.observe(req, req.output_len)
        req.predicted_output_len = cur

    def on_kv_exhausted(self, inst: InstanceView, now: float, needed: int) -> list[RequestView]:
        """The engine could not allocate: retract newest-admitted requests until ``needed`` is covered
        (the driver frees their KV and puts them back in waiting)."""
        self.stats.kv_exhausted_calls += 1
        out: list[RequestView] = []
        freed = 0
        for t in list(reversed(self.tracks.values())):
            if freed >= needed:
                break
            if t.state != GPU:
                continue
            freed += t.req.kv_tokens
            self._drop(t)
            self.waitq.push_retracted(t.req)
            self.stats.preempted += 1
            out.append(t.req)
        return out

    def metrics(self) -> dict[str, Any]:
        m: dict[str, Any] = dict(self.stats.as_dict())
        m.update(self.predictor.stats.as_dict())
        if self.ledger is not None:
            m["loans_made"] = self.ledger.loans_made
            m["max_borrowers"] = self.ledger.max_borrowers
        return m

    # ------------------------------------------------------------------------------------ helpers
    def _claim_target(self, r: RequestView) -> int:
        """Total KV tokens to reserve: prompt + predicted output (extended when already exceeded)."""
        pred = r.predicted_output_len
        if pred is None:
            p = self.predictor.predict(r)
            r.predicted_output_len, r.prediction_confidence = p.output_len, p.confidence
            self._pred0.setdefault(r.rid, p.output_len)
            pred = p.output_len
        if pred <= r.output_len:
            pred = self._extend_prediction(r)
        return r.prompt_len + pred

    def _extend_prediction(self, r: RequestView) -> int:
        """Overrun rule: the prediction moves to the next bucket's upper edge (doubling for ratio 2)."""
        b = self.predictor.bucket_of(max(1, r.output_len)) + 1
        pred = max(self.predictor.bucket_upper(b), r.output_len + self.cfg.admission.min_extension)
        if r.max_new_tokens:
            pred = min(pred, max(r.max_new_tokens, r.output_len + 1))
        r.predicted_output_len = pred
        return pred

    def _pred_bucket(self, r: RequestView) -> int:
        return self.predictor.bucket_of(r.predicted_output_len or 1)

    def _leave_gpu(self, t: Track) -> None:
        """Release ``t``'s reservation; its borrowers become owners (their event limits change)."""
        if self.ledger is None or not t.claim and t.lender is None:
            t.claim = 0
            return
        for b in self.ledger.release(t):
            if b.state == GPU and b.kbucket >= 0:
                self.index.push_event(b)

    def _drop(self, t: Track) -> None:
        """Forget a GPU/prefill request (preempted or retracted)."""
        self.tracks.pop(t.req.rid, None)
        self.prefilling.pop(t.req.rid, None)
        self._leave_gpu(t)
        self.index.remove(t)

    def _preempt(self, t: Track, plan: IterationPlan) -> None:
        self._phys -= t.req.kv_tokens
        self._drop(t)
        plan.preempt.append(t.req)
        self.waitq.push_retracted(t.req)
        self._moved.add(t.req.rid)
        self.stats.preempted += 1

    def _can_park(self, t: Track) -> bool:
        oc = self.cfg.offload
        # resumes of this plan free host memory only after its parks are applied (park -> resume)
        return (oc.enabled and self._host_cap > 0 and t.state == GPU
                and self.host_used + self._host_freed + t.req.kv_tokens <= self._host_cap)

    def _park(self, t: Track, plan: IterationPlan) -> None:
        self.tracks.pop(t.req.rid, None)
        self._leave_gpu(t)
        self.index.remove(t)
        t.state = HOST
        self.index.add_host(t)
        self.host[t.req.rid] = t
        self.host_used += t.req.kv_tokens
        self._moved.add(t.req.rid)
        self._move_budget -= t.req.kv_tokens
        self._phys -= t.req.kv_tokens
        plan.park.append(t.req)
        self.stats.parked += 1

    def _evict(self, t: Track, plan: IterationPlan) -> None:
        """Free ``t``'s GPU KV: park if the host pool has room, else preempt (recompute)."""
        if self._can_park(t):
            self._park(t, plan)
        else:
            self._preempt(t, plan)

    def _newest_owner(self, exclude: Track | None, protect: set[int] | None = None) -> Track | None:
        for t in reversed(self.tracks.values()):
            if t is exclude or t.lender is not None or t.state != GPU:
                continue
            if protect and t.kbucket in protect:
                continue
            return t
        return None

    def _rearm(self) -> None:
        """Lenders whose loans grew have a lower limit now: re-arm their events."""
        if self.ledger is not None and self.ledger.touched:
            for o in self.ledger.touched:
                if o.state == GPU and o.kbucket >= 0:
                    self.index.push_event(o)
            self.ledger.touched.clear()

    def _set_reserve(self, plan: IterationPlan, t: Track) -> None:
        r = t.req
        if r.instance not in (-1, self._iid):
            return
        r.reserved_kv = max(0, t.claim - r.kv_tokens) if t.claim else 0
        plan.reserve[r.rid] = r.reserved_kv

    # ------------------------------------------------------------------------------------ events
    def _handle_event(self, t: Track, plan: IterationPlan) -> None:
        if t.state != GPU or t.req.rid not in self.tracks:
            return
        r = t.req
        if r.instance not in (-1, self._iid) or r.phase != Phase.RUNNING:  # left without on_finish
            self._drop(t)
            return
        kv = r.kv_tokens
        b = self.index.buckets.get(t.kbucket)
        push = True
        if b is not None and kv >= b.upper:
            if r.rid in b.gpu:
                self.index.move(t, kv)  # to its new bucket; pushes its next event
            else:
                self.index.remove(t)
                self.index.add_gpu(t)
            push = False
        ledger = self.ledger
        if ledger is not None and self.cfg.admission.reserve and t.claim:
            while t.state == GPU and kv + 1 > t.limit:
                push = True
                if t.borrowers:  # recall the newest loan first
                    bo = t.borrowers[-1]
                    if not ledger.rehome(bo):
                        self.stats.borrower_evictions += 1
                        self._evict_borrower(bo, plan)
                    else:
                        self._rearm()
                        self.stats.loans_recalled += 1
                        if bo.state == GPU and bo.kbucket >= 0:
                            self.index.push_event(bo)
                    continue
                # overrun of its own claim
                target = self._claim_target(r) if (r.predicted_output_len or 0) > r.output_len \
                    else r.prompt_len + self._extend_prediction(r)
                want = max(self.cfg.admission.min_extension, target - t.claim)
                was_borrower = t.lender is not None
                g = ledger.extend(t, want)
                self._rearm()
                if g > 0:
                    self.stats.extensions += 1
                    self._set_reserve(plan, t)
                    continue
                if ledger.free < 0 and not was_borrower and self._phys + self.index.n_gpu + want <= int(
                        (1.0 - self.cfg.admission.greedy_headroom) * self._cap):
                    # in debt (the router placed migrated requests beyond our reservations): behave greedily
                    # while the GPU physically has room; the debt blocks admissions until finishes repay it
                    t.claim += want
                    ledger.reserved += want
                    self.stats.extensions += 1
                    self._set_reserve(plan, t)
                    continue
                if was_borrower:  # a borrower that outlives its loan leaves; its lender never waits
                    self.stats.borrower_evictions += 1
                    self._evict(t, plan)
                    return
                victim = self._newest_owner(exclude=t)
                if victim is None:
                    self._evict(t, plan)  # alone and out of KV: cannot grow here
                    return
                self.stats.overrun_evictions += 1
                self._evict(victim, plan)
        if push and t.state == GPU and t.kbucket >= 0:
            self.index.push_event(t)

    def _evict_borrower(self, bo: Track, plan: IterationPlan) -> None:
        # rehome() already unborrowed it and left bo.claim set; it is no longer counted anywhere
        bo.claim = 0
        if bo.state == PREFILL:
            self._preempt(bo, plan)
        else:
            self._evict(bo, plan)

    # ------------------------------------------------------------------------------------ resync
    def _resync(self, inst: InstanceView) -> None:
        """Rebuild from the views (O(n)): used when the driver's lists disagree with our bookkeeping
        (first call, a driver-side retraction we were not told about, a restarted scheduler)."""
        self.stats.resyncs += 1
        self.ledger = KVLedger(inst.kv_capacity, self.cfg.admission)
        self.index = AlignedIndex(self.cfg.aligned)
        old = {**self.tracks, **self.host}
        for t in old.values():  # re-grouped below if still on GPU
            t.req.group = -1
        self.tracks, self.host, self.prefilling = {}, {}, {}
        self.host_used = 0
        for r in sorted(inst.running, key=lambda x: old[x.rid].seq if x.rid in old else INF):
            t = old.get(r.rid) or Track(req=r, seq=self._next_seq())
            t.req, t.state, t.claim, t.lender, t.borrowers, t.loaned = r, GPU, 0, None, [], 0
            self.tracks[r.rid] = t
            if self.cfg.admission.reserve:
                target = max(r.kv_tokens + 1, self._claim_target(r))
                t.pred_bucket = self._pred_bucket(r)
                if not self.ledger.try_own(t, target):
                    self.ledger.try_own(t, min(target, max(r.kv_tokens + 1, self.ledger.free)))
                    if t.claim == 0:  # over-committed by the driver: claim what it holds (reported)
                        self.ledger._add_owner(t, r.kv_tokens + 1)
                        self._debt = True
            self.index.add_gpu(t, stamp=self._it)
        for r in inst.parked:
            t = old.get(r.rid) or Track(req=r, seq=self._next_seq())
            t.req, t.state, t.claim, t.lender, t.borrowers, t.loaned = r, HOST, 0, None, [], 0
            self.host[r.rid] = t
            self.host_used += r.kv_tokens
            self.index.add_host(t)
        pre = [r for r in inst.waiting if r.kv_tokens > 0 and r.rid in old and old[r.rid].state == PREFILL]
        for r in pre:
            t = old[r.rid]
            t.claim, t.lender, t.borrowers, t.loaned = 0, None, [], 0
            if self.cfg.admission.reserve:
                target = self._claim_target(r)
                if not self.ledger.try_own(t, target):
                    self.ledger._add_owner(t, r.kv_tokens + 1)
                    self._debt = True
            self.tracks[r.rid] = t
            self.prefilling[r.rid] = t
        self.rejected &= {r.rid for r in inst.waiting}
        self.waitq.rebuild(inst.waiting, skip=set(self.prefilling) | self.rejected)

    def _profile_fits(self, r: RequestView, claim: int, inst: InstanceView) -> bool:
        """Pool-level KV pipelining: does ``r`` fit at every future step, given the predicted finishes of
        everything admitted? Usage of request i at step s is ``kv_i + s`` until its predicted remaining
        steps (stretched by ``loan_margin``) run out, then 0. O(n log n), only when the pool is full."""
        import numpy as np

        m = self.cfg.admission.loan_margin
        if self._profile is None:
            kv, rem = [], []
            for t in self.tracks.values():
                q = t.req
                pred = q.predicted_output_len or (q.output_len + 1)
                left = max(1, pred - q.output_len)
                kv.append(q.length if t.state == PREFILL else q.kv_tokens)
                rem.append(int(left * m) + 1 + (1 if t.state == PREFILL else 0))
            self._profile = (kv, rem)
        kv, rem = self._profile
        p_new = r.length
        r_new = int(max(1, claim - r.length) * m) + 2
        if kv:
            order = np.argsort(np.asarray(rem), kind="stable")
            rs = np.asarray(rem)[order]
            ks = np.asarray(kv, dtype=np.int64)[order]
            k_suf = np.cumsum(ks[::-1])[::-1]
            n_suf = np.arange(len(rs), 0, -1)
            start = np.concatenate(([0], rs[:-1]))
            sel = start < r_new
            s_eval = np.minimum(rs, r_new) - 1
            vals = k_suf + n_suf * s_eval + p_new + s_eval
            peak = int(vals[sel].max()) if sel.any() else 0
        else:
            peak = 0
        peak = max(peak, p_new + r_new - 1)
        limit = int((1.0 - self.cfg.admission.greedy_headroom) * inst.kv_capacity)
        if peak > limit:
            return False
        kv.append(p_new)
        rem.append(r_new)
        return True

    def _adopt(self, inst: InstanceView, plan: IterationPlan) -> None:
        """Requests that landed running with their KV (KV-transfer migration): reserve what is left."""
        incoming, self._incoming = self._incoming, []
        here = {id(r) for r in inst.running}  # O(n), only when migrations landed (they may leave again)
        for r in incoming:
            if id(r) not in here or r.rid in self.tracks:
                continue
            t = Track(req=r, seq=self._next_seq(), state=GPU)
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
            if (t.state == GPU and rid not in running) or (t.state == PREFILL and rid not in waiting):
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
        if (self.index.n_gpu != len(inst.running) or self.index.n_host != len(inst.parked)
                or len(self.waitq) + len(self.prefilling) + len(self.rejected) != len(inst.waiting)):
            self._resync(inst)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # ------------------------------------------------------------------------------------ schedule
    def schedule(self, inst: InstanceView, now: float) -> IterationPlan:
        self._it += 1
        it = self._it
        self._iid = inst.iid
        self.stats.iterations += 1
        plan = IterationPlan()
        self._moved = set()
        self._host_cap = inst.host_kv_capacity if self.cfg.offload.enabled else 0
        self._move_budget = self.cfg.offload.max_move_tokens
        self._phys = inst.kv_used  # GPU KV after this plan's moves (greedy-mode resume checks)
        self._profile = None  # pipelining=2: future KV profile, built lazily when the pool is full
        self._host_freed = 0  # host KV released by this plan's resumes (usable only by the next plan)
        self._cap = inst.kv_capacity
        adm = self.cfg.admission
        # fast-forwarded segments (stable_steps > 1): the driver advanced inst.iteration by the steps run
        if self._inst_iter is not None and inst.iteration - self._inst_iter > 1 and self._plan is not None \
                and not self._plan.prefill:
            extra = inst.iteration - self._inst_iter - 1
            for b in self._served:
                b.cnt += extra
        self._inst_iter = inst.iteration
        if self.ledger is None:
            self._resync(inst)
        elif self.ledger.capacity != inst.kv_capacity:
            self.ledger.capacity = inst.kv_capacity

        # 1. prefill completions -> decode queue (bookkeeping only: nothing is planned before the
        #    reconciliation below, which rebuilds from the driver's lists)
        tight: list[Track] = []
        if self.prefilling:
            for t in [t for t in self.prefilling.values() if t.prefill_done]:
                if t.req.phase == Phase.RUNNING:
                    del self.prefilling[t.req.rid]
                    t.state = GPU
                    self.index.add_gpu(t, stamp=it)
                    if t.claim and t.req.kv_tokens + 1 > t.limit:
                        tight.append(t)
                elif t.req.tokens_to_prefill > 0:
                    t.prefill_done = False
        if self._incoming:
            self._adopt(inst, plan)
        if (self.index.n_gpu != len(inst.running) or self.index.n_host != len(inst.parked)
                or len(self.waitq) + len(self.prefilling) + len(self.rejected) != len(inst.waiting)):
            self._reconcile(inst)
        for t in tight:
            if self.tracks.get(t.req.rid) is t and self.ledger is not None:
                self._handle_event(t, plan)

        # 2. due events (bucket crossings, reservation limits)
        for b in list(self.index.buckets.values()):
            if b.heap and b.heap[0][0] <= b.cnt:
                for t in self.index.due(b):
                    self._handle_event(t, plan)

        # 3. prefill queue
        budget = inst.max_prefill_tokens
        kv_phys = inst.kv_used
        if plan.preempt or plan.park:
            kv_phys -= sum(r.kv_tokens for r in plan.preempt) + sum(r.kv_tokens for r in plan.park)
        prefill_tokens = 0
        for t in list(self.prefilling.values()):
            if budget <= 0:
                break
            if t.prefill_done:
                continue
            n = min(t.req.tokens_to_prefill, budget)
            if n <= 0:
                continue
            plan.prefill.append(PrefillChunk(t.req, n))
            budget -= n
            prefill_tokens += n
            if n == t.req.tokens_to_prefill:
                t.prefill_done = True
        aligned_on = self.cfg.aligned.enabled
        if self.host:
            self._resume_fifo(plan)
        n_decode_est = self.index.n_gpu
        max_running = inst.max_running
        pool_limit = None
        while budget > 0:
            r = self.waitq.peek()
            if r is None:
                break
            if r.rid in self._moved:
                break
            if self.host and adm.holdfirst and not self.cfg.offload.overadmit:
                break  # parked requests hold KV: they go first
            if len(self.tracks) + len(self.host) >= max_running * (self.cfg.offload.pool_factor if self._host_cap else 1):
                break
            need = r.tokens_to_prefill
            if r.length + 1 > inst.kv_capacity:
                self.waitq.pop()
                self.rejected.add(r.rid)
                self.stats.too_long += 1
                r.extra["cascade_rejected"] = "longer than GPU KV capacity"
                continue
            t = Track(req=r, seq=0)
            if adm.reserve:
                claim = min(inst.kv_capacity, max(r.length + 1, self._claim_target(r)))
                t.pred_bucket = self._pred_bucket(r)
                steps = -(-need // max(1, inst.max_prefill_tokens)) + max(1, claim - r.length)
                ok = self.ledger.admit(t, claim, steps)
                if not ok and self._host_cap and self.cfg.offload.overadmit:
                    if pool_limit is None:
                        pool_limit = int(self.cfg.offload.pool_factor * max(1, len(self.tracks)))
                    ok = (len(self.tracks) + len(self.host) < pool_limit
                          and self._park_for(claim, plan, host_limit=int(
                              (1.0 - self.cfg.offload.swap_reserve) * self._host_cap))
                          and self.ledger.admit(t, claim, steps))
                if not ok and adm.profile and self._profile_fits(r, claim, inst):
                    ok = True  # pooled: unreserved, safe while predictions hold (shed first otherwise)
                    t.claim = 0
                    self.stats.admitted_pooled += 1
                if not ok:
                    break
            else:
                self._claim_target(r)
                chunk = min(need, budget)
                headroom = int(adm.greedy_headroom * inst.kv_capacity)
                if self._phys + prefill_tokens + chunk + n_decode_est + headroom > inst.kv_capacity:
                    break
            self._rearm()
            self.waitq.pop()
            t.seq = self._next_seq()
            t.state = PREFILL
            self.tracks[r.rid] = t
            self.prefilling[r.rid] = t
            r.admitted_at = now if r.admitted_at is None else r.admitted_at
            self.stats.admitted += 1
            if t.lender is not None:
                self.stats.admitted_on_loan += 1
            if adm.reserve:
                self._set_reserve(plan, t)
            n = min(need, budget)
            if n > 0:
                plan.prefill.append(PrefillChunk(r, n))
                budget -= n
                prefill_tokens += n
            if n == need:
                t.prefill_done = True

        # 4. decode queue: aligned batch (+ resume its parked members), prefetch the next one
        decode: list[RequestView] = []
        cap = self.cfg.aligned.max_batch or inst.max_running
        served: list[KBucket] = []
        partial: list[Track] = []  # members that decode of buckets served in part (batch cap)
        partial_idx: set[int] = set()
        if aligned_on:
            head = self.index.head() if self.index.n_host else None  # (no parked request: nothing to resume)
            if head is not None and head.host:
                self._resume_bucket(head, plan, force=True)
            pwork = sum(c.tokens * (c.req.kv_tokens + c.tokens / 2.0) for c in plan.prefill) if plan.prefill else 0.0
            self.index.iteration = it
            chosen = self.index.select(self.cm, prefill_tokens, pwork, cap)
            for b in chosen:
                if not b.gpu:
                    continue
                if len(b.gpu) > cap - len(decode):
                    members = list(b.gpu.values())[: max(0, cap - len(decode))]
                    if not members:
                        continue
                    decode.extend(t.req for t in members)
                    self.index.serve_partial(b, members, it)
                    partial.extend(members)
                    partial_idx.add(b.idx)
                else:
                    decode.extend(b.reqs.values())
                    self.index.mark_served(b, it)
                served.append(b)
            if self.host and self.cfg.offload.prefetch:
                nxt = self.index.next_head({b.idx for b in chosen})
                if nxt is not None and nxt.host:
                    self._resume_bucket(nxt, plan, force=False)
        else:
            for b in self.index.buckets.values():
                if b.gpu:
                    decode.extend(b.reqs.values())
                    self.index.mark_served(b, it)
                    served.append(b)
        plan.decode = decode

        # 5. physical KV guard (greedy mode retracts like SGLang; with reservations this never fires)
        if plan.park or plan.preempt or plan.resume:
            kv_phys = (inst.kv_used - sum(r.kv_tokens for r in plan.preempt if r.phase != Phase.PARKED)
                       - sum(r.kv_tokens for r in plan.park) + sum(r.kv_tokens for r in plan.resume))
        total = kv_phys + plan.num_prefill_tokens + len(plan.decode)
        if total > inst.kv_capacity:
            total = self._shed(plan, total - inst.kv_capacity, inst)
        # what does not decode, by group (= bucket), for drivers; after _shed (evicted requests left the buckets)
        index = self.index
        nonempty = [i for i, b in index.buckets.items() if b.gpu]  # (bucket dict keys are their indices)
        if len(plan.decode) >= index.n_gpu:
            plan.held_groups = set()
        else:
            full = {b.idx for b in served}
            if partial_idx:
                full -= partial_idx
            plan.held_groups = {i for i in nonempty if i not in full}
            if partial:
                plan.decode_extra = [t.req for t in partial if t.kbucket >= 0]

        n_run = index.n_gpu
        stats = self.stats
        if n_run > stats.max_running:
            stats.max_running = n_run
        in_flight = n_run + index.n_host + len(self.prefilling)
        if in_flight > stats.max_in_flight:
            stats.max_in_flight = in_flight
        self._served = served
        if not plan.prefill and not self.waitq.rids and not plan.park and not plan.resume \
                and not plan.preempt and not self.host and (
                    not aligned_on or (not index.n_host and len(served) == len(nonempty))):
            steps = INF
            for b in served:
                if b.heap:
                    steps = min(steps, b.heap[0][0] - b.cnt + 1)
            plan.stable_steps = int(max(1, min(steps, 1 << 16))) if steps < INF else 1
        if self.cfg.check:
            self.check_invariants(inst, plan)
        self._plan = plan
        return plan

    # ------------------------------------------------------------------------------------ pool moves
    def _park_for(self, claim: int, plan: IterationPlan, protect: set[int] | None = None,
                  host_limit: int | None = None) -> bool:
        """Park cold GPU owners (bucket served most recently first) until ``claim`` fits the pool."""
        head = self.index.head()
        if host_limit is None:
            host_limit = self._host_cap
        protect = set(protect or ())
        if head is not None:
            protect.add(head.idx)
        while self.ledger.free < claim:
            victim = None
            best = None
            for b in self.index.buckets.values():
                if b.idx in protect or not b.gpu:
                    continue
                key = b.gpu_oldest  # most recently served = largest
                if best is None or key > best:
                    for t in reversed(b.gpu.values()):
                        if t.lender is None and t.req.rid not in self._moved and self._can_park(t) \
                                and t.req.kv_tokens <= self._move_budget \
                                and self.host_used + self._host_freed + t.req.kv_tokens <= host_limit:
                            victim, best = t, key
                            break
            if victim is None:
                return False
            self._park(victim, plan)
        return True

    def _resume_one(self, t: Track, plan: IterationPlan, force: bool, protect: set[int]) -> bool:
        r = t.req
        if r.rid in self._moved or r.kv_tokens > self._move_budget and not force:
            return False
        ledger = self.ledger
        if self.cfg.admission.reserve:
            claim = min(ledger.capacity, max(r.kv_tokens + 1, self._claim_target(r)))
            if not ledger.try_own(t, claim):
                if force and self._park_for(claim, plan, protect):
                    ledger.try_own(t, claim)
                elif force and ledger.free >= r.kv_tokens + 1:
                    ledger.try_own(t, r.kv_tokens + 1)
                if not t.claim:
                    return False
        else:  # greedy mode: resume only while the GPU has room for it and one token per running request
            head = int(self.cfg.admission.greedy_headroom * self._cap)
            if self._phys + r.kv_tokens + self.index.n_gpu + 1 + head > self._cap:
                return False
        self._phys += r.kv_tokens
        del self.host[r.rid]
        self.index.remove(t)
        self.host_used -= r.kv_tokens
        self._host_freed += r.kv_tokens
        t.state = GPU
        self.tracks[r.rid] = t
        self.index.add_gpu(t)
        self._moved.add(r.rid)
        self._move_budget -= r.kv_tokens
        plan.resume.append(r)
        if self.cfg.admission.reserve:
            self._set_reserve(plan, t)
        self.stats.resumed += 1
        return True

    def _resume_bucket(self, b: KBucket, plan: IterationPlan, force: bool) -> None:
        for t in sorted(b.host.values(), key=lambda x: x.stamp):
            if not self._resume_one(t, plan, force, {b.idx}):
                break
            if not force:
                self.stats.prefetched += 1

    def _resume_fifo(self, plan: IterationPlan) -> None:
        for t in sorted(self.host.values(), key=lambda x: x.stamp):
            if not self._resume_one(t, plan, False, set()):
                break

    def _shed(self, plan: IterationPlan, excess: int, inst: InstanceView) -> int:
        """Retract newest requests (not ones already moved) until the iteration fits physically."""
        dec = {r.rid for r in plan.decode}
        cands = list(reversed(self.tracks.values()))
        if self.cfg.admission.profile:  # pooled (unreserved) requests pay for mispredictions first
            cands.sort(key=lambda x: 0 if (x.claim == 0 and x.lender is None) else 1)
        for t in cands:
            if excess <= 0:
                break
            r = t.req
            if r.rid in self._moved:
                continue
            if t.state == PREFILL:  # postpone its chunk; its partial KV stays
                chunk = next((c for c in plan.prefill if c.req is r), None)
                if chunk is not None:
                    plan.prefill.remove(chunk)
                    excess -= chunk.tokens
                    t.prefill_done = False
                if r.kv_tokens == 0 and chunk is not None:
                    self._drop(t)
                    self.waitq.push_retracted(r)
                continue
            if r.rid in dec:
                plan.decode = [x for x in plan.decode if x is not r]
                excess -= 1
            excess -= r.kv_tokens
            self._evict(t, plan)
        return excess

    # ------------------------------------------------------------------------------------ checks
    def check_invariants(self, inst: InstanceView, plan: IterationPlan) -> None:
        """O(n) consistency checks (tests / ``check=1``)."""
        if self.ledger is not None and self.cfg.admission.reserve:
            self.ledger.check(debt_ok=self._debt)
            dec = {id(r) for r in plan.decode}
            for t in self.tracks.values():
                if t.state == GPU and id(t.req) in dec and (t.claim or t.lender is not None):
                    lim = t.claim if t.lender is not None else t.limit
                    assert t.req.kv_tokens + 1 <= lim, (t.req.rid, t.req.kv_tokens, t.claim, t.loaned)
        assert self.host_used <= max(0, inst.host_kv_capacity) or not self.host, (self.host_used,)
        parked = {r.rid for r in plan.park}
        decode = {r.rid for r in plan.decode}
        assert not parked & decode and not {r.rid for r in plan.preempt} & decode


def make_cascade_scheduler(ctx, **options) -> CascadeScheduler:
    """Factory for the registry name ``cascade`` (options: see module docstring)."""
    o = dict(options)  # ctx.options carries deployment facts (e.g. kv_capacity), not scheduler options
    cfg = CascadeConfig()
    b = lambda k, d: bool(int(o.pop(k, d)))  # noqa: E731
    a = cfg.admission
    a.reserve = b("reserve", a.reserve)
    pipe = int(o.pop("pipelining", 2 if (a.pipelining and a.profile) else int(a.pipelining)))
    a.pipelining = bool(pipe) and a.reserve
    a.profile = pipe == 2 and a.reserve
    a.holdfirst = b("holdfirst", a.holdfirst)
    a.loan_margin = float(o.pop("loan_margin", a.loan_margin))
    al = cfg.aligned
    al.enabled = b("aligned", al.enabled)
    al.merge = b("merge", al.merge)
    al.base = int(o.pop("kv_base", al.base))
    al.ratio = float(o.pop("kv_ratio", al.ratio))
    al.max_batch = int(o.pop("max_batch", al.max_batch))
    of = cfg.offload
    of.enabled = b("offload", of.enabled)
    of.overadmit = b("overadmit", of.overadmit)
    of.prefetch = b("prefetch", of.prefetch)
    of.pool_factor = float(o.pop("pool_factor", of.pool_factor))
    p = cfg.predictor
    p.quantile = float(o.pop("quantile", p.quantile))
    p.bucket_ratio = float(o.pop("bucket_ratio", p.bucket_ratio))
    cfg.check = b("check", cfg.check)
    pred = o.pop("predictor", "bucket")
    predictor = None
    if isinstance(pred, str):
        cfg.predictor_name = pred
    else:
        predictor = pred
    warm = o.pop("warm_start", None)
    if warm is None and o.pop("warm", 0):
        warm = list(getattr(ctx, "length_sample", []) or [])
    if o:
        raise ValueError(f"unknown cascade scheduler options: {sorted(o)}")
    return CascadeScheduler(ctx.cost_model, cfg, predictor, warm)
