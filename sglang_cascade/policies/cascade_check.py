"""The cascade router's plans checked by simulation (a mixin of ``CascadeRouter``): the checker's jobs (the DP's
spec and a copy of the recorded arrivals: the checker builds candidates and replay off the request path), their
decisions (``plan_check.decide``) applied to the plan and the pool, the timer check and the CPU budget governor
(``check_budget.py``). The machinery itself lives in ``plan_check.py``, ``plan_candidates.py`` and ``plan_replay.py``."""

from __future__ import annotations

import logging

from .check_cost import CheckWork
from .plan_candidates import CandidateSpec
from .plan_check import CURRENT, POOLED, PlanCheckJob, PlanDecision, decide
from .plan_replay import ReplaySource, synthetic_count
from .stages import StagePlan

log = logging.getLogger("sglang_cascade.cascade")
STAGING = "staging"  # check_staging's timer check: pooled against the plan in force only


class CascadeCheck:
    """Uses the router's ``cfg``, ``check_cfg``, ``checker``, ``budget``, ``recorder``, ``refiner``, ``plan``, ``pool``,
    ``n``, ``qoe``, ``planner``, ``stats``, ``placed``, ``req_stage``, ``last_plan_info``, ``_sample``, ``_seed``, ``_running``,
    ``_order``, ``_pool_size``, ``_pool_sizes``, ``_set_pool``, ``_index``, ``_rate_estimate`` and ``_replan``."""

    def _record(self, trigger: str, chosen: str, reason: str, now: float = 0.0, changed: bool = True) -> None:
        p = self.plan
        self.last_decision = PlanDecision(
            now, trigger, chosen, list(p.bounds), p.counts(), changed, reason, pool=self._pool_size()
        )
        self.decisions += 1
        log.debug("cascade plan (%s): %s %s - %s", trigger, chosen, p.counts(), reason)

    def _spec(self, sample, rate: float, pool_sizes: int | None = None) -> CandidateSpec:
        """What the checker needs to build the candidates (the DP runs there, not on the request path)."""
        p = self.plan
        return CandidateSpec(
            list(sample),
            float(rate),
            self.n,
            self.qoe,
            self.cfg.buckets,
            self.cfg.max_stages or None,
            self.check_cfg.check_top_k if self.check_cfg.plan_check else 0,
            self.check_cfg.check_max_stages,
            list(p.bounds),
            p.counts(),
            self._order(),
            self.planner.stall_spec(),
            len(self.pool.members) if self.pool is not None else 0,
            self._pool_sizes(sample, rate) if pool_sizes is None else pool_sizes,
            self.cfg.prefill_min,
            self.cfg.pool_decode_rho,
            self.cfg.pool_check_dp,
            self.cfg.pool_check_refine,
        )

    def _check(
        self, trigger: str, sample, rate: float, source: ReplaySource, now: float, pool_sizes: int | None = None
    ) -> None:
        """Score the candidates on a replay; adopts at once when the checker answers synchronously. The job
        carries copies only (the DP's spec, the replay's source): the checker builds the rest."""
        self._last_check = now
        c = self.check_cfg
        job = PlanCheckJob([], [], self.n, trigger, now, c.tail_weight, c.check_instances)
        job.slo_weight, job.slo_target = c.check_slo_weight, c.check_slo_target
        job.spec = self._spec(sample, rate, pool_sizes)  # pool_sizes: the caller's _check_sizes, if it asked
        job.spec.dp = trigger != STAGING  # whether staging still pays: the plan in force or one stage, nothing else
        job.source = source
        if self.last_decision is None:
            name = POOLED if self.plan.num_stages == 1 else CURRENT
            self._record(trigger, name, f"plan check pending; {name} until it answers", now)
        self.checker.submit(job)
        self._poll(now)

    def _poll(self, now: float) -> None:
        for job, scores in self.checker.results() if self.checker is not None else ():
            self.budget.charge(job.cost_s, startup=job.trigger == "init")
            if job.plan_info:
                self.last_plan_info = job.plan_info
            if not scores:
                continue
            name = POOLED if self.plan.num_stages == 1 and self.pool is None else CURRENT
            d = decide(job, scores, name, self.check_cfg)
            d.cost_s = job.cost_s
            d.next_check_at = self._next_check_at()
            self.last_decision = d
            self.decisions += 1
            log.info(d.log_line())
            if d.changed and (d.bounds, d.counts, d.pool) != (self.plan.bounds, self.plan.counts(), self._pool_size()):
                order = self._order()
                self.plan = StagePlan.from_counts(d.bounds, d.counts, order[: self.n - d.pool])
                if self.pool_checks:
                    self._set_pool(order[self.n - d.pool :], f"plan check ({d.trigger}): {d.chosen}, {d.reason}")
                self.req_stage.clear()
                self._index()
                ref = list(self.refiner.window) if len(self.refiner.window) >= 50 else self._sample
                self.refiner.set_reference(ref, self.plan.bounds) if ref else None
                self.stats["plan_changes"] = self.stats.get("plan_changes", 0) + 1

    def _timer_check(self, now: float) -> None:
        c = self.check_cfg
        if self.checker is not None and self._drift_due and not self._wait_reason(now):
            self._drift_due = False  # the drift check the governor refused earlier
            window = list(self.refiner.window) or self._sample
            self._replan(window) if window else None
            return
        if (
            self.checker is None
            or not (c.plan_check or self._staging_timer())  # pool_check alone: at start and on drift only
            or now - self._last_check < c.check_interval_s
            or len(self.recorder.done) < c.min_replay
        ):
            return
        if self._wait_reason(now):
            self.budget.deferred_timer += not self._timer_waiting
            self._timer_waiting = True
            return
        self._timer_waiting = False
        window = list(self.refiner.window) or self._sample
        if window:
            if c.plan_check:
                self._check("timer", window, self._rate_estimate(), self._replay_source(), now)
            else:  # _staging_timer: no pool in force, no pool size scored
                self._check(STAGING, window, self._rate_estimate(), self._replay_source(), now, 0)

    def _staging_timer(self) -> bool:
        """``check_staging``'s timer: while a staged plan (no pool) is in force, whether staging still pays is
        checked every ``check_interval_s`` (trigger ``staging``: pooled against the plan in force, nothing else),
        as the start-up check decided it; drift re-plans between staged plans are the DP's and unchecked, so
        without this a staged plan would never meet pooled again."""
        return (
            self.replan_checks
            and self.cfg.check_staging
            and not self.cfg.check_replans
            and self.plan.num_stages > 1
            and self.pool is None
        )

    def _wait_reason(self, now: float) -> str:
        """Why the CPU budget governor holds the next timer / drift check back ("" when it may run): no traffic
        yet, too little credit for the checks so far plus the next one, or a check still queued or running in a
        background checker (its cost is not known yet)."""
        b = self.budget
        if not b.on:
            return ""
        if b.opened_at is None:
            return "no traffic yet (the budget's credit counts from the first arrival)"
        est = self._cost_estimate()
        if not b.allows(now, est):
            return (
                f"checks so far {b.spent_s:.2f} CPU s + the next one's expected {est:.2f} s exceed the credit of "
                f"{b.budget:g} core-s per traffic minute: next check at t>={b.next_at(est):.1f}s"
            )
        if getattr(self.checker, "busy", False):
            return "a check is still queued or running"
        return ""

    def _cost_estimate(self) -> float:
        """The next check's expected CPU seconds (the governor pays it in advance): the last check's cost, or,
        before any, the modelled cost (``check_cost``) of replaying this many arrivals on every candidate."""
        b, c = self.budget, self.check_cfg
        if b.charged:
            return b.last_cost_s
        n = max(len(self.recorder.recent), self._rate_estimate() * c.check_span_s)
        if 0 < c.check_instances < self.n:
            n *= c.check_instances / self.n
        lengths = self.refiner.window or self._sample
        out = sum(o for _, o in lengths) / len(lengths) if lengths else 0.0
        pools = (self.cfg.pool_check_sizes + 2 * self.cfg.pool_check_refine) * (1 + self.cfg.pool_check_dp)
        pools = pools if self.pool_checks else 0
        cands = (c.check_top_k if c.plan_check else 1) + 2 + pools
        replayed = int(n) * cands  # every candidate: the DP's top few, pooled, the plan in force, the pool sizes
        return CheckWork(requests=replayed, tokens=int(replayed * out), dp_runs=1).cpu_s()

    def _next_check_at(self) -> float | None:
        """When the governor allows the next check (None: no governor, or no traffic yet)."""
        return self.budget.next_check_at(self._cost_estimate())

    def budget_state(self, now: float) -> dict:
        """The CPU budget governor's state (``/get_loads`` ``plan_budget``)."""
        return self.budget.state(now, self._cost_estimate())

    def _defer_drift(self, why: str) -> None:
        """The governor refuses a drift check: the plan in force stays (recorded), the check runs when allowed."""
        b = self.budget
        b.deferred_drift += 1
        self._drift_due = True
        name = POOLED if self.plan.num_stages == 1 else CURRENT
        why = f"drift check deferred by the CPU budget ({b.budget:g} core-s per traffic minute; {why}): {name} kept"
        self._record("drift", name, why, self._now, changed=False)
        self.last_decision.next_check_at = self._next_check_at()
        log.info(self.last_decision.log_line())

    def _replay_source(self, synthetic_rate: float = 0.0, warm: bool | None = None) -> ReplaySource:
        """A copy of the recorded arrivals and of the in-flight requests (the running ones from the last
        rebalance's views, the others this router sent), for the checker to build the replay from
        (``plan_replay.build_replay``); slots follow the plan's order. ``synthetic_rate`` > 0: a synthetic
        replay at that rate instead of the recorded arrivals."""
        c = self.check_cfg
        warm = c.check_warm if warm is None else warm
        running, sent = [], []
        if warm or c.check_open:
            order = self._order()
            slot = {iid: k for k, iid in enumerate(order)}
            running = [
                (slot.get(iid, -1), r.rid, r.prompt_len, r.output_len, r.kv_tokens)
                for iid, reqs in self._running.items()
                for r in reqs
            ]
            if warm:
                placed = self.placed
                sent = [
                    (slot[placed[rid]], rid, p) for rid, (_, p) in self.recorder.open.items() if placed.get(rid) in slot
                ]
        src = self.recorder.source(self._seed, c.check_span_s, c.check_open, warm, running, sent)
        if synthetic_rate > 0:
            n = synthetic_count(synthetic_rate, c.check_interval_s, c.min_replay, c.replay_requests)
            src.synthetic_rate, src.synthetic_n = synthetic_rate, n
        return src
