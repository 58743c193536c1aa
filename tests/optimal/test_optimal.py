"""CP-SAT optimal schedule: matches brute force, bounds every heuristic, preemption, time limits, CLI."""

from __future__ import annotations

import json
import random

import pytest

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.optimal.exhaustive import solve_exhaustive
from sglang_cascade.optimal.feasibility import check_problem_schedule
from sglang_cascade.optimal.linearize import LinearTimeModel, fit_linear_time
from sglang_cascade.optimal.model import ScheduleModel, solve
from sglang_cascade.optimal.problem import Problem, Req, greedy_schedule, retime

TM = LinearTimeModel(
    per_iteration_s=0.010,
    per_token_s=0.002,
    per_token_above_knee_s=0.003,
    knee=2,
    per_kv_read_s=0.001,
    per_request_s=0.0005,
    unit_s=1e-6,
)


def _tiny(seed: int) -> tuple[Problem, str]:
    rng = random.Random(seed)
    n = rng.randint(2, 3)
    reqs = [Req(f"q{i}", rng.choice([0, 0, 0.005, 0.02]), rng.randint(1, 3), rng.randint(1, 3)) for i in range(n)]
    cap = max(r.prompt + r.output - 1 for r in reqs) + rng.randint(0, 3)
    prob = Problem(reqs, rng.randint(1, 3), cap, TM, preemption=bool(seed % 2))
    return prob, ("makespan", "mean_e2e")[(seed // 2) % 2]


@pytest.mark.parametrize("seed", range(7))  # scripts/validate_optimal.py runs more
def test_cpsat_matches_exhaustive(seed):
    prob, obj = _tiny(seed)
    ex = solve_exhaustive(prob, obj)
    res = solve(prob, obj, time_limit_s=20)
    assert res.optimal and res.horizon_proven
    assert res.objective == pytest.approx(ex.objective, abs=1e-6)
    assert res.bound == pytest.approx(res.objective, abs=1e-6)
    assert check_problem_schedule(prob, res.schedule) == []
    assert check_problem_schedule(prob, ex.schedule) == []


def _preemption_case(preemption: bool) -> Problem:
    # a long-prompt request arrives first; a short one 5 ms later; KV for one of them at a time
    reqs = [Req("q0", 0.005, 1, 3), Req("q1", 0.0, 2, 3)]
    return Problem(reqs, 3, 4, TM, preemption=preemption)


@pytest.mark.parametrize("obj", ["makespan", "mean_e2e"])
def test_preemption_changes_feasible_set(obj):
    without = solve(_preemption_case(False), obj, time_limit_s=20)
    with_p = solve(_preemption_case(True), obj, time_limit_s=20)
    assert without.optimal and with_p.optimal
    assert with_p.objective < without.objective - 1e-6  # strictly better only with preemption
    assert with_p.objective == pytest.approx(solve_exhaustive(_preemption_case(True), obj).objective, abs=1e-6)
    # the preemptive optimum preempts, and is infeasible when preemption is not allowed
    assert any(it.preempted for it in with_p.schedule.iterations)
    kinds = {v.kind for v in check_problem_schedule(_preemption_case(False), with_p.schedule)}
    assert "preemption" in kinds


def test_time_limit_returns_best_schedule_and_bound():
    rng = random.Random(3)
    reqs = [Req(f"r{i}", 0.003 * i, rng.randint(4, 30), rng.randint(2, 8)) for i in range(14)]
    prob = Problem(reqs, 16, 60, TM, preemption=True)
    res = solve(prob, "mean_e2e", time_limit_s=0.5)
    assert not res.optimal
    assert res.bound <= res.objective + 1e-9
    assert check_problem_schedule(prob, res.schedule) == []
    assert res.objective <= greedy_schedule(prob).mean_e2e(prob) + 1e-9
    assert set(res.schedule.finish) == {r.rid for r in reqs}


def test_horizon_too_small_is_reported():
    prob = Problem([Req("a", 0.0, 2, 4)], 2, 10, TM)
    with pytest.raises(RuntimeError, match="horizon"):
        solve(prob, "makespan", time_limit_s=5, horizon=2)


def test_model_size_grows_linearly_in_requests_times_horizon():
    reqs = [Req(f"r{i}", 0.0, 3, 2) for i in range(6)]
    prob = Problem(reqs, 4, 20, TM)
    v1, c1 = ScheduleModel(prob, 10).size()
    v2, c2 = ScheduleModel(prob, 20).size()
    prob12 = Problem(reqs + [Req(f"s{i}", 0.0, 3, 2) for i in range(6)], 4, 20, TM)
    v3, _ = ScheduleModel(prob12, 10).size()
    assert 1.8 < v2 / v1 < 2.2 and 1.8 < c2 / c1 < 2.3 and 1.8 < v3 / v1 < 2.2


def test_linear_fit_close_to_cost_model():
    cm = CostModel.for_names("llama-3-8b", "h100")
    lengths = [(40, 10), (120, 30), (15, 60)]
    tm = fit_linear_time(cm, lengths, 256, 2000, num_samples=600)
    assert tm.mean_rel_error < 0.08 and tm.max_rel_error < 0.3
    t = cm.batch_time([(100, 0)], [50, 80])
    assert tm.batch_time([(100, 0)], [50, 80]) == pytest.approx(t, rel=0.3)
    k = tm.int_coefs()
    assert tm.time_int(10, 100, 2) == (
        k.per_iteration
        + 10 * k.per_token
        + k.per_token_above_knee * max(0, 10 - tm.knee)
        + 100 * k.per_kv_read
        + 2 * k.per_request
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_optimum_never_worse_than_heuristics(seed):
    sim = pytest.importorskip("sglang_cascade.sim")  # noqa: F841
    from sglang_cascade.optimal.replay import replay

    cm = CostModel.for_names("llama-3-8b", "h100")
    rng = random.Random(seed)
    reqs = [Req(f"r{i}", 0.004 * i, rng.randint(5, 40), rng.randint(1, 5)) for i in range(5)]
    lengths = [(r.prompt, r.output) for r in reqs]
    cap = 90
    tm = fit_linear_time(cm, lengths, 48, cap, num_samples=400, seed=seed)
    prob = Problem(reqs, 48, cap, tm, preemption=True)
    for obj in ("makespan", "mean_e2e"):
        res = solve(prob, obj, time_limit_s=8)  # bound <= heuristic holds whether or not it is proven
        assert check_problem_schedule(prob, res.schedule) == []
        for name in ("sglang", "reserve", "cascade"):
            rp = replay(prob, name, cm)
            assert rp.violations == [], (name, rp.violations[:3])
            h = rp.objective(obj)
            assert res.bound <= h + 1e-9, (name, obj)
            if res.optimal:
                assert res.objective <= h + 1e-9, (name, obj)


def test_retime_matches_solver_costs():
    prob, obj = _tiny(4)
    res = solve(prob, obj, time_limit_s=10)
    again = retime(prob, res.schedule.iterations)
    assert again.objective(prob, obj) == pytest.approx(res.objective, abs=1e-9)


def test_cli_optimal_json(capsys, tmp_path):
    from sglang_cascade.cli import main

    out = tmp_path / "s.json"
    rc = main(
        [
            "optimal",
            "--trace",
            "azure_code",
            "--max-requests",
            "4",
            "--model",
            "llama-3-8b",
            "--gpu",
            "h100",
            "--length-scale",
            "100",
            "--rate-scale",
            "50",
            "--time-limit",
            "20",
            "--json",
            "--schedule-out",
            str(out),
        ]
    )
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert {"optimal", "objective", "bound", "solve_s", "requests"} <= set(d)
    assert d["requests"] == 4 and d["bound"] <= d["objective"] + 1e-12
    sched = json.loads(out.read_text())
    assert len(sched["finish"]) == 4 and sched["iterations"]


def test_cli_optimal_bad_input(capsys):
    from sglang_cascade.cli import main

    assert main(["optimal", "--trace", "/nonexistent.csv", "--max-requests", "3"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["optimal", "--trace", "azure_code", "--max-requests", "3", "--kv-capacity", "5"]) == 2
