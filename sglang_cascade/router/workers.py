"""Workers the router knows: membership, health state, circuit breakers and the load view policies read.

A worker's slot ``iid`` is its index in :attr:`WorkerPool.workers`; membership changes renumber slots and
bump :attr:`WorkerPool.version` so the server rebuilds its policy for the new instance count. Requests in
flight hold their :class:`Worker` object, never a stale slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.views import ClusterView, InstanceLoad
from .worker_urls import normalize_worker_url


@dataclass
class BreakerConfig:
    failure_threshold: int = 10  # consecutive failures that open the breaker
    success_threshold: int = 3  # successes in half-open that close it
    timeout_s: float = 60.0  # open -> half-open after this long
    window_s: float = 120.0  # failures older than this are forgotten
    enabled: bool = True


@dataclass
class CircuitBreaker:
    cfg: BreakerConfig
    state: str = "closed"  # closed | open | half_open
    failures: int = 0
    successes: int = 0
    last_failure: float = 0.0
    opened_at: float = 0.0

    def allows(self, now: float) -> bool:
        if not self.cfg.enabled or self.state == "closed":
            return True
        if self.state == "open" and now - self.opened_at >= self.cfg.timeout_s:
            self.state, self.successes = "half_open", 0
        return self.state == "half_open"

    def probe_ok(self) -> None:
        """A health check succeeded: an open breaker lets requests try the worker again (half-open)."""
        if self.cfg.enabled and self.state == "open":
            self.state, self.successes = "half_open", 0

    def record(self, ok: bool, now: float) -> None:
        if not self.cfg.enabled:
            return
        if ok:
            if self.state == "half_open":
                self.successes += 1
                if self.successes >= self.cfg.success_threshold:
                    self.state, self.failures = "closed", 0
            else:
                self.failures = 0
            return
        if now - self.last_failure > self.cfg.window_s:
            self.failures = 0
        self.failures += 1
        self.last_failure = now
        if self.state == "half_open" or self.failures >= self.cfg.failure_threshold:
            self.state, self.opened_at = "open", now


@dataclass(eq=False)
class Worker:
    url: str
    breaker: CircuitBreaker
    iid: int = -1
    healthy: bool = True
    starting: bool = False  # not yet seen healthy: joins routing on its first successful check
    removed: bool = False
    health_failures: int = 0
    health_successes: int = 0
    # this replica's requests on the worker
    in_flight: int = 0
    in_flight_tokens: int = 0  # current lengths (prompt + generated) of those requests
    # from the worker's /v1/loads (all routers' requests, possibly stale)
    polled_running: int = 0
    polled_waiting: int = 0
    polled_kv_used: int = 0
    kv_capacity: int = 0
    polled_at: float = 0.0
    # from the other router replicas: replica id -> (in_flight, tokens, time received)
    peers: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    # from the worker's scheduler plugin (core.messages.LoadMessage), if it publishes
    plugin_load: InstanceLoad | None = None
    requests_total: int = 0
    failures_total: int = 0
    context_length: int | None = None  # the model's context (from the worker's /get_server_info or /v1/models)

    def usable(self, now: float) -> bool:
        return self.healthy and not self.removed and self.breaker.allows(now)

    def load(self, now: float, default_capacity: int, peer_ttl: float = 2.0) -> InstanceLoad:
        peer_n = peer_t = 0
        for n, t, ts in self.peers.values():
            if now - ts <= peer_ttl:
                peer_n += n
                peer_t += t
        running = max(self.polled_running, self.in_flight + peer_n)
        kv_used = max(self.polled_kv_used, self.in_flight_tokens + peer_t)
        pl = self.plugin_load
        if pl is not None and now - pl.published_at <= peer_ttl:
            running = max(running, pl.num_running)
            kv_used = max(kv_used, pl.kv_used)
        return InstanceLoad(
            iid=self.iid,
            num_running=running,
            num_waiting=self.polled_waiting,
            kv_used=kv_used,
            kv_capacity=self.kv_capacity or default_capacity,
            outstanding_tokens=self.in_flight_tokens + peer_t,
            stage=pl.stage if pl is not None else -1,
            range_lo=pl.range_lo if pl is not None else 0,
            range_hi=pl.range_hi if pl is not None else None,
            published_at=now,
            healthy=self.usable(now),
        )


class WorkerPool:
    def __init__(self, breaker: BreakerConfig | None = None, default_capacity: int = 1 << 20):
        self.breaker_cfg = breaker or BreakerConfig()
        self.default_capacity = default_capacity
        self.workers: list[Worker] = []
        self.version = 0

    def _renumber(self) -> None:
        for i, w in enumerate(self.workers):
            w.iid = i
        self.version += 1

    def get(self, url: str) -> Worker | None:
        url = url.rstrip("/") if isinstance(url, str) else url
        for w in self.workers:
            if w.url == url:
                return w
        return None

    def add(self, url: str, starting: bool = False) -> Worker:
        """Register ``url``; with ``starting`` it stays out of routing until a health check succeeds."""
        url = normalize_worker_url(url)
        if self.get(url) is not None:
            raise ValueError(f"worker {url} is already registered")
        w = Worker(url=url, breaker=CircuitBreaker(self.breaker_cfg), healthy=not starting, starting=starting)
        self.workers.append(w)
        self._renumber()
        return w

    def remove(self, url: str) -> Worker:
        w = self.get(url)
        if w is None:
            raise KeyError(f"worker {url.rstrip('/')} is not registered")
        w.removed = True
        self.workers.remove(w)
        self._renumber()
        return w

    def cluster_view(self, now: float) -> ClusterView:
        return ClusterView(loads=[w.load(now, self.default_capacity) for w in self.workers], now=now)

    def usable(self, now: float) -> list[Worker]:
        return [w for w in self.workers if w.usable(now)]

    def context_length(self) -> int | None:
        """The smallest context length the workers report (None while none has)."""
        return min((w.context_length for w in self.workers if w.context_length), default=None)
