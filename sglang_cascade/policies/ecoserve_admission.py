"""EcoServe parts of the ``cascade`` instance scheduler: the prefill queue, admission with KV reserved for
the predicted length, KV pipelining (loans, pool-level profile), and the reservation events (a request
reached its limit: recall loans, extend the claim, or evict by the fixed rule of admission.py).

A mixin of :class:`~.instance.CascadeScheduler`; every phase takes the call's :class:`StepContext`.
"""

from __future__ import annotations

from ..core.decisions import PrefillChunk
from ..core.views import Phase, RequestView
from .admission import GPU_STATE, PREFILL_STATE, Track
from .instance_step import StepContext
from .sglang_order import chunk_limit


class EcoServeAdmission:
    # --------------------------------------------------------------------------- prefill queue
    def _continue_prefills(self, step: StepContext) -> None:
        """In-progress chunked prefills take the prefill budget first; with shortest-prefill-first ordering
        a chunk leaves room for the shorter new arrivals, as SGLang caps its chunked request
        (sglang_order.chunk_limit)."""
        plan = step.plan
        for t in list(self.prefilling.values()):
            if step.prefill_budget <= 0:
                break
            if t.prefill_done:
                continue
            n = min(t.req.tokens_to_prefill, step.prefill_budget)
            if n <= 0:
                continue
            if self.waitq.shortest_first and self.waitq.new_heap:
                cap = chunk_limit(t.req, self.waitq.new_in_order(), step.prefill_budget, 1)
                n = min(n, cap) if cap else n
            plan.prefill.append(PrefillChunk(t.req, n))
            step.prefill_budget -= n
            step.prefill_tokens += n
            if n == t.req.tokens_to_prefill:
                t.prefill_done = True

    def _admit_waiting(self, step: StepContext, now: float) -> None:
        """Admit waiting requests (KV-holding first) while their KV fits, within the prefill budget. The
        queue head that cannot go now stops admission (nothing behind it goes)."""
        inst, waitq, pool = step.inst, self.waitq, self.cfg.pool
        reserve = self.cfg.admission.reserve
        hold_for_parked = self.cfg.admission.holdfirst and not pool.overadmit  # parked requests go first
        in_flight_cap = inst.max_running * (pool.pool_factor if step.host_capacity else 1)
        headroom = int(self.cfg.admission.greedy_headroom * inst.kv_capacity)
        decode_estimate = self.index.n_gpu
        while step.prefill_budget > 0:
            r = waitq.peek()
            if (
                r is None
                or r.rid in step.moved
                or (hold_for_parked and self.host)
                or len(self.tracks) + len(self.host) >= in_flight_cap
            ):
                break
            need = r.tokens_to_prefill
            if r.length + 1 > inst.kv_capacity:
                waitq.pop()
                self.rejected.add(r.rid)
                self.stats.too_long += 1
                r.extra["cascade_rejected"] = "longer than GPU KV capacity"
                continue
            t = Track(req=r, seq=0)
            if reserve:
                if not self._reserve_admission(t, step, need):
                    break
            else:
                self._claim_target(r)  # (the prediction, for stats and the decode groups)
                chunk = min(need, step.prefill_budget)
                if step.gpu_kv + step.prefill_tokens + chunk + decode_estimate + headroom > inst.kv_capacity:
                    break
            self._start_prefill(t, step, now, need)

    def _reserve_admission(self, t: Track, step: StepContext, need: int) -> bool:
        """Reserve KV for ``t``: own claim, a loan, room made by over-admission, or the pooled profile."""
        r, inst, pool = t.req, step.inst, self.cfg.pool
        claim = min(inst.kv_capacity, max(r.length + 1, self._claim_target(r)))
        t.pred_bucket = self._pred_bucket(r)
        steps = -(-need // max(1, inst.max_prefill_tokens)) + max(1, claim - r.length)
        ok = self.ledger.admit(t, claim, steps)
        if not ok and step.host_capacity and pool.overadmit:
            if step.pool_limit is None:
                step.pool_limit = int(pool.pool_factor * max(1, len(self.tracks)))
            host_limit = int((1.0 - pool.swap_reserve) * step.host_capacity)
            ok = (
                len(self.tracks) + len(self.host) < step.pool_limit
                and self._park_for(claim, step, host_limit=host_limit)
                and self.ledger.admit(t, claim, steps)
            )
        if not ok and self.cfg.admission.pooled and self._profile_fits(r, claim, step):
            ok = True  # pooled: unreserved, safe while predictions hold (shed first otherwise)
            t.claim = 0
            self.stats.admitted_pooled += 1
        return ok

    def _start_prefill(self, t: Track, step: StepContext, now: float, need: int) -> None:
        """``t`` (head of the queue, KV granted, ``need`` tokens to prefill) leaves the queue and gets its
        first prefill chunk."""
        r = t.req
        self._rearm()
        self.waitq.pop()
        t.seq = self._next_seq()
        t.state = PREFILL_STATE
        self.tracks[r.rid] = t
        self.prefilling[r.rid] = t
        r.admitted_at = now if r.admitted_at is None else r.admitted_at
        self.stats.admitted += 1
        if t.lender is not None:
            self.stats.admitted_on_loan += 1
        if self.cfg.admission.reserve:
            self._set_reserve(step.plan, t)
        n = min(need, step.prefill_budget)
        if n > 0:
            step.plan.prefill.append(PrefillChunk(r, n))
            step.prefill_budget -= n
            step.prefill_tokens += n
        if n == need:
            t.prefill_done = True

    def _profile_fits(self, r: RequestView, claim: int, step: StepContext) -> bool:
        """Pool-level KV pipelining: does ``r`` fit at every future step, given the predicted finishes of
        everything admitted? Usage of request i at step s is ``kv_i + s`` until its predicted remaining
        steps (stretched by ``loan_margin``) run out, then 0. O(n log n), only when the pool is full."""
        import numpy as np

        margin = self.cfg.admission.loan_margin
        if step.profile is None:
            step.profile = self._kv_profile(margin)
        kv, remaining = step.profile
        prompt_kv = r.length
        steps_new = int(max(1, claim - r.length) * margin) + 2
        peak = 0
        if kv:
            order = np.argsort(np.asarray(remaining), kind="stable")
            rem_sorted = np.asarray(remaining)[order]
            kv_sorted = np.asarray(kv, dtype=np.int64)[order]
            kv_suffix = np.cumsum(kv_sorted[::-1])[::-1]  # KV of the requests still running at each end
            n_suffix = np.arange(len(rem_sorted), 0, -1)
            start = np.concatenate(([0], rem_sorted[:-1]))
            alive = start < steps_new
            at = np.minimum(rem_sorted, steps_new) - 1  # the last step of each interval the new one lives
            usage = kv_suffix + n_suffix * at + prompt_kv + at
            peak = int(usage[alive].max()) if alive.any() else 0
        peak = max(peak, prompt_kv + steps_new - 1)
        if peak > int((1.0 - self.cfg.admission.greedy_headroom) * step.inst.kv_capacity):
            return False
        kv.append(prompt_kv)
        remaining.append(steps_new)
        return True

    def _kv_profile(self, margin: float) -> tuple[list[int], list[int]]:
        """(KV now, predicted remaining steps) of every tracked request."""
        kv, remaining = [], []
        for t in self.tracks.values():
            q = t.req
            predicted = q.predicted_output_len or (q.output_len + 1)
            left = max(1, predicted - q.output_len)
            kv.append(q.length if t.state == PREFILL_STATE else q.kv_tokens)
            remaining.append(int(left * margin) + 1 + (1 if t.state == PREFILL_STATE else 0))
        return kv, remaining

    # --------------------------------------------------------------------------- reservation events
    def _handle_event(self, t: Track, step: StepContext) -> None:
        """``t``'s event came due: re-bucket it (KV crossed its bucket) and cover its reservation limit."""
        if t.state != GPU_STATE or t.req.rid not in self.tracks:
            return
        r = t.req
        if r.instance not in (-1, self._iid) or r.phase != Phase.RUNNING:  # left without on_finish
            self._drop(t)
            return
        kv = r.kv_tokens
        push = not self._rebucket(t, kv)
        if self.ledger is not None and self.cfg.admission.reserve and t.claim:
            while t.state == GPU_STATE and kv + 1 > t.limit:
                push = True
                if not self._cover_limit(t, step):
                    return
        if push and t.state == GPU_STATE and t.kbucket >= 0:
            self.index.push_event(t)

    def _rebucket(self, t: Track, kv: int) -> bool:
        """Move ``t`` to its new KV bucket if it crossed the upper edge (its next event is pushed then)."""
        b = self.index.buckets.get(t.kbucket)
        if b is None or kv < b.upper:
            return False
        if t.req.rid in b.gpu:
            self.index.move(t, kv)
        else:
            self.index.remove(t)
            self.index.add_gpu(t)
        return True

    def _cover_limit(self, t: Track, step: StepContext) -> bool:
        """One step toward room for ``t``'s next token: recall its newest loan, else grow its claim.
        False: ``t`` left the GPU (evicted)."""
        if t.borrowers:
            borrower = t.borrowers[-1]
            if not self.ledger.rehome(borrower):
                self.stats.borrower_evictions += 1
                self._evict_borrower(borrower, step)
            else:
                self._rearm()
                self.stats.loans_recalled += 1
                if borrower.state == GPU_STATE and borrower.kbucket >= 0:
                    self.index.push_event(borrower)
            return True
        return self._grow_claim(t, step)

    def _grow_claim(self, t: Track, step: StepContext) -> bool:
        """Overrun of its own claim: extend it (pool, lender, or debt while the GPU has room); else the
        fixed rule: a borrower leaves, an owner evicts the newest other owner (or itself when alone)."""
        r, adm, ledger = t.req, self.cfg.admission, self.ledger
        target = (
            self._claim_target(r)
            if (r.predicted_output_len or 0) > r.output_len
            else r.prompt_len + self._extend_prediction(r)
        )
        want = max(adm.min_extension, target - t.claim)
        was_borrower = t.lender is not None
        granted = ledger.extend(t, want)
        self._rearm()
        if (
            granted <= 0
            and ledger.free < 0
            and not was_borrower
            and step.gpu_kv + self.index.n_gpu + want <= int((1.0 - adm.greedy_headroom) * step.kv_capacity)
        ):
            # in debt (the router placed migrated requests beyond our reservations): behave greedily
            # while the GPU physically has room; the debt blocks admissions until finishes repay it
            t.claim += want
            ledger.reserved += want
            granted = want
        if granted > 0:
            self.stats.extensions += 1
            self._set_reserve(step.plan, t)
            return True
        if was_borrower:  # a borrower that outlives its loan leaves; its lender never waits
            self.stats.borrower_evictions += 1
            self._evict(t, step)
            return False
        victim = self._newest_owner(exclude=t)
        if victim is None:
            self._evict(t, step)  # alone and out of KV: cannot grow here
            return False
        self.stats.overrun_evictions += 1
        self._evict(victim, step)
        return True

    def _evict_borrower(self, borrower: Track, step: StepContext) -> None:
        # rehome() already unborrowed it and left its claim set; it is no longer counted anywhere
        borrower.claim = 0
        if borrower.state == PREFILL_STATE:
            self._preempt(borrower, step)
        else:
            self._evict(borrower, step)

    def _newest_owner(self, exclude: Track | None) -> Track | None:
        for t in reversed(self.tracks.values()):
            if t is exclude or t.lender is not None or t.state != GPU_STATE:
                continue
            return t
        return None

    def _rearm(self) -> None:
        """Lenders whose loans grew have a lower limit now: re-arm their events."""
        if self.ledger is not None and self.ledger.touched:
            for o in self.ledger.touched:
                if o.state == GPU_STATE and o.kbucket >= 0:
                    self.index.push_event(o)
            self.ledger.touched.clear()
