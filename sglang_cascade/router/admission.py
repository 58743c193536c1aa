"""Admission control: --max-concurrent-requests slots with a --queue-size FIFO (429 when full, 503 after
--queue-timeout-secs)."""

from __future__ import annotations

import asyncio
import collections

from .metrics import RouterMetrics
from .session import RouterHTTPError


class Admission:
    """--max-concurrent-requests slots with a --queue-size FIFO; beyond it 429, a queue wait past
    --queue-timeout-secs gets 503. Never blocks without a bound."""

    def __init__(self, max_concurrent: int, queue_size: int, queue_timeout_s: float, metrics: RouterMetrics):
        self.max, self.queue_size, self.timeout = max_concurrent, queue_size, queue_timeout_s
        self.active = 0
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.metrics = metrics

    async def acquire(self) -> None:
        if self.max < 0 or (self.active < self.max and not self.waiters):
            self.active += 1
            self.metrics.active.set(self.active)
            return
        if len(self.waiters) >= self.queue_size:
            self.metrics.rejected.labels(reason="queue_full").inc()
            raise RouterHTTPError(
                429,
                f"too many requests: {self.active} running and {len(self.waiters)} queued "
                f"(--max-concurrent-requests {self.max}, --queue-size {self.queue_size})",
            )
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        self.metrics.queued.set(len(self.waiters))
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except asyncio.TimeoutError:
            if fut.done():  # got the slot at the last moment: keep it
                return
            fut.cancel()
            self.waiters.remove(fut)
            self.metrics.queued.set(len(self.waiters))
            self.metrics.rejected.labels(reason="queue_timeout").inc()
            raise RouterHTTPError(503, f"queued longer than --queue-timeout-secs {self.timeout}") from None
        except asyncio.CancelledError:
            if fut.done():
                self.release()
            else:
                fut.cancel()
                self.waiters.remove(fut)
            raise

    def release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            self.metrics.queued.set(len(self.waiters))
            if not fut.done():
                fut.set_result(None)  # the slot passes to the next waiter
                return
        self.active -= 1
        self.metrics.active.set(self.active)
