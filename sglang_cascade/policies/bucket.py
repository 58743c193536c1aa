"""The ``bucket`` baseline: SMG / sgl-router's prefill ``BucketPolicy``, modelled on its source.

Source read: sgl-project/sglang ``sgl-router/src/policies/bucket.rs`` (BucketPolicy, Bucket,
``adjust_boundary``) and ``BucketConfig`` defaults (balance_abs_threshold=32, balance_rel_threshold=1.0001,
bucket_adjust_interval_secs=5). What it does, and how we model it:

- Each worker owns one bucket, a contiguous inclusive length range; initially ``[i*gap, (i+1)*gap - 1]``
  with ``gap = 4096 / workers`` and the last bucket open-ended.
- Load per worker = sum of the lengths of requests routed to it within the last adjust period (a sliding
  window; expired entries are dropped when the next request is routed).
- Routing: if the window loads are imbalanced (``max - min > abs_threshold`` and ``max > rel_threshold x
  min``) the request goes to the worker with the least window load; otherwise to the worker whose bucket
  contains the request's length (a random worker if none does).
- Every ``adjust_interval`` the boundaries are recomputed from the sorted lengths in the window so that
  each bucket gets about ``total / workers`` of the window load -- but only when that per-bucket average
  changed by more than 2x since the last adjustment (or none was made yet). We port ``adjust_boundary``
  (the version the policy's timer calls) line by line.
- No migration: the request stays on the worker that prefilled it (in a regular, non-PD deployment the
  prefill worker also decodes).

Deviation (documented): SMG measures length in *characters* of the request text; we use prompt *tokens*
(about 4 characters per token for English), keeping the thresholds' numbers. Time comes from ``now``
instead of a background thread: the adjustment runs at the first routing call after each period.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from ..core.interfaces import RouterPolicy
from ..core.options import config_from_options
from ..core.views import ClusterView, RequestView

MAX = 2**63 - 1


@dataclass
class BucketConfig:
    balance_abs_threshold: int = 32  # SMG default (characters there, tokens here)
    balance_rel_threshold: float = 1.0001  # SMG default
    bucket_adjust_interval_secs: float = 5.0  # SMG default; also the load window length
    l_max: int = 4096  # SMG's initial span split evenly among workers


class BucketRouter(RouterPolicy):
    name = "bucket"
    migrates = False

    def __init__(self, num_instances: int, cfg: BucketConfig, seed: int = 0):
        if num_instances < 1:
            raise ValueError("bucket router needs at least one instance")
        self.cfg = cfg
        self.n = num_instances
        self.rng = random.Random(seed)
        gap = cfg.l_max // num_instances
        self.boundary: list[tuple[int, int]] = [
            (i * gap, MAX if i == num_instances - 1 else (i + 1) * gap - 1) for i in range(num_instances)
        ]
        self.window: deque = deque()  # (time, length, worker)
        self.load = [0] * num_instances  # chars_per_url
        self.load_total = 0
        self.bucket_load = 0
        self.next_adjust: float | None = None
        self.adjustments = 0

    # --- SMG Bucket ---------------------------------------------------------------------------------------
    def find_boundary(self, length: int) -> int | None:
        lo, hi = 0, len(self.boundary)
        while lo < hi:
            mid = (lo + hi) // 2
            a, b = self.boundary[mid]
            if length < a:
                hi = mid
            elif length > b:
                lo = mid + 1
            else:
                return mid
        return None

    def _expire(self, now: float) -> None:
        period = self.cfg.bucket_adjust_interval_secs
        while self.window and now - self.window[0][0] > period:
            _, length, w = self.window.popleft()
            self.load[w] = max(0, self.load[w] - length)
            self.load_total = max(0, self.load_total - length)

    def adjust_boundary(self) -> bool:
        if not self.window:
            return False
        new_avg = self.load_total // self.n
        old = self.bucket_load
        if new_avg <= 2 * old and old <= 2 * new_avg and old != 0:
            return False
        self.bucket_load = new_avg
        hist = sorted(length for _, length, _ in self.window)
        upper, last, new = 0, 0, []
        for w in range(self.n):
            is_last = w == self.n - 1
            if last >= len(hist) and is_last:
                new.append((upper, MAX))
                break
            acc, broke = 0, False
            for load in hist[last:]:
                acc += load
                if acc >= new_avg:
                    if is_last:
                        new.append((upper, MAX))
                        broke = True
                        break
                    if load <= upper:
                        real = upper + new_avg
                        new.append((upper, real))
                        upper = real + 1
                    else:
                        new.append((upper, load))
                        upper = load + 1
                    last += 1
                    broke = True
                    break
                last += 1
            if not broke:
                right = upper + new_avg
                if is_last:
                    new.append((upper, MAX))
                    break
                new.append((upper, right))
                upper = right + 1
        self.boundary = new
        self.adjustments += 1
        return True

    # --- RouterPolicy ---------------------------------------------------------------------------------------
    def route(self, req: RequestView, cluster: ClusterView, now: float) -> int:
        if self.next_adjust is None:
            self.next_adjust = now  # SMG's timer fires once at start, then every period
        while now >= self.next_adjust:
            self.adjust_boundary()
            self.next_adjust += self.cfg.bucket_adjust_interval_secs
        healthy = {x.iid for x in cluster.loads if x.healthy} if cluster.loads else set(range(self.n))
        length = int(req.prompt_len)
        mx, mn = max(self.load), min(self.load)
        imbalanced = (mx - mn) > self.cfg.balance_abs_threshold and mx > self.cfg.balance_rel_threshold * mn
        if imbalanced:
            w = min(range(self.n), key=lambda i: (self.load[i] if i in healthy else MAX, i))
        else:
            b = self.find_boundary(length)
            w = b if b is not None and b in healthy else self.rng.choice(sorted(healthy) or list(range(self.n)))
        # post_process_request: add, then expire old entries, then record
        self.load[w] += length
        self._expire(now)
        self.window.append((now, length, w))
        self.load_total += length
        return w


def make_bucket_router(ctx, **options) -> BucketRouter:
    cfg = config_from_options(BucketConfig, options, what="router 'bucket'")
    return BucketRouter(ctx.num_instances, cfg, seed=ctx.seed)
