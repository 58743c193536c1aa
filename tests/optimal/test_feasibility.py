"""Feasibility checker: accepts valid schedules (solver's and simulator's) and rejects each violation."""

from __future__ import annotations

import pytest

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.optimal.feasibility import InfeasibleSchedule, assert_feasible, check_schedule
from sglang_cascade.optimal.linearize import LinearTimeModel
from sglang_cascade.optimal.problem import Iteration, Problem, Req, greedy_schedule, retime

TM = LinearTimeModel(
    per_iteration_s=0.010,
    per_token_s=0.002,
    per_token_above_knee_s=0.0,
    knee=1000,
    per_kv_read_s=0.001,
    per_request_s=0.0005,
    unit_s=1e-6,
)
REQS = [Req("a", 0.0, 3, 2), Req("b", 0.0, 2, 2)]


def _valid() -> list[Iteration]:
    # a: prefill 3 (first token) then 1 decode; b: prefill 2 chunks of 1, then 1 decode
    its = [Iteration(0, 0, [("a", 3), ("b", 1)], []), Iteration(0, 0, [("b", 1)], ["a"]), Iteration(0, 0, [], ["b"])]
    return retime(Problem(REQS, 4, 10, TM), its).iterations


def kinds(its, **kw) -> set[str]:
    args = dict(token_budget=4, kv_capacity=10, preemption=False, linear_model=TM)
    args.update(kw)
    return {v.kind for v in check_schedule(REQS, its, **args)}


def test_valid_schedule_accepted():
    its = _valid()
    assert kinds(its) == set()
    assert_feasible(REQS, its, token_budget=4, kv_capacity=10, linear_model=TM)


def test_budget_violation():
    assert "budget" in kinds(_valid(), token_budget=3)


def test_capacity_violation():
    # after iteration 1: a holds 4, b holds 2 -> 6 > 5
    assert "capacity" in kinds(_valid(), kv_capacity=5)


def test_decode_before_prefill_rejected():
    its = _valid()
    its[0].decode = ["b"]  # b is mid-prefill
    assert "order" in kinds(its, linear_model=None)


def test_two_tokens_per_iteration_rejected():
    its = _valid()
    its[1].decode = ["a", "a"]
    assert "decode" in kinds(its, linear_model=None)


def test_prefill_past_length_rejected():
    its = _valid()
    its[0].prefill = [("a", 4), ("b", 1)]
    assert "order" in kinds(its, linear_model=None, token_budget=10)


def test_arrival_violation():
    reqs = [Req("a", 0.0, 3, 2), Req("b", 0.005, 2, 2)]
    v = check_schedule(reqs, _valid(), token_budget=4, kv_capacity=10)
    assert any(x.kind == "arrival" and x.rid == "b" for x in v)


def test_overlap_and_duration_violations():
    its = _valid()
    its[1].start = its[0].start + its[0].duration / 2
    assert "overlap" in kinds(its)
    its = _valid()
    its[2].duration *= 1.5
    assert "duration" in kinds(its)


def test_unfinished_and_preemption_rules():
    its = _valid()[:2]
    assert "unfinished" in kinds(its)
    # preempt b after its first chunk and recompute it: fine with preemption, rejected without
    pre = [
        Iteration(0, 0, [("a", 3), ("b", 1)], []),
        Iteration(0, 0, [("b", 2)], ["a"], preempted=["b"]),
        Iteration(0, 0, [], ["b"]),
    ]
    pre = retime(Problem(REQS, 4, 10, TM, True), pre).iterations
    assert kinds(pre, preemption=True) == set()
    assert "preemption" in kinds(pre, preemption=False)
    with pytest.raises(InfeasibleSchedule):
        assert_feasible(REQS, pre, token_budget=4, kv_capacity=10, preemption=False)


def test_recompute_must_cover_whole_length():
    # after preemption a running request must re-prefill prompt + generated tokens before decoding
    its = [Iteration(0, 0, [("a", 3)], []), Iteration(0, 0, [], ["a"], preempted=["a"])]
    assert "order" in kinds(its, preemption=True, linear_model=None)


def test_greedy_schedule_feasible():
    prob = Problem([Req(f"r{i}", 0.001 * i, 5 + i, 3 + i % 4) for i in range(8)], 6, 30, TM)
    s = greedy_schedule(prob)
    assert (
        check_schedule(prob.requests, s.iterations, token_budget=6, kv_capacity=30, preemption=False, linear_model=TM)
        == []
    )


def test_simulator_records_feasible():
    sim = pytest.importorskip("sglang_cascade.sim")
    from sglang_cascade.core.traces import TraceRequest
    from sglang_cascade.policies.registry import PolicyContext, make_instance_scheduler

    cm = CostModel.for_names("llama-3-8b", "h100")
    reqs = [Req(f"r{i}", 0.002 * i, 20 + 7 * i, 3 + i % 5) for i in range(10)]
    trace = [TraceRequest(r.rid, r.arrival, r.prompt, r.output) for r in reqs]
    cap, budget = 120, 64
    ctx = PolicyContext(
        cost_model=cm, num_instances=1, length_sample=[(r.prompt, r.output) for r in reqs], kv_capacity=cap
    )
    cfg = sim.SimConfig(instances=1, max_prefill_tokens=budget, kv_capacity=cap, max_new_tokens=8)
    res = sim.simulate_instance(trace, make_instance_scheduler("sglang", ctx), cm, kv_capacity=cap, cfg=cfg)
    recs = res.schedules[0]
    assert check_schedule(reqs, recs, token_budget=budget, kv_capacity=cap, preemption=True, cost_model=cm) == []
    # the same records break a tighter budget / capacity, and a wrong cost model
    assert {v.kind for v in check_schedule(reqs, recs, token_budget=8, kv_capacity=cap)} == {"budget"}
    slow = CostModel.for_names("llama-3-8b", "a100")
    assert "duration" in {
        v.kind for v in check_schedule(reqs, recs, token_budget=budget, kv_capacity=cap, cost_model=slow)
    }
