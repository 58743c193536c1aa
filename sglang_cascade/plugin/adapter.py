"""Thin adapter between SGLang's scheduler objects and the core's views and plans.

Two directions, no policy logic:

* :class:`ViewCache` turns SGLang ``Req`` objects into core ``RequestView`` s (one cached view per rid,
  refreshed in place each step) and assembles the ``InstanceView`` a policy reads.
* :class:`PlanApplier` answers the questions SGLang's own code asks, from an ``IterationPlan``: the
  waiting-queue order, whether a request may be admitted now, how many KV tokens to reserve for it,
  and which running requests decode.

Duck-typed on the few ``Req`` attributes it reads (``rid``, ``origin_input_ids``, ``output_ids``,
``sampling_params.max_new_tokens``, ``kv.kv_committed_len``, ``finished_reason``), so it imports no sglang
and the benchmark can drive it with light stand-ins.
"""

from __future__ import annotations

from itertools import compress
from operator import attrgetter, not_
from typing import Any, Iterable, Sequence

from ..core.decisions import IterationPlan
from ..core.views import InstanceView, Phase, RequestView


_rid = attrgetter("rid")


def _kv_tokens(req: Any) -> int:
    kv = getattr(req, "kv", None)
    return int(getattr(kv, "kv_committed_len", 0) or 0) if kv is not None else 0


class EngineRequestView(RequestView):
    """A RequestView whose token counts read through to the engine's request object.

    ``output_len`` and ``kv_tokens`` are derived on access from the live ``Req`` (SGLang appends each new
    token to ``req.output_ids``), so the driver never refreshes them request by request; they are
    read-only (assignments are ignored). Phase and everything else are set by the driver.
    """

    __slots__ = ("_req",)

    def __init__(self, req: Any, **fields: Any):
        self._req = req
        RequestView.__init__(self, **fields)

    @property
    def output_len(self) -> int:  # type: ignore[override]
        return len(self._req.output_ids)

    @output_len.setter
    def output_len(self, value: int) -> None:
        pass

    @property
    def kv_tokens(self) -> int:  # type: ignore[override]
        req = self._req
        if self.phase is Phase.WAITING:
            return _kv_tokens(req)  # chunked-prefill progress (0 for a new request)
        return len(req.origin_input_ids) + len(req.output_ids)  # running: on GPU; parked: recomputed

    @kv_tokens.setter
    def kv_tokens(self, value: int) -> None:
        pass


class ViewCache:
    """rid -> RequestView, kept across steps; ``build`` refreshes the views of the given requests."""

    def __init__(self, iid: int = 0):
        self.iid = iid
        self.views: dict[str, RequestView] = {}
        self.reqs: dict[str, Any] = {}  # rid -> the engine's request object

    def view_of(self, req: Any, now: float) -> tuple[RequestView, bool]:
        """The cached view of ``req`` (created on first sight; returns (view, is_new))."""
        rv = self.views.get(req.rid)
        if rv is not None:
            return rv, False
        sp = getattr(req, "sampling_params", None)
        rv = EngineRequestView(req, rid=req.rid, arrival=now, prompt_len=len(req.origin_input_ids),
                               max_new_tokens=getattr(sp, "max_new_tokens", None), instance=self.iid)
        self.views[req.rid] = rv
        self.reqs[req.rid] = req
        return rv, True

    def build(self, inst: InstanceView, waiting: Iterable[Any], running: Iterable[Any],
              parked: Iterable[Any], now: float) -> list[tuple[RequestView, list[RequestView]]]:
        """Refresh ``inst``'s three lists from engine requests.

        Views seen for the first time are NOT appended: they are returned as ``(view, list)`` pairs so the
        driver can call ``policy.on_arrival`` before appending them (the core's contract).

        Requests that vanished since the last build are left in the cache; call :meth:`drop` for them
        (the driver does so when SGLang reports them finished).
        """
        new: list[tuple[RequestView, list[RequestView]]] = []
        for lst, reqs, phase in ((inst.waiting, waiting, Phase.WAITING), (inst.running, running, Phase.RUNNING),
                                 (inst.parked, parked, Phase.PARKED)):
            lst.clear()
            for req in reqs:
                rv, is_new = self.view_of(req, now)
                if rv._req is not req:  # SGLang re-created the request object (defensive)
                    rv._req = req
                rv.phase = phase
                if is_new:
                    new.append((rv, lst))
                else:
                    lst.append(rv)
        return new

    def sweep(self, live: set[str]) -> int:
        """Forget requests SGLang dropped without a result (e.g. aborted while queued)."""
        gone = [rid for rid in self.views if rid not in live]
        for rid in gone:
            self.drop(rid)
        return len(gone)

    def drop(self, rid: str) -> RequestView | None:
        self.reqs.pop(rid, None)
        return self.views.pop(rid, None)


