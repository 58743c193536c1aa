"""The event loop: trace arrivals, iteration ends, migration copy ends and periodic rebalancing, in time order.

Arrivals come from a pointer into the sorted trace; the other events from a heap whose stale entries are
skipped by version. Loads are published lazily but exactly: the load an instance publishes for publish
tick T is its state at T, computed the first time a router reads it, or just before the instance changes
after T.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from ..core.decisions import HOLD, leaves_at_first_token
from ..core.traces import TraceRequest
from ..core.views import ClusterView, Phase
from .config import SimError
from .fast_forward import EV_ITER, LazyRunning
from .instance import SimInstance, SimRequest
from .migration import EV_MIG

EV_REBALANCE = 2
EV_RELEASE = 3
_INF = float("inf")
LIVE_TICK = -2  # publish_interval 0: every read sees live state


class LazyLoads(list):
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


class EventLoop:
    """Simulator mixin. Uses: ``cfg``, ``router``, ``insts``, ``n``, ``heap``, ``seq``, ``pi`` (publish
    interval), ``loads``, ``cluster``, ``rebalance_interval``, the counters, and the methods ``_start``,
    ``_commit`` (sim.iterations), ``_wake`` (sim.fast_forward), ``_migration_event``, ``_start_migration``,
    ``_check_plan_version`` (sim.migration)."""

    def run(self, trace: Sequence[TraceRequest], progress: bool = False) -> None:
        heap = self.heap
        n_tr = len(trace)
        ai = 0
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n_tr, unit="req", desc="simulate", leave=False)
        if self.has_rebalance and self.rebalance_interval > 0:
            self._push(self.rebalance_interval, EV_REBALANCE, None, 0)
        if self.cfg.warm_start:
            self._place_warm(self.cfg.warm_start)
        next_arr = trace[0].arrival if n_tr else _INF
        while True:
            if heap and heap[0][0] <= next_arr:
                t, _, kind, obj, ver = heapq.heappop(heap)
                if kind == EV_ITER:
                    if ver != obj.version:
                        continue
                    self.now = t
                    before = len(self.finished)
                    self._commit(obj, t)
                    if bar is not None and len(self.finished) != before:
                        bar.update(len(self.finished) - before)
                    self._start(obj, t)
                elif kind == EV_MIG:
                    if ver != obj.version:
                        continue
                    self.now = t
                    self._migration_event(obj, t)
                elif kind == EV_RELEASE:
                    if t != self.release_due:
                        continue
                    self.now = t
                    self._release(t)
                else:
                    self.now = t
                    self._rebalance_event(t, ai < n_tr)
                continue
            if ai >= n_tr:
                if heap:
                    continue
                break
            tr = trace[ai]
            ai += 1
            next_arr = trace[ai].arrival if ai < n_tr else _INF
            self._arrive(tr)
        if bar is not None:
            bar.update(len(self.finished) - bar.n)
            bar.close()
        self._check_all_finished()

    def _place_warm(self, warm) -> None:
        """SimConfig.warm_start: requests already in flight at t = 0, as (instance, prompt, generated, output,
        kv_tokens): one that generated tokens and has KV runs on with its KV (taken from the instance's pool),
        any other waits there for its (re)prefill. Their E2E counts from t = 0."""
        touched = set()
        for k, (iid, prompt, gen, out, kv) in enumerate(warm):
            inst = self.insts[int(iid) % self.n]
            gen = max(0, int(gen))
            target = max(int(out), gen + 1)
            if prompt < 1 or prompt + target > self.kv_capacity:
                continue
            r = SimRequest(rid=f"warm{k}", arrival=0.0, prompt_len=int(prompt), max_new_tokens=None, target=target)
            r.output_len = gen
            r.extra["true_output_len"] = target
            if gen > 0:
                r.first_token_time = 0.0
            self.admitted += 1
            self._touch(inst, 0.0)
            touched.add(inst.iid)
            v = inst.view
            need = r.length - 1
            if gen > 0 and kv > 0 and v.kv_used + need <= v.kv_capacity:
                r.kv_tokens, r.instance, r.phase = need, inst.iid, Phase.RUNNING
                inst.sched.on_arrival(r, v, 0.0)
                v.running.append(r)
                v.kv_used += need
                if self.has_bound:
                    self._arm_bound(r, inst.iid)
            else:
                inst.add_waiting(r, 0.0)
        for i in sorted(touched):
            self._wake(self.insts[i], 0.0)

    def _arrive(self, tr: TraceRequest) -> None:
        """A trace request arrives: reject it if it can never fit, else route it and queue it."""
        t = tr.arrival
        self.now = t
        max_new = self.cfg.max_new_tokens
        target = tr.output_len if max_new is None else min(tr.output_len, max_new)
        if target < 1 or tr.prompt_len < 1:
            raise SimError(f"request {tr.rid}: prompt and output lengths must be >= 1")
        if tr.prompt_len + target > self.kv_capacity:
            self.rejected.append(tr)
            return
        if self.cfg.max_new_tokens_from_trace:  # the client sends the true output length (sglang-cascade replay)
            max_new = target
        r = SimRequest(
            rid=tr.rid,
            arrival=t,
            prompt_len=tr.prompt_len,
            max_new_tokens=max_new,
            ignore_eos=self.cfg.max_new_tokens_from_trace,
            target=target,
            block_hashes=tr.hash_ids,
        )
        r.extra["true_output_len"] = target  # for oracle ablations only (policies/predictor.py)
        self.admitted += 1
        iid = self.router.route(r, self._cluster_view(t), t)
        self._check_plan_version(t)
        if iid == HOLD and self.has_release:
            return
        self._place(r, iid, t)

    def _place(self, r: SimRequest, iid: int, t: float) -> None:
        """A routed (or released) request joins its instance's waiting queue."""
        if not (isinstance(iid, int) and 0 <= iid < self.n):
            raise SimError(f"router {self.router.name} returned instance {iid!r} (have {self.n})")
        if self.cfg.stage_first_kv and self.has_bound:  # as the live router at dispatch (router/session.py)
            r.staged = leaves_at_first_token(self.router.migration_bound(r, iid), r.prompt_len)
        inst = self.insts[iid]
        self._touch(inst, t)
        inst.add_waiting(r, t)
        self._wake(inst, t)

    def _release(self, t: float) -> None:
        """The router sends requests it held (``RouterPolicy.release``)."""
        self.release_due = _INF
        for r, iid in self.router.release(self._cluster_view(t), t):
            self._place(r, iid, t)
        self._check_plan_version(t)

    def _arm_release(self, t: float) -> None:
        """After every call into the router: wake ``_release`` when ``release_at`` says."""
        at = self.router.release_at(t)
        if at is not None and max(at, t) < self.release_due:
            self.release_due = max(at, t)
            self._push(self.release_due, EV_RELEASE, None, 0)

    def _rebalance_event(self, t: float, arrivals_left: bool) -> None:
        """Periodic rebalancing, re-scheduled while anything can still move."""
        if not (arrivals_left or self.admitted > len(self.finished)):
            return
        running = LazyRunning(self, t)
        for m in self.router.rebalance(self._cluster_view(t), running, t) or ():
            self._start_migration(m, t)
        self._check_plan_version(t)
        if arrivals_left or self.migrating or self.in_transit or any(i.seg is not None for i in self.insts):
            self._push(t + self.rebalance_interval, EV_REBALANCE, None, 0)

    def _check_all_finished(self) -> None:
        left = self.admitted - len(self.finished)
        if left:
            stuck = [i.iid for i in self.insts if i.view.waiting or i.view.running or i.view.parked]
            raise SimError(
                f"{left} admitted requests never finished (instances {stuck[:8]} hold requests but "
                f"their schedulers plan nothing; scheduler {self.insts[0].sched.name})"
            )

    def _push(self, t: float, kind: int, obj, ver: int) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, obj, ver))

    # ------------------------------------------------------------------ publication / cluster view
    def _tick(self, t: float) -> int:
        return int(t / self.pi) if self.pi > 0 else LIVE_TICK

    def _published(self, i: int, tick: int):
        inst = self.insts[i]
        if tick == LIVE_TICK:
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
