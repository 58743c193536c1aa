"""Discrete-event simulation of N instances of one model behind one router.

``Simulator`` is assembled from one class per job, each in its own module:

- sim.event_loop: arrivals, the event heap, periodic rebalancing, lazy exact load publication;
- sim.iterations: plan -> apply preempt/park/resume -> cost the iteration -> commit it at its end;
- sim.timing: the cost of an iteration or of a fast-forwarded segment of identical decode steps;
- sim.fast_forward: cutting a segment short / bringing it up to date when something happens;
- sim.parking: park / resume (host KV moves);
- sim.migration: migration bounds and the KV-migration state machine.
"""

from __future__ import annotations

import dataclasses
import time as _time
from collections.abc import Sequence

from ..core.costmodel import Calibration, CostModel
from ..core.hardware import hardware_profile
from ..core.interfaces import InstanceScheduler, RouterPolicy
from ..core.options import split_name
from ..core.request_limits import max_input_tokens
from ..core.traces import TraceRequest, length_sample
from ..core.views import ClusterView, InstanceView
from ..policies.registry import PolicyContext, make_instance_scheduler, make_router
from .config import SimConfig, SimResult
from .event_loop import EventLoop, LazyLoads
from .fast_forward import FastForward
from .instance import SimInstance, SimRequest
from .iterations import InstanceIterations
from .metrics import compute_metrics
from .migration import KvMigration, Migrations, d2d_fn
from .parking import Parking, kv_move_fn
from .prefix_cache import PrefixCache
from .timing import IterationTiming


class Simulator(EventLoop, InstanceIterations, FastForward, Parking, Migrations):
    """The state the job classes share; see the module docstring for which class does what."""

    def __init__(
        self,
        cfg: SimConfig,
        cost_model: CostModel,
        schedulers: Sequence[InstanceScheduler],
        router: RouterPolicy,
        kv_capacity: int,
    ):
        self.cfg = cfg
        self.cm = cost_model
        self.timing = IterationTiming(cost_model, cfg)
        self.router = router
        self.kv_capacity = kv_capacity
        # the longest continuation a move may send (the live router's limit: SGLang's input check)
        self.input_limit = max_input_tokens(cost_model.model.max_context, kv_capacity)
        self.n = len(schedulers)
        self.result_lag = result_lag(cfg)
        self.co_run = co_run_slowdown(cfg) if self.n > 1 else None  # (decode, prefill) slow-downs
        self.time_scale = time_scale(cfg)  # (decode, prefill) factors
        self.insts = self._make_instances(schedulers)
        self.prefix: list[PrefixCache] | None = None  # SGLang's radix cache per instance (build: traces with hashes)
        self.heap: list = []
        self.seq = 0
        self.now = 0.0
        self.pi = cfg.publish_interval if cfg.publish_interval > 0 else 0.0
        self.finished: list[SimRequest] = []
        self.rejected: list[TraceRequest] = []
        self.admitted = 0
        self.in_transit: dict[str, KvMigration] = {}  # rid -> migration in its final copy (off both instances)
        self.migrating: dict[str, KvMigration] = {}  # rid -> migration in progress (pre-copy stages)
        self.preemptions = self.migrations = self.migrations_aborted = self.staged_moves = 0
        self.park_rejected = self.parks = self.resumes = 0
        # landed moves whose KV was dropped while they waited (iterations._evict_waiting_kv)
        self.waiting_kv_evicted = 0
        self.kv_move = kv_move_fn(cost_model)
        # paired instances (2k, 2k+1) move KV through both GPUs' PCIe links (SimConfig.paired_prefetch)
        self.kv_move_paired = kv_move_fn(cost_model, paired=True) if cfg.paired_prefetch else self.kv_move
        self.d2d = d2d_fn(cost_model, cfg.migration_link)
        rcls = type(router)
        self.has_bound = rcls.migration_bound is not RouterPolicy.migration_bound
        self.has_rebalance = rcls.rebalance is not RouterPolicy.rebalance
        self.has_on_publish = rcls.on_publish is not RouterPolicy.on_publish
        self.has_release = rcls.release is not RouterPolicy.release  # a router that may hold requests (HOLD)
        self.release_due = float("inf")  # the EV_RELEASE pending
        # a router bumps plan_version when its migration bounds change: running requests are re-armed
        self.plan_version = router.plan_version
        self.rearms = 0
        ri = cfg.rebalance_interval
        if ri is None:
            ri = router.rebalance_interval or 0.5
        self.rebalance_interval = float(ri)
        self.loads = LazyLoads([None] * self.n)
        self.loads.sim = self
        self.loads.tick = -1
        self.cluster = ClusterView(self.loads, 0.0)

    def _make_instances(self, schedulers: Sequence[InstanceScheduler]) -> list[SimInstance]:
        cfg = self.cfg
        max_running = cfg.max_running or _sglang_max_running(self.cm, self.kv_capacity)
        insts = []
        for i, s in enumerate(schedulers):
            view = InstanceView(
                iid=i,
                kv_capacity=self.kv_capacity,
                host_kv_capacity=cfg.host_kv_tokens,
                max_prefill_tokens=cfg.max_prefill_tokens,
                max_running=max_running,
            )
            inst = SimInstance(i, view, s, cfg.record_schedule)
            if self.result_lag:
                inst.lagged = []
            insts.append(inst)
        return insts


