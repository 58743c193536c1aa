"""Admission: split queues, KV reserved for the predicted length, KV pipelining (loans), KV-holding priority.

Per request the scheduler keeps a :class:`Track`. The :class:`KVLedger` accounts GPU KV *claims*:

- An **owner** holds a claim of ``claim`` tokens (prompt + predicted output, extended on overrun) counted
  against the GPU capacity: ``sum(owner claims) <= capacity`` always. A request never needs a token
  outside its claim, so decode never fails to allocate.
- **KV pipelining**: a **borrower** is admitted *inside* an owner's reserved-but-unused space instead of
  the free pool, when it is predicted to finish before the owner grows into that space:
  ``owner.claim - (owner.kv + steps_until_borrower_done) >= owner.loaned + borrower.claim``.
  Borrowed space is not counted again, so more requests run than the reservations alone allow.
- An owner's usable limit is ``claim - loaned``. When its KV reaches that limit the loans are called
  back **before** it grows: each borrower (newest loan first) becomes an owner if the free pool holds
  its claim, else moves to another lender with room, else is parked (CPU pool) or preempted. The owner
  is never the one that waits: its growth always has room.
- **Overrun** (a request reached its claim): the claim grows to the next predicted bucket's upper edge
  (geometric, i.e. doubling with the default ratio 2), taken from the free pool (owners) or from the
  lender's unused space (borrowers); when the pool cannot supply even one token, requests are
  preempted/parked by a fixed rule (borrowers first, then owners newest-admitted first) until it can.

- **Pool-level pipelining** (``pipelining=2``; implemented in ecoserve_admission.py ``_profile_fits``): when neither
  the pool nor one owner can hold a new request, it is admitted unreserved if the predicted KV profile of
  everything admitted (growth until each predicted finish, then release) stays under capacity; such
  "pooled" requests are the first to be shed when predictions fail.

Queues: prefill work (waiting requests) and decode work (running requests) are separate; every
iteration prefill takes up to ``max_prefill_tokens`` while the decode batch goes on (mixed iterations).
Waiting order: requests already holding KV first (partial prefills in progress, then parked ones
resumed by the offload policy, then retracted ones by the KV they had, most first), then new arrivals
FCFS, or shortest prefill first when the engine runs ``--schedule-policy shortest-prefill-first``
(``prefill_order``; ties by arrival, as SGLang's order). ``holdfirst=0`` orders everything by arrival
(or by prefill work, then arrival) instead.
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from dataclasses import dataclass, field

from ..core.views import RequestView

INF = 1 << 60


class TrackState(enum.IntEnum):
    """Where a tracked request's KV is: being prefilled, on the GPU (decodable), parked in host memory."""

    PREFILL = 0
    GPU = 1
    HOST = 2


# The members as module names for the hot paths: on Python 3.11 an enum-class attribute lookup
# (``TrackState.GPU``) costs ~0.25 us, a module global ~0.02 us, and schedule() compares states per request.
PREFILL_STATE, GPU_STATE, HOST_STATE = TrackState.PREFILL, TrackState.GPU, TrackState.HOST


@dataclass(slots=True)
class AdmissionConfig:
    reserve: bool = False  # reserve KV for the predicted length (``cascade:reserve=1``); False: greedy
    # admission with park-instead-of-retract, the better of the two in every simulated setting (see
    # docs/results/instance_eval.md: full reservations, even exact ones, cost concurrency)
    # KV pipelining (needs reserve=1): 0 off, 1 lend reserved-but-unused KV to short requests (per-owner
    # loans), 2 loans + pool level: admit unreserved when the predicted future KV profile of everything
    # admitted (finishes included) stays under capacity
    pipelining: int = 2
    holdfirst: bool = True  # requests that hold (or held) KV go before new arrivals
    prefill_order: str = ""  # new arrivals: "fcfs" | "shortest-prefill-first"; "" = the engine's
    # --schedule-policy (PolicyContext.schedule_policy): shortest-prefill-first if it is that, else fcfs
    loan_margin: float = 1.25  # a borrower's predicted steps are multiplied by this in the loan test
    lender_scan: int = 32  # owners examined per lender search (grouped by predicted bucket)
    greedy_headroom: float = 0.05  # reserve=False: keep this fraction of KV free at admission
    min_extension: int = 16  # an overrun extends the claim by at least this many tokens

    def __post_init__(self) -> None:
        if self.pipelining not in (0, 1, 2):
            raise ValueError(f"pipelining takes 0, 1 or 2, not {self.pipelining!r}")
        if self.prefill_order not in ("", "fcfs", "shortest-prefill-first"):
            raise ValueError(f"prefill_order takes fcfs or shortest-prefill-first, not {self.prefill_order!r}")

    @property
    def pooled(self) -> bool:
        """Pool-level pipelining is on (``pipelining=2`` with reservations)."""
        return self.reserve and self.pipelining == 2