class PlanApplier:
    """The current plan, in the shapes SGLang's admission and decode code consume."""

    def __init__(self, plan: IterationPlan, known_running: set[str] | None = None):
        self.plan = plan
        self.known_running = known_running if known_running is not None else set()
        self.admit_rank: dict[str, int] = {c.req.rid: i for i, c in enumerate(plan.prefill)}
        self.reserve: dict[str, int] = plan.reserve  # read-only view of the plan's reservations
        self.park_rids: set[str] = {r.rid for r in plan.park}
        self.preempt_rids: set[str] = {r.rid for r in plan.preempt}
        self.resume_rids: set[str] = {r.rid for r in plan.resume}
        self._decode_rids: set[str] | None = None
        # The plan decodes as many requests as it knows running: nothing to hold back (O(1) per step).
        # (A plan that lists a non-running rid in decode is treated as "decode all", SGLang's default.)
        self.decode_all = len(plan.decode) >= len(self.known_running)

    @property
    def decode_rids(self) -> set[str]:
        if self._decode_rids is None:
            self._decode_rids = set(map(_rid, self.plan.decode))
        return self._decode_rids

    # --- admission -------------------------------------------------------------------------------------
    def order_waiting(self, waiting: list) -> None:
        """Reorder SGLang's waiting queue in place: planned admissions first, in plan order; then the rest
        in their current order (stable)."""
        rank = self.admit_rank
        if not rank:
            return
        n = len(rank)
        keyed = sorted(range(len(waiting)), key=lambda i: (rank.get(waiting[i].rid, n), i))
        waiting[:] = [waiting[i] for i in keyed]

    def may_admit(self, rid: str) -> bool:
        return rid in self.admit_rank

    def reservation(self, rid: str) -> int | None:
        """KV tokens to reserve for ``rid``'s future decode (None: let SGLang estimate)."""
        return self.reserve.get(rid)

    # --- decode -----------------------------------------------------------------------------------------
    def decode_keep_indices(self, reqs: Sequence[Any]) -> list[int] | None:
        """Indices of ``reqs`` (a running batch) the plan decodes, or None to decode them all.

        Requests the policy has not seen yet (e.g. just prefilled in the same step) decode, so a plan
        can only hold back requests it knows about; an empty selection falls back to all.
        """
        split = self.decode_split(reqs)
        return None if split is None else split[0]

    def decode_split(self, reqs: Sequence[Any], with_held: bool = False) -> tuple[list[int], list] | None:
        """``decode_keep_indices`` and (``with_held``) the held-back requests in batch order, found by the
        same C-level passes (no per-request Python loop: this runs every decode step); None: decode all."""
        if self.decode_all:
            return None
        rids = list(map(_rid, reqs))
        include = self.decode_rids
        if not self.known_running.issuperset(rids):  # rare: requests joined after the plan was made
            include = include.union(set(rids).difference(self.known_running))
        flags = list(map(include.__contains__, rids))
        keep = list(compress(range(len(rids)), flags))
        if not keep or len(keep) == len(reqs):
            return None
        held = list(compress(reqs, map(not_, flags))) if with_held else []
        return keep, held
