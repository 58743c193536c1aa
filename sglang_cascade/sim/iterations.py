"""Instance iterations: plan -> apply the plan's moves -> cost the iteration -> commit it at its end.

``_start`` asks the instance's scheduler for a plan and applies its preempt -> park -> resume moves
(``_apply_scheduler_plan``), costs the iteration (sim.timing) and schedules its end; ``_commit`` advances
tokens at that end, finishes requests and checks the migration bounds of the requests that moved.
"""

from __future__ import annotations

from ..core.decisions import IterationPlan
from ..core.views import Phase
from ..policies.plan_rules import settle_plan
from .config import IterationRecord, SimError
from .fast_forward import EV_ITER
from .instance import Segment, SimInstance, SimRequest
from .timing import stable_steps

WAITING, RUNNING, FINISHED = Phase.WAITING, Phase.RUNNING, Phase.FINISHED
MAX_PLAN_ATTEMPTS = 1000


class AppliedMoves:
    """What one plan application moved: KV transfer times, and the rids for IterationRecords."""

    __slots__ = ("park_time", "resume_time", "preempted", "parked", "resumed")

    def __init__(self):
        self.park_time = 0.0
        self.resume_time = 0.0
        self.preempted = self.parked = self.resumed = None

    def transfer_time(self) -> float:
        """Parks and resumes use both PCIe directions at once; one direction alone takes its sum."""
        p, r = self.park_time, self.resume_time
        if p and r:
            return max(p, r)
        return p + r if (p or r) else 0.0


