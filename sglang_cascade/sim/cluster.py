"""Discrete-event simulation of N instances of one model behind one router.

Events, in time order: trace arrivals (a pointer into the sorted trace), instance iteration/segment ends,
KV-transfer migration stages and periodic rebalancing (a heap; stale entries are skipped by version).
Each instance loops ``plan = scheduler.schedule(view, now)`` -> apply preempt/park/resume -> cost the
iteration with the CostModel -> at its end advance tokens, finish requests, check migration bounds.
A pure-decode plan with ``stable_steps > 1`` runs as one segment of identical steps (closed-form KV growth
and time), cut short at the step in progress when anything happens to the instance.

Loads are published lazily but exactly: the load an instance publishes for publish tick T is its state at T,
computed the first time a router reads it, or just before the instance changes after T.
"""

from __future__ import annotations

import dataclasses
import heapq
import inspect
import time as _time
from typing import Callable, Sequence

from ..core.costmodel import CostModel
from ..core.decisions import IterationPlan, Migration, MigrationMode
from ..core.interfaces import InstanceScheduler, RouterPolicy
from ..core.traces import TraceRequest
from ..core.views import ClusterView, InstanceView, Phase, RequestView
from ..policies.registry import PolicyContext, make_instance_scheduler, make_router
from .config import IterationRecord, SimConfig, SimError, SimResult
from .instance import Segment, SimInstance, SimRequest
from .metrics import compute_metrics

_INF = float("inf")
WAITING, RUNNING, PARKED, FINISHED = Phase.WAITING, Phase.RUNNING, Phase.PARKED, Phase.FINISHED
EV_ITER, EV_MIG, EV_REBALANCE = 0, 1, 2


def _d2d_fn(cm: CostModel, link: str) -> Callable[[int], float]:
    """Device-to-device KV copy time of ``tokens`` tokens: datasheet NVLink, or a measured link curve."""
    if not link:
        return cm.device_to_device_time
    from ..policies.migration_link import link_curve

    curve = link_curve(link)
    per_token = cm.kv_bytes_per_token
    return lambda tokens: curve.time_s(tokens * per_token)


def _kv_move_fn(cm: CostModel, paired: bool = False) -> Callable[[int, str], float]:
    """Host<->device KV move time: policies.offload.kv_move_time when that module provides it.
    ``paired``: the instance has a partner GPU that shares the move (GPU-to-GPU prefetch)."""
    try:
        from ..policies import offload  # optional module owned by another part
        fn = getattr(offload, "kv_move_time", None)
    except ImportError:
        fn = None
    if fn is not None:
        return lambda tokens, direction: fn(tokens, cm, direction, paired)
    return lambda tokens, direction: cm.host_to_device_time(tokens)


class _Loads(list):
    """ClusterView.loads whose entries are materialized (published) only when a router reads them."""

    __slots__ = ("sim", "tick")

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.sim._published(j, self.tick) for j in range(len(self))[i]]
        return self.sim._published(range(len(self))[i], self.tick)

    def __iter__(self):
        pub = self.sim._published
        tick = self.tick
        for j in range(len(self)):
            yield pub(j, tick)

    def __reversed__(self):
        return reversed(list(iter(self)))

    def copy(self):
        return list(iter(self))


class _Running(dict):
    """The ``running`` map given to ``rebalance``: an instance's request views are brought up to date (the
    completed steps of its segment applied) when the router first looks at them."""

    def _fresh(self, i):
        if i not in self.done and 0 <= i < self.sim.n:
            self.done.add(i)
            self.sim._advance(self.sim.insts[i], self.t)

    def __getitem__(self, i):
        self._fresh(i)
        return dict.__getitem__(self, i)

    def get(self, i, default=None):
        self._fresh(i)
        return dict.get(self, i, default)

    def values(self):
        for i in dict.keys(self):
            self._fresh(i)
        return dict.values(self)

    def items(self):
        for i in dict.keys(self):
            self._fresh(i)
        return dict.items(self)


class _Migration:
    __slots__ = ("m", "req", "src", "dst", "copied", "stages", "reserved", "final", "version")

    def __init__(self, m: Migration):
        self.m = m
        self.req = m.req
        self.src = m.src
        self.dst = m.dst
        self.copied = 0  # tokens already on dst
        self.stages = 0
        self.reserved = 0  # tokens reserved on dst (= copied)
        self.final = False


