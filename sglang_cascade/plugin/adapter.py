"""Thin adapter between SGLang's scheduler objects and the core's views and plans.

Two directions, no policy logic:

* :class:`ViewCache` turns SGLang ``Req`` objects into core ``RequestView`` s (one cached view per rid,
  refreshed in place each step) and assembles the ``InstanceView`` a policy reads.
* :class:`PlanApplier` answers the questions SGLang's own code asks, from an ``IterationPlan``: the
  waiting-queue order, whether a request may be admitted now, how many KV tokens to reserve for it,
  and which running requests decode.
* :class:`SlotGroups` mirrors each running request's decode group (``RequestView.group``, written by the
  policy) into an array indexed by SGLang's request-pool slot (``req.kv.req_pool_idx``), so a plan's
  ``held_groups`` splits the running batch with one numpy lookup on the batch's own
  ``req_pool_indices_cpu`` instead of a per-request diff.

Duck-typed on the few ``Req`` attributes it reads (``rid``, ``origin_input_ids``, ``output_ids``,
``sampling_params.max_new_tokens``, ``kv.kv_committed_len``, ``finished_reason``), so it imports no sglang
and the benchmark can drive it with light stand-ins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import compress
from operator import attrgetter, not_
from typing import Any

import numpy as np

from ..core.decisions import IterationPlan
from ..core.views import InstanceView, Phase, RequestView
from .sampling_state import splittable

_rid = attrgetter("rid")
_finished_reason = attrgetter("finished_reason")  # Req.finished(), without the call


def _kv_tokens(req: Any) -> int:
    kv = getattr(req, "kv", None)
    return int(getattr(kv, "kv_committed_len", 0) or 0) if kv is not None else 0


def _pool_slot(req: Any) -> int | None:
    """SGLang's request-pool slot of ``req`` (its row in ``req_to_token``), None while it holds none."""
    try:
        slot = req.kv.req_pool_idx
    except AttributeError:
        return None
    return slot if type(slot) is int and slot >= 0 else None


class SlotGroups:
    """Decode group by request-pool slot: ``by_slot[slot] = group + 1`` (0: no group, always decodes).

    Written only when a request's group changes (the policy's bucket events, O(changes)); read once per
    step for the whole batch (:meth:`held_flags`). A stale entry can only make a request wait one more
    step, never lose or duplicate it: the kept and held-back parts of a split come from the same flags.
    """

    def __init__(self, size: int = 1024):
        # the last entry stays 0: slots beyond the table (never written) are clipped onto it
        self.by_slot = np.zeros(max(16, size + 1), dtype=np.int32)
        self.max_group = 0

    def _fit(self, slot: int) -> None:
        if slot >= len(self.by_slot) - 1:
            grown = np.zeros(max(slot + 2, 2 * len(self.by_slot)), dtype=np.int32)
            grown[: len(self.by_slot)] = self.by_slot
            self.by_slot = grown

    def put(self, slot: int, group: int) -> None:
        self._fit(slot)
        self.by_slot[slot] = group + 1
        if group > self.max_group:
            self.max_group = group

    def clear(self, slot: int) -> None:
        if slot < len(self.by_slot) - 1:
            self.by_slot[slot] = 0

    def held_flags(self, slots: np.ndarray, held_groups: set[int]) -> np.ndarray:
        """Boolean array: whether the request in each batch position belongs to a held group."""
        top = self.max_group
        lut = bytearray(top + 2)  # group + 1 -> held (a few groups: built in Python, one numpy call)
        for g in held_groups:
            if 0 <= g <= top:
                lut[g + 1] = 1
        return np.frombuffer(lut, dtype=np.bool_).take(self.by_slot.take(slots, mode="clip"))


