"""Stage plan, length statistics, the analytic stage model and the exact DP partition."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.traces import load_trace
from sglang_cascade.policies.stage_dp import brute_force_partition, dp_partition, plan_partition, predict_stages
from sglang_cascade.policies.stage_model import LengthStats, QoEConfig
from sglang_cascade.policies.stages import StagePlan


@pytest.fixture(scope="module")
def cm():
    return CostModel.for_names("llama-3-8b", "h100")


def test_stage_of_edges():
    plan = StagePlan.from_counts([100, 500], [1, 2, 1])
    assert plan.stage_of(0) == 0
    assert plan.stage_of(99) == 0
    assert plan.stage_of(100) == 1  # exactly at a bound: the stage starting there
    assert plan.stage_of(499) == 1
    assert plan.stage_of(500) == 2
    assert plan.stage_of(10**9) == 2  # longer than every range: last stage
    assert plan.hi(2) is None and plan.lo(1) == 100
    assert plan.members == [[0], [1, 2], [3]]


def test_plan_validation():
    with pytest.raises(ValueError):
        StagePlan([500, 100], [[0], [1], [2]])
    with pytest.raises(ValueError):
        StagePlan([100], [[0], []])
    with pytest.raises(ValueError):
        StagePlan([100], [[0], [0]])
    with pytest.raises(ValueError):
        StagePlan.from_counts([100], [1, 1], [0])


def _brute_stats(sample, l):
    G = H = 0
    for p, o in sample:
        for x in range(p, p + o):
            if x < l:
                G += 1
                H += x
    return G, H


def test_length_stats_match_brute_force():
    rng = np.random.default_rng(1)
    sample = [(int(rng.integers(1, 60)), int(rng.integers(1, 40))) for _ in range(50)]
    st = LengthStats(sample)
    for l in [0, 1, 5, 17, 40, 63, 99, 200]:
        G, H = _brute_stats(sample, l)
        assert st.G(l) == pytest.approx(G)
        assert st.H(l) == pytest.approx(H)
        assert st.crossing(l) == sum(1 for p, o in sample if p < l < p + o)


@pytest.mark.parametrize("seed", range(12))
def test_dp_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    B, N = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    C = rng.random((B + 1, B + 1, N + 1)) * 10
    C[rng.random(C.shape) < 0.2] = np.inf  # some infeasible segments
    C[:, :, 0] = np.inf
    try:
        bf_cost, bf_segs = brute_force_partition(C, N)
    except Exception:  # pragma: no cover
        raise
    if not np.isfinite(bf_cost):
        with pytest.raises(ValueError):
            dp_partition(C, N)
        return
    cost, segs = dp_partition(C, N)
    assert cost == pytest.approx(bf_cost)
    assert sum(C[i, j, m] for i, j, m in segs) == pytest.approx(cost)
    assert segs[0][0] == 0 and segs[-1][1] == B and sum(m for *_, m in segs) == N
    assert all(a[1] == b[0] for a, b in zip(segs, segs[1:]))


def test_dp_max_stages_matches_brute_force():
    rng = np.random.default_rng(7)
    B, N = 5, 5
    C = rng.random((B + 1, B + 1, N + 1))
    for K in (1, 2, 3):
        best = np.inf
        for k in range(1, K + 1):
            for cuts in itertools.combinations(range(1, B), k - 1):
                edges = (0, *cuts, B)
                for ms in itertools.product(range(1, N + 1), repeat=k):
                    if sum(ms) == N:
                        best = min(best, sum(C[edges[t], edges[t + 1], ms[t]] for t in range(k)))
        cost, segs = dp_partition(C, N, max_stages=K)
        assert cost == pytest.approx(best) and len(segs) <= K


def test_dp_64x64_plans_every_instance(cm):
    from sglang_cascade.policies.stage_model import LengthStats, StageModel

    reqs = load_trace("azure_conv", num_requests=4000)
    sample = [(r.prompt_len, r.output_len) for r in reqs]
    res = plan_partition(sample, 200.0, 64, cm, buckets=64)
    assert res.plan.counts() and sum(res.plan.counts()) == 64
    stats = LengthStats(sample)
    C, _ = StageModel(stats, stats.token_quantile_edges(64), 200.0, cm, QoEConfig()).segment_costs(64)
    assert C.shape[0] - 1 >= 60  # ~64 buckets
    cost, segs = dp_partition(C, 64)  # its speed: scripts/bench_stage_dp.py
    assert sum(m for _, _, m in segs) == 64 and segs[0][0] == 0 and segs[-1][1] == C.shape[0] - 1
    assert all(a[1] == b[0] for a, b in zip(segs, segs[1:])) and np.isfinite(cost)


def test_plan_one_instance_and_one_length(cm):
    res = plan_partition([(500, 100)] * 50, 1.0, 1, cm, buckets=8)
    assert res.plan.num_stages == 1 and res.plan.members == [[0]]
    res = plan_partition([(500, 100)] * 50, 5.0, 4, cm, buckets=8)
    assert sum(res.plan.counts()) == 4
    assert res.qoe == pytest.approx(1.0)
    with pytest.raises(ValueError):
        plan_partition([], 1.0, 2, cm)
    with pytest.raises(ValueError):
        plan_partition([(10, 10)], 0.0, 2, cm)


def test_overload_gets_more_instances(cm):
    # short requests are the bulk of the decode work: the stage holding them gets more instances
    sample = [(100, 400)] * 900 + [(6000, 50)] * 100
    res = plan_partition(sample, 40.0, 8, cm, buckets=16, max_stages=2)
    assert res.plan.num_stages == 2
    assert res.plan.counts()[0] > res.plan.counts()[1]
    assert res.breakdown["overloaded_stages"] == 0


def test_heterogeneity_favours_splitting(cm):
    # two very different length classes with plenty of instances: the DP separates them
    sample = [(64, 256)] * 500 + [(7000, 256)] * 500
    res = plan_partition(sample, 5.0, 4, cm, QoEConfig(), buckets=16)
    assert res.plan.num_stages >= 2
    assert any(128 <= b <= 7000 for b in res.plan.bounds)


def test_cli_plan_prints_json(capsys):
    import json

    from sglang_cascade.cli import main

    assert (
        main(
            [
                "plan",
                "--trace",
                "azure_conv",
                "--instances",
                "4",
                "--rate",
                "10",
                "--num-requests",
                "500",
                "--buckets",
                "16",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert sum(s["instances"] for s in out["stages"]) == 4
    assert out["stages"][0]["lo"] == 0 and out["stages"][-1]["hi"] is None
    assert all(a["hi"] == b["lo"] for a, b in zip(out["stages"], out["stages"][1:]))
    assert 0.0 <= out["qoe"] <= 1.0 and out["dp_time_s"] > 0
    assert "violation" in out["qoe_breakdown"] and len(out["qoe_breakdown"]["stages"]) == len(out["stages"])
    assert "dp_time_s_warm" not in out
    pool = out["prefill_pool"]  # short prompts: the router's auto sizing takes no pool, and says why
    assert pool["instances"] == 0 and "no pool" in pool["why"] and [m["size"] for m in pool["model"]] == [1, 2, 3]
    args = ["plan", "--trace", "azure_conv", "--instances", "4", "--rate", "10", "--num-requests", "500"]
    assert main([*args, "--buckets", "16", "--repeat", "3"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["stages"] == out["stages"] and again["objective"] == out["objective"]  # same plan every run
    assert 0 < again["dp_time_s_warm"] <= again["dp_time_s_warm_max"] and again["table_time_s_warm"] > 0
    with pytest.raises(SystemExit):
        main([*args, "--repeat", "0"])


def test_cli_plan_explains_the_prefill_pool_the_router_would_size(capsys):
    """Long prompts near the knee: the pool's size is the model's best among sizes whose decode side keeps the
    margin, and --pool-decode-rho moves it."""
    import json

    from sglang_cascade.cli import main

    args = ["plan", "--trace", "mooncake", "--model", "llama-3.1-70b", "--tp", "4", "--instances", "16"]
    args += ["--rate", "10.96", "--num-requests", "1000", "--buckets", "16"]
    assert main(args) == 0
    pool = json.loads(capsys.readouterr().out)["prefill_pool"]
    by = {m["size"]: m for m in pool["model"]}
    assert 0 < pool["instances"] < 16 and by[pool["instances"]]["decode_rho"] <= 0.75
    assert all(m["decode_rho"] > 0.75 for m in pool["model"] if m["size"] > pool["instances"])
    assert main([*args, "--pool-decode-rho", "0.5"]) == 0
    tighter = json.loads(capsys.readouterr().out)["prefill_pool"]
    assert tighter["instances"] < pool["instances"]


def test_cli_plan_check_prints_the_routers_checked_decision(capsys):
    """--check builds the cascade router for the traffic with the simulator as its plan checker: on long prompts
    near the knee its start-up decision scores pool sizes and says which runs; pool_check=0 checks nothing."""
    import json

    from sglang_cascade.cli import main

    args = ["plan", "--trace", "mooncake", "--model", "llama-3.1-8b", "--instances", "8", "--rate", "11"]
    args += ["--num-requests", "300", "--buckets", "16", "--check"]
    assert main(args) == 0
    check = json.loads(capsys.readouterr().out)["check"]
    d = check["decision"]
    assert d["trigger"] == "init" and any(x["pool"] > 0 for x in d["scores"]) and d["chosen"] in check["log"]
    best = min(d["scores"], key=lambda x: x["score"])
    assert d["pool"] == len(check["plan_info"].get("prefill_pool", {}).get("instances", []))
    assert d["chosen"] == best["name"] or "within" in d["reason"] or "does not pay" in d["reason"]
    runs = check["runs"]  # the plan the router runs: the decision's
    assert (runs["counts"], runs["prefill_pool"]) == (d["counts"], d["pool"]) and runs["stages"] == len(d["counts"])
    assert main([*args[:-1], "--explain", "--options", "pool_check=0,check_staging=0"]) == 0  # --explain: the same
    d0 = json.loads(capsys.readouterr().out)["check"]["decision"]
    assert d0["scores"] == [] and d0["chosen"] == "dp"  # no checker: the DP and the pool model, unchecked
    short = ["plan", "--trace", "arxiv", "--model", "llama-3.1-8b", "--instances", "16", "--rate", "123"]
    assert main([*short, "--num-requests", "400", "--buckets", "16", "--explain"]) == 0
    out = json.loads(capsys.readouterr().out)
    ds = out["check"]["decision"]  # check_staging: pooled against the DP's best, whichever wins is what runs
    assert ds["trigger"] == "init" and {x["name"] for x in ds["scores"]} >= {"pooled"}
    assert out["check"]["runs"]["counts"] == ds["counts"] and len(out["stages"]) >= 1


def test_batch_top_heterogeneity_is_milder_for_wide_pooled_stages(cm):
    rng = np.random.default_rng(3)
    sample = [(int(rng.integers(50, 12000)), int(rng.integers(20, 600))) for _ in range(2000)]
    tp = {
        bt: plan_partition(sample, 20.0, 4, cm, QoEConfig(batch_top=bt), max_stages=1).breakdown["stages"][0]
        for bt in (True, False)
    }
    # a batch's longest sequence is shorter than the whole range's: less slow-down, smaller steady batch
    assert tp[True]["tpot_s"] < tp[False]["tpot_s"]
    assert tp[True]["decode_batch"] <= tp[False]["decode_batch"]
    one = [(1000, 200)] * 300  # a single length: no spread, both models agree
    a = plan_partition(one, 10.0, 2, cm, QoEConfig(batch_top=True), max_stages=1).breakdown["stages"][0]
    b = plan_partition(one, 10.0, 2, cm, QoEConfig(batch_top=False), max_stages=1).breakdown["stages"][0]
    assert a["tpot_s"] == pytest.approx(b["tpot_s"], rel=0.02)


def test_min_gain_keeps_fewer_stages_unless_more_pay_off(cm):
    sample = [(64, 256)] * 500 + [(7000, 256)] * 500
    best = plan_partition(sample, 5.0, 4, cm, QoEConfig(), buckets=16)
    assert best.plan.num_stages >= 2
    same = plan_partition(sample, 5.0, 4, cm, QoEConfig(min_gain=1e-12), buckets=16)
    assert same.plan.num_stages <= best.plan.num_stages and same.objective <= best.objective * (1 + 1e-9)
    one = plan_partition(sample, 5.0, 4, cm, QoEConfig(min_gain=10.0), buckets=16)
    assert one.plan.num_stages == 1 and one.objective <= best.objective * 11


def test_prefill_bound_pools_a_saturated_prefill_bound_cluster_only():
    """Long prompts, short outputs (Mooncake-like) on 70B: prefill is ~94% of the work at every rate; once
    the pooled cluster is also near saturation (utilization >= prefill_bound) the DP's split gives way to
    one stage; below that the split stands."""
    cm70 = CostModel.for_names("llama-3.1-70b", "h100", 4)
    rng = np.random.default_rng(0)
    p = np.minimum(np.exp(rng.normal(np.log(8000), 1.0, 2000)), 100000).astype(int)
    o = rng.integers(10, 100, 2000)
    sample = list(zip(p.tolist(), o.tolist()))
    bound = QoEConfig(min_gain=0.05, prefill_bound=0.85)
    for rate, saturated in ((5.0, False), (6.5, True)):
        free = plan_partition(sample, rate, 8, cm70, QoEConfig(min_gain=0.05))
        pooled = predict_stages(sample, rate, [], [8], cm70, bound)[0]
        assert free.plan.num_stages >= 2  # the DP alone stages both
        assert pooled["prefill_busy"] >= 0.85 * pooled["rho"]  # prefill-bound work at both rates
        assert (pooled["rho"] >= 0.85) == saturated
        got = plan_partition(sample, rate, 8, cm70, bound)
        if saturated:
            assert got.plan.counts() == [8] and got.objective >= free.objective
        else:
            assert got.plan.counts() == free.plan.counts()
