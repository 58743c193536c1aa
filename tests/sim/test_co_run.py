"""SimConfig.co_run_slowdown: instances sharing one host (two pinned CPU-engine servers on a 2-core VM) slow
each other while both are busy; an instance running alone keeps the cost model's times."""

from __future__ import annotations

import pytest

from sglang_cascade.core.hardware_fit import co_run_ratios
from sglang_cascade.core.traces import TraceRequest
from sglang_cascade.sim import SimConfig, simulate
from sglang_cascade.sim.cluster import co_run_slowdown


def _run(trace, instances, slowdown):
    cfg = SimConfig(
        instances=instances,
        router="round_robin",
        record_schedule=True,
        co_run_slowdown=slowdown,
        check_invariants=True,
        fast_forward=False,
    )
    return simulate(trace, cfg)


def test_concurrent_iterations_stretch_and_lone_ones_do_not():
    # a and b start together on two instances; c runs after both finished, alone
    trace = [TraceRequest("a", 0.0, 100, 300), TraceRequest("b", 0.0, 100, 300), TraceRequest("c", 60.0, 100, 300)]
    base, slow = _run(trace, 2, 0.0), _run(trace, 2, 0.5)
    e2e = {r.rid: r.finish_time - r.arrival for r in base.requests}
    e2e_slow = {r.rid: r.finish_time - r.arrival for r in slow.requests}
    for rid in ("a", "b"):  # both busy the whole time: every iteration 1.5x as long but the first of the
        # instance that starts first (the other one is still idle at that instant) and the last of the one that
        # finishes last
        assert e2e_slow[rid] == pytest.approx(1.5 * e2e[rid], rel=0.01)
    assert e2e_slow["c"] == pytest.approx(e2e["c"], rel=1e-9)
    # a single instance has no co-runner, whatever the setting
    one, one_slow = _run(trace, 1, 0.0), _run(trace, 1, 0.5)
    assert one.metrics["e2e_mean"] == one_slow.metrics["e2e_mean"]


def test_only_the_overlapping_part_is_slowed():
    # b arrives on the second instance while a is half done: a's iterations from then on are slowed
    trace = [TraceRequest("a", 0.0, 200, 60), TraceRequest("b", 0.2, 200, 10)]
    base, slow = _run(trace, 2, 0.5), _run(trace, 2, 0.0)
    a_slow = next(r for r in base.requests if r.rid == "a")
    a_base = next(r for r in slow.requests if r.rid == "a")
    ratio = (a_slow.finish_time - a_slow.arrival) / (a_base.finish_time - a_base.arrival)
    assert 1.0 < ratio < 1.5


def test_default_comes_from_the_hardware_profile():
    assert co_run_slowdown(SimConfig(gpu="h100")) is None
    assert co_run_slowdown(SimConfig(gpu="h100", co_run_slowdown=0.2)) == (0.2, 0.2, 0.2)
    assert co_run_slowdown(SimConfig(gpu="h100", co_run_slowdown={"decode": 0.2})) == (0.2, 0.0, 0.2)
    both = {"decode": 0.03, "decode_next_to_prefill": 0.18}
    assert co_run_slowdown(SimConfig(gpu="h100", co_run_slowdown=both)) == (0.03, 0.0, 0.18)
    with pytest.raises(ValueError):
        co_run_slowdown(SimConfig(gpu="h100", co_run_slowdown=-0.1))


def test_co_run_ratios_pairs_rows_and_refuses_mismatches():
    lone = [
        {"kind": "prefill", "prefill": [128], "batch": 0, "seconds": 0.10},
        {"kind": "decode", "prefill": [], "batch": 4, "seconds": 0.010},
        {"kind": "decode", "prefill": [], "batch": 8, "seconds": 0.020},
    ]
    co = [dict(r, seconds=r["seconds"] * f) for r, f in zip(lone, (1.3, 1.1, 1.2))]
    out = co_run_ratios(lone, co)
    assert out["decode_slowdown"] == pytest.approx(0.15)
    assert out["prefill_slowdown"] == pytest.approx(0.3)
    assert out["decode_median_ratio"] == pytest.approx(1.15)
    assert out["prefill_max_ratio"] == pytest.approx(1.3)
    with pytest.raises(ValueError):
        co_run_ratios(lone, co[:2])
    with pytest.raises(ValueError):
        co_run_ratios(lone, [co[1], co[0], co[2]])


def test_a_decode_next_to_a_prefill_slows_by_its_own_factor():
    """calibrate_cpu_engine.py --co-runner-kind prefill: decode iterations next to a prefilling co-runner are slowed
    by ``decode_next_to_prefill``, next to a decoding one by ``decode``. One request decodes on instance 0 while
    long prompts (output 1) arrive one by one and least_load sends each to the idle instance 1."""
    trace = [TraceRequest("d", 0.0, 50, 200)] + [TraceRequest(f"p{i}", 0.05 + 0.1 * i, 3000, 1) for i in range(10)]

    def e2e_d(slowdown):
        cfg = SimConfig(
            instances=2, router="least_load", co_run_slowdown=slowdown, check_invariants=True, fast_forward=False
        )
        res = simulate(trace, cfg)
        assert all(r.instance == 1 for r in res.requests if r.rid != "d")
        return next(r.finish_time - r.arrival for r in res.requests if r.rid == "d")

    base = e2e_d({"decode": 0.0})
    plain = e2e_d({"decode": 0.5})  # decode_next_to_prefill defaults to decode
    split = e2e_d({"decode": 0.0, "decode_next_to_prefill": 0.5})
    assert split == pytest.approx(plain, rel=1e-9) and split > base * 1.1
    assert e2e_d({"decode": 0.5, "decode_next_to_prefill": 0.0}) == pytest.approx(base, rel=1e-9)  # only prefills ran


def test_the_profile_takes_decode_next_to_prefill_when_a_prefilling_co_runner_was_measured():
    from sglang_cascade.core.hardware_fit import co_run_slowdowns

    lone = [{"kind": "decode", "batch": 1, "prefill": [0], "seconds": 1.0}]
    mixed = co_run_ratios(lone, [{"kind": "decode", "batch": 1, "prefill": [0], "seconds": 1.03}])
    assert co_run_slowdowns(mixed) == {"decode": pytest.approx(0.03), "prefill": 0.0}
    mixed["next_to_prefill"] = co_run_ratios(lone, [{"kind": "decode", "batch": 1, "prefill": [0], "seconds": 1.18}])
    got = co_run_slowdowns(mixed)
    assert got["decode_next_to_prefill"] == pytest.approx(0.18) and got["decode"] == pytest.approx(0.03)
    assert co_run_slowdowns(None) == {"decode": 0.0, "prefill": 0.0}
