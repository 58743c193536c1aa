"""The router's seam to the policies: builds the RouterPolicy through ``policies.registry.make_router`` (so
the live router runs the simulator's code) and calls route / migration_bound / migrate / rebalance /
on_finish with views built from the worker pool. No policy logic lives here.
"""

from __future__ import annotations

import json
import logging

from ..core.costmodel import CostModel
from ..core.decisions import Migration
from ..core.interfaces import RouterPolicy
from ..core.views import ClusterView, RequestView
from .args import RouterArgs
from .cache_aware import CacheAwareConfig, CacheAwarePolicy
from .workers import Worker, WorkerPool

log = logging.getLogger("sglang_cascade.router")


def load_plan(path: str) -> dict:
    """A `sglang-cascade plan` JSON ({"stages": [{"lo", "hi", "instances"}, ...]}, or the bare list) ->
    the cascade router's ``bounds``/``counts`` options."""
    try:
        with open(path) as f:
            plan = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read cascade plan {path!r}: {e}") from e
    stages = plan.get("stages") if isinstance(plan, dict) else plan
    try:
        bounds = [int(s["hi"]) for s in stages[:-1]]
        counts = [int(s["instances"]) for s in stages]
    except (TypeError, KeyError, ValueError, IndexError) as e:
        raise ValueError(f"cascade plan {path!r} needs a 'stages' list of {{lo, hi, instances}}: {e}") from e
    if not counts:
        raise ValueError(f"cascade plan {path!r} has no stages")
    return {"bounds": "/".join(map(str, bounds)), "counts": "/".join(map(str, counts))}


class Placement:
    def __init__(self, args: RouterArgs, pool: WorkerPool, policy_factory=None):
        self.args = args
        self.pool = pool
        self.cost_model = CostModel.for_names(args.cascade_model, args.cascade_gpu, args.cascade_tp)
        self.plan = load_plan(args.cascade_plan) if args.cascade_plan else None
        self._factory = policy_factory  # tests may inject one: (num_instances) -> RouterPolicy
        self._policy: RouterPolicy | None = None
        self._version = -1
        self.base = args.policy.split(":", 1)[0]

    def _build(self, n: int) -> RouterPolicy:
        a = self.args
        if self._factory is not None:
            return self._factory(n)
        if self.base == "cache_aware":
            return CacheAwarePolicy(n, CacheAwareConfig(a.cache_threshold, a.balance_abs_threshold,
                                                        a.balance_rel_threshold, max_tree_size=a.max_tree_size))
        from ..policies.registry import PolicyContext, make_router

        options = dict(a.policy_options)
        if self.base == "cascade":
            if self.plan is not None:
                if sum(int(c) for c in self.plan["counts"].split("/")) != n:
                    log.warning("cascade plan %s is for %s instances, the router has %d workers: auto-plan instead",
                                a.cascade_plan, self.plan["counts"], n)
                else:
                    options.update(self.plan)
            options.setdefault("mode", a.migration_mode)  # the mechanism this router implements
        ctx = PolicyContext(cost_model=self.cost_model, num_instances=n, seed=a.seed)
        return make_router(a.policy, ctx, **options)

    def stage_ranges(self) -> list[tuple[int, int, int, int | None]]:
        """(iid, stage, lo, hi) per worker when the policy routes by a stage plan, else []."""
        plan = getattr(self.policy, "plan", None)
        stages = getattr(plan, "stages", None)
        if not callable(stages):
            return []
        return [(i, k, s.lo, s.hi) for k, s in enumerate(stages()) for i in s.instances]

    @property
    def policy(self) -> RouterPolicy:
        if self._version != self.pool.version:
            n = max(1, len(self.pool.workers))
            self._policy = self._build(n)
            self._version = self.pool.version
            log.info("policy %s built for %d workers", self.args.policy, n)
        return self._policy

    @property
    def migrates(self) -> bool:
        return bool(getattr(self.policy, "migrates", False))

    def cluster(self, now: float, exclude: set[Worker] = frozenset()) -> ClusterView:
        view = self.pool.cluster_view(now)
        for w in exclude:
            if 0 <= w.iid < len(view.loads) and self.pool.workers[w.iid] is w:
                view.loads[w.iid].healthy = False
        return view

    def route(self, req: RequestView, now: float, exclude: set[Worker] = frozenset()) -> Worker | None:
        if not self.pool.workers:
            return None
        cluster = self.cluster(now, exclude)
        if not cluster.healthy():
            return None
        try:
            iid = self.policy.route(req, cluster, now)
        except Exception as e:  # a policy bug must not take the router down
            log.exception("policy route failed (%s); falling back to least in-flight", e)
            iid = -1
        if 0 <= iid < len(self.pool.workers) and cluster.loads[iid].healthy:
            return self.pool.workers[iid]
        ok = [self.pool.workers[x.iid] for x in cluster.healthy()]
        return min(ok, key=lambda w: w.in_flight) if ok else None

    def bound(self, req: RequestView, w: Worker) -> int | None:
        if w.iid < 0 or w.removed:
            return None
        return self.policy.migration_bound(req, w.iid)

    def migrate(self, req: RequestView, w: Worker, now: float) -> Worker | None:
        if w.iid < 0 or w.removed:
            return None
        m = self.policy.migrate(req, w.iid, self.cluster(now), now)
        return self._dst(m, w, now)

    def _dst(self, m: Migration | None, src: Worker, now: float) -> Worker | None:
        if m is None or m.dst == m.src or not 0 <= m.dst < len(self.pool.workers):
            return None
        dst = self.pool.workers[m.dst]
        return dst if dst is not src and dst.usable(now) else None

    def rebalance(self, running: dict[int, list[RequestView]], now: float) -> list[tuple[RequestView, Worker]]:
        out = []
        for m in self.policy.rebalance(self.cluster(now), running, now):
            if 0 <= m.src < len(self.pool.workers):
                dst = self._dst(m, self.pool.workers[m.src], now)
                if dst is not None:
                    out.append((m.req, dst))
        return out

    def finish(self, req: RequestView, now: float) -> None:
        try:
            self.policy.on_finish(req, now)
        except Exception:  # pragma: no cover - policy bug
            log.exception("policy on_finish failed")

    def publish(self, load, now: float) -> None:
        self.policy.on_publish(load, now)
