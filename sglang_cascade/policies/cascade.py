"""The ``cascade`` router: instances form a pipeline of length-range stages.

- A new request enters the stage of its prompt length and goes to that stage's least-loaded member
  (``balance.MemberPicker``: published loads + this router's own sends since, queued prompt tokens
  included). With ``spill`` an instance of an earlier stage may prefill it when clearly less loaded; its
  first token then takes it past that stage's bound and it moves forward to its own stage.
- When a running request's length reaches its stage's upper bound, it migrates to the stage of its new
  length (the next one, or further if bounds moved), never backwards, so at most once per boundary; the
  migration planner picks recompute or KV transfer per request. The last stage has no upper bound.
- Every ``rebalance`` call: each boundary agent (``balance.StagePairBalancer``) may shift its boundary or
  hand over an instance from its two stages' loads; the range refiner moves boundaries after the length
  mix (and re-runs the DP on large drift).

Options (``cascade:migration=0`` etc.) are the fields of :class:`CascadeRouterConfig`; a field that shares its
name with a field of the DP's ``QoEConfig``, the balancer's ``BalanceConfig`` or the migration planner's
``MigrationConfig`` is passed on to it (``core.options.shared_options``).
"""

from __future__ import annotations

import logging
from collections import deque

from ..core.decisions import Migration
from ..core.interfaces import RouterPolicy
from ..core.options import config_from_options, shared_options
from ..core.views import ClusterView, InstanceLoad, RequestView
from .balance import BalanceConfig, MemberPicker, StagePairBalancer, instance_pressure
from .baselines import LeastLoadConfig, LeastLoadRouter
from .cascade_check import CascadeCheck
from .cascade_config import CascadeRouterConfig, checks_pool, checks_replans
from .cascade_entry import EntryDispatch
from .cascade_pool import CascadePool
from .check_budget import CheckBudget
from .migration import MigrationConfig, MigrationPlanner
from .plan_candidates import best_plan
from .plan_check import POOLED, PlanCheckConfig, PlanDecision
from .plan_replay import ArrivalRecorder
from .prefill_pool import PoolValve, PrefillPool, parse_pool_option, size_prefill_pool
from .refinement import RangeRefiner, RefinementConfig
from .stage_model import QoEConfig
from .stages import StagePlan

log = logging.getLogger("sglang_cascade.cascade")


STAT_KEYS = ("migrations", "recompute", "kv_transfer", "shifts", "handovers", "refine_moves", "replans", "deferred")
STAT_KEYS += ("pool_prefills",)


