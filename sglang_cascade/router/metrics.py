"""Prometheus metrics of one router (its own registry, so several routers can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

DEFAULT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class RouterMetrics:
    def __init__(self, buckets: list[float] | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sglang_cascade_router_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.duration = Histogram(
            "sglang_cascade_router_request_duration_seconds",
            "Request duration",
            ["endpoint"],
            buckets=tuple(buckets or DEFAULT_BUCKETS),
            registry=r,
        )
        self.active = Gauge("sglang_cascade_router_active_requests", "Requests in flight", registry=r)
        self.queued = Gauge("sglang_cascade_router_queued_requests", "Requests waiting for a slot", registry=r)
        self.held = Gauge(
            "sglang_cascade_router_held_requests",
            "Requests the policy holds, not yet sent to a worker (cascade's pool_hold)",
            registry=r,
        )
        self.rejected = Counter(
            "sglang_cascade_router_rejected", "Requests rejected by backpressure", ["reason"], registry=r
        )
        self.migrations = Counter(
            "sglang_cascade_router_migrations",
            "Live moves of running requests (reason stage|failure; mode kv_transfer|recompute; fallback: why a "
            "KV-transfer move recomputed instead, empty if it did not)",
            ["reason", "mode", "fallback"],
            registry=r,
        )
        self.policy_fallbacks = Counter(
            "sglang_cascade_router_policy_fallbacks",
            "Requests placed by the fallback policy (the policy raised or returned an unusable instance)",
            ["reason"],
            registry=r,
        )
        self.worker_failures = Counter(
            "sglang_cascade_router_worker_failures", "Failed worker calls", ["worker"], registry=r
        )
        self.worker_healthy = Gauge(
            "sglang_cascade_router_worker_healthy", "1 if the worker is healthy", ["worker"], registry=r
        )
        self.worker_in_flight = Gauge(
            "sglang_cascade_router_worker_in_flight", "This router's requests per worker", ["worker"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
