"""AlignedServe parts of the ``cascade`` instance scheduler: the KV-length-aligned decode batch (head
bucket + cheap merges, aligned.py), the CPU-offloaded pool around it (park instead of preempt, resume the
head bucket's parked members, prefetch the next head's), and the physical-KV guard.

A mixin of :class:`~.instance.CascadeScheduler`; every phase takes the call's :class:`StepContext`.
"""

from __future__ import annotations

from ..core.views import Phase
from .admission import GPU_STATE, HOST_STATE, INF, PREFILL_STATE, Track
from .aligned import KBucket
from .instance_step import StepContext


class AlignedServeDecode:
    # --------------------------------------------------------------------------- decode batch
    def _decode_batch(self, step: StepContext) -> None:
        """The aligned batch: resume the head bucket's parked members, decode the head (+ merges) up to
        the batch cap, prefetch the next head's parked members. ``aligned=0``: every GPU request."""
        plan, index = step.plan, self.index
        if not self.cfg.batching.aligned:
            for b in index.buckets.values():
                if b.gpu:
                    plan.decode.extend(b.reqs.values())
                    index.mark_served(b, step.iteration)
                    step.served.append(b)
            return
        head = index.head() if index.n_host else None  # (no parked request: nothing to resume)
        if head is not None and head.host:
            self._resume_bucket(head, step, force=True)
        prefill_work = sum(c.tokens * (c.req.kv_tokens + c.tokens / 2.0) for c in plan.prefill) if plan.prefill else 0.0
        index.iteration = step.iteration
        cap = self.cfg.batching.max_batch or step.inst.max_running
        chosen = index.select(self.cm, step.prefill_tokens, prefill_work, cap)
        for b in chosen:
            if b.gpu:
                self._serve_bucket(b, cap, step)
        if self.host and self.cfg.pool.prefetch:
            upcoming = index.next_head({b.idx for b in chosen})
            if upcoming is not None and upcoming.host:
                self._resume_bucket(upcoming, step, force=False)

    def _serve_bucket(self, b: KBucket, cap: int, step: StepContext) -> None:
        """Decode ``b``'s GPU members, or its oldest ones when the batch cap cuts it."""
        decode = step.plan.decode
        if len(b.gpu) > cap - len(decode):
            members = list(b.gpu.values())[: max(0, cap - len(decode))]
            if not members:
                return
            decode.extend(t.req for t in members)
            self.index.serve_partial(b, members, step.iteration)
            step.partial.extend(members)
            step.partial_groups.add(b.idx)
        else:
            decode.extend(b.reqs.values())
            self.index.mark_served(b, step.iteration)
        step.served.append(b)

    def _mark_held_groups(self, step: StepContext) -> list[int]:
        """What does not decode, by group (= bucket), for drivers (after the guard: evicted requests left
        their buckets). Returns the non-empty buckets."""
        plan, index = step.plan, self.index
        nonempty = [i for i, b in index.buckets.items() if b.gpu]  # (bucket dict keys are their indices)
        if len(plan.decode) >= index.n_gpu:
            plan.held_groups = set()
        else:
            full = {b.idx for b in step.served} - step.partial_groups
            plan.held_groups = {i for i in nonempty if i not in full}
            if step.partial:
                plan.decode_extra = [t.req for t in step.partial if t.kbucket >= 0]
        return nonempty

    def _set_stable_steps(self, step: StepContext, nonempty: list[int]) -> None:
        """A plan with no moves, no prefill and nothing waiting stays valid until the first event of a
        served bucket: drivers may reuse it that many iterations (``stable_steps``)."""
        plan = step.plan
        if plan.prefill or self.waitq.rids or plan.park or plan.resume or plan.preempt or self.host:
            return
        if self.cfg.batching.aligned and (self.index.n_host or len(step.served) != len(nonempty)):
            return
        steps = INF
        for b in step.served:
            if b.heap:
                steps = min(steps, b.heap[0][0] - b.cnt + 1)
        plan.stable_steps = int(max(1, min(steps, 1 << 16))) if steps < INF else 1

    def _fit_physical_kv(self, step: StepContext) -> None:
        """Physical KV guard (greedy mode retracts like SGLang; with reservations this never fires)."""
        plan, inst = step.plan, step.inst
        kv = inst.kv_used
        if plan.park or plan.preempt or plan.resume:
            kv += (
                sum(r.kv_tokens for r in plan.resume)
                - sum(r.kv_tokens for r in plan.park)
                - sum(r.kv_tokens for r in plan.preempt if r.phase != Phase.PARKED)
            )
        total = kv + plan.num_prefill_tokens + len(plan.decode)
        if total > inst.kv_capacity:
            self._shed(step, total - inst.kv_capacity)

    def _shed(self, step: StepContext, excess: int) -> int:
        """Retract newest requests (not ones already moved) until the iteration fits physically."""
        plan = step.plan
        decoding = {r.rid for r in plan.decode}
        candidates = list(reversed(self.tracks.values()))
        if self.cfg.admission.pooled:  # pooled (unreserved) requests pay for mispredictions first
            candidates.sort(key=lambda x: 0 if (x.claim == 0 and x.lender is None) else 1)
        for t in candidates:
            if excess <= 0:
                break
            r = t.req
            if r.rid in step.moved:
                continue
            if t.state == PREFILL_STATE:  # postpone its chunk; its partial KV stays
                chunk = next((c for c in plan.prefill if c.req is r), None)
                if chunk is not None:
                    plan.prefill.remove(chunk)
                    excess -= chunk.tokens
                    t.prefill_done = False
                if r.kv_tokens == 0 and chunk is not None:
                    self._drop(t)
                    self.waitq.push_retracted(r)
                continue
            if r.rid in decoding:
                plan.decode = [x for x in plan.decode if x is not r]
                excess -= 1
            excess -= r.kv_tokens
            self._evict(t, step)
        return excess

    # --------------------------------------------------------------------------- pool moves
    def _can_park(self, t: Track, step: StepContext) -> bool:
        # resumes of this plan free host memory only after its parks are applied (park -> resume)
        return (
            self.cfg.pool.offload
            and step.host_capacity > 0
            and t.state == GPU_STATE
            and self.host_used + step.host_freed + t.req.kv_tokens <= step.host_capacity
        )

    def _park(self, t: Track, step: StepContext) -> None:
        self.tracks.pop(t.req.rid, None)
        self._leave_gpu(t)
        self.index.remove(t)
        t.state = HOST_STATE
        self.index.add_host(t)
        self.host[t.req.rid] = t
        self.host_used += t.req.kv_tokens
        step.moved.add(t.req.rid)
        step.move_budget -= t.req.kv_tokens
        step.gpu_kv -= t.req.kv_tokens
        step.plan.park.append(t.req)
        self.stats.parked += 1

    def _preempt(self, t: Track, step: StepContext) -> None:
        step.gpu_kv -= t.req.kv_tokens
        self._drop(t)
        step.plan.preempt.append(t.req)
        self.waitq.push_retracted(t.req)
        step.moved.add(t.req.rid)
        self.stats.preempted += 1

    def _evict(self, t: Track, step: StepContext) -> None:
        """Free ``t``'s GPU KV: park if the host pool has room, else preempt (recompute)."""
        if self._can_park(t, step):
            self._park(t, step)
        else:
            self._preempt(t, step)

    def _park_for(
        self, claim: int, step: StepContext, protect: set[int] | None = None, host_limit: int | None = None
    ) -> bool:
        """Park cold GPU owners (bucket served most recently first) until ``claim`` fits the pool."""
        head = self.index.head()
        if host_limit is None:
            host_limit = step.host_capacity
        protect = set(protect or ())
        if head is not None:
            protect.add(head.idx)
        while self.ledger.free < claim:
            victim = self._coldest_parkable(step, protect, host_limit)
            if victim is None:
                return False
            self._park(victim, step)
        return True

    def _coldest_parkable(self, step: StepContext, protect: set[int], host_limit: int) -> Track | None:
        """The newest parkable owner of the most recently served bucket outside ``protect``."""
        victim = None
        best = None
        for b in self.index.buckets.values():
            if b.idx in protect or not b.gpu:
                continue
            key = b.gpu_oldest  # most recently served = largest
            if best is None or key > best:
                for t in reversed(b.gpu.values()):
                    if (
                        t.lender is None
                        and t.req.rid not in step.moved
                        and self._can_park(t, step)
                        and t.req.kv_tokens <= step.move_budget
                        and self.host_used + step.host_freed + t.req.kv_tokens <= host_limit
                    ):
                        victim, best = t, key
                        break
        return victim

    def _resume_one(self, t: Track, step: StepContext, force: bool, protect: set[int]) -> bool:
        r = t.req
        if r.rid in step.moved or r.kv_tokens > step.move_budget and not force:
            return False
        if not self._room_to_resume(t, step, force, protect):
            return False
        step.gpu_kv += r.kv_tokens
        del self.host[r.rid]
        self.index.remove(t)
        self.host_used -= r.kv_tokens
        step.host_freed += r.kv_tokens
        t.state = GPU_STATE
        self.tracks[r.rid] = t
        self.index.add_gpu(t)
        step.moved.add(r.rid)
        step.move_budget -= r.kv_tokens
        step.plan.resume.append(r)
        if self.cfg.admission.reserve:
            self._set_reserve(step.plan, t)
        self.stats.resumed += 1
        return True

    def _room_to_resume(self, t: Track, step: StepContext, force: bool, protect: set[int]) -> bool:
        """Reserve GPU KV for a parked request (``force``: park colder ones to make room)."""
        r = t.req
        if not self.cfg.admission.reserve:  # greedy: while the GPU has room for it and a token per request
            headroom = int(self.cfg.admission.greedy_headroom * step.kv_capacity)
            return step.gpu_kv + r.kv_tokens + self.index.n_gpu + 1 + headroom <= step.kv_capacity
        ledger = self.ledger
        claim = min(ledger.capacity, max(r.kv_tokens + 1, self._claim_target(r)))
        if not ledger.try_own(t, claim):
            if force and self._park_for(claim, step, protect):
                ledger.try_own(t, claim)
            elif force and ledger.free >= r.kv_tokens + 1:
                ledger.try_own(t, r.kv_tokens + 1)
            if not t.claim:
                return False
        return True

    def _resume_bucket(self, b: KBucket, step: StepContext, force: bool) -> None:
        for t in sorted(b.host.values(), key=lambda x: x.stamp):
            if not self._resume_one(t, step, force, {b.idx}):
                break
            if not force:
                self.stats.prefetched += 1

    def _resume_fifo(self, step: StepContext) -> None:
        for t in sorted(self.host.values(), key=lambda x: x.stamp):
            if not self._resume_one(t, step, False, set()):
                break
