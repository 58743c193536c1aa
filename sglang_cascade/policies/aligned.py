"""KV-length-aligned decode batches with a batch-level order that bounds every request's wait.

In-flight requests (KV on GPU, or parked in host memory) live in **KV-length buckets**: bucket 0 holds
``kv < base``, bucket ``k`` holds ``base * ratio^(k-1) <= kv < base * ratio^k``. Each iteration the decode
batch is made of whole buckets:

1. **Head** = the non-empty bucket holding the request that has waited longest since its last decode
   (oldest ``stamp``); it is always served (its parked members are resumed first).
2. With ``merge`` on, neighbouring buckets join the head while the cost model says one merged iteration
   is cheaper than two separate ones: ``t(A u B) < t(A) + t(B)`` (the longest-KV request is the
   iteration's straggler, so merging very different lengths costs more than it saves).

**Starvation bound.** A request that is on GPU (or parked) and unserved sits still in its bucket; every
iteration serves the bucket of the globally oldest request, which removes at least one bucket from the
set of buckets holding requests older than it. So a request waits at most ``B`` iterations between two
decodes, where ``B`` is the number of non-empty buckets when it was last served (at most
``2 + floor(log_ratio(max_context / base))``: 10 for the defaults and 8k context, 17 for 128k), plus ``ceil(n_b / max_batch) - 1``
when its bucket alone exceeds ``max_batch``. Preemption (memory pressure) returns a request to the
waiting queue and is outside the bound.

**Incremental.** Nothing scans all requests per iteration: each bucket keeps a serve counter; a member's
KV is estimated as ``len0 + (bucket.cnt - cnt0)`` and a per-bucket heap holds the serve count at which
it next needs attention (crossing the bucket's upper edge, or reaching its reservation limit). Only those
events are handled; batch selection looks at buckets, not requests. Estimates are corrected against the
request's real ``kv_tokens`` whenever an event pops, so a driver that skipped a decode cannot corrupt it.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from .admission import INF, Track


@dataclass(slots=True)
class AlignedConfig:
    aligned: bool = True  # False: decode every GPU-resident request each iteration (SGLang default)
    kv_base: int = 256  # upper edge of bucket 0 (tokens)
    kv_ratio: float = 1.5  # geometric bucket width
    merge: bool = True  # merge neighbouring buckets when the cost model says it is cheaper
    max_batch: int = 0  # decode batch cap (0: the instance's max_running)
    merge_refresh: int = 8  # a head bucket's merge decision is reused for this many iterations (cost)


class KBucket:
    __slots__ = (
        "idx",
        "upper",
        "gpu",
        "reqs",
        "host",
        "cnt",
        "base",
        "heap",
        "gpu_oldest",
        "host_oldest_dirty",
        "_host_oldest",
        "served_at",
    )

    def __init__(self, idx: int, upper: int):
        self.idx = idx
        self.upper = upper
        self.gpu: dict[str, Track] = {}
        self.reqs: dict[str, object] = {}  # rid -> RequestView of gpu members (decode lists are built in C)
        self.host: dict[str, Track] = {}
        self.cnt = 0
        self.base = 0  # sum(len0 - cnt0) over gpu members
        self.heap: list = []
        self.gpu_oldest = INF
        self.host_oldest_dirty = False
        self._host_oldest = INF
        self.served_at = -1

    @property
    def host_oldest(self) -> int:
        if self.host_oldest_dirty:
            self._host_oldest = min((t.stamp for t in self.host.values()), default=INF)
            self.host_oldest_dirty = False
        return self._host_oldest

    @property
    def age(self) -> int:
        return min(self.gpu_oldest if self.gpu else INF, self.host_oldest if self.host else INF)

    @property
    def kv_sum(self) -> int:
        return self.base + len(self.gpu) * self.cnt


class AlignedIndex:
    """Buckets of in-flight requests by KV length, with per-bucket event heaps."""

    def __init__(self, cfg: AlignedConfig):
        if cfg.kv_ratio <= 1.0 or cfg.kv_base < 1:
            raise ValueError("aligned buckets need kv_ratio > 1 and kv_base >= 1")
        self.cfg = cfg
        self._log_ratio = math.log(cfg.kv_ratio)
        self.buckets: dict[int, KBucket] = {}
        self._order: list[KBucket] = []  # buckets by index (rebuilt when one is created)
        self._merge_cache: dict[int, tuple[int, int, int]] = {}  # head idx -> (iteration, lo idx, hi idx)
        self.iteration = 0  # set by the scheduler before select()
        self._seq = 0
        self.n_gpu = 0
        self.n_host = 0

    # --- buckets -----------------------------------------------------------------------------------------
    def bucket_of(self, kv: int) -> int:
        if kv < self.cfg.kv_base:
            return 0
        return int(math.log(kv / self.cfg.kv_base) / self._log_ratio) + 1

    def _bucket(self, idx: int) -> KBucket:
        b = self.buckets.get(idx)
        if b is None:
            upper = int(math.ceil(self.cfg.kv_base * self.cfg.kv_ratio**idx))
            b = self.buckets[idx] = KBucket(idx, upper)
        return b

    def est_kv(self, t: Track) -> int:
        return t.len0 + self.buckets[t.kbucket].cnt - t.cnt0

    # --- membership --------------------------------------------------------------------------------------
    def add_gpu(self, t: Track, stamp: int | None = None) -> None:
        if stamp is not None:
            t.stamp = stamp
        b = self._join_gpu(t, t.req.kv_tokens)
        t.req.group = b.idx  # decode group = KV bucket (IterationPlan.held_groups)
        self.n_gpu += 1
        self.push_event(t)

    def move(self, t: Track, kv: int) -> None:
        """``t`` (GPU member) reached ``kv`` >= its bucket's upper edge: :meth:`remove` then :meth:`add_gpu`
        in one pass (the bucket-crossing event, several per iteration), with one decode-group write."""
        t.ver += 1
        self._leave_gpu(t, self.buckets[t.kbucket])
        b = self._join_gpu(t, kv)
        if t.req.group != b.idx:
            t.req.group = b.idx
        self.push_event(t)

    def _join_gpu(self, t: Track, kv: int) -> KBucket:
        """Enter the bucket of ``kv`` as a GPU member (estimate anchored at ``kv``); returns the bucket."""
        b = self._bucket(self.bucket_of(kv))
        rid = t.req.rid
        t.kbucket = b.idx
        t.cnt0 = t.join_cnt = b.cnt
        t.len0 = kv
        b.base += kv - b.cnt
        b.gpu[rid] = t
        b.reqs[rid] = t.req
        b.gpu_oldest = t.stamp if len(b.gpu) == 1 else min(t.stamp, b.gpu_oldest)
        return b

    def _leave_gpu(self, t: Track, b: KBucket) -> None:
        """Leave ``b`` (of which ``t`` is a GPU member), keeping its last-decode stamp."""
        rid = t.req.rid
        t.stamp = self.stamp_of(t)
        del b.gpu[rid]
        del b.reqs[rid]
        b.base -= t.len0 - t.cnt0
        if not b.gpu:
            b.gpu_oldest = INF
            b.heap.clear()

    def add_host(self, t: Track) -> None:
        b = self._bucket(self.bucket_of(t.req.kv_tokens))
        t.kbucket = b.idx
        t.ver += 1  # no events while parked
        b.host[t.req.rid] = t
        b.host_oldest_dirty = True
        self.n_host += 1

    def remove(self, t: Track) -> None:
        b = self.buckets.get(t.kbucket)
        t.ver += 1
        if b is None:
            return
        rid = t.req.rid
        if rid in b.gpu:
            t.req.group = -1
            self._leave_gpu(t, b)
            self.n_gpu -= 1
        elif rid in b.host:
            del b.host[rid]
            b.host_oldest_dirty = True
            self.n_host -= 1
        t.kbucket = -1

    def push_event(self, t: Track) -> None:
        """Schedule ``t``'s next event: crossing its bucket's upper edge or reaching its KV limit."""
        b = self.buckets[t.kbucket]
        ev = min(b.upper, t.limit if t.claim else INF)
        est = t.len0 + b.cnt - t.cnt0
        t.ver += 1
        heapq.heappush(b.heap, (b.cnt + max(0, ev - est), self._seq, t, t.ver))
        self._seq += 1

    def due(self, b: KBucket) -> list[Track]:
        """Members of ``b`` whose event is due (estimate reached); their estimates are resynced to the
        real ``kv_tokens`` and the caller must re-bucket / re-push them."""
        out = []
        h = b.heap
        while h and h[0][0] <= b.cnt:
            _, _, t, ver = heapq.heappop(h)
            if ver != t.ver or t.kbucket != b.idx:
                continue
            kv = t.req.kv_tokens
            ev = min(b.upper, t.limit if t.claim else INF)
            # resync estimate with the truth
            b.base += (kv - b.cnt) - (t.len0 - t.cnt0)
            t.len0, t.cnt0 = kv, b.cnt
            if kv >= ev:
                t.ver += 1
                out.append(t)
            else:
                self.push_event(t)
        return out

    # --- batch selection ---------------------------------------------------------------------------------
    def head(self, gpu_only: bool = False) -> KBucket | None:
        """The bucket holding the longest-waiting request (``gpu_only``: among buckets with GPU members)."""
        best = None
        best_age = best_n = 0
        for b in self.buckets.values():
            gpu, host = b.gpu, b.host
            # (b.age inlined, no key tuples: this runs every iteration over every bucket)
            if host:
                if gpu:
                    age = min(b.gpu_oldest, b.host_oldest)
                elif gpu_only:
                    continue
                else:
                    age = b.host_oldest
            elif gpu:
                age = b.gpu_oldest
            else:
                continue
            n = len(gpu) + len(host)
            # the oldest; among equally old, the largest; among those, the first
            if best is None or age < best_age or (age == best_age and n > best_n):
                best, best_age, best_n = b, age, n
        return best

    def next_head(self, exclude: set[int]) -> KBucket | None:
        best = None
        best_key = None
        for b in self.buckets.values():
            if b.idx in exclude or not (b.gpu or b.host):
                continue
            key = (b.age, -(len(b.gpu) + len(b.host)))
            if best_key is None or key < best_key:
                best, best_key = b, key
        return best

    def select(
        self, cost_model, prefill_tokens: int, prefill_work: float, cap: int, extra_head: tuple[int, int] = (0, 0)
    ) -> list[KBucket]:
        """Buckets to decode this iteration: the head, plus neighbours while merging is cheaper.
        The head is the oldest bucket with GPU members (callers resume the parked members of the overall
        oldest bucket first, so it normally has some)."""
        if not self.cfg.aligned:
            return [b for b in self.buckets.values() if b.gpu]
        h = self.head(gpu_only=True)
        if h is None:
            return []
        chosen = [h]
        if not self.cfg.merge:
            return chosen
        c = self._merge_cache.get(h.idx)
        if c is not None and self.iteration - c[0] < self.cfg.merge_refresh:
            # the head's recent merge range, its non-empty buckets in index order after the head
            out = [h]
            n = len(h.gpu)
            get = self.buckets.get
            for i in range(c[1], c[2] + 1):
                b = get(i)
                if b is not None and b.gpu and b is not h:
                    out.append(b)
                    n += len(b.gpu)
            if n <= cap:
                return out
        chosen = self._select_merge(h, cost_model, prefill_tokens, prefill_work, cap, extra_head)
        idxs = [b.idx for b in chosen]
        self._merge_cache[h.idx] = (self.iteration, min(idxs), max(idxs))
        return chosen

    def _select_merge(
        self, h: KBucket, cost_model, prefill_tokens: int, prefill_work: float, cap: int, extra_head: tuple[int, int]
    ) -> list[KBucket]:
        chosen = [h]
        n = len(h.gpu) + extra_head[0]
        s = h.kv_sum + extra_head[1]
        kvmax = h.upper
        it = cost_model.iteration_time
        t_a = it(prefill_tokens, prefill_work, n, s, kvmax)
        order = [b for b in self._sorted() if b.gpu]
        lo_k = hi_k = order.index(h)
        while True:
            cands = []
            if lo_k > 0:
                cands.append(("lo", order[lo_k - 1]))
            if hi_k < len(order) - 1:
                cands.append(("hi", order[hi_k + 1]))
            best = None
            for side, b in cands:
                nb = len(b.gpu)
                if n + nb > cap:
                    continue
                sb = b.kv_sum
                mx = max(kvmax, b.upper)
                t_ab = it(prefill_tokens, prefill_work, n + nb, s + sb, mx)
                t_b = it(0, 0.0, nb, sb, b.upper)
                gain = t_a + t_b - t_ab
                if gain > 0 and (best is None or gain > best[0]):
                    best = (gain, side, b, t_ab, mx)
            if best is None:
                break
            _, side, b, t_a, kvmax = best
            chosen.append(b)
            n += len(b.gpu)
            s += b.kv_sum
            if side == "lo":
                lo_k -= 1
            else:
                hi_k += 1
        return chosen

    def _sorted(self) -> list[KBucket]:
        if len(self._order) != len(self.buckets):
            self._order = sorted(self.buckets.values(), key=lambda b: b.idx)
        return self._order

    def stamp_of(self, t: Track) -> int:
        """Iteration of ``t``'s last decode (per-bucket full serves are recorded once, not per member)."""
        b = self.buckets.get(t.kbucket)
        if b is not None and t.req.rid in b.gpu and b.cnt > t.join_cnt:
            return max(t.stamp, b.served_at)
        return t.stamp

    def mark_served(self, b: KBucket, iteration: int) -> None:
        """All GPU members of ``b`` decode one token this iteration (O(1))."""
        b.cnt += 1
        b.served_at = iteration
        b.gpu_oldest = iteration

    def serve_partial(self, b: KBucket, members: list[Track], iteration: int) -> None:
        """Only ``members`` of ``b`` decode (batch cap): advance them individually, oldest stay in front."""
        for t in list(b.gpu.values()):
            t.stamp = self.stamp_of(t)
            t.join_cnt = b.cnt
        for t in members:
            del b.gpu[t.req.rid]
            del b.reqs[t.req.rid]
            t.len0 += 1
            b.base += 1
            t.stamp = iteration
            b.gpu[t.req.rid] = t  # to the back
            b.reqs[t.req.rid] = t.req
            self.push_event(t)
        b.gpu_oldest = min(t.stamp for t in b.gpu.values())
