"""The router's seam to the policies: builds the RouterPolicy through ``policies.registry.make_router`` (so
the live router runs the simulator's code) and calls route / migration_bound / migrate / rebalance /
on_finish with views built from the worker pool. No policy logic lives here: options come from
:mod:`.policy_options`.

A policy may hold a request (``route`` returns ``decisions.HOLD``, e.g. cascade's ``pool_hold``): ``admit`` then
waits until the policy's ``release`` sends it; a release task calls ``release`` when ``release_at`` says, woken by
every call into the policy (a first token reaches ``migrate``, a finish, a publication). A held request whose client
left is reported to the policy as finished when it is released. A rebuilt policy (workers changed) routes the held
requests again.

Adapter error handling (docs/CONTRACTS.md): when the policy's ``route`` raises, or returns an instance that
is out of range or unhealthy (a policy bug), the request is placed by the registry's ``least_load`` policy
instead, logged, and counted in ``sglang_cascade_router_policy_fallbacks{reason}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from ..core.costmodel import CostModel
from ..core.decisions import HOLD, Migration
from ..core.interfaces import RouterPolicy
from ..core.views import ClusterView, RequestView
from ..policies.migration_costs import MigrationCosts
from .args import RouterArgs
from .policy_options import PolicyOptions
from .workers import Worker, WorkerPool

log = logging.getLogger("sglang_cascade.router")
FALLBACK_POLICY = "least_load"
HELD = object()  # ``route``: the policy holds the request (``admit`` waits for its release)
RELEASE_POLL_S = 1.0  # the release task looks again at least this often


class Placement:
    def __init__(self, args: RouterArgs, pool: WorkerPool, policy_factory=None, metrics=None):
        self.args = args
        self.pool = pool
        self.metrics = metrics
        self.cost_model = CostModel.for_names(args.cascade_model, args.cascade_gpu, args.cascade_tp)
        self.length_sample, self.arrival_rate = start_sample(args)
        self.options = PolicyOptions(args)
        self._factory = policy_factory  # tests may inject one: (num_instances) -> RouterPolicy
        self._policy: RouterPolicy | None = None
        self._fallback: RouterPolicy | None = None
        self._version = -1
        self._checker = None  # the background plan checker of the current policy (cascade), if any
        # the stalls of this router's real moves: the policy's migration planner prefers them to its model
        self.migration_costs = MigrationCosts()
        self._held: dict[str, tuple[RequestView, asyncio.Future]] = {}  # rid -> (request, its admit's future)
        self._wake: asyncio.Event | None = None
        self._releaser: asyncio.Task | None = None

    def _build(self, n: int) -> RouterPolicy:
        a = self.args
        if self._factory is not None:
            return self._factory(n)
        from ..policies.registry import PolicyContext, make_router

        options = self.options.for_workers(n)
        self.close()
        self._checker = self._make_checker(options)
        ctx = PolicyContext(
            cost_model=self.cost_model,
            num_instances=n,
            seed=a.seed,
            plan_checker=self._checker,
            migration_costs=self.migration_costs,
            length_sample=list(self.length_sample),
            arrival_rate=self.arrival_rate,
        )
        return make_router(a.policy, ctx, **options)

    def _make_checker(self, options: dict):
        """cascade scores its candidate stage plans (``plan_check=1``) or its auto prefill pool's sizes
        (``pool_check``, the default) with the simulator in a background child process (never on the request path;
        ``SGLANG_CASCADE_PLAN_CHECK_MODE=thread``: a thread; both start with the first check); other policies get
        none."""
        from ..core.options import split_name
        from ..policies.cascade_config import wants_plan_checker

        base, name_opts = split_name(self.args.policy)
        merged = {**name_opts, **options}
        if base != "cascade" or not wants_plan_checker(merged):
            return None
        from ..planning.factory import make_background_checker
        from ..planning.sim_checker import SimCheckerConfig

        return make_background_checker(self.cost_model, SimCheckerConfig(router_options={**name_opts, **options}))

    def close(self) -> None:
        """Stop the plan checker's process / thread (router shutdown, policy rebuild)."""
        if self._checker is not None:
            self._checker.close()
            self._checker = None

    def checker_stats(self) -> dict | None:
        """The background plan checker's counters (None without one): mode, jobs, failures, CPU seconds."""
        c = self._checker
        if c is None:
            return None
        return {
            "mode": "process" if hasattr(c, "pid") else "thread",
            "jobs": getattr(c, "jobs", 0),
            "failures": getattr(c, "failures", 0),
            "cpu_s": round(float(getattr(c, "cpu_s", 0.0)), 4),
            "busy": bool(getattr(c, "busy", False)),
            "pid": getattr(c, "pid", None),
        }

    def plan_budget(self, now: float) -> dict | None:
        """The plan check's CPU budget governor (``CheckBudget.state``: spent, when the next check may run);
        None without a checker."""
        state = getattr(self._policy, "budget_state", None)
        return state(now) if self._checker is not None and state is not None else None

    def plan_decision(self) -> dict | None:
        d = getattr(self._policy, "last_decision", None)
        return d.to_json() if d is not None and hasattr(d, "to_json") else None

    def plan_info(self) -> dict | None:
        """cascade's ``last_plan_info`` (the DP's plan, the prefill pool and why), JSON-safe; None for other policies."""
        info = getattr(self._policy, "last_plan_info", None)
        return json.loads(json.dumps(info, default=_json_number)) if isinstance(info, dict) else None

    def _build_fallback(self, n: int) -> RouterPolicy:
        from ..policies.registry import PolicyContext, make_router

        return make_router(
            FALLBACK_POLICY, PolicyContext(cost_model=self.cost_model, num_instances=n, seed=self.args.seed)
        )

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
            self._policy = self.options.configure(self._build(n))
            self._fallback = self._build_fallback(n)
            self._version = self.pool.version
            log.info("policy %s built for %d workers", self.args.policy, n)
            self._reroute_held()
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
        policy = self.policy
        try:
            iid = policy.route(req, cluster, now)
        except Exception:  # a policy bug must not take the router down
            log.exception("policy %s: route failed; placing by %s", policy.name, FALLBACK_POLICY)
            return self._fall_back(req, cluster, now, "error")
        if iid == HOLD and _holds(policy):
            self._hold(req)
            return HELD
        if self._valid(iid, cluster):
            return self.pool.workers[iid]
        log.error(
            "policy %s: route returned %r (not a healthy worker); placing by %s", policy.name, iid, FALLBACK_POLICY
        )
        return self._fall_back(req, cluster, now, "invalid_instance")

    async def admit(self, req: RequestView, now: float, exclude: set[Worker] = frozenset()) -> Worker | None:
        """``route``, waiting while the policy holds the request."""
        w = self.route(req, now, exclude)
        if w is not HELD:
            return w
        return await self._held[req.rid][1]

    @property
    def held(self) -> int:
        """Requests the policy holds now."""
        return len(self._held)

    def _hold(self, req: RequestView) -> None:
        """Held: a new future for ``admit`` to await, or the pending one of a request held again (``_reroute_held``)."""
        old = self._held.get(req.rid)
        fut = old[1] if old is not None and not old[1].done() else asyncio.get_running_loop().create_future()
        self._held[req.rid] = (req, fut)
        self._count_held()
        self._kick()

    def _count_held(self) -> None:
        if self.metrics is not None:
            self.metrics.held.set(len(self._held))

    def abort_held(self, rid: str | None, exc: Exception) -> int:
        """``/abort_request`` of held requests (``rid`` None: all): their ``admit`` raises ``exc``; the policy hears of
        each as finished when it releases it. Returns how many were aborted."""
        n = 0
        for key, (_, fut) in self._held.items():
            if (rid is None or key == rid) and not fut.done():
                fut.set_exception(exc)
                n += 1
        return n

    def _kick(self) -> None:
        """Wake the release task (started on the first hold)."""
        if not self._held:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a synchronous caller): nothing waits on a release
            return
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._releaser is None or self._releaser.done():
            self._releaser = loop.create_task(self._release_loop())

    async def _release_loop(self) -> None:
        while self._held:
            now = time.monotonic()
            policy = self.policy
            try:
                at = policy.release_at(now)
                released = self._release(policy, now) if at is not None and at <= now else 0
            except Exception:  # a policy bug: the held requests are placed by the fallback policy
                log.exception(
                    "policy %s: release failed; placing its held requests by %s", policy.name, FALLBACK_POLICY
                )
                self._release_all_by_fallback(now)
                return
            if released:  # look again at once: a departed client's release freed its member
                continue
            self._wake.clear()
            wait = RELEASE_POLL_S if at is None or at <= now else min(RELEASE_POLL_S, at - now)
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass

    def _release(self, policy: RouterPolicy, now: float) -> int:
        """Resolve what the policy releases now; returns how many it released (sent, or dropped: client gone)."""
        cluster = self.cluster(now)
        released = policy.release(cluster, now)
        for req, iid in released:
            held = self._held.pop(req.rid, None)
            if held is None or held[1].done():  # its client left: the policy must not count it as queued there
                policy.on_finish(req, now)
                continue
            w = self.pool.workers[iid] if self._valid(iid, cluster) else self._fall_back(req, cluster, now, "held")
            held[1].set_result(w)
        self._count_held()
        return len(released)

    def _release_all_by_fallback(self, now: float) -> None:
        cluster = self.cluster(now)
        for rid, (req, fut) in list(self._held.items()):
            del self._held[rid]
            if not fut.done():
                fut.set_result(self._fall_back(req, cluster, now, "error"))
        self._count_held()

    def _reroute_held(self) -> None:
        """A rebuilt policy does not know the old one's held requests: route them again (it may hold them)."""
        now = time.monotonic()
        for rid, (req, fut) in list(self._held.items()):
            w = None if fut.done() else self.route(req, now)
            if w is HELD:  # held again: ``_hold`` kept ``fut``, the future ``admit`` awaits
                continue
            del self._held[rid]
            if not fut.done():
                fut.set_result(w)
        self._count_held()

    def _valid(self, iid, cluster: ClusterView) -> bool:
        return isinstance(iid, int) and 0 <= iid < len(self.pool.workers) and cluster.loads[iid].healthy

    def _fall_back(self, req: RequestView, cluster: ClusterView, now: float, reason: str) -> Worker | None:
        if self.metrics is not None:
            self.metrics.policy_fallbacks.labels(reason=reason).inc()
        iid = self._fallback.route(req, cluster, now)
        return self.pool.workers[iid] if self._valid(iid, cluster) else None

    def bound(self, req: RequestView, w: Worker) -> int | None:
        if w.iid < 0 or w.removed:
            return None
        return self.policy.migration_bound(req, w.iid)

    def migrate(self, req: RequestView, w: Worker, now: float) -> tuple[Worker, Migration] | None:
        """The policy's move of ``req`` off ``w``: (destination, the decision with its mechanism), or None."""
        if w.iid < 0 or w.removed:
            return None
        m = self.policy.migrate(req, w.iid, self.cluster(now), now)
        self._kick()
        dst = self._dst(m, w, now)
        return None if dst is None else (dst, m)

    def _dst(self, m: Migration | None, src: Worker, now: float) -> Worker | None:
        if m is None or m.dst == m.src or not 0 <= m.dst < len(self.pool.workers):
            return None
        dst = self.pool.workers[m.dst]
        return dst if dst is not src and dst.usable(now) else None

    def rebalance(self, running: dict[int, list[RequestView]], now: float) -> list[tuple[Worker, Migration]]:
        out = []
        for m in self.policy.rebalance(self.cluster(now), running, now):
            if 0 <= m.src < len(self.pool.workers):
                dst = self._dst(m, self.pool.workers[m.src], now)
                if dst is not None:
                    out.append((dst, m))
        self._kick()
        return out

    def finish(self, req: RequestView, now: float) -> None:
        try:
            self.policy.on_finish(req, now)
        except Exception:  # pragma: no cover - policy bug
            log.exception("policy on_finish failed")
        self._kick()

    def publish(self, load, now: float) -> None:
        self.policy.on_publish(load, now)
        self._kick()


def _holds(policy: RouterPolicy) -> bool:
    """Whether the policy can hold requests (it implements ``release``)."""
    return type(policy).release is not RouterPolicy.release


def _json_number(x):
    """``json.dumps`` fallback for numpy scalars and the like: a float, else its text."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def start_sample(args: RouterArgs) -> tuple[list[tuple[int, int]], float | None]:
    """``--cascade-length-sample`` / ``--cascade-rate``: the lengths and rate the policy starts from, taken from the
    trace as the simulator takes its own (``traces.length_sample``); ([], None) without."""
    if not args.cascade_length_sample:
        return [], args.cascade_rate
    from ..core.traces import length_sample, load_trace

    reqs = load_trace(args.cascade_length_sample)
    if not reqs:
        raise ValueError(f"--cascade-length-sample {args.cascade_length_sample!r} has no requests")
    sample, rate = length_sample(reqs)
    return sample, args.cascade_rate or rate
