"""Apply an :class:`IterationPlan` to an :class:`InstanceView` the simplest way: no timing, no KV pool.

For benchmarks and tests that drive a policy without the simulator (scripts/bench_policy_cost.py,
tests/policies/test_policy_cost_equivalence.py). Like every driver it settles the plan by the shared rules
(:func:`policies.plan_rules.settle_plan`) and applies moves in the one order preempt -> park -> resume.
Each request's true output length is read from ``req.extra[true_len_key]``; finished requests are
returned, still in ``inst.running``, so the caller decides how to retire them (:func:`retire`, new
arrivals).
"""

from __future__ import annotations

from ..core.decisions import IterationPlan
from ..core.views import InstanceView, Phase, RequestView
from ..policies.plan_rules import settle_plan


def apply_moves(inst: InstanceView, plan: IterationPlan) -> list[tuple[str, str]]:
    """Preempt, park, resume (in that order); returns ``(action, rid)`` in the order applied."""
    log: list[tuple[str, str]] = []
    for r in plan.preempt:
        lst = inst.running if r in inst.running else inst.parked if r in inst.parked else inst.waiting
        lst.remove(r)
        r.kv_tokens = 0
        r.phase = Phase.WAITING
        inst.waiting.append(r)
        log.append(("preempt", r.rid))
    for r in plan.park:
        if r in inst.running:
            inst.running.remove(r)
            r.phase = Phase.PARKED
            inst.parked.append(r)
            log.append(("park", r.rid))
    for r in plan.resume:
        if r in inst.parked:
            inst.parked.remove(r)
            r.phase = Phase.RUNNING
            inst.running.append(r)
            log.append(("resume", r.rid))
    return log


def apply_plan(inst: InstanceView, plan: IterationPlan, true_len_key: str = "_true") -> list[RequestView]:
    """Settle, preempt, park, resume, then prefill chunks and one decode token each; return requests
    that finished."""
    settle_plan(plan, inst)
    apply_moves(inst, plan)
    for c in plan.prefill:
        r = c.req
        r.kv_tokens += c.tokens
        if r.kv_tokens >= r.length:
            inst.waiting.remove(r)
            r.output_len += 1
            r.kv_tokens = r.length - 1
            r.phase = Phase.RUNNING
            inst.running.append(r)
    done = []
    for r in plan.decode:
        if r.phase is not Phase.RUNNING:
            continue
        r.kv_tokens += 1
        r.output_len += 1
        if r.output_len >= r.extra[true_len_key]:
            done.append(r)
    return done


def retire(inst: InstanceView, sched, r: RequestView, now: float) -> None:
    """Retire a request ``apply_plan`` reported finished: out of the running list, FINISHED, ``on_finish``."""
    inst.running.remove(r)
    r.phase = Phase.FINISHED
    sched.on_finish(r, inst, now)