@dataclass(slots=True, eq=False)
class Track:
    req: RequestView
    seq: int  # admission order
    state: TrackState = PREFILL_STATE
    claim: int = 0  # GPU KV tokens reserved in total (owner: counted in the pool; borrower: inside lender)
    lender: Track | None = None
    borrowers: list = field(default_factory=list)
    loaned: int = 0
    pred_bucket: int = 0
    # aligned-index bookkeeping (policies/aligned.py)
    kbucket: int = -1
    cnt0: int = 0
    len0: int = 0
    ver: int = 0
    stamp: int = 0  # iteration of its last decode (or when it became decodable)
    join_cnt: int = 0  # its bucket's serve count when it joined (aligned.AlignedIndex.stamp_of)
    prefill_done: bool = False

    @property
    def limit(self) -> int:
        """Largest KV this request may reach before the ledger must act."""
        return self.claim - self.loaned


class KVLedger:
    """GPU KV claims and loans (see module docstring). Pure bookkeeping; the scheduler applies moves."""

    def __init__(self, capacity: int, cfg: AdmissionConfig):
        self.capacity = capacity
        self.cfg = cfg
        self.reserved = 0  # sum of owner claims
        self.owners_by_pred: dict[int, dict[str, Track]] = {}
        self.loans_made = 0
        self.loans_recalled = 0
        self.max_borrowers = 0
        self.num_borrowers = 0
        self.touched: list[Track] = []  # lenders whose loans grew (their limits shrank): re-arm events

    @property
    def free(self) -> int:
        return self.capacity - self.reserved

    # --- owners ------------------------------------------------------------------------------------------
    def _add_owner(self, t: Track, claim: int) -> None:
        t.claim = claim
        t.lender = None
        self.reserved += claim
        self.owners_by_pred.setdefault(t.pred_bucket, {})[t.req.rid] = t

    def _drop_owner(self, t: Track) -> None:
        self.reserved -= t.claim
        g = self.owners_by_pred.get(t.pred_bucket)
        if g is not None:
            g.pop(t.req.rid, None)

    def try_own(self, t: Track, claim: int) -> bool:
        if claim <= self.free:
            self._add_owner(t, claim)
            return True
        return False

    # --- loans -------------------------------------------------------------------------------------------
    def _room(self, o: Track, steps: int) -> int:
        """Space ``o`` can lend to a borrower that stays ``steps`` iterations."""
        kv = o.req.kv_tokens if o.state != PREFILL_STATE else o.req.length
        return o.claim - (kv + 1 + steps) - o.loaned

    def find_lender(self, claim: int, steps: int, exclude: Track | None = None) -> Track | None:
        """An owner whose unused reservation outlasts a borrower needing ``claim`` for ``steps``.
        Owners are grouped by predicted bucket; the longest-predicted groups are searched first."""
        scanned = 0
        for pb in sorted(self.owners_by_pred, reverse=True):
            for o in reversed(self.owners_by_pred[pb].values()):
                if o is not exclude and o.state == GPU_STATE and self._room(o, steps) >= claim:
                    return o
                scanned += 1
                if scanned >= self.cfg.lender_scan:
                    return None
        return None

    def borrow(self, t: Track, lender: Track, claim: int) -> None:
        t.claim = claim
        t.lender = lender
        lender.borrowers.append(t)
        lender.loaned += claim
        self.touched.append(lender)
        self.loans_made += 1
        self.num_borrowers += 1
        self.max_borrowers = max(self.max_borrowers, self.num_borrowers)

    def unborrow(self, t: Track) -> None:
        o = t.lender
        if o is None:
            return
        o.borrowers.remove(t)
        o.loaned -= t.claim
        t.lender = None
        self.num_borrowers -= 1

    # --- lifecycle ---------------------------------------------------------------------------------------
    def admit(self, t: Track, claim: int, steps: int) -> bool:
        """Reserve ``claim`` tokens for a new request: from the free pool, else as a borrower."""
        if self.try_own(t, claim):
            return True
        if self.cfg.pipelining:
            steps = int(steps * self.cfg.loan_margin) + 1
            lender = self.find_lender(claim, steps)
            if lender is not None:
                self.borrow(t, lender, claim)
                return True
        return False

    def release(self, t: Track) -> list[Track]:
        """``t`` leaves the GPU (finished, parked, preempted). Its borrowers become owners (their claims
        fit: they lived inside ``t``'s claim, which is now free). Returns the converted borrowers."""
        if t.lender is not None:
            self.unborrow(t)
            t.claim = 0
            return []
        self._drop_owner(t)
        moved = list(t.borrowers)
        for b in moved:
            self.unborrow(b)
            self._add_owner(b, b.claim)
        t.claim = 0
        t.loaned = 0
        return moved

    def extend(self, t: Track, want: int) -> int:
        """Grow ``t``'s claim by up to ``want`` tokens; returns the tokens granted (0: none available)."""
        if t.lender is None:
            g = min(want, self.free)
            if g > 0:
                t.claim += g
                self.reserved += g
            return max(0, g)
        o = t.lender
        room = self._room(o, 0)
        g = min(want, room)
        if g > 0:
            t.claim += g
            o.loaned += g
            self.touched.append(o)
            return g
        # the lender has no room: become an owner if the pool holds the extended claim
        need = t.claim + want
        if need <= self.free:
            self.unborrow(t)
            self._add_owner(t, need)
            return want
        return 0

    def rehome(self, b: Track) -> bool:
        """A recalled borrower: become an owner, or move to another lender. False: it must leave."""
        claim = b.claim
        o = b.lender
        self.unborrow(b)
        if claim <= self.free:
            self._add_owner(b, claim)
            self.loans_recalled += 1
            return True
        lender = self.find_lender(claim, max(1, claim - b.req.kv_tokens), exclude=o) if self.cfg.pipelining else None
        if lender is not None:
            self.borrow(b, lender, claim)
            self.loans_recalled += 1
            return True
        b.claim = claim  # caller parks or preempts it, then calls release()
        self.loans_recalled += 1
        return False

    def check(self, debt_ok: bool = False) -> None:
        """Debug invariant: owner claims within capacity, loans within lenders' claims."""
        total = 0
        for g in self.owners_by_pred.values():
            for o in g.values():
                total += o.claim
                assert o.loaned == sum(b.claim for b in o.borrowers), (o.req.rid, o.loaned)
                assert o.loaned <= o.claim, (o.req.rid, o.loaned, o.claim)
        assert total == self.reserved, (total, self.reserved)
        assert self.reserved <= self.capacity or debt_ok, (self.reserved, self.capacity)


