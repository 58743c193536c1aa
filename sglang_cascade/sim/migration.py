"""Migration: the router's migration bounds and the KV-migration state machine.

A running request past its bound (``SimRequest.bound_next``) is offered to ``router.migrate``; a refusal,
an abort or the router's ``max_migrations`` cap re-arms the bound ``migration_retry_tokens`` later.
A migration then moves the request by one of two paths:

- recompute (or a waiting request): at the source's next iteration boundary the request leaves with no KV
  and queues on the destination;
- KV transfer (Llumnix): pre-copy stages copy the KV the request has while it keeps decoding on the source
  (each stage copies the tokens added since the last one) until fewer than ``migration_stop_copy_tokens``
  are new or ``migration_max_stages`` stages ran; then, at the source's next boundary, the request stops
  and the final copy runs; when that copy ends the request joins the destination's waiting queue with its KV
  there (the live continuation: a new request whose prefix is cached), and decodes once admitted and extended
  by its last token.

Every copy reserves its tokens on the destination (``SimInstance.incoming``); a destination without room
aborts the migration, and a cancelled migration frees what it reserved.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.costmodel import CostModel
from ..core.decisions import ROOM_RETRY_TOKENS, Migration, MigrationMode
from ..core.views import Phase, RequestView
from .config import SimError
from .instance import SimInstance, SimRequest

EV_MIG = 1  # the event kind of a copy's end (sim.event_loop)


def d2d_fn(cm: CostModel, link) -> Callable[[int], float]:
    """Device-to-device KV copy time of ``tokens`` tokens: datasheet NVLink (""), a measured link curve's
    name, or a ``time_s(bytes)`` object (e.g. the router's ``MigrationCosts.link()``); the migration
    planner's own ``link_time``, so the simulator copies as fast as routers predict."""
    from ..policies.migration import MigrationConfig, MigrationPlanner

    return MigrationPlanner(cm, MigrationConfig(mode="kv_transfer", link=link or "spec")).link_time


class KvMigration:
    """One migration in progress; ``version`` invalidates its scheduled copy-end event when it changes."""

    __slots__ = ("m", "req", "src", "dst", "copied", "stages", "reserved", "final", "version", "resend")

    def __init__(self, m: Migration):
        self.m = m
        self.req = m.req
        self.src = m.src
        self.dst = m.dst
        self.copied = 0  # tokens already on dst
        self.stages = 0
        self.reserved = 0  # tokens reserved on dst (= copied)
        self.final = False  # the next event lands the request (or, for recompute, it moves at a boundary)
        self.version = 0
        self.resend = False  # a recompute move on its way to dst (SimConfig.result_lag: sent when its token is seen)


class Migrations:
    """Simulator mixin. Uses: ``router``, ``cfg``, ``insts``, ``n``, ``now``, ``d2d``, ``has_bound``, ``input_limit``,
    ``plan_version`` and the methods ``_touch``, ``_advance``, ``_wake``, ``_start``, ``_push``,
    ``_cluster_view``, ``_apply_pending`` (boundary actions)."""

    # ------------------------------------------------------------------ bounds
    def _arm_bound(self, r: SimRequest, iid: int) -> None:
        b = self.router.migration_bound(r, iid)
        r.bound_next = 0 if b is None else max(int(b), r.length)

    def _rearm_after_refusal(self, r: SimRequest, iid: int, tokens: int = 0) -> None:
        """The request stays past its bound on iid: ask again after migration_retry_tokens (or ``tokens``) tokens,
        or later if the router's bound (re-read now: it may have moved, or defer the retry) says so."""
        b = self.router.migration_bound(r, iid)
        if b is None:
            r.bound_next = 0
        else:
            r.bound_next = max(int(b), r.length + max(1, tokens or self.cfg.migration_retry_tokens))

    def _bound_reached(self, inst: SimInstance, r: SimRequest, t: float) -> None:
        if r.rid in self.migrating:
            return
        if r.migrations >= self.router.max_migrations:  # the live router's cap: not offered again
            self._rearm_after_refusal(r, inst.iid)
            return
        if r.length > self.input_limit:  # the live router makes no move SGLang's input check would abort
            r.bound_next = 0  # (core/request_limits.py; router/session.py): it finishes where it is
            return
        m = self.router.migrate(r, inst.iid, self._cluster_view(t), t)
        self._check_plan_version(t)
        if m is None:
            if r.phase == Phase.RUNNING and r.instance == inst.iid:
                self._rearm_after_refusal(r, inst.iid)
            return
        r.bound_next = 0
        no_room = self._start_migration(m, t)
        if r.rid not in self.migrating and r.rid not in self.in_transit and r.instance == inst.iid:
            # aborted: ask again later (a destination without room: as late as the live router asks again)
            self._rearm_after_refusal(r, inst.iid, ROOM_RETRY_TOKENS if no_room else 0)

    def _check_plan_version(self, t: float) -> None:
        """After every call into the router: re-arm bounds if its plan changed, wake its held requests' release."""
        if self.has_release:
            self._arm_release(t)
        ver = self.router.plan_version
        if ver != self.plan_version:
            self.plan_version = ver
            self._rearm_all(t)

    def _rearm_all(self, t: float) -> None:
        """The router's bounds changed: re-read the bound of every running request not being migrated.
        Instances whose requests now have a lower bound cut their fast-forwarded segment at the step in
        progress, so a request already past its new bound is asked to move at the end of that step."""
        self.rearms += 1
        migrating, in_transit = self.migrating, self.in_transit
        for inst in self.insts:
            v = inst.view
            if not v.running:
                continue
            self._advance(inst, t)
            lowered = False
            for r in v.running:
                if r.rid in migrating or r.rid in in_transit:
                    continue
                old = r.bound_next
                self._arm_bound(r, inst.iid)
                if r.bound_next and (not old or r.bound_next < old):
                    lowered = True
            if lowered and inst.seg is not None:
                self._wake(inst, t)

    # ------------------------------------------------------------------ the state machine
    def _start_migration(self, m: Migration, t: float) -> bool:
        """Start the router's move; True where it is refused because the destination has no room for its KV."""
        r = m.req
        if not (0 <= m.dst < self.n) or m.dst == m.src:
            raise SimError(f"router {self.router.name}: migration of {r.rid} to invalid instance {m.dst}")
        if (
            r.phase == Phase.FINISHED
            or r.instance != m.src
            or r.rid in self.migrating
            or r.rid in self.in_transit
            or r.migrations >= self.router.max_migrations
            or r.length > self.input_limit
        ):
            self.migrations_aborted += 1
            return False
        mig = KvMigration(m)
        if m.mode == MigrationMode.KV_TRANSFER and r.phase == Phase.RUNNING:
            if not self._has_room(self.insts[m.dst], r.kv_tokens, r, t):
                self.migrations_aborted += 1  # the live import answers out_of_kv: the router refuses the move
                return True
            if self._staged_now(r, self.insts[m.src], t):
                self._move_staged(mig, t)
                return False
            self.migrating[r.rid] = mig
            self._copy_stage(mig, r.kv_tokens, t)
            return False
        # recompute (or a waiting request): move at the source's next iteration boundary
        self.migrating[r.rid] = mig
        mig.final = True
        self._at_boundary(self.insts[m.src], ("recompute", mig), t)
        return False

    def _migration_event(self, mig: KvMigration, t: float) -> None:
        """A copy ended: land the request after the final copy, else pre-copy again or stop-and-copy."""
        r = mig.req
        if mig.resend:
            self._resend(mig, t)
            return
        if mig.final:
            self._land(mig, t)
            return
        if r.phase != Phase.RUNNING or r.instance != mig.src:
            self._cancel_migration(r)
            return
        self._advance(self.insts[mig.src], t)
        delta = r.kv_tokens - mig.copied
        if delta > self.cfg.migration_stop_copy_tokens and mig.stages < self.cfg.migration_max_stages:
            if not self._has_room(self.insts[mig.dst], delta, mig.req, t):
                self._abort(r)
                return
            self._copy_stage(mig, delta, t)
            return
        mig.final = True
        self._at_boundary(self.insts[mig.src], ("stopcopy", mig), t)

    @staticmethod
    def _staged_now(r: SimRequest, src: SimInstance, t: float) -> bool:
        """The source exported r's KV as its prefill ended, at ``t`` (SimConfig.stage_first_kv), and has not
        started another iteration since: r can leave now, its copy needs nothing more from the source. Not with
        SimConfig.result_lag: SGLang's overlap loop processes the prefill's result (where the plugin captures the
        KV) only after the next forward, so the move waits for that boundary like an unstaged one."""
        return (
            r.staged
            and r.output_len == 1
            and r.last_decode == t
            and src.lagged is None
            and (src.seg is None or src.seg.end <= t)
        )

    def _move_staged(self, mig: KvMigration, t: float) -> None:
        """Stop-and-copy at the prefill's end: r leaves the source now and lands when the staged copy ends."""
        r = mig.req
        src = self.insts[mig.src]
        self._touch(src, t)
        src.free_request(r)
        self.in_transit[r.rid] = mig
        mig.final = True
        self.staged_moves += 1
        self._copy_stage(mig, r.kv_tokens, t, self.cfg.migration_overhead_s)

    def _has_room(self, dst: SimInstance, tokens: int, r: RequestView, t: float) -> bool:
        """The destination can hold ``tokens`` more KV tokens beside what it holds and its iteration adds, and its
        admission could still take the request's continuation (``admission_reserve``), as the live import checks."""
        self._advance(dst, t)  # the running requests' progress at t (the reserve reads it)
        v = dst.view
        seg = dst.seg  # the iteration in flight (a fast-forwarded segment is cut once a copy reserves room)
        inflight = 0 if seg is None else seg.batch + sum(c.tokens for c in seg.plan.prefill)
        return v.kv_used + tokens + inflight + dst.sched.admission_reserve(v, r) <= v.kv_capacity

    def _copy_stage(self, mig: KvMigration, tokens: int, t: float, extra_s: float = 0.0) -> None:
        """Reserve ``tokens`` on the destination and copy them; the copy's end (plus ``extra_s``) is an event."""
        dst = self.insts[mig.dst]
        self._touch(dst, t)
        if dst.seg is not None and dst.seg.steps > 1:  # its later steps are re-planned around the reserved room
            self._wake(dst, t)
        dst.incoming += tokens
        dst.view.kv_used += tokens
        mig.reserved += tokens
        mig.copied += tokens
        mig.stages += 1
        mig.version += 1
        self._push(t + self.d2d(tokens) + extra_s, EV_MIG, mig, mig.version)

    def _at_boundary(self, inst: SimInstance, action, t: float) -> None:
        inst.pending.append(action)
        if inst.seg is None:  # idle: its last tokens are out already, a recompute move is re-sent now
            self._send_recomputes(self._apply_pending(inst, t), t)
            self._start(inst, t)
        else:
            self._wake(inst, t)

    def _apply_pending(self, inst: SimInstance, t: float) -> list[KvMigration]:
        """The source reached an iteration boundary: move the requests whose migrations wait for it. Returns
        the recompute moves that leave the source now but reach their destination later (see
        :meth:`_move_by_recompute`; the caller sends them with :meth:`_send_recomputes`)."""
        actions, inst.pending = inst.pending, []
        later = []
        for kind, mig in actions:
            r = mig.req
            if self.migrating.get(r.rid) is not mig:
                continue
            if r.phase in (Phase.FINISHED, Phase.PARKED) or r.instance != inst.iid:
                self._abort(r)
                continue
            self._touch(inst, t)
            if kind == "recompute":
                if self._move_by_recompute(inst, mig, t):
                    later.append(mig)
            else:
                self._stop_and_copy(inst, mig, t)
        return later

    def _move_by_recompute(self, src: SimInstance, mig: KvMigration, t: float) -> bool:
        """Take the request off the source and re-send it to the destination. With SimConfig.result_lag the
        token that triggered the move reaches the client (the live router) only after the source's next
        forward, so the re-send waits for it: returns True when the request is left in transit for
        :meth:`_send_recomputes` (the source runs that forward without it)."""
        r = mig.req
        del self.migrating[r.rid]
        src.free_request(r)
        r.kv_tokens = 0
        r.migrations += 1
        self.migrations += 1
        if self.has_bound:
            r.bound_next = 0
        if src.lagged is not None:
            mig.resend = True
            self.in_transit[r.rid] = mig
            return True
        self._resend(mig, t)
        return False

    def _send_recomputes(self, moves: list[KvMigration], t: float) -> None:
        """Re-send lagged recompute moves at ``t`` (the end of the source's next forward, or now if none runs)."""
        for mig in moves:
            mig.version += 1
            if t <= self.now:
                self._resend(mig, t)
            else:
                self._push(t, EV_MIG, mig, mig.version)

    def _resend(self, mig: KvMigration, t: float) -> None:
        r = mig.req
        self.in_transit.pop(r.rid, None)
        mig.resend = False
        dst = self.insts[mig.dst]
        self._touch(dst, t)
        dst.add_waiting(r, t)
        self._wake(dst, t)

    def _stop_and_copy(self, src: SimInstance, mig: KvMigration, t: float) -> None:
        """Pause the request and copy the tokens it added since the last pre-copy stage."""
        r = mig.req
        delta = r.kv_tokens - mig.copied
        if r.phase != Phase.RUNNING or not self._has_room(self.insts[mig.dst], delta, r, t):
            self._abort(r)
            return
        src.free_request(r)
        del self.migrating[r.rid]
        self.in_transit[r.rid] = mig
        self._copy_stage(mig, delta, t, self.cfg.migration_overhead_s)

    def _land(self, mig: KvMigration, t: float) -> None:
        r = mig.req
        del self.in_transit[r.rid]
        dst = self.insts[mig.dst]
        self._touch(dst, t)
        dst.incoming -= mig.reserved
        dst.view.kv_used -= mig.reserved
        r.migrations += 1
        self.migrations += 1
        # as the live continuation: a new request whose prefix is cached, queued for admission (FCFS with the
        # rest), whose one-token extend samples its next token; it decodes from there (bound armed then)
        dst.view.kv_used += r.kv_tokens
        dst.add_waiting(r, t)
        self._cache_prompt(dst, r)  # the import put its prompt in dst's radix cache
        self._wake(dst, t)

    def _refuse_incoming(self, inst: SimInstance, tokens: int) -> bool:
        """The destination needs ``tokens`` of the room its in-flight incoming copies reserved (its own requests
        grew into it and none is left to retract): the latest of those moves are aborted until it has them, as the
        live import refuses a move it has no room for (the request keeps decoding on its source). False: none."""
        incoming = [m for m in self.migrating.values() if m.dst == inst.iid and m.reserved > 0]
        freed = 0
        for mig in reversed(incoming):  # the latest started first (dicts keep insertion order)
            if freed >= tokens:
                break
            freed += mig.reserved
            self._abort(mig.req)
        return freed > 0

    def _abort(self, r: RequestView) -> None:
        self._cancel_migration(r)
        self.migrations_aborted += 1

    def _cancel_migration(self, r: RequestView) -> None:
        mig = self.migrating.pop(r.rid, None)
        if mig is None:
            return
        mig.version += 1
        if self.has_bound and r.phase == Phase.RUNNING and r.instance == mig.src:
            self._rearm_after_refusal(r, mig.src)  # still past its bound (or the router moved it)
        if mig.reserved:
            dst = self.insts[mig.dst]
            self._touch(dst, self.now)
            dst.incoming -= mig.reserved
            dst.view.kv_used -= mig.reserved
            mig.reserved = 0
