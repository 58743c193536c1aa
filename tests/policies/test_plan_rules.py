"""policies/plan_rules: the shared plan-application step (rules and order), pure code over views."""

from __future__ import annotations

from sglang_cascade.core.decisions import IterationPlan, PrefillChunk
from sglang_cascade.core.views import InstanceView, Phase, RequestView
from sglang_cascade.policies.plan_rules import running_after, settle_plan
from sglang_cascade.testing.plan_applier import apply_moves


def _inst(running=(), parked=(), waiting=(), kv_capacity=1000):
    inst = InstanceView(iid=0, kv_capacity=kv_capacity, max_prefill_tokens=64, host_kv_capacity=1000)
    for rid in running:
        inst.running.append(
            RequestView(
                rid=rid, arrival=0.0, prompt_len=10, output_len=2, kv_tokens=11, phase=Phase.RUNNING, instance=0
            )
        )
    for rid in parked:
        inst.parked.append(
            RequestView(rid=rid, arrival=0.0, prompt_len=10, output_len=2, kv_tokens=11, phase=Phase.PARKED, instance=0)
        )
    for rid, prompt in waiting:
        inst.waiting.append(RequestView(rid=rid, arrival=0.0, prompt_len=prompt, instance=0))
    inst.recount_kv_used()
    return inst


def _by(inst, *rids):
    views = {r.rid: r for lst in (inst.running, inst.parked, inst.waiting) for r in lst}
    return [views[rid] for rid in rids]


def test_a_plan_the_rules_do_not_touch_is_left_as_it_is():
    inst = _inst(running=["a", "b"], waiting=[("w", 5)])
    plan = IterationPlan(decode=_by(inst, "a"), park=_by(inst, "b"), stable_steps=4)
    report = settle_plan(plan, inst)
    assert not report.changed and not report.stalled
    assert [r.rid for r in plan.decode] == ["a"] and [r.rid for r in plan.park] == ["b"] and plan.stable_steps == 4


def test_parking_the_last_work_is_dropped_and_it_decodes():
    inst = _inst(running=["a", "b"])
    plan = IterationPlan(park=_by(inst, "a", "b"), held_groups={3}, stable_steps=5)
    report = settle_plan(plan, inst)
    assert report.parks_dropped == 2 and report.stock_decode and not plan.park
    assert [r.rid for r in plan.decode] == ["a", "b"] and plan.held_groups == set() and plan.stable_steps == 1


def test_parking_everything_while_work_waits_is_kept():
    inst = _inst(running=["a"], waiting=[("w", 5)])
    plan = IterationPlan(park=_by(inst, "a"), prefill=[PrefillChunk(inst.waiting[0], 5)])
    assert not settle_plan(plan, inst).changed and [r.rid for r in plan.park] == ["a"]


def test_parked_work_resumes_when_nothing_else_would_run():
    inst = _inst(running=[], parked=["p", "q"])
    plan = IterationPlan()
    report = settle_plan(plan, inst)
    assert report.forced_resumes == 2 and [r.rid for r in plan.resume] == ["p", "q"]
    assert report.stock_decode and [r.rid for r in plan.decode] == ["p", "q"]
    one = IterationPlan(resume=_by(inst, "q"), decode=_by(inst, "q"))  # something runs: the rest waits
    assert not settle_plan(one, inst).changed and [r.rid for r in one.resume] == ["q"]


def test_an_empty_plan_prefills_the_first_waiting_request_that_fits():
    inst = _inst(running=[], waiting=[("huge", 2000), ("big", 300), ("small", 20)], kv_capacity=1000)
    plan = IterationPlan()
    report = settle_plan(plan, inst)
    # "huge" can never fit; "big" fits after chunking to max_prefill_tokens=64
    assert report.stock_prefill and [(c.req.rid, c.tokens) for c in plan.prefill] == [("big", 64)]


def test_nothing_that_fits_is_reported_stalled():
    inst = _inst(running=[], waiting=[("huge", 2000)], kv_capacity=1000)
    plan = IterationPlan()
    report = settle_plan(plan, inst)
    assert report.stalled and not plan.prefill and not report.changed


def test_order_is_preempt_then_park_then_resume():
    inst = _inst(running=["a", "b", "c"], parked=["p"])
    plan = IterationPlan(resume=_by(inst, "p"), park=_by(inst, "b"), preempt=_by(inst, "c"), decode=_by(inst, "a"))
    assert [r.rid for r in running_after(plan, inst)] == ["a", "p"]
    log = apply_moves(inst, plan)
    assert log == [("preempt", "c"), ("park", "b"), ("resume", "p")]
    assert [r.rid for r in inst.running] == ["a", "p"] and [r.rid for r in inst.parked] == ["b"]
    assert [r.rid for r in inst.waiting] == ["c"] and inst.waiting[0].kv_tokens == 0