class InstanceIterations:
    """Simulator mixin. Uses: ``cfg``, ``timing``, ``router``, ``finished``, ``has_bound``, ``co_run``,
    ``time_scale`` and the methods
    ``_park``, ``_resume`` (sim.parking), ``_cancel_migration``, ``_arm_bound``, ``_bound_reached``,
    ``_apply_pending`` (sim.migration), ``_touch``, ``_push`` (sim.event_loop)."""

    def _start(self, inst: SimInstance, now: float) -> None:
        v = inst.view
        inst.seg = None
        lagged = inst.lagged
        if lagged:  # the last iteration's tokens: seen after the next forward, or now if none runs
            inst.lagged = []
        resend = self._apply_pending(inst, now) if inst.pending else None
        if not (v.waiting or v.running or v.parked):
            inst.last_commit = now
            if resend:
                self._send_recomputes(resend, now)
            return
        plan, moves = self._apply_scheduler_plan(inst, now)
        if plan.prefill and plan.decode and not self.cfg.mixed_chunk:
            plan.decode = []  # the engine runs a prefill batch alone (SimConfig.mixed_chunk); decode waits
        if plan.reserve:
            self._record_reservations(inst, plan)
        seg = self._cost_iteration(inst, plan, moves.transfer_time(), now)
        if seg is None:  # nothing to run: idle until something wakes it (the run-end check reports leftovers)
            inst.last_commit = now
            if resend:
                self._send_recomputes(resend, now)
            return
        if self.time_scale:
            seg.stretch(self.time_scale[1 if seg.plan.prefill else 0])
        if self.co_run and (seg.batch or seg.plan.prefill):  # not a pure KV move
            seg.stretch(1.0 + self._co_run_load(inst, seg, now) / (self.n - 1))
        if lagged:
            _stamp_late(lagged, seg.start + seg.step_duration(0))
        if resend:  # their tokens are seen when this forward ends (the same instant as the stamps above)
            self._send_recomputes(resend, seg.start + seg.step_duration(0))
        self._begin(inst, seg, moves)

    def _co_run_load(self, inst: SimInstance, seg: Segment, now: float) -> float:
        """The summed slow-down (SimConfig.co_run_slowdown) the other busy instances cause ``seg``: a prefill
        iteration's per co-runner; a decode iteration's per co-runner by what that one runs (a decode slows
        next to a prefilling co-runner more: calibrate_cpu_engine.py --co-runner-kind prefill)."""
        d, p, dp = self.co_run
        total = 0.0
        for o in self.insts:
            if o is not inst and o.seg is not None and o.seg.end > now:
                total += p if seg.plan.prefill else (dp if o.seg.plan.prefill else d)
        return total

    def _apply_scheduler_plan(self, inst: SimInstance, now: float) -> tuple[IterationPlan, AppliedMoves]:
        """Ask the scheduler for a plan, settle it by the shared plan rules and apply its moves, preempt -> park
        -> resume; plan again while a
        plan only moved requests, and preempt ``on_kv_exhausted``'s victims while the plan's new KV does
        not fit. Returns the plan to run and what was moved."""
        v = inst.view
        sched = inst.sched
        cap = v.kv_capacity
        moves = AppliedMoves()
        rec = inst.records is not None
        for _attempt in range(MAX_PLAN_ATTEMPTS):
            plan = sched.schedule(v, now)
            if settle_plan(plan, v).changed:  # the shared rules every driver applies (policies/plan_rules.py)
                inst.settled_plans += 1
            if plan.preempt:
                for r in plan.preempt:
                    self._preempt(inst, r)
                if rec:
                    moves.preempted = (moves.preempted or []) + [r.rid for r in plan.preempt]
            if plan.park:
                for r in plan.park:
                    moves.park_time += self._park(inst, r)
                if rec:
                    moves.parked = (moves.parked or []) + [r.rid for r in plan.park]
            if plan.resume:
                for r in plan.resume:
                    moves.resume_time += self._resume(inst, r)
                if rec:
                    moves.resumed = (moves.resumed or []) + [r.rid for r in plan.resume]
            need = len(plan.decode)
            for c in plan.prefill:
                need += c.tokens
            if self.prefix is not None and plan.prefill and v.kv_used + need <= cap:
                need -= self._prefix_hits(inst, plan, cap - v.kv_used - need)
            if v.kv_used + need <= cap:
                if need or moves.park_time or moves.resume_time or not (plan.preempt or plan.park or plan.resume):
                    return plan, moves
                continue  # the plan only moved requests (e.g. a park turned into a preemption): plan again
            victims = sched.on_kv_exhausted(v, now, need)
            if not victims and inst.incoming:  # moves in flight here hold the room its own requests grew into
                if self._refuse_incoming(inst, v.kv_used + need - cap):
                    continue  # those still pre-copying are refused: their requests keep decoding on their sources
                return IterationPlan(), moves  # the rest left their sources: wait for them to land (then SGLang
                # can retract among them, as it would after the live imports)
            if not victims and self._evict_waiting_kv(inst, v.kv_used + need - cap, plan):
                continue  # moved requests waiting to be admitted gave up their KV: they recompute when admitted
            if not victims:
                raise SimError(
                    f"scheduler {sched.name} planned {need} new KV tokens on instance {inst.iid} "
                    f"with {cap - v.kv_used} free and on_kv_exhausted retracted nothing"
                )
            for r in victims:
                self._preempt(inst, r)
            if rec:
                moves.preempted = (moves.preempted or []) + [r.rid for r in victims]
        raise SimError(f"scheduler {sched.name}: no feasible plan after {MAX_PLAN_ATTEMPTS} retractions")

    def _evict_waiting_kv(self, inst: SimInstance, tokens: int, plan: IterationPlan) -> bool:
        """Nothing runs to retract and the plan still needs ``tokens`` more KV: the KV that requests still waiting
        for admission hold (moved requests landed with their KV, newest first; not a request this plan prefills)
        is dropped until it fits, and they recompute it when admitted. The live analogue: a pinned import whose
        continuation SGLang cannot admit stays locked until the pin's time to live ends, then is evictable cache
        (plugin/kv_endpoint.py). Counted in the metrics' ``waiting_kv_evicted``. False: none held any."""
        v = inst.view
        planned = {id(c.req) for c in plan.prefill}
        freed = 0
        for r in reversed(v.waiting):
            if freed >= tokens:
                break
            if r.kv_tokens <= 0 or id(r) in planned:
                continue
            freed += r.kv_tokens
            v.kv_used -= r.kv_tokens
            inst.prefill_left += r.kv_tokens
            r.kv_tokens = 0
            self.waiting_kv_evicted += 1
        return freed > 0

    def _prefix_hits(self, inst: SimInstance, plan: IterationPlan, spare: int) -> int:
        """SimConfig.prefix_cache_block: a fresh request's first chunk first takes its cached prompt prefix (held
        KV from now on, within ``spare`` free tokens) and computes only what is left of the chunk. Returns the
        tokens the plan's chunks shrank by (sim/prefix_cache.py)."""
        cache = self.prefix[inst.iid]
        v = inst.view
        saved = 0
        for c in plan.prefill:
            r = c.req
            if r.kv_tokens or r.output_len or not r.block_hashes or "prefix_hit" in r.extra:
                continue  # not a fresh prompt (mid-prefill, retracted, moved) or nothing to match
            hit = min(cache.match(r.block_hashes, r.prompt_len), spare)
            r.extra["prefix_hit"] = hit
            if hit <= 0:
                continue
            spare -= hit
            r.kv_tokens = hit
            v.kv_used += hit
            inst.prefill_left -= hit
            cache.hit_tokens += hit
            left = r.length - hit
            if c.tokens > left:
                saved += c.tokens - left
                c.tokens = left
        return saved

    def _record_reservations(self, inst: SimInstance, plan: IterationPlan) -> None:
        """Policy-owned reservations: the driver records them on the requests."""
        v = inst.view
        index = {r.rid: r for lst in (v.waiting, v.running, v.parked) for r in lst}
        for rid, tokens in plan.reserve.items():
            r = index.get(rid)
            if r is None:
                raise SimError(f"scheduler {inst.sched.name} reserves KV for {rid}, not on instance {inst.iid}")
            r.reserved_kv = int(tokens)

    def _cost_iteration(self, inst: SimInstance, plan: IterationPlan, xfer: float, now: float) -> Segment | None:
        """The Segment the plan runs (None: nothing to run); a plan that only moves KV takes the move."""
        decode = plan.decode
        prefill = plan.prefill
        if not decode and not prefill:
            if xfer > 0:  # a pure KV-move iteration
                return Segment(now, plan, [], 1, xfer, 0.0, None, 0, xfer)
            return None
        kv_sum, kv_max = self._decode_kv(inst, decode)
        if prefill:
            self._check_prefill(inst, prefill, now)
            return self.timing.prefill_segment(now, plan, decode, kv_sum, kv_max, xfer)
        steps = 1
        if plan.stable_steps > 1 and self.cfg.fast_forward and not (plan.preempt or plan.park or plan.resume):
            steps = stable_steps(inst.view, plan, decode)
        exact = self.cfg.exact_steps or inst.records is not None
        return self.timing.decode_segment(now, plan, decode, kv_sum, kv_max, xfer, steps, exact)

    def _decode_kv(self, inst: SimInstance, decode: list) -> tuple[int, int]:
        """Sum and max of the decode batch's KV after this step (each request adds one token)."""
        iid = inst.iid
        kv_sum = len(decode)
        kv_max = 0
        for r in decode:
            if r.phase != RUNNING or r.instance != iid:
                raise SimError(f"scheduler {inst.sched.name} decodes {r.rid} which is not running on instance {iid}")
            k = r.kv_tokens
            kv_sum += k
            if k > kv_max:
                kv_max = k
        if decode:
            kv_max += 1
        return kv_sum, kv_max

    def _check_prefill(self, inst: SimInstance, prefill: list, now: float) -> None:
        iid = inst.iid
        for c in prefill:
            r = c.req
            n = c.tokens
            if r.phase != WAITING or r.instance != iid or n <= 0 or n > r.length - r.kv_tokens:
                raise SimError(f"scheduler {inst.sched.name}: invalid prefill chunk {r.rid} x{n} on {iid}")
            if r.admitted_at is None:
                r.admitted_at = now

    def _begin(self, inst: SimInstance, seg: Segment, moves: AppliedMoves) -> None:
        need = seg.batch * seg.steps + sum(c.tokens for c in seg.plan.prefill)
        v = inst.view
        if v.kv_used + need > v.kv_capacity:
            raise SimError(f"instance {inst.iid}: KV would exceed capacity ({v.kv_used}+{need}>{v.kv_capacity})")
        if v.kv_used + need > inst.max_kv_seen:
            inst.max_kv_seen = v.kv_used + need
        inst.seg = seg
        inst.version += 1
        if inst.records is not None:
            seg.xfer = (seg.xfer, moves.preempted, moves.parked, moves.resumed)  # type: ignore[assignment]
        self._push(seg.end, EV_ITER, inst, inst.version)

    def _preempt(self, inst: SimInstance, r: SimRequest) -> None:
        v = inst.view
        if r.instance != inst.iid or r.phase == FINISHED:
            raise SimError(f"{inst.sched.name}: preempt of {r.rid} not on instance {inst.iid}")
        self._cancel_migration(r)
        if r.phase == WAITING:
            v.kv_used -= r.kv_tokens
            inst.prefill_left += r.kv_tokens
            r.kv_tokens = 0
        else:
            inst.free_request(r)
            r.kv_tokens = 0
            r.phase = WAITING
            v.waiting.append(r)
            inst.prefill_left += r.length
        r.preemptions += 1
        self.preemptions += 1

    # ------------------------------------------------------------------ the end of an iteration
    def _commit(self, inst: SimInstance, t: float) -> None:
        """The segment in flight on inst ends at t: advance tokens, finish requests, check bounds."""
        seg = inst.seg
        v = inst.view
        self._touch(inst, t)
        K = seg.steps
        dur = t - seg.start
        inst.busy_time += dur
        b = seg.batch
        inst.kv_area += dur * v.kv_used + (seg.offset(K) * b * K / 2.0 if K > 1 else 0.0)
        if inst.records is not None:
            self._record(inst, seg)
        finished = []
        armed = self._commit_prefill(inst, seg.plan, t, finished)
        if b:
            for r in seg.decode:
                r.output_len += K
                r.kv_tokens += K
                r.last_decode = t
                if r.output_len >= r.target:
                    finished.append(r)
            v.kv_used += b * K
        v.iteration += K
        inst.last_commit = t
        # inst.seg stays set until _start replaces it, so nothing re-entrant starts a second iteration
        for r in finished:
            self._finish(inst, r, t)
        if self.has_bound:
            iid = inst.iid
            for group in (armed, seg.decode):
                for r in group:
                    if r.bound_next and r.phase == RUNNING and r.instance == iid and r.length >= r.bound_next:
                        self._bound_reached(inst, r, t)
        if self.cfg.check_invariants:
            self._check(inst)

    def _commit_prefill(self, inst: SimInstance, plan: IterationPlan, t: float, finished: list) -> list:
        """Add the prefilled chunks; a completed prefill emits its first token. Returns the requests that
        started running with a migration bound."""
        v = inst.view
        iid = inst.iid
        armed = []
        for c in plan.prefill:
            r = c.req
            if r.phase != WAITING or r.instance != iid:
                continue  # moved away meanwhile (cannot happen: moves wait for boundaries)
            r.kv_tokens += c.tokens
            v.kv_used += c.tokens
            inst.prefill_left -= c.tokens
            if r.kv_tokens < r.length and r.output_len == 0:  # a chunk of a fresh prompt: its blocks join the cache
                self._cache_chunk(inst, r)
            if r.kv_tokens >= r.length:  # prefill complete: emits a token
                v.waiting.remove(r)
                r.phase = RUNNING
                r.output_len += 1
                r.last_decode = t
                if r.first_token_time is None:
                    r.first_token_time = t
                    if inst.lagged is not None:
                        inst.lagged.append((r, 0))
                v.running.append(r)
                if r.output_len == 1:  # its prompt joins the cache
                    self._cache_prompt(inst, r)
                if r.predicted_output_len is not None:
                    inst.pred_active = True
                if r.output_len >= r.target:
                    finished.append(r)
                elif self.has_bound:
                    self._arm_bound(r, iid)
                    if r.bound_next:
                        armed.append(r)
        return armed

    def _cache_prompt(self, inst: SimInstance, r: SimRequest) -> None:
        """r's prompt blocks join inst's radix cache (SimConfig.prefix_cache_block), evicting down to its free KV."""
        if self.prefix is not None and r.block_hashes:
            v = inst.view
            self.prefix[inst.iid].insert(r.block_hashes, r.prompt_len, v.kv_capacity - v.kv_used, v.running)

    def _cache_chunk(self, inst: SimInstance, r: SimRequest) -> None:
        """A chunked prefill's computed blocks join inst's radix cache, as SGLang's ``cache_unfinished_req`` inserts
        each chunk: a prompt sharing the prefix that is admitted before r completes reuses them. They are r's own KV,
        so they need no free space and evict nothing (the insert at completion evicts as before)."""
        if self.prefix is not None and r.block_hashes:
            cache = self.prefix[inst.iid]
            done = r.kv_tokens // cache.block
            if done:
                cache.insert(r.block_hashes[:done], done * cache.block, 1 << 62, ())

    def _finish(self, inst: SimInstance, r: SimRequest, t: float) -> None:
        v = inst.view
        v.running.remove(r)
        v.kv_used -= r.kv_tokens
        r.phase = FINISHED
        r.finish_time = t
        if inst.lagged is not None:
            inst.lagged.append((r, 1))
        self._cancel_migration(r)
        inst.sched.on_finish(r, v, t)
        self.router.on_finish(r, t)
        if self.has_release:
            self._arm_release(t)
        self.finished.append(r)

    def _record(self, inst: SimInstance, seg: Segment) -> None:
        extra = seg.xfer if isinstance(seg.xfer, tuple) else (0.0, None, None, None)
        _, pre, par, res = extra
        plan = seg.plan
        dec = [r.rid for r in seg.decode]
        for k in range(seg.steps):
            rec = IterationRecord(start=seg.start + seg.offset(k), duration=seg.step_duration(k), decode=dec)
            if k == 0:
                rec.prefill = [(c.req.rid, c.tokens) for c in plan.prefill]
                rec.preempted = pre or []
                rec.parked = par or []
                rec.resumed = res or []
            inst.records.append(rec)

    def _check(self, inst: SimInstance) -> None:
        v = inst.view
        kv = sum(r.kv_tokens for r in v.running) + sum(r.kv_tokens for r in v.waiting) + inst.incoming
        if kv != v.kv_used:
            raise SimError(f"instance {inst.iid}: kv_used {v.kv_used} != recount {kv}")
        if kv > v.kv_capacity:
            raise SimError(f"instance {inst.iid}: KV {kv} exceeds capacity {v.kv_capacity}")
        pl = sum(r.length - r.kv_tokens for r in v.waiting)
        if pl != inst.prefill_left:
            raise SimError(f"instance {inst.iid}: prefill_left {inst.prefill_left} != recount {pl}")
        if sum(r.kv_tokens for r in v.parked) != inst.host_used:
            raise SimError(f"instance {inst.iid}: host KV accounting broken")


def _stamp_late(lagged: list, t: float) -> None:
    """SimConfig.result_lag: the client sees these first tokens (0) and finishes (1) at ``t``."""
    for r, kind in lagged:
        if kind:
            r.finish_time = t
        else:
            r.first_token_time = t