def result_lag(cfg: SimConfig) -> bool:
    """SimConfig.result_lag, or the hardware profile's default for the device."""
    if cfg.result_lag is not None:
        return cfg.result_lag
    prof = hardware_profile(cfg.gpu)
    return bool(prof and prof.get("result_lag", False))


def co_run_slowdown(cfg: SimConfig) -> tuple[float, float, float] | None:
    """(decode, prefill, decode next to a prefill) slow-downs per busy co-runner: SimConfig.co_run_slowdown, or
    the hardware profile's measured value for the device; None when all are 0. A dict's
    ``decode_next_to_prefill`` (a decode iteration while the co-runner runs a prefill; default: ``decode``)."""
    s = cfg.co_run_slowdown
    if s is None:
        prof = hardware_profile(cfg.gpu)
        s = prof.get("co_run_slowdown", 0.0) if prof else 0.0
    if isinstance(s, dict):
        d, p = float(s.get("decode", 0.0)), float(s.get("prefill", 0.0))
        dp = float(s.get("decode_next_to_prefill", d))
    else:
        d = p = dp = float(s)
    if d < 0 or p < 0 or dp < 0:
        raise ValueError(f"co_run_slowdown must be >= 0, got {s}")
    return (d, p, dp) if d or p or dp else None


def time_scale(cfg: SimConfig) -> tuple[float, float] | None:
    """(decode, prefill) factors of SimConfig.time_scale (a float: both); None when both are 1."""
    ts = cfg.time_scale
    d, p = (float(ts), float(ts)) if isinstance(ts, (int, float)) else (float(ts[0]), float(ts[1]))
    if d <= 0 or p <= 0:
        raise ValueError(f"time_scale must be > 0, got {ts}")
    return None if d == p == 1.0 else (d, p)