class WaitQueues:
    """Prefill-side queues: new arrivals (FCFS deque, or a heap by prefill work with ``shortest_first``) and
    retracted requests (heap by held KV)."""

    def __init__(self, holdfirst: bool = True, shortest_first: bool = False):
        self.holdfirst = holdfirst
        self.shortest_first = shortest_first
        self.new: deque[RequestView] = deque()
        self.new_heap: list[tuple] = []  # shortest_first: (prefill work, seq, req); ties keep arrival order
        self.retracted: list[tuple] = []  # (-length or arrival, arrival, seq, req)
        self._seq = 0
        self.rids: set[str] = set()

    def __len__(self) -> int:
        return len(self.rids)

    def push_new(self, r: RequestView) -> None:
        if r.rid in self.rids:
            return
        self.rids.add(r.rid)
        if not self.holdfirst:
            self._push_heap(r)
        elif self.shortest_first:
            self._seq += 1
            heapq.heappush(self.new_heap, (max(1, r.tokens_to_prefill), self._seq, r))
        else:
            self.new.append(r)

    def new_in_order(self) -> list[RequestView]:
        """The waiting new arrivals in admission order (``shortest_first``: by prefill work, then arrival)."""
        if not self.shortest_first:
            return [r for r in self.new if r.rid in self.rids]
        return [e[2] for e in sorted(self.new_heap) if e[2].rid in self.rids]

    def push_retracted(self, r: RequestView) -> None:
        if r.rid in self.rids:
            return
        self.rids.add(r.rid)
        self._push_heap(r)

    def _push_heap(self, r: RequestView) -> None:
        self._seq += 1
        if self.holdfirst:
            key = -r.length
        else:
            key = (max(1, r.tokens_to_prefill), r.arrival) if self.shortest_first else r.arrival
        heapq.heappush(self.retracted, (key, r.arrival, self._seq, r))

    def peek(self) -> RequestView | None:
        while self.retracted and self.retracted[0][3].rid not in self.rids:
            heapq.heappop(self.retracted)
        if self.retracted:
            return self.retracted[0][3]
        while self.new_heap and self.new_heap[0][2].rid not in self.rids:
            heapq.heappop(self.new_heap)
        if self.new_heap:
            return self.new_heap[0][2]
        while self.new and self.new[0].rid not in self.rids:
            self.new.popleft()
        return self.new[0] if self.new else None

    def pop(self) -> RequestView:
        r = self.peek()
        assert r is not None
        if self.retracted and self.retracted[0][3] is r:
            heapq.heappop(self.retracted)
        elif self.new_heap and self.new_heap[0][2] is r:
            heapq.heappop(self.new_heap)
        else:
            self.new.popleft()
        self.rids.discard(r.rid)
        return r

    def discard(self, rid: str) -> None:
        self.rids.discard(rid)

    def rebuild(self, waiting: list[RequestView], skip: set[str]) -> None:
        self.new.clear()
        self.new_heap.clear()
        self.retracted.clear()
        self.rids.clear()
        for r in sorted(waiting, key=lambda x: x.arrival):
            if r.rid in skip:
                continue
            if r.output_len > 0 or r.preemptions > 0:
                self.push_retracted(r)
            else:
                self.push_new(r)