class EngineRequestView(RequestView):
    """A RequestView whose token counts read through to the engine's request object.

    ``output_len`` and ``kv_tokens`` are derived on access from the live ``Req`` (SGLang appends each new
    token to ``req.output_ids``), so the driver never refreshes them request by request; they are
    read-only (assignments are ignored). Phase and everything else are set by the driver.
    """

    __slots__ = ("_req", "_group", "_slot", "_groups", "_holdable", "_row", "_cached")

    def __init__(self, req: Any, groups: SlotGroups | None = None, **fields: Any):
        self._req = req
        self._row = None  # its pool row as ViewCache.rows knows it (running requests)
        self._groups = groups
        self._group = -1
        self._slot = None
        self._holdable = None  # sampling_state.splittable(req), checked when first grouped (running)
        self._cached = 0  # the radix cache's prefix of its input when first seen (ViewCache.prefix_len)
        RequestView.__init__(self, **fields)

    @property
    def group(self) -> int:  # type: ignore[override]
        return self._group

    @group.setter
    def group(self, value: int) -> None:
        """The policy's decode group, mirrored into :class:`SlotGroups` under the request's pool slot.

        Only requests that may be held back (no per-batch sampling state, :func:`sampling_state.splittable`)
        are mirrored: a request absent from the table is never held back, so a group split needs no
        per-request check."""
        self._group = value
        g = self._groups
        if g is None:
            return
        slot = None
        if value >= 0:
            if self._holdable is None:
                self._holdable = splittable(self._req)
            if self._holdable:
                slot = _pool_slot(self._req)
        old = self._slot
        if old is not None and old != slot:
            g.clear(old)
        if slot is not None:
            if slot < len(g.by_slot) - 1 and value <= g.max_group:
                g.by_slot[slot] = value + 1  # (SlotGroups.put without its bookkeeping: the common case)
            else:
                g.put(slot, value)
        self._slot = slot

    def resync_slot(self) -> None:
        """Re-mirror the group after the request got a new pool slot (e.g. restored from host memory)."""
        self.group = self._group

    @property
    def output_len(self) -> int:  # type: ignore[override]
        return len(self._req.output_ids)

    @output_len.setter
    def output_len(self, value: int) -> None:
        pass

    @property
    def kv_tokens(self) -> int:  # type: ignore[override]
        req = self._req
        if self.phase is Phase.WAITING:  # chunked-prefill progress, or the prefix its radix cache holds (a
            # moved request's continuation: all but its last token), which SGLang matches at admission
            length = len(req.origin_input_ids) + len(req.output_ids)
            return max(_kv_tokens(req), min(self._cached, length - 1))
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
        # req -> tokens of its input the radix cache holds (set by the driver; None: not known, 0 assumed)
        self.prefix_len: Callable[[Any], int] | None = None
        self.groups = SlotGroups()  # decode group by pool slot (written through EngineRequestView.group)
        # pool row -> view of the running request holding it: finished requests are found from the rows
        # SGLang freed while processing a result (CascadeDriver.after_result), not by scanning the batch
        self.rows: dict[int, EngineRequestView] = {}

    def note_row(self, rv: Any) -> None:
        """(Re)record ``rv``'s pool row: it started running, or its row changed (park, host restore)."""
        if not isinstance(rv, EngineRequestView):
            return
        row = _pool_slot(rv._req)
        old = rv._row
        if old is not None and old != row and self.rows.get(old) is rv:
            del self.rows[old]
        if row is not None:
            self.rows[row] = rv
        rv._row = row

    def index_rows(self, running: Iterable[Any]) -> None:
        """Rebuild :attr:`rows` from the running views (after a full view rebuild)."""
        self.rows.clear()
        for rv in running:
            self.note_row(rv)

    def view_of(self, req: Any, now: float) -> tuple[RequestView, bool]:
        """The cached view of ``req`` (created on first sight; returns (view, is_new))."""
        rv = self.views.get(req.rid)
        if rv is not None:
            return rv, False
        sp = getattr(req, "sampling_params", None)
        rv = EngineRequestView(
            req,
            self.groups,
            rid=req.rid,
            arrival=now,
            prompt_len=len(req.origin_input_ids),
            max_new_tokens=getattr(sp, "max_new_tokens", None),
            ignore_eos=bool(getattr(sp, "ignore_eos", False)),
            instance=self.iid,
        )
        if self.prefix_len is not None and not req.output_ids:
            try:
                rv._cached = int(self.prefix_len(req))
            except Exception:  # a view without the cached prefix only over-states what it needs
                rv._cached = 0
        self.views[req.rid] = rv
        self.reqs[req.rid] = req
        return rv, True

    def build(
        self, inst: InstanceView, waiting: Iterable[Any], running: Iterable[Any], parked: Iterable[Any], now: float
    ) -> list[tuple[RequestView, list[RequestView]]]:
        """Refresh ``inst``'s three lists from engine requests.

        Views seen for the first time are NOT appended: they are returned as ``(view, list)`` pairs so the
        driver can call ``policy.on_arrival`` before appending them (the core's contract).

        Requests that vanished since the last build are left in the cache; call :meth:`drop` for them
        (the driver does so when SGLang reports them finished).
        """
        new: list[tuple[RequestView, list[RequestView]]] = []
        for lst, reqs, phase in (
            (inst.waiting, waiting, Phase.WAITING),
            (inst.running, running, Phase.RUNNING),
            (inst.parked, parked, Phase.PARKED),
        ):
            self.build_list(lst, reqs, phase, now, new)
        return new

    def build_list(
        self, lst: list, reqs: Iterable[Any], phase: Phase, now: float, new: list[tuple[RequestView, list[RequestView]]]
    ) -> None:
        """Refill one of the instance's lists (see :meth:`build`); first-seen views go to ``new``."""
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

    def sweep(self, live: set[str]) -> int:
        """Forget requests SGLang dropped without a result (e.g. aborted while queued)."""
        gone = [rid for rid in self.views if rid not in live]
        for rid in gone:
            self.drop(rid)
        return len(gone)

    def drop(self, rid: str) -> RequestView | None:
        self.reqs.pop(rid, None)
        rv = self.views.pop(rid, None)
        if isinstance(rv, EngineRequestView):
            if rv._slot is not None:  # its slot may be reused
                self.groups.clear(rv._slot)
                rv._slot = None
            if rv._row is not None:
                if self.rows.get(rv._row) is rv:
                    del self.rows[rv._row]
                rv._row = None
        return rv


