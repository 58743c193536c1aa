"""The prefill pool's hold queue (``cascade:pool_hold=<depth>``): the router keeps the pool's prompts and sends one to
a member only when that member has fewer than ``depth`` prefills it sent and has not yet seen the first token of
(late binding), in deadline order.

Why: a pool member's SGLang queue is first come, first served (its default ``--schedule-policy fcfs``); a 4K-token
prompt that arrives behind a 100K-token one waits the whole long prefill on the member it was sent to, though
another member may free up first. Held at the router, the prompts queue once for the whole pool, in the order
``arrival + max(slo_ttft, order x prefill seconds)`` (``pool_hold_order``; 0: first come, first served; the
deadline of a TTFT SLO that scales with the prompt's own prefill), and each goes to whichever member frees up
first. A member also becomes ready ``grace_s`` after its queue's estimated end (a lost first token must not stall
it).

Drivers: ``route`` returns ``HOLD`` for a held request; the driver calls ``release`` whenever ``release_at`` says
(arrivals, first tokens and finishes make a member ready at once), and places what it returns as it places a
routed request.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from ..core.views import InstanceLoad, RequestView
from .prefill_pool import PrefillPool
from .prefix_affinity import saved_tokens


@dataclass
class PoolHold:
    depth: int  # prefills a member may have outstanding (sent, no first token yet)
    order: float = 10.0  # the deadline's prefill multiple (0: FCFS)
    slo_ttft: float = 2.0
    grace_s: float = 5.0
    window: int = 16  # a ready member takes, of the first this many held prompts, the one its cache saves most on
    heap: list = field(default_factory=list)  # (deadline, seq, request)
    seq: int = 0
    out: dict = field(default_factory=dict)  # member -> {rid: its prefill seconds}

    def __len__(self) -> int:
        return len(self.heap)

    def add(self, req: RequestView, work_s: float, now: float) -> None:
        arrival = req.arrival if req.arrival is not None else now
        self.seq += 1
        heapq.heappush(self.heap, (arrival + max(self.slo_ttft, self.order * work_s), self.seq, req))

    def ready(self, pool: PrefillPool, loads: list[InstanceLoad], now: float) -> list[int]:
        return [
            i
            for i in pool.healthy(loads)
            if len(self.out.get(i, ())) < self.depth or now >= pool.busy_until.get(i, 0.0) + self.grace_s
        ]

    def release(self, pool: PrefillPool, loads: list[InstanceLoad], now: float) -> list[tuple[RequestView, int]]:
        """The held requests to send now, each to a ready member (the pool's own pick among them)."""
        sent = []
        while self.heap:
            ids = self.ready(pool, loads, now)
            if not ids:
                break
            req = self._take(pool, ids)
            iid, _ = pool.pick(req, loads, now, ids)
            self.out.setdefault(iid, {})[req.rid] = pool.last_work
            sent.append((req, iid))
        return sent

    def _take(self, pool: PrefillPool, ids: list[int]) -> RequestView:
        """The first held prompt in deadline order, unless one of the next ``window`` - 1 has a prefix cached on a
        ready member: then the one whose cache there saves the most prefill seconds."""
        first = self.heap[0]
        choice, best = first, 0.0
        if pool.trees is not None and self.window > 1:
            for item in heapq.nsmallest(self.window, self.heap):
                req = item[2]
                if not req.block_hashes:
                    continue
                tokens = req.prompt_len - req.kv_tokens
                saved = max(saved_tokens(pool.trees, ids, req.block_hashes, tokens).values(), default=0)
                gain = pool.prefill_s(tokens) - pool.prefill_s(tokens - saved) if saved else 0.0
                if gain > best:
                    choice, best = item, gain
        if choice is first:
            return heapq.heappop(self.heap)[2]
        self.heap.remove(choice)
        heapq.heapify(self.heap)
        return choice[2]

    def release_at(self, pool: PrefillPool | None, loads: list[InstanceLoad], now: float) -> float | None:
        """When ``release`` next has something to send without a new event (None: nothing held)."""
        if not self.heap:
            return None
        if pool is None or self.ready(pool, loads, now):
            return now
        return min(pool.busy_until.get(i, 0.0) + self.grace_s for i in pool.healthy(loads))

    def drain(self) -> list[RequestView]:
        """Every held request, in order (the pool is gone: the caller routes them itself)."""
        return [heapq.heappop(self.heap)[2] for _ in range(len(self.heap))]

    def first_token(self, pool: PrefillPool | None, iid: int | None, rid: str, now: float) -> None:
        """``rid``'s prefill on ``iid`` (None: wherever it was sent) is done (its first token, or it finished / was
        aborted): the member's queue estimate restarts from now with what it still has outstanding."""
        if iid is None:
            iid = next((i for i, reqs in self.out.items() if rid in reqs), None)
        outstanding = self.out.get(iid)
        if outstanding is None or rid not in outstanding:
            return
        del outstanding[rid]
        if pool is not None and iid in pool.busy_until:
            pool.busy_until[iid] = now + sum(outstanding.values())
