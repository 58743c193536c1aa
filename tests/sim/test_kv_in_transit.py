"""A destination whose own requests grow into the room its in-flight incoming KV copies reserved.

Found by ``scripts/check_prefill_pool_live.py --rate 4`` (a 1 + 1 prefill pool on the tiny model's 16K-token KV
pool, moves stalled 2.7 s): the decode side had retracted all but one request and the rest of its pool was
reserved for moves that had already left their sources, so the simulator stopped with "on_kv_exhausted retracted
nothing". Now moves still pre-copying are refused (their requests stay on their sources) and the instance waits for
the in-transit ones to land, after which SGLang's retraction has requests to take.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from sglang_cascade.core.traces import TraceRequest
from sglang_cascade.replay.fidelity import FidelityConfig, sim_config
from sglang_cascade.sim import simulate


def _overloaded_pool_trace(n: int = 120, rate: float = 4.0) -> list[TraceRequest]:
    rng = np.random.default_rng(0)
    t, out = 0.0, []
    for i in range(n):
        t += float(rng.exponential(1.0 / rate))
        lo, hi = (1536, 3072) if rng.random() < 0.6 else (32, 256)
        out.append(TraceRequest(f"r{i}", t, int(rng.integers(lo, hi + 1)), int(rng.integers(48, 128))))
    return out


def test_a_destination_full_of_in_transit_kv_waits_for_it_to_land_instead_of_failing():
    trace = _overloaded_pool_trace()
    policy = "cascade:counts=1,prefill_pool=1,prefill_min=1024,mode=kv_transfer"
    cfg = sim_config(FidelityConfig(policy, 2, policy, "sglang", 1.0), "tiny-llama", "cpu-engine", 2.0, 0.1, 0.5)
    cfg = replace(cfg, time_scale=(1.0, 0.3), migration_overhead_s=3.5)  # the live run's slow prefill, long stalls
    # a move now also needs the room the destination's admission keeps for its running requests' outputs
    # (SglangScheduler.admission_reserve), which keeps this trace's decode side from filling up; with that reserve
    # clipped to nothing the destination fills with in-transit KV as it did before
    cfg = replace(cfg, scheduler_options={"clip_max_new_tokens": 1})
    res = simulate(trace, cfg)
    assert len(res.requests) == len(trace) and all(r.output_len == r.target for r in res.requests)
    assert res.metrics["migrations"] > 0 and res.metrics["preemptions"] > 0  # the decode side ran out of KV


def test_with_the_admission_reserve_moves_leave_the_decode_side_room_and_nothing_is_retracted():
    trace = _overloaded_pool_trace()
    policy = "cascade:counts=1,prefill_pool=1,prefill_min=1024,mode=kv_transfer"
    cfg = sim_config(FidelityConfig(policy, 2, policy, "sglang", 1.0), "tiny-llama", "cpu-engine", 2.0, 0.1, 0.5)
    cfg = replace(cfg, time_scale=(1.0, 0.3), migration_overhead_s=3.5)
    res = simulate(trace, cfg)
    assert len(res.requests) == len(trace) and all(r.output_len == r.target for r in res.requests)
    assert res.metrics["migrations"] > 0 and res.metrics["preemptions"] == 0


def test_a_decode_side_full_of_waiting_moves_drops_their_kv_instead_of_failing():
    """70B Mooncake on 8 instances with a forced pool of 7: the one decode instance fills with moved requests waiting
    for admission (each holding its KV) and nothing runs to retract; their KV is dropped (they recompute) where the
    simulator used to stop with "on_kv_exhausted retracted nothing". Which seed reaches that state shifts with every
    change of dispatch or cache model, so the test runs three at 1.2x the analytic capacity: all must complete, and
    at least one must have taken the path."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import eval_cascade as ev

    from sglang_cascade.core.specs import get_model

    model = "llama-3.1-70b@4"
    name, _ = ev.model_tp(model)
    rate = 1.2 * ev.analytic_capacity("mooncake", model, 8)
    evicted = 0
    for seed in (0, 1, 2):
        reqs = ev.requests_for("mooncake", ev.n_requests(rate, 40.0, 1000), rate, seed, get_model(name).max_context)
        cfg = ev.sim_config(model, 8, "cascade:prefill_pool=7,pool_work_weight=0,pool_hold=0", seed, slo_ttft_scale=3.0)
        res = simulate(reqs, cfg)
        assert len(res.requests) == len(reqs) and all(r.output_len == r.target for r in res.requests)
        evicted += res.metrics.get("waiting_kv_evicted", 0)
    assert evicted > 0