class PlanApplier:
    """The current plan, in the shapes SGLang's admission and decode code consume."""

    def __init__(
        self,
        plan: IterationPlan,
        known_running: set[str] | Callable[[], set[str]] | None = None,
        groups: SlotGroups | None = None,
    ):
        self.plan = plan
        self._known = known_running if known_running is not None else set()
        self.groups = groups
        self.split_by_groups = False  # how the last decode_split decided (groups: holdable by construction)
        # (built only when non-empty: a steady decode step has no admissions or moves)
        self.admit_rank: dict[str, int] = {c.req.rid: i for i, c in enumerate(plan.prefill)} if plan.prefill else {}
        self.reserve: dict[str, int] = plan.reserve  # read-only view of the plan's reservations
        self.park_rids: set[str] = set(map(_rid, plan.park)) if plan.park else set()
        self.preempt_rids: set[str] = set(map(_rid, plan.preempt)) if plan.preempt else set()
        self.resume_rids: set[str] = set(map(_rid, plan.resume)) if plan.resume else set()
        self._decode_rids: set[str] | None = None
        # Nothing to hold back (O(1) per step): the plan holds no group back, or (without held_groups) it
        # decodes as many requests as it knows running (a plan that lists a non-running rid in decode is
        # treated as "decode all", SGLang's default).
        if plan.held_groups is not None:
            self.decode_all = not plan.held_groups
        else:
            self.decode_all = len(plan.decode) >= len(self.known_running)

    @property
    def known_running(self) -> set[str]:
        """Rids the policy saw running when it planned (built on first use: only plans without
        ``held_groups``, or batches without pool slots, need it)."""
        if callable(self._known):
            self._known = self._known()
        return self._known

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

    def decode_split(
        self, reqs: Sequence[Any], with_held: bool | str = False, slots: np.ndarray | None = None
    ) -> tuple[list[int], list] | None:
        """``decode_keep_indices`` and (``with_held``) the held-back requests in batch order; None: decode all.

        ``with_held="indices"``: both parts as int64 numpy index arrays, the form SGLang's
        ``ScheduleBatch.filter_batch(keep_indices=...)`` indexes its CPU tensors with fastest (a Python list
        is converted element by element: a copy split of 1,024 requests takes 873 instead of 1,060 us in
        ``scripts/bench_sglang_batch_ops.py``); its list-typed uses of ``keep_indices`` only iterate it.
        ``with_held="array"``: the keep indices as such an array, the held-back requests as a list.

        With the batch's pool slots (``slots[i]`` is ``reqs[i]``'s ``req_pool_idx``, SGLang's
        ``req_pool_indices_cpu``) and a plan that names ``held_groups``, one numpy lookup decides; otherwise
        the plan's decode list is diffed against the batch by rid (C-level passes). Either way no
        per-request Python loop runs: this is called every decode step."""
        if self.decode_all:
            return None
        hg = self.plan.held_groups
        if hg is not None and slots is not None and self.groups is not None and len(slots) == len(reqs):
            self.split_by_groups = True
            return self._split_by_groups(reqs, slots, hg, with_held)
        self.split_by_groups = False
        rids = list(map(_rid, reqs))
        include = self.decode_rids
        if not self.known_running.issuperset(rids):  # rare: requests joined after the plan was made
            include = include.union(set(rids).difference(self.known_running))
        flags = list(map(include.__contains__, rids))
        keep = list(compress(range(len(rids)), flags))
        if not keep or len(keep) == len(reqs):
            return None
        if with_held == "indices":
            return np.array(keep, dtype=np.int64), np.fromiter(compress(range(len(rids)), map(not_, flags)), np.int64)
        held = list(compress(reqs, map(not_, flags))) if with_held else []
        return (np.array(keep, dtype=np.int64) if with_held == "array" else keep), held

    def _split_by_groups(
        self, reqs: Sequence[Any], slots: np.ndarray, held_groups: set[int], with_held: bool
    ) -> tuple[list[int], list] | None:
        flags = self.groups.held_flags(slots, held_groups)
        extra = self.plan.decode_extra
        if extra:  # members of held groups that decode anyway (rare: an oversized bucket served in part)
            ex = [s for s in (getattr(r, "_slot", None) for r in extra) if s is not None]  # mirrored slots
            if ex:
                flags &= ~np.isin(slots, ex)
        # (ndarray.nonzero, not np.flatnonzero: the module-level wrappers cost more than the work here)
        held_idx = flags.nonzero()[0]
        if len(held_idx) == 0 or len(held_idx) == len(flags):  # nothing held here, or nothing would decode
            return None
        keep_idx = (~flags).nonzero()[0]
        if with_held == "indices":
            return keep_idx, held_idx
        held = list(compress(reqs, flags.view(np.uint8).tobytes())) if with_held else []
        return (keep_idx if with_held == "array" else keep_idx.tolist()), held
