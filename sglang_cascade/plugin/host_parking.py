"""Parked requests' KV in host memory: copied out at park, restored at resume, within a token budget.

A park that does not fit the budget, cannot be rebuilt, or whose copy fails is a park by recompute (the
request is re-queued as retracted at resume and SGLang prefills it again). Counters are the driver's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from . import batch_ops

logger = logging.getLogger("sglang_cascade.plugin")


@dataclass
class HostKV:
    """A host-parked request's KV: ``cpu`` as the allocator's ``get_cpu_copy`` returned it."""

    cpu: Any
    tokens: int  # KV positions saved: prompt + output - 1
    step: int  # driver step in which it was parked


class HostParking:
    def __init__(self, budget_tokens: int, counters: dict[str, int]):
        self.budget_tokens = budget_tokens
        self.counters = counters
        self.kv: dict[str, HostKV] = {}  # rid -> its KV in host memory
        self.used = 0  # tokens held

    def copy_out(self, sched: Any, reqs: list, step: int) -> None:
        """Copy the KV of requests about to be parked to host memory, within the budget."""
        for req in reqs:
            if not batch_ops.host_parkable(req):
                continue
            n = len(req.origin_input_ids) + len(req.output_ids) - 1
            if self.used + n > self.budget_tokens:
                continue
            try:
                cpu, n = batch_ops.copy_kv_to_host(sched.req_to_token_pool, sched.token_to_kv_pool_allocator, req)
            except Exception as exc:
                self.counters["host_copy_failures"] += 1
                logger.warning(
                    "cascade plugin: host copy of %s failed (%s: %s); it is parked by recompute",
                    req.rid,
                    type(exc).__name__,
                    exc,
                )
                continue
            self.kv[req.rid] = HostKV(cpu, n, step)
            self.used += n
            self.counters["host_kv_tokens_peak"] = max(self.counters["host_kv_tokens_peak"], self.used)

    def drop(self, rid: str) -> HostKV | None:
        h = self.kv.pop(rid, None)
        if h is not None:
            self.used -= h.tokens
        return h

    def unpark(self, sched: Any, req: Any, step: int) -> bool:
        """Bring a parked request back. Host parks: KV restored to the device, returns True (the caller
        merges it into the running batch). Otherwise (or if the restore cannot be done now) the request is
        re-queued as retracted and SGLang recomputes it; returns False."""
        h = self.drop(req.rid)
        if h is not None:
            ok = False
            if h.step < step:  # the in-flight result of its last batch was processed (and skipped)
                try:
                    ok = batch_ops.restore_kv_from_host(sched, req, h.cpu, h.tokens)
                except Exception as exc:
                    logger.warning(
                        "cascade plugin: host restore of %s failed (%s: %s); recomputing it",
                        req.rid,
                        type(exc).__name__,
                        exc,
                    )
            if ok:
                self.counters["resumed_host"] += 1
                return True
            self.counters["host_restore_fallbacks"] += 1
        sched._add_request_to_queue(req, is_retracted=True)
        self.counters["resumed_recompute"] += 1
        return False