class CascadeRouter(CascadeCheck, CascadePool, RouterPolicy):
    name = "cascade"
    migrates = True

    @property
    def plan(self) -> StagePlan:
        return self._plan

    @plan.setter
    def plan(self, p: StagePlan) -> None:
        """Every plan change bumps ``plan_version``: drivers that cache ``migration_bound`` re-read it."""
        self._plan = p
        self.plan_version = getattr(self, "plan_version", -1) + 1

    def __init__(self, ctx, cfg: CascadeRouterConfig):
        self.cm = ctx.cost_model
        self.cfg = cfg
        self.n = int(ctx.num_instances)
        if self.n < 1:
            raise ValueError("cascade needs at least one instance")
        if cfg.pooled_dispatch not in ("least_load", "pressure"):
            raise ValueError(f"pooled_dispatch takes least_load or pressure, not {cfg.pooled_dispatch!r}")
        if not 0 < cfg.pool_decode_rho <= 1:
            raise ValueError(f"pool_decode_rho must be in (0, 1], got {cfg.pool_decode_rho}")
        self.qoe = config_from_options(QoEConfig, shared_options(cfg, QoEConfig))
        self.planner = MigrationPlanner(
            self.cm,
            config_from_options(MigrationConfig, shared_options(cfg, MigrationConfig)),
            measured=ctx.migration_costs,
        )
        self.bal_cfg = config_from_options(BalanceConfig, shared_options(cfg, BalanceConfig))
        self.picker = MemberPicker(self.cm, self.bal_cfg)
        self.entry = EntryDispatch(self.cm, cfg, self.picker, self.n)  # staged plans' request path
        self.pool_count = parse_pool_option(cfg.prefill_pool)  # 0: no pool; None: sized with each DP plan
        if self.pool_count:  # a fixed count leaves at least one decode instance (fewer workers: a smaller pool)
            self.pool_count = min(self.pool_count, self.n - 1)
        self.pool: PrefillPool | None = None
        self._pool_planned = 0  # the pool size the plan chose (pool_valve)
        self.valve = PoolValve(cfg.pool_valve)
        self._init_hold()
        self.rate = ctx.arrival_rate
        self.arrivals: deque = deque(maxlen=cfg.rate_window)
        self._now = 0.0
        self.refiner = RangeRefiner(RefinementConfig())
        self.loads: list[InstanceLoad] = [InstanceLoad(i) for i in range(self.n)]
        self.req_stage: dict[str, int] = {}
        self.placed: dict[str, int] = {}  # rid -> the instance this router last sent it to (plan-check state)
        self._running: dict = {}  # the running requests of the last rebalance call (plan-check state)
        self.deferred: dict[str, int] = {}
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        self.last_plan_info: dict = {}
        self.check_cfg = config_from_options(PlanCheckConfig, shared_options(cfg, PlanCheckConfig))
        # an auto pool is sized by scoring candidate sizes on a replay where a checker is given (pool_check)
        self.pool_checks = checks_pool(cfg)
        self.replan_checks = checks_replans(cfg)
        checking = self.check_cfg.plan_check or self.pool_checks or self.replan_checks
        self.checker = getattr(ctx, "plan_checker", None) if checking else None
        if self.check_cfg.plan_check and self.pool_count is None and not self.pool_checks:
            self.pool_count = 0  # without pool_check, plan checks score no pool
        if self.pool_count and self.check_cfg.plan_check:
            raise ValueError("prefill_pool is not combined with plan_check: the checker's candidates have no pool")
        self.recorder = ArrivalRecorder(self.check_cfg.replay_requests)
        self.budget = CheckBudget(self.check_cfg.check_cpu_budget)  # the checker's CPU governor (check_budget.py)
        self._drift_due = False  # a drift check the governor refused: runs as soon as it allows one
        self._timer_waiting = False  # a timer check is due and waits for the governor
        self.pooled = LeastLoadRouter(self.n, LeastLoadConfig())  # one stage = exactly least_load's dispatch
        self.last_decision: PlanDecision | None = None
        self.decisions = 0
        self._last_check = 0.0
        self._seed = ctx.seed
        sample = list(ctx.length_sample or [])
        self._sample = sample
        rate0 = self.rate or 1.0  # the start-up plan's rate
        self.plan = StagePlan([], [list(range(self.n))])  # pooled until a plan is chosen
        if self.pool_count:  # a fixed pool from the start: the last instances, one stage over the rest
            self._set_pool(list(range(self.n - self.pool_count, self.n)), f"prefill_pool={self.pool_count}")
            self.plan = StagePlan([], [list(range(self.n - self.pool_count))])
        if cfg.bounds or cfg.counts:
            bounds = [int(x) for x in str(cfg.bounds).split("/") if str(x).strip()]
            counts = [int(x) for x in str(cfg.counts).split("/") if str(x).strip()]
            self.pool_count = self.pool_count or 0  # auto sizes pools with the DP's plans: none with a fixed plan
            self._set_pool(list(range(self.n - self.pool_count, self.n)))
            self.plan = StagePlan.from_counts(bounds, counts, list(range(self.n - self.pool_count)))
            self._record("init", "fixed", "fixed plan given by the bounds/counts options: never re-checked")
            self.checker = None
        elif (
            sample
            and self.checker is not None
            and self.n > 1
            and (sizes := self._check_sizes(sample, rate0)) is not None
        ):
            self._check("init", sample, rate0, self._replay_source(synthetic_rate=rate0, warm=False), 0.0, sizes)
        elif sample:
            self.plan = self._dp(sample, rate0)
            self._record("init", "dp", "no plan checker: the DP's plan adopted unchecked")
        else:
            self._record("init", POOLED, "no length sample yet: one stage (least_load dispatch) until requests finish")
        self.refiner.set_reference(sample, self.plan.bounds) if sample else None
        self._bootstrap = not sample and not (cfg.bounds or cfg.counts)  # DP once enough requests finished
        self._index()

    # --- plan bookkeeping -------------------------------------------------------------------------------
    def _dp(self, sample, rate: float, ids: list[int] | None = None) -> StagePlan:
        """The DP's plan, adopted unchecked (no plan checker), and with ``prefill_pool`` the pool: a fixed count
        takes the last instances and the DP plans the rest; ``auto`` sizes one where the DP runs one stage."""
        c = self.cfg
        stall = self.planner.stall_at_length
        ids = list(ids or []) + [i for i in range(self.n) if i not in set(ids or [])]
        size, why = self.pool_count or 0, f"prefill_pool={self.pool_count}"
        if self.pool_count is None:
            sized = size_prefill_pool(sample, rate, self.n, self.cm, self.qoe, c.prefill_min, c.pool_decode_rho)
            size, why = sized.size, sized.why
        decode = ids[: self.n - size]
        if self.pool_count is None and size:  # auto: the decode side runs one stage
            plan, self.last_plan_info = StagePlan([], [decode]), {"bounds": [], "counts": [len(decode)]}
        else:
            plan, self.last_plan_info = best_plan(
                sample, rate, len(decode), self.cm, self.qoe, c.buckets, c.max_stages or None, stall, decode
            )
        self._set_pool(ids[len(decode) :], why)
        return plan

    def _index(self) -> None:
        self.stage_of_inst = {i: k for k, m in enumerate(self.plan.members) for i in m}
        self.agents = [StagePairBalancer(k, self.cm, self.bal_cfg) for k in range(self.plan.num_stages - 1)]
        for a, old in zip(self.agents, getattr(self, "_old_agents", [])):
            a.last_action = old.last_action
        self._old_agents = self.agents

    def _replan(self, sample: list[tuple[int, int]]) -> list[int]:
        sizes = self._check_sizes(sample, self._rate_estimate()) if self.checker is not None and self.n > 1 else None
        if sizes is not None:  # the checker decides; the plan changes in _poll
            wait = self._wait_reason(self._now)
            if wait:
                self._defer_drift(wait)
                return self.plan.bounds
            few = len(self.recorder.done) < self.check_cfg.min_replay
            source = self._replay_source(synthetic_rate=self._rate_estimate() if few else 0.0)
            self._check("drift", sample, self._rate_estimate(), source, self._now, sizes)
            return self.plan.bounds
        order = self.plan.order()  # keep neighbours together: fewer moves
        self.plan = self._dp(sample, self._rate_estimate(), ids=order)
        self.req_stage.clear()  # stage indices changed meaning; forward-only now follows the instance's stage
        self._index()
        self.stats["replans"] += 1
        return self.plan.bounds

    def _rate_estimate(self) -> float:
        if len(self.arrivals) >= 2 and self.arrivals[-1] > self.arrivals[0]:
            return (len(self.arrivals) - 1) / (self.arrivals[-1] - self.arrivals[0])
        return self.rate or 1.0

    def _see(self, cluster: ClusterView) -> None:
        for ld in cluster.loads:
            if ld.iid < self.n and ld.published_at >= self.loads[ld.iid].published_at:
                self.loads[ld.iid] = ld

    # --- RouterPolicy -----------------------------------------------------------------------------------
    def route(self, req: RequestView, cluster: ClusterView, now: float) -> int:
        self._see(cluster)
        self.budget.open(now)
        self.arrivals.append(now)
        self.recorder.arrived(req.rid, now, req.prompt_len)
        iid = self._route(req, cluster, now)
        if self.checker is not None:
            if len(self.placed) > 4 * self.recorder.done.maxlen:  # never finished (aborted): forget the oldest
                self.placed.pop(next(iter(self.placed)))
            self.placed[req.rid] = iid
        return iid

    def _route(self, req: RequestView, cluster: ClusterView, now: float) -> int:
        if self.pool is not None:
            if self.pool.takes(req):  # a long prompt: prefilled in the pool, moved to its stage after a token
                k = self.plan.stage_of(req.prompt_len)
                held = self.pool.cached_on(req, self.plan.members[k], self.loads) if self.cfg.pool_cached else None
                if held is not None:  # unless its prefix is cached on the decode side: prefilled there
                    self.entry.remember(held, req, self.loads)
                    self.req_stage[req.rid] = k
                    self.stats["pool_cached"] = self.stats.get("pool_cached", 0) + 1
                    return held
                return self._to_pool(req, now)
            cluster = ClusterView([x for x in cluster.loads if not self.pool.holds(x.iid)], cluster.now)
        if self.plan.num_stages == 1:  # pooled: exactly least_load's decision (or the picker's)
            self.req_stage[req.rid] = 0
            if self.cfg.pooled_dispatch == "pressure":
                return self.picker.pick(self.plan.members[0], self.loads, tokens=req.prompt_len - req.kv_tokens)
            return self.entry.pooled(self.pooled, req, cluster, self.loads)
        k = self.plan.stage_of(req.prompt_len)
        iid, spilled = self.entry.route(self.plan, k, req, self.loads)
        if spilled:
            self.stats["spilled"] = self.stats.get("spilled", 0) + 1
        self.req_stage[req.rid] = k
        return iid

    def migration_bound(self, req: RequestView, iid: int) -> int | None:
        if not self.cfg.migration:
            return None
        if self.pool is not None and self.pool.holds(iid):
            return self.pool.bound(req)
        k = self.stage_of_inst.get(iid)
        if k is None:
            return None
        hi = self.plan.hi(k)
        if hi is None:
            return None
        retry = self.deferred.get(req.rid)
        return hi if retry is None else max(hi, retry)

    def migrate(self, req: RequestView, src: int, cluster: ClusterView, now: float) -> Migration | None:
        if not self.cfg.migration:
            return None
        self._see(cluster)
        self._pool_prefilled(src, req.rid, now)
        k_src = -1 if self.pool is not None and self.pool.holds(src) else self.stage_of_inst.get(src, 0)
        k_dst = min(max(self.plan.stage_of(req.length), self.req_stage.get(req.rid, 0)), self.plan.num_stages - 1)
        if k_dst <= k_src:
            self.deferred[req.rid] = req.length + self.cfg.defer_tokens
            return None
        members = [i for i in self.plan.members[k_dst] if i != src]
        if not members:
            self.deferred[req.rid] = req.length + self.cfg.defer_tokens
            self.stats["deferred"] += 1
            return None
        if k_src == -1 and self.cfg.pool_move_room and req.kv_tokens:  # out of the prefill pool, KV in hand
            dst = self.picker.pick_room(members, self.loads, req.kv_tokens)
        else:
            dst = self.picker.pick(members, self.loads, tokens=0 if req.kv_tokens else req.length)
        self.entry.remember(dst, req, self.loads)  # its prompt lands in dst's cache (KV import or re-prefill)
        est = self.planner.estimate(req, self.loads[dst])
        self.deferred.pop(req.rid, None)
        self.req_stage[req.rid] = k_dst
        if self.checker is not None:
            self.placed[req.rid] = dst
        self.stats["migrations"] += 1
        self.stats[est.mode.value] += 1
        stalls = {"recompute": est.recompute_stall_s, "kv_transfer": est.kv_stall_s}
        return Migration(req, src, dst, est.mode, f"stage {k_src}->{k_dst} at length {req.length}", stalls)

    def on_publish(self, load: InstanceLoad, now: float) -> None:
        if load.iid < self.n and load.published_at >= self.loads[load.iid].published_at:
            self.loads[load.iid] = load
            self.picker.on_publish(load)

    def on_finish(self, req: RequestView, now: float) -> None:
        self._pool_prefilled(None, req.rid, now)
        self.refiner.observe(req.prompt_len, req.output_len)
        self.recorder.finished(req.rid, req.output_len)
        self.req_stage.pop(req.rid, None)
        self.deferred.pop(req.rid, None)
        self.placed.pop(req.rid, None)

    def rebalance(self, cluster: ClusterView, running: dict[int, list[RequestView]], now: float) -> list[Migration]:
        self._see(cluster)
        self._now = now
        self._running = running
        before = (list(self.plan.bounds), [list(m) for m in self.plan.members])
        self._poll(now)
        self._timer_check(now)
        if self.cfg.pool_valve > 0:  # opt-in
            self._pool_valve(now)
        if self.plan.num_stages > 1:
            if self.cfg.central:
                self._central_balance(now)
            elif self.cfg.balance:
                self._pairwise_balance(now)
        if self.cfg.refine:
            nb = self.refiner.tick(list(self.plan.bounds), now, replan=self._replan)
            if (
                nb is None
                and self._bootstrap
                and self.n > 1
                and len(self.refiner.window) >= self.refiner.cfg.min_samples
            ):
                self._bootstrap = False
                self.refiner.set_reference(list(self.refiner.window), self._replan(list(self.refiner.window)))
            elif nb is not None:
                self.plan = StagePlan(nb, self.plan.members)
                self.stats["refine_moves"] += 1
        if (list(self.plan.bounds), self.plan.members) == before or not self.cfg.migration:
            return []
        # the plan changed: requests already past their (new) stage bound leave now, instead of at the bound
        # the driver armed when they started running on this instance
        out = []
        for iid, reqs in running.items():
            k = self.stage_of_inst.get(iid)
            hi = None if k is None else self.plan.hi(k)
            if hi is None:
                continue
            for req in list(reqs):
                if req.length >= hi:
                    m = self.migrate(req, iid, cluster, now)
                    if m is not None:
                        out.append(m)
        self.stats["plan_change_migrations"] = self.stats.get("plan_change_migrations", 0) + len(out)
        return out

    # --- cross-stage balance ----------------------------------------------------------------------------
    def _pairwise_balance(self, now: float) -> None:
        for agent in self.agents:
            k = agent.k
            if k >= self.plan.num_stages - 1:
                continue
            d = agent.decide(
                self.plan.bounds[k],
                self.plan.lo(k),
                self.plan.hi(k + 1),
                self.plan.members[k],
                self.plan.members[k + 1],
                self.loads,
                now,
            )
            self._apply(d)

    def _apply(self, d) -> None:
        if d.kind == "shift" and d.new_bound is not None:
            b = list(self.plan.bounds)
            lo = b[d.boundary - 1] + 1 if d.boundary else 1
            hi = b[d.boundary + 1] - 1 if d.boundary + 1 < len(b) else None
            nb = max(lo, d.new_bound if hi is None else min(hi, d.new_bound))
            if nb != b[d.boundary]:
                b[d.boundary] = nb
                self.plan = StagePlan(b, self.plan.members)
                self.refiner.rebase(d.boundary, nb)
                self.stats["shifts"] += 1
        elif d.kind == "handover" and d.instance is not None:
            members = [list(m) for m in self.plan.members]
            if len(members[d.from_stage]) <= 1:
                return
            members[d.from_stage].remove(d.instance)
            members[d.to_stage].append(d.instance)
            self.plan = StagePlan(self.plan.bounds, members)
            self.stage_of_inst[d.instance] = d.to_stage
            self.stats["handovers"] += 1

    def _central_balance(self, now: float) -> None:
        """Ablation: one coordinator sees every stage (fresh loads when publish_interval ~ 0) and moves an
        instance from the least to the most pressured stage, any distance apart."""
        pr = [
            sum(instance_pressure(self.loads[i], self.cm, self.bal_cfg) for i in m) / len(m) for m in self.plan.members
        ]
        hi_k = max(range(len(pr)), key=pr.__getitem__)
        donors = [k for k in range(len(pr)) if k != hi_k and len(self.plan.members[k]) > 1]
        lo_k = min(donors or [k for k in range(len(pr)) if k != hi_k] or [hi_k], key=pr.__getitem__)
        if pr[hi_k] < self.bal_cfg.min_pressure or pr[hi_k] <= self.bal_cfg.imbalance_ratio * max(pr[lo_k], 1e-9):
            return
        if now - getattr(self, "_central_last", -1e18) < self.bal_cfg.cooldown_s:
            return
        self._central_last = now
        if len(self.plan.members[lo_k]) > 1:
            inst = min(self.plan.members[lo_k], key=lambda i: instance_pressure(self.loads[i], self.cm, self.bal_cfg))
            from .balance import PairDecision

            self._apply(PairDecision("handover", min(lo_k, hi_k), instance=inst, from_stage=lo_k, to_stage=hi_k))
        elif abs(hi_k - lo_k) == 1:
            k = min(hi_k, lo_k)
            agent = self.agents[k]
            agent.streak, agent.streak_side, agent.last_action = agent.cfg.patience, (1 if hi_k == k else -1), -1e18
            self._apply(
                agent.decide(
                    self.plan.bounds[k],
                    self.plan.lo(k),
                    self.plan.hi(k + 1),
                    self.plan.members[k],
                    self.plan.members[k + 1],
                    self.loads,
                    now,
                )
            )


def make_cascade_router(ctx, **options) -> CascadeRouter:
    return CascadeRouter(ctx, config_from_options(CascadeRouterConfig, options, what="router 'cascade'"))