def _sglang_max_running(cm: CostModel, kv_capacity: int) -> int:
    """SGLang's default max running requests (mem_cache/kv_cache_configurator.py resolve_max_num_reqs)."""
    ctx = getattr(cm.model, "max_context", 8192) or 8192
    est = max(min(int(kv_capacity / ctx * 512), 4096), 2048)
    return max(1, min(est, kv_capacity // 2))


def build(cfg: SimConfig, trace: Sequence[TraceRequest]) -> Simulator:
    cm = cfg.cost_model or CostModel.for_names(
        cfg.model, cfg.gpu, cfg.tp, Calibration(attention_backend=cfg.attention_backend)
    )
    cap = cfg.kv_capacity or cm.kv_capacity_tokens()
    if cfg.instances < 1:
        raise ValueError("instances must be >= 1")
    sample, rate = length_sample(trace, cfg.length_sample_size)
    ctx = PolicyContext(
        cost_model=cm,
        num_instances=cfg.instances,
        seed=cfg.seed,
        length_sample=sample,
        arrival_rate=rate,
        kv_capacity=cap,
        plan_checker=_plan_checker(cfg, cm, cap),
        mixed_chunk=cfg.mixed_chunk,
        schedule_policy=cfg.schedule_policy,
    )
    scheds = [make_instance_scheduler(cfg.scheduler, ctx, **cfg.scheduler_options) for _ in range(cfg.instances)]
    router = make_router(cfg.router, ctx, **cfg.router_options)
    sim = Simulator(cfg, cm, scheds, router, cap)
    if cfg.prefix_cache_block > 0 and any(x.hash_ids for x in trace):
        sim.prefix = [PrefixCache(cfg.prefix_cache_block) for _ in range(cfg.instances)]
    return sim


def _plan_checker(cfg: SimConfig, cm: CostModel, cap: int):
    """The simulator's plan checker for a cascade router (None for every other router: nothing changes)."""
    base, opts = split_name(cfg.router)
    if not cfg.plan_check or base != "cascade":
        return None
    from ..planning.sim_checker import SimCheckerConfig, SimPlanChecker

    ccfg = SimCheckerConfig(
        scheduler=cfg.scheduler,
        scheduler_options=dict(cfg.scheduler_options),
        router_options={**opts, **cfg.router_options},
        kv_capacity=cap,
        slo_ttft=cfg.slo_ttft,
        slo_ttft_scale=cfg.slo_ttft_scale,
        slo_tpot=cfg.slo_tpot,
        publish_interval=cfg.publish_interval,
        max_prefill_tokens=cfg.max_prefill_tokens,
        seed=cfg.seed,
    )
    return SimPlanChecker(cm, ccfg, simulate)


def simulate(trace: Sequence[TraceRequest], cfg: SimConfig | None = None, progress: bool = False) -> SimResult:
    """Simulate the trace on cfg.instances instances; returns metrics, finished requests and schedules."""
    cfg = cfg or SimConfig()
    t0 = _time.perf_counter()
    trace = (
        sorted(trace, key=lambda x: x.arrival)
        if any(trace[i].arrival > trace[i + 1].arrival for i in range(len(trace) - 1))
        else trace
    )
    sim = build(cfg, trace)
    sim.run(trace, progress=progress)
    wall = _time.perf_counter() - t0
    return _result(sim, cfg, wall)


def simulate_instance(
    trace: Sequence[TraceRequest],
    scheduler: InstanceScheduler,
    cost_model: CostModel,
    kv_capacity: int | None = None,
    record_schedule: bool = True,
    cfg: SimConfig | None = None,
) -> SimResult:
    """Run ONE instance with the given scheduler object; ``schedules[0]`` holds its IterationRecords."""
    from ..policies.baselines import RoundRobinConfig, RoundRobinRouter

    cap = kv_capacity or (cfg.kv_capacity if cfg else None) or cost_model.kv_capacity_tokens()
    cfg = dataclasses.replace(
        cfg or SimConfig(), instances=1, record_schedule=record_schedule, cost_model=cost_model, kv_capacity=cap
    )
    t0 = _time.perf_counter()
    trace = sorted(trace, key=lambda x: x.arrival)
    sim = Simulator(cfg, cost_model, [scheduler], RoundRobinRouter(1, RoundRobinConfig()), cap)
    sim.run(trace)
    return _result(sim, cfg, _time.perf_counter() - t0)


def _result(sim: Simulator, cfg: SimConfig, wall: float) -> SimResult:
    metrics = compute_metrics(sim, cfg, wall)
    schedules = [i.records for i in sim.insts] if cfg.record_schedule else None
    return SimResult(metrics=metrics, requests=sim.finished, schedules=schedules, rejected=sim.rejected, config=cfg)
