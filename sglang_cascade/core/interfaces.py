"""The two policy seams every driver calls.

Policies are pure code over views: no engine import, no HTTP, no clock reads (``now`` is an argument).
The simulator, the SGLang plugin and the HTTP router call these same methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from .decisions import IterationPlan, Migration
from .views import ClusterView, InstanceView, RequestView


class InstanceScheduler(ABC):
    """Decides, each engine iteration, what one instance computes."""

    name: str = "abstract"

    @abstractmethod
    def schedule(self, inst: InstanceView, now: float) -> IterationPlan:
        """Which waiting requests to prefill (admit), which running requests decode, what to preempt/park."""

    def on_arrival(self, req: RequestView, inst: InstanceView, now: float) -> None:
        """A request joined ``inst.waiting`` (drivers call this before appending)."""

    def on_finish(self, req: RequestView, inst: InstanceView, now: float) -> None:
        """A request finished (its true output length is ``req.output_len``): learn from it."""

    def admission_reserve(self, inst: InstanceView, incoming: RequestView | None = None) -> float:
        """KV tokens the instance's admission keeps back beside its used KV (the running requests' future tokens,
        and what admitting ``incoming``, a request moving in with its KV, takes): a KV move needs that much room
        beyond its own tokens, or its continuation could not be admitted (``sim/migration._has_room``; the live
        import checks the same, ``plugin/kv_pool_io.import_kv``). Default: none."""
        return 0.0

    def on_kv_exhausted(self, inst: InstanceView, now: float, needed: int) -> list[RequestView]:
        """The engine could not allocate ``needed`` new KV tokens for the planned iteration: return requests
        to retract. Default, as SGLang 0.5.23's ``_get_decode_retraction_order``: the running request with the
        fewest output tokens first (ties: the longest prompt)."""
        if not inst.running:
            return []
        victim = min(inst.running, key=lambda r: (r.output_len, -r.prompt_len))
        return [victim]


class RouterPolicy(ABC):
    """Decides which instance serves a request, and which running requests move where."""

    name: str = "abstract"
    migrates: bool = False  # True when the policy may return migrations
    # Bumped on every change of migration bounds at run time; drivers that cache ``migration_bound``
    # re-read it when this changes. Routers with static bounds leave it at 0.
    plan_version: int = 0
    # Seconds between ``rebalance`` calls every driver honours (None: the driver's default).
    rebalance_interval: float | None = None
    # A request moves at most this many times; drivers refuse (and re-arm) further migrations of it.
    max_migrations: int = 8

    @abstractmethod
    def route(self, req: RequestView, cluster: ClusterView, now: float) -> int:
        """Instance id for a new request (only healthy instances may be returned), or ``decisions.HOLD``: the
        router keeps it and a later ``release`` sends it."""

    def release(self, cluster: ClusterView, now: float) -> list[tuple[RequestView, int]]:
        """Held requests to send now, with their instances. Drivers call it when ``release_at`` says."""
        return []

    def release_at(self, now: float) -> float | None:
        """When ``release`` next has something to send (``now``: at once; None: nothing held). Drivers ask after
        every call into the router (route, migrate, rebalance, on_finish, release)."""
        return None

    def migration_bound(self, req: RequestView, iid: int) -> int | None:
        """Length at which ``req`` must leave instance ``iid`` (stage upper bound), or None. Drivers check
        ``req.length >= bound`` after each token; cheap by design."""
        return None

    def migrate(self, req: RequestView, src: int, cluster: ClusterView, now: float) -> Migration | None:
        """Where ``req`` goes once it reached its migration bound on ``src`` (None: stay)."""
        return None

    def rebalance(self, cluster: ClusterView, running: dict[int, list[RequestView]], now: float) -> list[Migration]:
        """Periodic load-driven migrations (Llumnix-style). ``running`` maps instance -> its requests."""
        return []

    def on_finish(self, req: RequestView, now: float) -> None:
        """A request finished; routers that learn the length mix observe it here."""

    def on_publish(self, load, now: float) -> None:  # pragma: no cover - default no-op
        """An instance published new load (drivers call it when a publication reaches this router)."""
