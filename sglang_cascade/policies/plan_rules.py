"""The one plan-application step every driver runs: the shared rules a plan is settled by, and the order.

A policy's :class:`IterationPlan` is settled by :func:`settle_plan` against the instance's views *before*
anything of it is applied, then applied in ONE order by every driver (simulator, SGLang plugin,
``testing.plan_applier``): ``preempt`` (KV freed, back to waiting) -> ``park`` (KV to host) -> ``resume``
(KV back to GPU) -> the iteration (``prefill`` chunks, one token per ``decode`` request).

The rules keep an engine from idling while work exists, whatever the policy returned. They are pure code
over the views (no engine, no clock) and fire only in corner cases; a rule that fires sets
``stable_steps`` to 1. In order:

1. **Never park the last work.** A plan that parks every running request while nothing waits (no
   preemption, no resume) would leave the engine idle with all work parked: its parks are dropped.
2. **Resume when idle.** If, once applied, nothing would run or wait but requests are parked, every
   parked request is resumed.
3. **Never stall.** A plan that, once applied, computes nothing (no prefill chunk, no decode) while
   requests run decodes every running request (SGLang's own decode step); with nothing running it
   prefills the first waiting request whose chunk fits the free KV. If none fits (no waiting request
   can ever run here), the plan is reported ``stalled``: the plugin hands that step to stock SGLang, the
   simulator idles until something changes.

Policies may rely on these rules instead of special-casing them; their bookkeeping sees the outcome
through the views of the next call (a dropped park shows the request still running).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.decisions import IterationPlan, PrefillChunk
from ..core.views import InstanceView, RequestView


@dataclass(slots=True)
class SettleReport:
    """What :func:`settle_plan` changed (drivers count it)."""

    parks_dropped: int = 0  # rule 1
    forced_resumes: int = 0  # rule 2
    stock_decode: bool = False  # rule 3: every running request decodes
    stock_prefill: bool = False  # rule 3: the first fitting waiting request is prefilled
    stalled: bool = False  # rule 3: nothing can run here at all

    @property
    def changed(self) -> bool:
        return bool(self.parks_dropped or self.forced_resumes or self.stock_decode or self.stock_prefill)


def settle_plan(plan: IterationPlan, inst: InstanceView) -> SettleReport:
    """Apply the shared rules (module docstring) to ``plan`` in place, for ``inst``'s views as they are
    before the plan is applied. O(1) unless a rule's precondition holds (then O(requests))."""
    report = SettleReport()
    if plan.park and not (plan.preempt or plan.resume or inst.waiting) and len(plan.park) >= len(inst.running):
        _keep_last_work(plan, inst, report)
    if (inst.parked or plan.park) and not inst.waiting and not plan.preempt:
        _resume_when_idle(plan, inst, report)
    if not (plan.prefill or plan.decode):
        _never_stall(plan, inst, report)
    if report.changed:
        plan.stable_steps = 1
    return report


def running_after(plan: IterationPlan, inst: InstanceView) -> list[RequestView]:
    """The running list once ``plan``'s moves are applied (preempt -> park -> resume), in order."""
    leaving = {r.rid for r in plan.preempt} | {r.rid for r in plan.park}
    kept = [r for r in inst.running if r.rid not in leaving] if leaving else list(inst.running)
    return kept + [r for r in plan.resume if r.rid not in leaving]


def _keep_last_work(plan: IterationPlan, inst: InstanceView, report: SettleReport) -> None:
    parked = {r.rid for r in plan.park}
    if all(r.rid in parked for r in inst.running):
        report.parks_dropped = len(plan.park)
        plan.park = []


def _resume_when_idle(plan: IterationPlan, inst: InstanceView, report: SettleReport) -> None:
    if running_after(plan, inst):
        return
    resuming = {r.rid for r in plan.resume}
    extra = [r for r in inst.parked if r.rid not in resuming]
    if extra:
        plan.resume.extend(extra)
        report.forced_resumes = len(extra)


def _never_stall(plan: IterationPlan, inst: InstanceView, report: SettleReport) -> None:
    running = running_after(plan, inst)
    if running:
        plan.decode = running
        plan.held_groups = set()
        plan.decode_extra = []
        report.stock_decode = True
        return
    waiting = list(inst.waiting) + list(plan.preempt)
    if not waiting:
        return
    on_gpu = {r.rid for r in inst.running} | {r.rid for r in inst.waiting}
    freed = sum(r.kv_tokens for r in plan.park) + sum(r.kv_tokens for r in plan.preempt if r.rid in on_gpu)
    free = inst.kv_capacity - inst.kv_used + freed - sum(r.kv_tokens for r in plan.resume)
    for r in waiting:
        chunk = min(r.tokens_to_prefill, inst.max_prefill_tokens)
        if chunk > 0 and chunk <= free and r.length + 1 <= inst.kv_capacity:
            plan.prefill.append(PrefillChunk(r, chunk))
            report.stock_prefill = True
            return
    report.stalled = True
