"""The per-scheduler driver: builds the policy, calls it once per SGLang step, applies its plan.

One :class:`CascadeDriver` lives on each SGLang ``Scheduler`` (``scheduler._cascade``) when
``--scheduler-plugin`` is set. The hooks in :mod:`.hooks` call it at four points of SGLang's loop:

1. ``get_next_batch_to_run`` (start): rejoin held-back requests, refresh the views, call the policy,
   settle its plan by the shared rules (policies/plan_rules.py), apply preempt -> park -> resume;
2. ``SchedulePolicy.calc_priority`` / ``PrefillAdder``: waiting order, admission set, KV reservations;
3. ``update_running_batch``: decode subset (split the running batch);
4. ``process_batch_result``: finished requests (``policy.on_finish``).

Any exception from policy code (or from applying its plan) is logged, counted and turns the step into a
stock SGLang step; the server keeps serving.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import numpy as np

from ..core.costmodel import CostModel
from ..core.decisions import IterationPlan
from ..core.views import InstanceView
from ..policies import registry
from ..policies.plan_rules import SettleReport, settle_plan
from . import batch_ops
from .adapter import PlanApplier, ViewCache, _finished_reason, _rid
from .config import PluginConfig
from .host_parking import HostParking
from .sampling_state import speculative
from .sampling_state import splittable as req_holdable
from .view_sync import ViewSync

logger = logging.getLogger("sglang_cascade.plugin")

COUNTERS = (
    "steps",
    "plans",
    "reused_plans",
    "policy_errors",
    "fallback_steps",
    "admitted",
    "admitted_stock",
    "refused_by_sglang",
    "refused_by_policy",
    "parked",
    "resumed",
    "preempted",
    "finished",
    "decode_splits",
    "held_back",
    "starvation_fallbacks",
    # the shared plan rules (policies/plan_rules.py) and the adapter's idle guard (expected 0)
    "parks_dropped",
    "forced_resumes",
    "stock_decodes",
    "stock_prefills",
    "idle_guard_resumes",
    "skipped_moves",
    "unsplittable_steps",
    "slot_splits",
    "copy_splits",
    "view_rebuilds",
    "view_updates",
    "finished_by_row",
    "finish_scans",  # how finishes were found: from freed pool rows / by scanning the batch
    # parking: through host memory (KV copied out and back, no recompute) or by recompute (fallback)
    "parked_host",
    "parked_recompute",
    "resumed_host",
    "resumed_recompute",
    "host_copy_failures",
    "host_restore_fallbacks",
    "host_kv_tokens_peak",
)


def _batch_slots(batch: Any):
    """The batch's request-pool slots in batch order (SGLang's ``req_pool_indices_cpu``) as a numpy array,
    or None when the batch has none."""
    arr = getattr(batch, "req_pool_indices_cpu", None)
    if arr is None:
        return None
    try:
        return arr.numpy() if hasattr(arr, "numpy") else np.asarray(arr)
    except Exception:  # e.g. a tensor on a device: fall back to the rid diff
        return None


class InjectedPolicyError(RuntimeError):
    """Raised on purpose by ``--cascade-fail-every`` (testing the fallback)."""


def build_policy(
    cfg: PluginConfig, kv_capacity: int | None = None, mixed_chunk: bool = False, schedule_policy: str = "fcfs"
):
    """The configured instance scheduler, built through the shared registry (same code as the simulator);
    ``mixed_chunk``: the server runs with ``--enable-mixed-chunk`` (PolicyContext.mixed_chunk);
    ``schedule_policy``: its ``--schedule-policy`` (PolicyContext.schedule_policy)."""
    from ..testing.probe_policy import ensure_registered

    ensure_registered()
    model, gpu, tp = cfg.cost_model_names()
    cm = CostModel.for_names(model, gpu, tp)
    ctx = registry.PolicyContext(
        cost_model=cm,
        kv_capacity=kv_capacity or cm.kv_capacity_tokens(),
        mixed_chunk=bool(mixed_chunk),
        schedule_policy=str(schedule_policy or "fcfs"),
    )
    return registry.make_instance_scheduler(cfg.scheduler, ctx, **cfg.options)


class CascadeDriver:
    def __init__(
        self,
        cfg: PluginConfig,
        *,
        kv_capacity: int,
        max_prefill_tokens: int = 8192,
        max_running: int = 1024,
        policy=None,
        clock=time.monotonic,
        mixed_chunk: bool = False,
        schedule_policy: str = "fcfs",
    ):
        self.cfg = cfg
        self.policy = policy if policy is not None else build_policy(cfg, kv_capacity, mixed_chunk, schedule_policy)
        self.clock = clock
        self.inst = InstanceView(
            iid=cfg.instance_id,
            kv_capacity=kv_capacity,
            host_kv_capacity=cfg.host_kv_tokens,
            max_prefill_tokens=max_prefill_tokens,
            max_running=max_running,
        )
        self.views = ViewCache(cfg.instance_id)
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.applier: PlanApplier | None = None
        self.held: list[Any] = []  # requests held back from decoding (KV on GPU, in no batch): rebuilt
        self.held_batch: Any = None  # or held back as a filtered copy of the running batch: merged back
        self.parked: dict[str, Any] = {}  # rid -> request parked by the policy (device KV freed)
        self.host = HostParking(cfg.host_kv_tokens, self.counters)  # parked requests' KV in host memory
        self._step = 0  # begin_step calls (a host park is restored only in a later step)
        self.sync = ViewSync(self.views, self.counters)  # what changed since the last plan
        self._since_plan = 0
        self._calls = 0
        self._results = 0  # after_result calls
        self._known_running: set[str] | None = None
        self._split_ok: set = set()  # request objects already found splittable (a request's own property)
        self._last_publish = -1e18
        self._published_finished = 0
        self.publisher = None
        if cfg.publish_addr:
            from .publisher import LoadPublisher

            self.publisher = LoadPublisher(cfg.publish_addr)

    @classmethod
    def for_scheduler(cls, sched: Any, cfg: PluginConfig) -> CascadeDriver:
        alloc = sched.token_to_kv_pool_allocator
        drv = cls(
            cfg,
            kv_capacity=int(getattr(alloc, "size", 0) or sched.max_total_num_tokens),
            max_prefill_tokens=int(sched.max_prefill_tokens),
            max_running=int(sched.max_running_requests),
            mixed_chunk=bool(getattr(sched, "is_mixed_chunk", False)),
            schedule_policy=str(getattr(getattr(sched, "server_args", None), "schedule_policy", "fcfs") or "fcfs"),
        )
        from .kv_pool_io import cached_prefix_len

        # a waiting request's view counts the prefix its radix cache holds (SGLang matches it at admission):
        # without it the policy sized a moved request's continuation as a whole prefill and held it back
        drv.views.prefix_len = lambda req: cached_prefix_len(sched, req)
        return drv

    # --- error handling -------------------------------------------------------------------------------
    def _fail(self, where: str, exc: BaseException) -> None:
        self.counters["policy_errors"] += 1
        self.counters["fallback_steps"] += 1
        self.applier = None
        self.dirty = True
        logger.warning(
            "cascade plugin: %s raised %s: %s; SGLang's own decision is used for this step (errors so far: %d)",
            where,
            type(exc).__name__,
            exc,
            self.counters["policy_errors"],
            exc_info=not isinstance(exc, InjectedPolicyError),
        )

    # --- step start -----------------------------------------------------------------------------------
    def _call_policy(self, now: float) -> IterationPlan:
        self._calls += 1
        if self.cfg.fail_every and self._calls % self.cfg.fail_every == 0:
            raise InjectedPolicyError(f"injected failure on policy call {self._calls}")
        return self.policy.schedule(self.inst, now)

    def plan_step(
        self, waiting: list, running: list, engine_kv_used: int | None = None, engine_kv_free: int | None = None
    ) -> PlanApplier | None:
        """Refresh views from engine requests and compute (or reuse) the plan. Raises on policy errors."""
        now = self.clock()
        self.counters["steps"] += 1
        if not waiting and not running and not self.parked:
            self.applier = None  # idle: nothing to decide
            return None
        a = self.applier
        changed = self.sync.changed
        if (
            a is not None
            and not changed
            and self._since_plan + 1 < a.plan.stable_steps
            and not (a.plan.park or a.plan.preempt or a.plan.resume)
        ):
            self._since_plan += 1
            self.counters["reused_plans"] += 1
            return a
        inst = self.inst
        if changed or a is None:
            # membership changed (token counts need no refresh: views read them from the live requests)
            self.sync.sync(
                inst,
                waiting,
                running,
                list(self.parked.values()),
                now,
                lambda rv: self.policy.on_arrival(rv, inst, now),
                force=a is None,
            )
            self._known_running = None  # rebuilt lazily from the new running list
        if engine_kv_used is not None:
            inst.kv_used = engine_kv_used
        else:
            inst.recount_kv_used()
        inst.kv_free_external = engine_kv_free
        inst.iteration += 1
        plan = self._call_policy(now)
        self.counters["plans"] += 1
        self._since_plan = 0
        report = settle_plan(plan, inst)  # the shared rules every driver runs (policies/plan_rules.py)
        self._count_settled(report)
        if report.stalled:
            # Nothing can run under the plan and the rules (e.g. no waiting request fits): SGLang's step.
            self.counters["starvation_fallbacks"] += 1
            self.counters["fallback_steps"] += 1
            self.applier = None
            return None
        self.applier = PlanApplier(plan, known_running=self._known_running_rids, groups=self.views.groups)
        return self.applier

    def _count_settled(self, report: SettleReport) -> None:
        counters = self.counters
        counters["parks_dropped"] += report.parks_dropped
        counters["forced_resumes"] += report.forced_resumes
        counters["stock_decodes"] += report.stock_decode
        counters["stock_prefills"] += report.stock_prefill

    def engine_running(self, batch_reqs, joined: list) -> list:
        return self.sync.engine_running(batch_reqs, joined)

    def note_joined(self, reqs: list) -> None:
        """Requests whose prefill completed joined the running batch (the next plan sees them running)."""
        self.sync.joined.extend(reqs)

    @property
    def dirty(self) -> bool:
        """Something changed that only a full view rebuild covers (set by park / resume / abort / errors)."""
        return self.sync.dirty

    @dirty.setter
    def dirty(self, value: bool) -> None:
        self.sync.dirty = value

    def _known_running_rids(self) -> set[str]:
        """Rids of the running views the last plan saw (once per membership change, C-level passes; only
        plans without ``held_groups`` or batches without pool slots need it)."""
        if self._known_running is None:
            self._known_running = set(map(_rid, self.inst.running))
        return self._known_running

    def begin_step(self, sched: Any, running_batch: Any, last_batch: Any):
        """Called at the start of ``Scheduler.get_next_batch_to_run``; returns the running batch to use."""
        self._step += 1
        if self.held_batch is not None:
            hb, self.held_batch = self.held_batch, None
            try:
                running_batch = batch_ops.merge_back(running_batch, hb)
            except Exception as exc:  # rebuild them instead (below): never dropped
                self.held.extend(r for r in hb.reqs if r not in self.held)
                self._fail("merging held-back requests back", exc)
        if self.held:
            held, self.held = self.held, []
            try:
                running_batch = batch_ops.rejoin(sched, running_batch, held)
            except Exception as exc:  # keep them held: retried next step, never dropped
                self.held = held
                self._fail("rejoining held-back requests", exc)
                return running_batch
        try:
            joined = []
            if last_batch is not None and last_batch is not running_batch and last_batch.forward_mode.is_extend():
                chunked = sched.chunked_req
                joined = [r for r in last_batch.reqs if r is not chunked and not r.finished()]
            running = self.engine_running(running_batch.reqs if running_batch is not None else (), joined)
            waiting = sched.waiting_queue  # (read during the plan only; copied before anything is added)
            if sched.chunked_req is not None:
                waiting = [*waiting, sched.chunked_req]
            alloc = sched.token_to_kv_pool_allocator
            # the radix cache's unlocked prefixes are free KV to a policy: SGLang evicts them on demand when
            # it admits (its PrefillAdder counts them as available); counting them as used starved admission
            # once the cache filled (requests waited for running ones to finish: fidelity run, sharegpt)
            free = alloc.available_size() + (sched.tree_cache.evictable_size() if sched.tree_cache is not None else 0)
            applier = self.plan_step(waiting, running, engine_kv_used=self.inst.kv_capacity - free, engine_kv_free=free)
            if applier is not None:
                running_batch = self._apply_moves(sched, running_batch, applier)
        except Exception as exc:
            self._fail("policy step", exc)
        return running_batch

    def _apply_moves(self, sched: Any, running_batch: Any, a: PlanApplier):
        """Apply the settled plan's moves in the one order of every driver (policies/plan_rules.py):
        preempt -> park -> resume. Returns the running batch (resumed host parks join it)."""
        moving = a.park_rids | a.preempt_rids
        if moving:
            self._release(sched, running_batch, a, moving)
        restored = self._resume(sched, a.plan.resume)
        restored += self._idle_guard(sched, running_batch, restored)
        if restored:
            self.dirty = True
            try:
                running_batch = batch_ops.rejoin(sched, running_batch, restored)
            except Exception as exc:  # they hold their KV again: keep them held, retried next step
                self.held.extend(restored)
                self._fail("rejoining resumed host-parked requests", exc)
        return running_batch

    def _release(self, sched: Any, running_batch: Any, a: PlanApplier, moving: set[str]) -> None:
        """Take the plan's preempted and parked requests out of the running batch: preempted ones back to
        SGLang's waiting queue (retracted), then parked ones to ``self.parked`` (KV to host when it fits)."""
        if running_batch is None or running_batch.is_empty():
            self.counters["skipped_moves"] += len(moving)
            return
        self.counters["skipped_moves"] += len(moving - {r.rid for r in running_batch.reqs})
        if a.park_rids:
            self.host.copy_out(sched, [r for r in running_batch.reqs if r.rid in a.park_rids], self._step)
        released = batch_ops.release_from_batch(running_batch, moving)
        for req in released:
            self._resync_slot(req)  # its pool row was freed (and may be reused): drop its group mirror
        for req in released:
            if req.rid not in a.park_rids:
                sched._add_request_to_queue(req, is_retracted=True)
                self.counters["preempted"] += 1
        for req in released:
            if req.rid in a.park_rids:
                self.parked[req.rid] = req
                self.counters["parked"] += 1
                self.counters["parked_host" if req.rid in self.host_kv else "parked_recompute"] += 1
        for rid in [r for r in self.host_kv if r not in self.parked]:  # copied but not released
            self.host.drop(rid)
        self.dirty = True

    def _resume(self, sched: Any, resume: list) -> list:
        """Bring the plan's resumed requests back; returns those restored from host memory."""
        restored = []
        for rv in resume:
            req = self.parked.pop(rv.rid, None)
            if req is not None:
                self.counters["resumed"] += 1
                if self.host.unpark(sched, req, self._step):
                    restored.append(req)
                    self._resync_slot(req)
        return restored

    def _idle_guard(self, sched: Any, running_batch: Any, restored: list) -> list:
        """Adapter safety net, not a scheduling rule: the shared rules (plan_rules.settle_plan) already
        resume parked work when nothing else would run, judged on the views; if the engine disagrees with
        the views and would still idle with requests parked, bring them all back (``idle_guard_resumes``,
        expected 0)."""
        if (
            not self.parked
            or restored
            or sched.waiting_queue
            or not (running_batch is None or running_batch.is_empty())
        ):
            return []
        out = []
        for rid in list(self.parked):
            self.counters["idle_guard_resumes"] += 1
            req = self.parked.pop(rid)
            if self.host.unpark(sched, req, self._step):
                out.append(req)
                self._resync_slot(req)
        self.dirty = True
        return out

    def _resync_slot(self, req: Any) -> None:
        """A restored request holds a new pool slot: move its decode group there."""
        rv = self.views.views.get(req.rid)
        if rv is not None and hasattr(rv, "resync_slot"):
            rv.resync_slot()
            self.views.note_row(rv)

    @property
    def host_kv(self) -> dict:
        return self.host.kv

    @property
    def host_kv_used(self) -> int:
        return self.host.used

    # --- admission (PrefillAdder / calc_priority) -----------------------------------------------------
    def order_waiting(self, waiting: list) -> None:
        if self.applier is not None:
            self.applier.order_waiting(waiting)

    def may_admit(self, req: Any) -> bool:
        return self.applier is None or self.applier.may_admit(req.rid)

    def reservation(self, req: Any) -> int | None:
        return None if self.applier is None else self.applier.reservation(req.rid)

    def note_admitted(self, req: Any) -> None:
        self.counters["admitted"] += 1
        self.sync.admitted.append(req)  # it left the waiting queue (it joins running when its prefill ends)

    # --- decode subset (update_running_batch) --------------------------------------------------------
    def select_decode(self, batch: Any) -> None:
        a = self.applier
        if a is None or a.decode_all or not self.cfg.aligned_decode or batch is None or not batch.reqs:
            return
        if speculative(batch):  # draft state is per batch: never split
            self.counters["unsplittable_steps"] += 1
            return
        # held back as a filtered copy (state kept) where the batch allows it and nothing is held already
        as_copy = self.cfg.keep_held_state and self.held_batch is None and batch_ops.copy_splittable(batch)
        split = a.decode_split(batch.reqs, with_held="indices" if as_copy else "array", slots=_batch_slots(batch))
        if split is None:
            return
        keep, held = split
        # a group split only holds back requests mirrored in SlotGroups, which are holdable by construction
        by_slot = a.split_by_groups
        if not (by_slot or self._holdable(batch, [batch.reqs[i] for i in held] if as_copy else held)):
            self.counters["unsplittable_steps"] += 1
            return
        if as_copy:
            self.held_batch = batch_ops.split_off(batch, keep, held)
            self.counters["copy_splits"] += 1
        else:
            batch_ops.split_batch(batch, keep, held=held)
            if self.held:
                self.held.extend(held)
            else:
                self.held = held
        self.counters["decode_splits"] += 1
        self.counters["slot_splits"] += by_slot
        self.counters["held_back"] += len(held)

    def _holdable(self, batch: Any, held: list) -> bool:
        """Whether the split may hold back ``held``: only held-back requests are rebuilt on rejoin (the kept
        ones stay in SGLang's batch, filtered the way SGLang drops finished requests), so only they must
        carry no per-batch sampling state (``sampling_state.splittable``). The per-request check runs once
        per request object (a request's own, fixed property)."""
        ok = self._split_ok
        try:
            if ok.issuperset(held):
                return True
        except TypeError:  # unhashable request objects: check them every time
            return all(map(req_holdable, held))
        new = [r for r in held if r not in ok]
        if not all(map(req_holdable, new)):
            return False
        if len(ok) > 4 * len(batch.reqs) + 1024:  # forget finished requests now and then
            ok.clear()
        ok.update(new)
        return True

    # --- results ---------------------------------------------------------------------------------------
    def after_result(self, batch: Any, freed: bool | list = True) -> None:
        """SGLang processed ``batch``'s result: report its finished requests (:meth:`on_result`).

        ``freed``: the request rows given back meanwhile (the hook reads SGLang's free-row list before and
        after), or whether any were (True: unknown). A finished request frees its row there, so:

        * no row freed: nothing finished; the scan of the batch is skipped, except on every
          ``cfg.finish_scan_every``-th result, for finishes that keep their row (a streaming session's
          next turn) or release it later (an asynchronous KV offload);
        * rows freed, each the row of a running request now marked finished (``ViewCache.rows``): those
          are reported, without a scan;
        * anything else (a row we do not know, e.g. a request that finished in its prefill): the scan.
        """
        self._results += 1
        if not freed:
            every = self.cfg.finish_scan_every
            if every > 1 and self._results % every:
                return
        elif type(freed) is list:
            rows = self.views.rows
            done = [rows.get(row) for row in freed]
            if all(rv is not None and rv._req.finished_reason is not None for rv in done):
                for rv in done:
                    if self.views.views.get(rv.rid) is rv:
                        self.counters["finished_by_row"] += 1
                        self._finish(rv._req, rv)
                return
        self.counters["finish_scans"] += 1
        reqs = batch.reqs
        extra = getattr(batch, "decoding_reqs", None)  # a mixed batch's decode part
        if extra:
            reqs = list(reqs)
            reqs += [r for r in extra if r not in reqs]
        self.on_result(reqs)

    def on_result(self, reqs: list) -> None:
        """After SGLang processed a batch result: report finished requests to the policy.

        Token counts need no refresh (views read them from the live requests); the scan for finished
        requests (``finished_reason`` set: ``Req.finished()`` without the call) is one C-level pass, and
        Python touches only the finished ones.
        """
        views = self.views.views
        for req in filter(_finished_reason, reqs):
            rv = views.get(req.rid)
            if rv is not None:
                self._finish(req, rv)

    def _finish(self, req: Any, rv) -> None:
        self.views.drop(req.rid)
        self.sync.left.add(rv)
        self.counters["finished"] += 1
        try:
            self.policy.on_finish(rv, self.inst, self.clock())
        except Exception as exc:
            self._fail("policy.on_finish", exc)

    def before_abort(self, sched: Any, rid: str, abort_all: bool) -> None:
        """An abort is about to be handled by SGLang, which only looks in its own queue and batches: put
        matching parked requests back in the waiting queue and held-back ones back in the running batch."""
        match = lambda r: abort_all or r.rid.startswith(rid)  # noqa: E731  (SGLang's own matching rule)
        for prid in [p for p, r in self.parked.items() if match(r)]:
            self.host.drop(prid)  # its host copy is not needed: the request is being aborted
            sched._add_request_to_queue(self.parked.pop(prid), is_retracted=True)
            self.counters["forced_resumes"] += 1
        if self.held_batch is not None and any(match(r) for r in self.held_batch.reqs):
            hb, self.held_batch = self.held_batch, None
            sched.running_batch = batch_ops.merge_back(sched.running_batch, hb)
        if any(match(r) for r in self.held):
            held, self.held = self.held, []
            sched.running_batch = batch_ops.rejoin(sched, sched.running_batch, held)
        self.dirty = True

    def note_queue_change(self, req: Any = None, retracted: bool = False) -> None:
        """``req`` entered SGLang's waiting queue: a new arrival (its view joins the waiting list; without
        ``req`` the list is refilled) or a retraction out of the running batch (everything is rebuilt)."""
        if retracted:
            self.dirty = True
        elif req is None:
            self.sync.waiting_changed = True
        else:
            self.sync.arrived.append(req)

    # --- step end: publish / stats / logs --------------------------------------------------------------
    def end_step(self) -> None:
        now = self.clock()
        if self.cfg.log_interval and self.counters["steps"] % self.cfg.log_interval == 0:
            logger.info("cascade plugin counters: %s", json.dumps(self.counters, sort_keys=True))
        finished = self.counters["finished"]
        if now - self._last_publish >= self.cfg.publish_interval or finished != self._published_finished:
            # also right after a finish: the loop may block idle after the last request completes
            self._last_publish = now
            self._published_finished = finished
            self.publish()

    def publish(self) -> None:
        try:
            if self.publisher is not None:
                load = self.inst.load(time.time())
                self.publisher.publish(load, policy=self.cfg.scheduler, counters=self.counters)
            if self.cfg.stats_file:
                tmp = self.cfg.stats_file + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(
                        {
                            "counters": self.counters,
                            "policy": self.cfg.scheduler,
                            "num_parked": len(self.parked),
                            "num_held": len(self.held) + (len(self.held_batch.reqs) if self.held_batch else 0),
                        },
                        f,
                    )
                os.replace(tmp, self.cfg.stats_file)
        except Exception as exc:  # publishing must never stop serving
            logger.warning("cascade plugin: publishing failed: %s", exc)
