"""Typed views every policy reads.

Drivers (simulator, SGLang plugin, HTTP router) own these objects and keep them up to date; policies only
read them (and may write the few fields documented as policy-owned, e.g. ``reserved_kv``). Nothing here
imports an engine, a socket or a clock: ``now`` is always passed in.

Units: times in seconds, sizes in tokens unless a name says bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum


class Phase(IntEnum):
    """Where a request is in its life on one instance."""

    WAITING = 0  # queued; some prompt (or recompute) tokens still to prefill
    RUNNING = 1  # KV on GPU, decoding
    PARKED = 2  # KV held in host memory (CPU pool), not decoding
    FINISHED = 3


@dataclass(slots=True, eq=False)
class RequestView:
    """One request as policies see it.

    ``kv_tokens`` counts tokens whose KV exists for this request on its instance (GPU or host). A waiting
    request has ``tokens_to_prefill = length - kv_tokens`` tokens left to compute before it can decode
    (a retracted request must recompute everything it had).
    """

    rid: str
    arrival: float
    prompt_len: int
    output_len: int = 0  # tokens generated so far
    kv_tokens: int = 0  # tokens whose KV is materialized (GPU or host)
    max_new_tokens: int | None = None
    ignore_eos: bool = False  # the client asked for exactly max_new_tokens (SGLang then reserves all of them)
    predicted_output_len: int | None = None  # predicted total output length, when a predictor ran
    prediction_confidence: float = 0.0
    reserved_kv: int = 0  # policy-owned: KV tokens reserved for this request beyond kv_tokens' needs
    phase: Phase = Phase.WAITING
    instance: int = -1  # instance id currently serving it, -1 before routing
    first_token_time: float | None = None
    finish_time: float | None = None
    preemptions: int = 0
    migrations: int = 0
    last_decode: float = 0.0  # time of its last decode iteration (for starvation bounds)
    admitted_at: float | None = None
    extra: dict = field(default_factory=dict)  # driver-private data; policies must not rely on it
    # policy-owned: the request's decode group (e.g. its KV-length bucket), -1 for none. A plan may name
    # the groups it holds back (IterationPlan.held_groups) instead of drivers diffing ``decode`` per request.
    group: int = -1
    # Chained hashes of the prompt's prefix blocks (prefix-cache affinity, e.g. the ``cache_aware`` router);
    # the HTTP router hashes the request text, the simulator takes a trace's ``hash_ids``. Empty: unknown.
    block_hashes: Sequence[int] = ()

    @property
    def length(self) -> int:
        """Current sequence length: prompt + generated tokens."""
        return self.prompt_len + self.output_len

    @property
    def tokens_to_prefill(self) -> int:
        return max(0, self.length - self.kv_tokens)

    @property
    def predicted_remaining(self) -> int | None:
        if self.predicted_output_len is None:
            return None
        return max(0, self.predicted_output_len - self.output_len)


@dataclass(slots=True)
class InstanceLoad:
    """What an instance publishes about itself (possibly stale by the time a router reads it)."""

    iid: int
    num_running: int = 0
    num_waiting: int = 0
    num_parked: int = 0
    kv_used: int = 0
    kv_capacity: int = 1
    outstanding_tokens: int = 0  # prompt tokens still to prefill + predicted/remaining decode tokens
    stage: int = -1
    range_lo: int = 0
    range_hi: int | None = None  # None = unbounded
    published_at: float = 0.0
    healthy: bool = True

    @property
    def kv_utilization(self) -> float:
        return self.kv_used / max(1, self.kv_capacity)

    @property
    def num_requests(self) -> int:
        return self.num_running + self.num_waiting + self.num_parked


@dataclass(slots=True)
class InstanceView:
    """One instance's state as its own scheduler sees it (exact, not stale)."""

    iid: int
    kv_capacity: int  # GPU KV capacity in tokens
    waiting: list[RequestView] = field(default_factory=list)
    running: list[RequestView] = field(default_factory=list)
    parked: list[RequestView] = field(default_factory=list)
    host_kv_capacity: int = 0  # host-memory KV capacity in tokens (0 = no CPU pool)
    max_prefill_tokens: int = 8192  # chunked-prefill token budget per iteration
    max_running: int = 1024
    range_lo: int = 0
    range_hi: int | None = None
    iteration: int = 0
    # Driver-maintained counters (kept incrementally so policies read them in O(1)):
    kv_used: int = 0  # GPU KV tokens materialized (running + partially prefilled waiting requests)
    kv_free_external: int | None = None  # engine's own free-token count when it knows better (plugin)

    def recount_kv_used(self) -> int:
        """Recompute ``kv_used`` from the request lists (O(n); for drivers and tests, not hot paths)."""
        self.kv_used = sum(r.kv_tokens for r in self.running) + sum(r.kv_tokens for r in self.waiting)
        return self.kv_used

    @property
    def host_kv_used(self) -> int:
        return sum(r.kv_tokens for r in self.parked)

    def load(self, now: float) -> InstanceLoad:
        outstanding = 0
        for r in self.waiting:
            outstanding += r.tokens_to_prefill + (r.predicted_remaining or 0)
        for r in self.running:
            outstanding += r.predicted_remaining or 0
        return InstanceLoad(
            iid=self.iid,
            num_running=len(self.running),
            num_waiting=len(self.waiting),
            num_parked=len(self.parked),
            kv_used=self.kv_used,
            kv_capacity=self.kv_capacity,
            outstanding_tokens=outstanding,
            range_lo=self.range_lo,
            range_hi=self.range_hi,
            published_at=now,
        )


@dataclass(slots=True)
class ClusterView:
    """What one router (replica) knows: the loads instances last published, each with its own age."""

    loads: list[InstanceLoad]
    now: float = 0.0

    def staleness(self, iid: int) -> float:
        return self.now - self.loads[iid].published_at

    def healthy(self) -> list[InstanceLoad]:
        return [x for x in self.loads if x.healthy]