class Simulator:
    def __init__(self, cfg: SimConfig, cost_model: CostModel, schedulers: Sequence[InstanceScheduler],
                 router: RouterPolicy, kv_capacity: int):
        self.cfg = cfg
        self.cm = cost_model
        self.router = router
        self.kv_capacity = kv_capacity
        self.n = len(schedulers)
        max_running = cfg.max_running or _sglang_max_running(cost_model, kv_capacity)
        self.insts = []
        for i, s in enumerate(schedulers):
            view = InstanceView(iid=i, kv_capacity=kv_capacity, host_kv_capacity=cfg.host_kv_tokens,
                                max_prefill_tokens=cfg.max_prefill_tokens, max_running=max_running)
            self.insts.append(SimInstance(i, view, s, cfg.record_schedule))
        self.heap: list = []
        self.seq = 0
        self.now = 0.0
        self.pi = cfg.publish_interval if cfg.publish_interval > 0 else 0.0
        self.finished: list[SimRequest] = []
        self.rejected: list[TraceRequest] = []
        self.admitted = 0
        self.in_transit: dict[str, _Migration] = {}
        self.migrating: dict[str, _Migration] = {}  # rid -> migration in progress (pre-copy stages)
        self.preemptions = 0
        self.migrations = 0
        self.migrations_aborted = 0
        self.park_rejected = 0
        self.parks = 0
        self.resumes = 0
        self.kv_move = _kv_move_fn(cost_model)
        # paired instances (2k, 2k+1) move KV through both GPUs' PCIe links (SimConfig.paired_prefetch)
        self.kv_move_paired = _kv_move_fn(cost_model, paired=True) if cfg.paired_prefetch else self.kv_move
        rcls = type(router)
        self.has_bound = rcls.migration_bound is not RouterPolicy.migration_bound
        self.has_rebalance = rcls.rebalance is not RouterPolicy.rebalance
        self.has_on_publish = rcls.on_publish is not RouterPolicy.on_publish
        # routers that change their migration bounds at runtime expose an int ``plan_version`` they bump on
        # every change; the simulator re-arms running requests' cached bounds when it moves
        self.plan_version = getattr(router, "plan_version", None)
        self.rearms = 0
        self.d2d = _d2d_fn(cost_model, cfg.migration_link)
        ri = cfg.rebalance_interval
        if ri is None:
            ri = getattr(router, "rebalance_interval", None) or 0.5
        self.rebalance_interval = float(ri)
        self.loads = _Loads([None] * self.n)
        self.loads.sim = self
        self.loads.tick = -1
        self.cluster = ClusterView(self.loads, 0.0)
        try:  # newer cost models take the causal part of multi-chunk prefill batches separately
            self._causal_kw = "prefill_causal" in inspect.signature(cost_model.iteration_time).parameters
        except (TypeError, ValueError):
            self._causal_kw = False

    # ------------------------------------------------------------------ publication / cluster view
    def _tick(self, t: float) -> int:
        return int(t / self.pi) if self.pi > 0 else -2  # -2: every read sees live state

    def _published(self, i: int, tick: int):
        inst = self.insts[i]
        if tick == -2:  # publish_interval 0: live state, published at every read
            load = inst.load_at(self.now)
            if self.has_on_publish:
                self.router.on_publish(load, self.now)
            return load
        if inst.pub_tick < tick:
            inst.pub = inst.load_at(tick * self.pi)
            inst.pub_tick = tick
            if self.has_on_publish:
                self.router.on_publish(inst.pub, self.now)
        return inst.pub

    def _touch(self, inst: SimInstance, t: float) -> None:
        """Publish the state at the current tick before the instance changes (exact staleness)."""
        if self.pi > 0:
            tick = int(t / self.pi)
            if inst.pub_tick < tick:
                self._published(inst.iid, tick)

    def _cluster_view(self, t: float) -> ClusterView:
        tick = self._tick(t)
        self.loads.tick = tick
        self.cluster.now = t
        if self.has_on_publish:  # deliver every publication before the router decides
            for i in range(self.n):
                self._published(i, tick)
        return self.cluster

    # ------------------------------------------------------------------ request list bookkeeping
    def _add_waiting(self, inst: SimInstance, r: SimRequest, t: float, call_arrival: bool) -> None:
        v = inst.view
        r.instance = inst.iid
        r.phase = WAITING
        if call_arrival:
            inst.sched.on_arrival(r, v, t)
        v.waiting.append(r)
        inst.prefill_left += r.length - r.kv_tokens
        if r.predicted_output_len is not None:
            inst.pred_active = True

    def _free_request(self, inst: SimInstance, r: SimRequest) -> None:
        """Remove r from whatever list of inst holds it and free its KV (GPU or host)."""
        v = inst.view
        ph = r.phase
        if ph == RUNNING:
            v.running.remove(r)
            v.kv_used -= r.kv_tokens
        elif ph == WAITING:
            v.waiting.remove(r)
            inst.prefill_left -= r.length - r.kv_tokens
            v.kv_used -= r.kv_tokens
        elif ph == PARKED:
            v.parked.remove(r)
            inst.host_used -= r.kv_tokens

    def _preempt(self, inst: SimInstance, r: SimRequest) -> None:
        v = inst.view
        if r.instance != inst.iid or r.phase == FINISHED:
            raise SimError(f"{inst.sched.name}: preempt of {r.rid} not on instance {inst.iid}")
        self._cancel_migration(r)
        if r.phase == WAITING:
            v.kv_used -= r.kv_tokens
            inst.prefill_left += r.kv_tokens
            r.kv_tokens = 0
        else:
            self._free_request(inst, r)
            r.kv_tokens = 0
            r.phase = WAITING
            v.waiting.append(r)
            inst.prefill_left += r.length
        r.preemptions += 1
        self.preemptions += 1

    # ------------------------------------------------------------------ main loop
    def run(self, trace: Sequence[TraceRequest], progress: bool = False) -> None:
        cfg = self.cfg
        heap = self.heap
        n_tr = len(trace)
        ai = 0
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=n_tr, unit="req", desc="simulate", leave=False)
        ri = self.rebalance_interval
        if self.has_rebalance and ri > 0:
            self._push(ri, EV_REBALANCE, None, 0)
        next_arr = trace[0].arrival if n_tr else _INF
        cap = self.kv_capacity
        max_new = cfg.max_new_tokens
        while True:
            if heap and heap[0][0] <= next_arr:
                t, _, kind, obj, ver = heapq.heappop(heap)
                if kind == EV_ITER:
                    inst = obj
                    if ver != inst.version:
                        continue
                    self.now = t
                    before = len(self.finished)
                    self._commit(inst, t)
                    if bar is not None and len(self.finished) != before:
                        bar.update(len(self.finished) - before)
                    self._start(inst, t)
                elif kind == EV_MIG:
                    if ver != obj.version:
                        continue
                    self.now = t
                    self._migration_event(obj, t)
                else:  # rebalance
                    self.now = t
                    if ai < n_tr or self.admitted > len(self.finished):
                        self._rebalance(t)
                        active = ai < n_tr or self.migrating or self.in_transit or any(
                            i.seg is not None for i in self.insts)
                        if active:
                            self._push(t + ri, EV_REBALANCE, None, 0)
                continue
            if ai >= n_tr:
                if heap:
                    continue
                break
            tr = trace[ai]
            ai += 1
            t = tr.arrival
            self.now = t
            next_arr = trace[ai].arrival if ai < n_tr else _INF
            target = tr.output_len if max_new is None else min(tr.output_len, max_new)
            if target < 1 or tr.prompt_len < 1:
                raise SimError(f"request {tr.rid}: prompt and output lengths must be >= 1")
            if tr.prompt_len + target > cap:
                self.rejected.append(tr)
                continue
            r = SimRequest(rid=tr.rid, arrival=t, prompt_len=tr.prompt_len, max_new_tokens=max_new,
                           target=target)
            r.extra["true_output_len"] = target  # for oracle ablations only (policies/predictor.py)
            self.admitted += 1
            iid = self.router.route(r, self._cluster_view(t), t)
            if self.plan_version is not None:
                self._check_plan_version(t)
            if not (isinstance(iid, int) and 0 <= iid < self.n):
                raise SimError(f"router {self.router.name} returned instance {iid!r} (have {self.n})")
            inst = self.insts[iid]
            self._touch(inst, t)
            self._add_waiting(inst, r, t, True)
            self._wake(inst, t)
        if bar is not None:
            bar.update(len(self.finished) - bar.n)
            bar.close()
        left = self.admitted - len(self.finished)
        if left:
            stuck = [i.iid for i in self.insts if i.view.waiting or i.view.running or i.view.parked]
            raise SimError(f"{left} admitted requests never finished (instances {stuck[:8]} hold requests but "
                           f"their schedulers plan nothing; scheduler {self.insts[0].sched.name})")

    def _push(self, t: float, kind: int, obj, ver: int) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, obj, ver))

    # ------------------------------------------------------------------ instance iterations
    def _wake(self, inst: SimInstance, t: float) -> None:
        """Something changed on inst at time t: start an iteration if idle, else cut a segment short."""
        seg = inst.seg
        if seg is None:
            self._start(inst, t)
        elif seg.steps > 1:
            c = seg.completed_by(t)
            k = min(seg.steps, c + 1)
            if k < seg.steps:
                seg.steps = k
                seg.end = seg.start + seg.offset(k)
                inst.version += 1
                self._push(seg.end, EV_ITER, inst, inst.version)

    def _start(self, inst: SimInstance, now: float) -> None:
        v = inst.view
        sched = inst.sched
        cap = v.kv_capacity
        inst.seg = None
        if inst.pending:
            self._apply_pending(inst, now)
        if not (v.waiting or v.running or v.parked):
            inst.seg = None
            inst.last_commit = now
            return
        xfer_park = xfer_resume = 0
        preempted = parked = resumed = None
        rec = inst.records is not None
        for _attempt in range(1000):
            plan = sched.schedule(v, now)
            if plan.preempt:
                for r in plan.preempt:
                    self._preempt(inst, r)
                if rec:
                    preempted = (preempted or []) + [r.rid for r in plan.preempt]
            if plan.park:
                for r in plan.park:
                    xfer_park += self._park(inst, r)
                if rec:
                    parked = (parked or []) + [r.rid for r in plan.park]
            if plan.resume:
                for r in plan.resume:
                    xfer_resume += self._resume(inst, r)
                if rec:
                    resumed = (resumed or []) + [r.rid for r in plan.resume]
            need = len(plan.decode)
            for c in plan.prefill:
                need += c.tokens
            if v.kv_used + need <= cap:
                if need or xfer_park or xfer_resume or not (plan.preempt or plan.park or plan.resume):
                    break
                continue  # the plan only moved requests (e.g. a park turned into a preemption): plan again
            victims = sched.on_kv_exhausted(v, now, need)
            if not victims:
                raise SimError(f"scheduler {sched.name} planned {need} new KV tokens on instance {inst.iid} "
                               f"with {cap - v.kv_used} free and on_kv_exhausted retracted nothing")
            for r in victims:
                self._preempt(inst, r)
            if rec:
                preempted = (preempted or []) + [r.rid for r in victims]
        else:
            raise SimError(f"scheduler {sched.name}: no feasible plan after 1000 retractions")
        if plan.reserve:  # policy-owned reservations: the driver records them on the requests
            index = {r.rid: r for lst in (v.waiting, v.running, v.parked) for r in lst}
            for rid, tokens in plan.reserve.items():
                r = index.get(rid)
                if r is None:
                    raise SimError(f"scheduler {sched.name} reserves KV for {rid}, not on instance {inst.iid}")
                r.reserved_kv = int(tokens)
        decode = plan.decode
        prefill = plan.prefill
        xfer = 0.0
        if xfer_park or xfer_resume:
            xfer = max(xfer_park, xfer_resume) if (xfer_park and xfer_resume) else xfer_park + xfer_resume
        if not decode and not prefill:
            if xfer > 0:  # a pure KV-move iteration
                seg = Segment(now, plan, [], 1, xfer, 0.0, None, 0, xfer)
                self._begin(inst, seg, preempted, parked, resumed)
                return
            inst.seg = None  # nothing to run: idle until something wakes it (the run-end check reports leftovers)
            inst.last_commit = now
            return
        iid = inst.iid
        kv_sum = len(decode)
        kv_max = 0
        for r in decode:
            if r.phase != RUNNING or r.instance != iid:
                raise SimError(f"scheduler {sched.name} decodes {r.rid} which is not running on instance {iid}")
            k = r.kv_tokens
            kv_sum += k
            if k > kv_max:
                kv_max = k
        if decode:
            kv_max += 1
        cm = self.cm
        if prefill:
            pf_tokens = 0
            work = 0.0
            causal = 0.0
            for c in prefill:
                r = c.req
                n = c.tokens
                if r.phase != WAITING or r.instance != iid or n <= 0 or n > r.length - r.kv_tokens:
                    raise SimError(f"scheduler {sched.name}: invalid prefill chunk {r.rid} x{n} on {iid}")
                pf_tokens += n
                work += n * (r.kv_tokens + n / 2.0)  # core.costmodel.prefill_attn_work
                if r.admitted_at is None:
                    r.admitted_at = now
                causal += n * n / 2.0
            if self._causal_kw and len(prefill) > 1:
                dur = cm.iteration_time(pf_tokens, work, len(decode), kv_sum, kv_max, prefill_causal=causal)
            else:
                dur = cm.iteration_time(pf_tokens, work, len(decode), kv_sum, kv_max)
            seg = Segment(now, plan, decode, 1, max(dur, xfer), 0.0, None, kv_sum, xfer)
        else:
            steps = 1
            if plan.stable_steps > 1 and self.cfg.fast_forward and not (plan.preempt or plan.park or plan.resume):
                steps = self._stable_steps(inst, plan, decode)
            b = len(decode)
            if steps == 1:
                dur = cm.iteration_time(0, 0.0, b, kv_sum, kv_max)
                seg = Segment(now, plan, decode, 1, max(dur, xfer), 0.0, None, kv_sum, xfer)
            elif self.cfg.exact_steps or rec:
                cum = []
                acc = 0.0
                it = cm.iteration_time
                for k in range(steps):
                    acc += it(0, 0.0, b, kv_sum + b * k, kv_max + k)
                    cum.append(acc)
                seg = Segment(now, plan, decode, steps, 0.0, 0.0, cum, kv_sum, 0.0)
            else:
                steps, a, slope = self._affine(b, kv_sum, kv_max, steps)
                seg = Segment(now, plan, decode, steps, a, slope, None, kv_sum, 0.0)
        self._begin(inst, seg, preempted, parked, resumed)

    def _begin(self, inst: SimInstance, seg: Segment, preempted, parked, resumed) -> None:
        need = seg.batch * seg.steps + sum(c.tokens for c in seg.plan.prefill)
        v = inst.view
        if v.kv_used + need > v.kv_capacity:
            raise SimError(f"instance {inst.iid}: KV would exceed capacity ({v.kv_used}+{need}>{v.kv_capacity})")
        if v.kv_used + need > inst.max_kv_seen:
            inst.max_kv_seen = v.kv_used + need
        inst.seg = seg
        inst.version += 1
        if inst.records is not None:
            seg.xfer = (seg.xfer, preempted, parked, resumed)  # type: ignore[assignment]
        self._push(seg.end, EV_ITER, inst, inst.version)

    def _stable_steps(self, inst: SimInstance, plan: IterationPlan, decode: list) -> int:
        v = inst.view
        b = len(decode)
        steps = min(plan.stable_steps, (v.kv_capacity - v.kv_used) // b)
        for r in decode:
            left = r.target - r.output_len
            if left < steps:
                steps = left
                if steps <= 1:
                    return 1
            if r.bound_next:
                left = r.bound_next - r.length
                if left < steps:
                    steps = max(1, left)
        return max(1, steps)

    def _affine(self, b: int, kv_sum: int, kv_max: int, steps: int) -> tuple[int, float, float]:
        """Affine fit of decode step time over a segment; halves the segment until the midpoint fits."""
        it = self.cm.iteration_time
        a = it(0, 0.0, b, kv_sum, kv_max)
        tol = self.cfg.affine_tolerance
        while True:
            last = it(0, 0.0, b, kv_sum + b * (steps - 1), kv_max + steps - 1)
            slope = (last - a) / (steps - 1)
            if steps <= 4:
                return steps, a, slope
            mid = (steps - 1) // 2
            tm = it(0, 0.0, b, kv_sum + b * mid, kv_max + mid)
            if abs(a + slope * mid - tm) <= tol * tm:
                return steps, a, slope
            steps = mid + 1

    def _advance(self, inst: SimInstance, t: float) -> None:
        """Apply the steps of the segment in flight completed by t, so request views are exact at t (used
        before a router looks at running requests); the rest of the segment goes on unchanged."""
        seg = inst.seg
        if seg is None or seg.steps <= 1:
            return
        c = seg.completed_by(t)
        if c <= 0 or c >= seg.steps:
            return
        self._touch(inst, t)
        v = inst.view
        b = seg.batch
        off = seg.offset(c)
        inst.busy_time += off
        inst.kv_area += off * v.kv_used + off * b * c / 2.0
        if inst.records is not None:
            steps, seg.steps = seg.steps, c
            self._record(inst, seg)
            seg.steps = steps
            seg.xfer = (0.0, None, None, None)
        tc = seg.start + off
        for r in seg.decode:
            r.output_len += c
            r.kv_tokens += c
            r.last_decode = tc
        v.kv_used += b * c
        v.iteration += c
        if seg.cum is not None:
            seg.cum = [x - off for x in seg.cum[c:]]
        else:
            seg.a += seg.b * c
        seg.start = tc
        seg.steps -= c
        seg.kv_sum0 += b * c

    def _commit(self, inst: SimInstance, t: float) -> None:
        """The segment in flight on inst ends at t: advance tokens, finish requests, check bounds."""
        seg = inst.seg
        v = inst.view
        self._touch(inst, t)
        plan = seg.plan
        K = seg.steps
        dur = t - seg.start
        inst.busy_time += dur
        b = seg.batch
        inst.kv_area += dur * v.kv_used + (seg.offset(K) * b * K / 2.0 if K > 1 else 0.0)
        if inst.records is not None:
            self._record(inst, seg)
        finished = []
        armed = []
        iid = inst.iid
        for c in plan.prefill:
            r = c.req
            if r.phase != WAITING or r.instance != iid:
                continue  # moved away meanwhile (cannot happen: moves wait for boundaries)
            r.kv_tokens += c.tokens
            v.kv_used += c.tokens
            inst.prefill_left -= c.tokens
            if r.kv_tokens >= r.length:  # prefill complete: emits a token
                v.waiting.remove(r)
                r.phase = RUNNING
                r.output_len += 1
                r.last_decode = t
                if r.first_token_time is None:
                    r.first_token_time = t
                v.running.append(r)
                if r.predicted_output_len is not None:
                    inst.pred_active = True
                if r.output_len >= r.target:
                    finished.append(r)
                elif self.has_bound:
                    self._arm_bound(r, iid)
                    if r.bound_next:
                        armed.append(r)
        if b:
            for r in seg.decode:
                r.output_len += K
                r.kv_tokens += K
                r.last_decode = t
                if r.output_len >= r.target:
                    finished.append(r)
            v.kv_used += b * K
        v.iteration += K
        inst.last_commit = t
        # inst.seg stays set until _start replaces it, so nothing re-entrant starts a second iteration
        for r in finished:
            v.running.remove(r)
            v.kv_used -= r.kv_tokens
            r.phase = FINISHED
            r.finish_time = t
            self._cancel_migration(r)
            inst.sched.on_finish(r, v, t)
            self.router.on_finish(r, t)
            self.finished.append(r)
        if self.has_bound:
            for group in (armed, seg.decode):
                for r in group:
                    if r.bound_next and r.phase == RUNNING and r.instance == iid and r.length >= r.bound_next:
                        self._bound_reached(inst, r, t)
        if self.cfg.check_invariants:
            self._check(inst)

    def _record(self, inst: SimInstance, seg: Segment) -> None:
        extra = seg.xfer if isinstance(seg.xfer, tuple) else (0.0, None, None, None)
        _, pre, par, res = extra
        plan = seg.plan
        dec = [r.rid for r in seg.decode]
        for k in range(seg.steps):
            rec = IterationRecord(start=seg.start + seg.offset(k), duration=seg.step_duration(k),
                                  decode=dec)
            if k == 0:
                rec.prefill = [(c.req.rid, c.tokens) for c in plan.prefill]
                rec.preempted = pre or []
                rec.parked = par or []
                rec.resumed = res or []
            inst.records.append(rec)

    def _check(self, inst: SimInstance) -> None:
        v = inst.view
        kv = sum(r.kv_tokens for r in v.running) + sum(r.kv_tokens for r in v.waiting) + inst.incoming
        if kv != v.kv_used:
            raise SimError(f"instance {inst.iid}: kv_used {v.kv_used} != recount {kv}")
        if kv > v.kv_capacity:
            raise SimError(f"instance {inst.iid}: KV {kv} exceeds capacity {v.kv_capacity}")
        pl = sum(r.length - r.kv_tokens for r in v.waiting)
        if pl != inst.prefill_left:
            raise SimError(f"instance {inst.iid}: prefill_left {inst.prefill_left} != recount {pl}")
        if sum(r.kv_tokens for r in v.parked) != inst.host_used:
            raise SimError(f"instance {inst.iid}: host KV accounting broken")

    # ------------------------------------------------------------------ park / resume
    def _park(self, inst: SimInstance, r: SimRequest) -> float:
        v = inst.view
        if r.instance != inst.iid or r.phase not in (RUNNING, WAITING):
            raise SimError(f"{inst.sched.name}: park of {r.rid} which is not running/waiting on {inst.iid}")
        if inst.host_used + r.kv_tokens > v.host_kv_capacity:
            self.park_rejected += 1
            self._preempt(inst, r)  # no room on the host: the KV is dropped (recompute later)
            return 0.0
        self._cancel_migration(r)
        self._free_request(inst, r)
        r.phase = PARKED
        v.parked.append(r)
        inst.host_used += r.kv_tokens
        self.parks += 1
        return self._mover(inst.iid)(r.kv_tokens, "d2h")

    def _mover(self, iid: int) -> Callable[[int, str], float]:
        has_partner = (iid ^ 1) < self.n
        return self.kv_move_paired if has_partner else self.kv_move

    def _resume(self, inst: SimInstance, r: SimRequest) -> float:
        v = inst.view
        if r.instance != inst.iid or r.phase != PARKED:
            raise SimError(f"{inst.sched.name}: resume of {r.rid} which is not parked on {inst.iid}")
        v.parked.remove(r)
        inst.host_used -= r.kv_tokens
        v.kv_used += r.kv_tokens
        if r.length - r.kv_tokens > 1:  # parked mid-prefill: back to the queue with its KV on GPU
            r.phase = WAITING
            v.waiting.append(r)
            inst.prefill_left += r.length - r.kv_tokens
        else:
            r.phase = RUNNING
            v.running.append(r)
            if self.has_bound and r.rid not in self.migrating:
                self._arm_bound(r, inst.iid)  # a migration cancelled by the park left it unarmed
        self.resumes += 1
        return self._mover(inst.iid)(r.kv_tokens, "h2d")

    # ------------------------------------------------------------------ migrations
    def _arm_bound(self, r: SimRequest, iid: int) -> None:
        b = self.router.migration_bound(r, iid)
        r.bound_next = 0 if b is None else max(int(b), r.length)

    def _rearm_after_refusal(self, r: SimRequest, iid: int) -> None:
        """The request stays past its bound on iid: ask again after migration_retry_tokens tokens, or later
        if the router's bound (re-read now: it may have moved, or defer the retry) says so."""
        b = self.router.migration_bound(r, iid)
        if b is None:
            r.bound_next = 0
        else:
            r.bound_next = max(int(b), r.length + max(1, self.cfg.migration_retry_tokens))

    def _bound_reached(self, inst: SimInstance, r: SimRequest, t: float) -> None:
        if r.rid in self.migrating:
            return
        m = self.router.migrate(r, inst.iid, self._cluster_view(t), t)
        if self.plan_version is not None:
            self._check_plan_version(t)
        if m is None:
            if r.phase == RUNNING and r.instance == inst.iid:
                self._rearm_after_refusal(r, inst.iid)
            return
        r.bound_next = 0
        self._start_migration(m, t)
        if r.rid not in self.migrating and r.rid not in self.in_transit and r.instance == inst.iid:
            self._rearm_after_refusal(r, inst.iid)  # aborted: ask again later

    def _check_plan_version(self, t: float) -> None:
        ver = getattr(self.router, "plan_version", None)
        if ver != self.plan_version:
            self.plan_version = ver
            self._rearm_all(t)

    def _rearm_all(self, t: float) -> None:
        """The router's bounds changed: re-read the bound of every running request not being migrated.
        Instances whose requests now have a lower bound cut their fast-forwarded segment at the step in
        progress, so a request already past its new bound is asked to move at the end of that step."""
        self.rearms += 1
        migrating, in_transit = self.migrating, self.in_transit
        for inst in self.insts:
            v = inst.view
            if not v.running:
                continue
            self._advance(inst, t)
            lowered = False
            for r in v.running:
                if r.rid in migrating or r.rid in in_transit:
                    continue
                old = r.bound_next
                self._arm_bound(r, inst.iid)
                if r.bound_next and (not old or r.bound_next < old):
                    lowered = True
            if lowered and inst.seg is not None:
                self._wake(inst, t)

    def _rebalance(self, t: float) -> None:
        running = _Running((i.iid, i.view.running) for i in self.insts)
        running.sim, running.t, running.done = self, t, set()
        for m in self.router.rebalance(self._cluster_view(t), running, t) or ():
            self._start_migration(m, t)
        if self.plan_version is not None:
            self._check_plan_version(t)

    def _start_migration(self, m: Migration, t: float) -> None:
        r = m.req
        if not (0 <= m.dst < self.n) or m.dst == m.src:
            raise SimError(f"router {self.router.name}: migration of {r.rid} to invalid instance {m.dst}")
        if r.phase == FINISHED or r.instance != m.src or r.rid in self.migrating or r.rid in self.in_transit:
            self.migrations_aborted += 1
            return
        src = self.insts[m.src]
        mig = _Migration(m)
        mig.version = 0
        if m.mode == MigrationMode.KV_TRANSFER and r.phase == RUNNING:
            dst = self.insts[m.dst]
            dv = dst.view
            if dv.kv_used + r.kv_tokens + self._inflight_need(dst) > dv.kv_capacity:
                self.migrations_aborted += 1  # Llumnix aborts when the destination cannot hold the blocks
                return
            self.migrating[r.rid] = mig
            self._copy_stage(mig, r.kv_tokens, t)
            return
        # recompute (or a waiting request): move at the source's next iteration boundary
        self.migrating[r.rid] = mig
        mig.final = True
        self._at_boundary(src, ("recompute", mig), t)

    def _inflight_need(self, inst: SimInstance) -> int:
        seg = inst.seg
        if seg is None:
            return 0
        return seg.batch * seg.steps + sum(c.tokens for c in seg.plan.prefill)

    def _copy_stage(self, mig: _Migration, tokens: int, t: float) -> None:
        dst = self.insts[mig.dst]
        self._touch(dst, t)
        dst.incoming += tokens
        dst.view.kv_used += tokens
        mig.reserved += tokens
        mig.copied += tokens
        mig.stages += 1
        mig.version += 1
        self._push(t + self.d2d(tokens), EV_MIG, mig, mig.version)

    def _migration_event(self, mig: _Migration, t: float) -> None:
        r = mig.req
        if mig.final:  # stop-and-copy done: the request lands on dst
            self._land(mig, t)
            return
        if r.phase != RUNNING or r.instance != mig.src:
            self._cancel_migration(r)
            return
        self._advance(self.insts[mig.src], t)
        delta = r.kv_tokens - mig.copied
        dst = self.insts[mig.dst]
        if delta > self.cfg.migration_stop_copy_tokens and mig.stages < self.cfg.migration_max_stages:
            if dst.view.kv_used + delta + self._inflight_need(dst) > dst.view.kv_capacity:
                self._cancel_migration(r)
                self.migrations_aborted += 1
                return
            self._copy_stage(mig, delta, t)
            return
        mig.final = True
        self._at_boundary(self.insts[mig.src], ("stopcopy", mig), t)

    def _at_boundary(self, inst: SimInstance, action, t: float) -> None:
        inst.pending.append(action)
        if inst.seg is None:
            self._apply_pending(inst, t)
            self._start(inst, t)
        else:
            self._wake(inst, t)

    def _apply_pending(self, inst: SimInstance, t: float) -> None:
        actions, inst.pending = inst.pending, []
        for kind, mig in actions:
            r = mig.req
            if self.migrating.get(r.rid) is not mig:
                continue
            src = inst
            if r.phase == FINISHED or r.instance != src.iid or r.phase == PARKED:
                self._cancel_migration(r)
                self.migrations_aborted += 1
                continue
            self._touch(src, t)
            if kind == "recompute":
                del self.migrating[r.rid]
                self._free_request(src, r)
                r.kv_tokens = 0
                r.migrations += 1
                self.migrations += 1
                dst = self.insts[mig.dst]
                self._touch(dst, t)
                self._add_waiting(dst, r, t, True)
                if self.has_bound:
                    r.bound_next = 0
                self._wake(dst, t)
            else:  # stop-and-copy: pause the request, copy the last stage's tokens
                if r.phase != RUNNING:
                    self._cancel_migration(r)
                    self.migrations_aborted += 1
                    continue
                delta = r.kv_tokens - mig.copied
                dst = self.insts[mig.dst]
                if dst.view.kv_used + delta + self._inflight_need(dst) > dst.view.kv_capacity:
                    self._cancel_migration(r)
                    self.migrations_aborted += 1
                    continue
                self._free_request(src, r)
                del self.migrating[r.rid]
                self.in_transit[r.rid] = mig
                self._touch(dst, t)
                dst.incoming += delta
                dst.view.kv_used += delta
                mig.reserved += delta
                mig.copied += delta
                mig.version += 1
                self._push(t + self.d2d(delta), EV_MIG, mig, mig.version)

    def _land(self, mig: _Migration, t: float) -> None:
        r = mig.req
        del self.in_transit[r.rid]
        dst = self.insts[mig.dst]
        self._touch(dst, t)
        dst.incoming -= mig.reserved
        dst.view.kv_used -= mig.reserved
        r.instance = dst.iid
        r.phase = RUNNING
        r.migrations += 1
        self.migrations += 1
        dst.sched.on_arrival(r, dst.view, t)
        dst.view.running.append(r)
        dst.view.kv_used += r.kv_tokens
        if r.predicted_output_len is not None:
            dst.pred_active = True
        if self.has_bound:
            self._arm_bound(r, dst.iid)
        self._wake(dst, t)

    def _cancel_migration(self, r: RequestView) -> None:
        mig = self.migrating.pop(r.rid, None)
        if mig is None:
            return
        mig.version += 1
        if self.has_bound and r.phase == RUNNING and r.instance == mig.src:
            self._rearm_after_refusal(r, mig.src)  # still past its bound (or the router moved it)
        if mig.reserved:
            dst = self.insts[mig.dst]
            self._touch(dst, self.now)
            dst.incoming -= mig.reserved
            dst.view.kv_used -= mig.reserved
            mig.reserved = 0


def _sglang_max_running(cm: CostModel, kv_capacity: int) -> int:
    """SGLang's default max running requests (mem_cache/kv_cache_configurator.py resolve_max_num_reqs)."""
    ctx = getattr(cm.model, "max_context", 8192) or 8192
    est = max(min(int(kv_capacity / ctx * 512), 4096), 2048)
    return max(1, min(est, kv_capacity // 2))


def build(cfg: SimConfig, trace: Sequence[TraceRequest]) -> Simulator:
    cm = cfg.cost_model or CostModel.for_names(cfg.model, cfg.gpu, cfg.tp)
    cap = cfg.kv_capacity or cm.kv_capacity_tokens()
    if cfg.instances < 1:
        raise ValueError("instances must be >= 1")
    step = max(1, len(trace) // max(1, cfg.length_sample_size))
    sample = [(x.prompt_len, x.output_len) for x in trace[::step]][: cfg.length_sample_size]
    rate = None
    if len(trace) > 1 and trace[-1].arrival > trace[0].arrival:
        rate = (len(trace) - 1) / (trace[-1].arrival - trace[0].arrival)
    ctx = PolicyContext(cost_model=cm, num_instances=cfg.instances, seed=cfg.seed, length_sample=sample,
                        arrival_rate=rate, kv_capacity=cap)
    scheds = [make_instance_scheduler(cfg.scheduler, ctx, **cfg.scheduler_options) for _ in range(cfg.instances)]
    router = make_router(cfg.router, ctx, **cfg.router_options)
    return Simulator(cfg, cm, scheds, router, cap)


def simulate(trace: Sequence[TraceRequest], cfg: SimConfig | None = None, progress: bool = False) -> SimResult:
    """Simulate the trace on cfg.instances instances; returns metrics, finished requests and schedules."""
    cfg = cfg or SimConfig()
    t0 = _time.perf_counter()
    trace = sorted(trace, key=lambda x: x.arrival) if any(
        trace[i].arrival > trace[i + 1].arrival for i in range(len(trace) - 1)) else trace
    sim = build(cfg, trace)
    sim.run(trace, progress=progress)
    wall = _time.perf_counter() - t0
    return _result(sim, cfg, wall)


def simulate_instance(trace: Sequence[TraceRequest], scheduler: InstanceScheduler, cost_model: CostModel,
                      kv_capacity: int | None = None, record_schedule: bool = True,
                      cfg: SimConfig | None = None) -> SimResult:
    """Run ONE instance with the given scheduler object; ``schedules[0]`` holds its IterationRecords."""
    from ..policies.baselines import RoundRobinConfig, RoundRobinRouter

    cap = kv_capacity or (cfg.kv_capacity if cfg else None) or cost_model.kv_capacity_tokens()
    cfg = dataclasses.replace(cfg or SimConfig(), instances=1, record_schedule=record_schedule,
                              cost_model=cost_model, kv_capacity=cap)
    t0 = _time.perf_counter()
    trace = sorted(trace, key=lambda x: x.arrival)
    sim = Simulator(cfg, cost_model, [scheduler], RoundRobinRouter(1, RoundRobinConfig()), cap)
    sim.run(trace)
    return _result(sim, cfg, _time.perf_counter() - t0)


def _result(sim: Simulator, cfg: SimConfig, wall: float) -> SimResult:
    metrics = compute_metrics(sim, cfg, wall)
    schedules = [i.records for i in sim.insts] if cfg.record_schedule else None
    return SimResult(metrics=metrics, requests=sim.finished, schedules=schedules, rejected=sim.rejected,
                     config=cfg)
