"""SimConfig.result_lag: SGLang's overlap scheduler on a synchronous device (the CPU engine) shows a batch's
tokens to the client only after the next batch's forward; the engine's schedule itself is unchanged."""

from __future__ import annotations

import pytest

from sglang_cascade.core.traces import TraceRequest
from sglang_cascade.sim import SimConfig, simulate
from sglang_cascade.sim.cluster import result_lag


def _run(lag, trace, gpu="h100", model="llama-3-8b"):
    cfg = SimConfig(model=model, gpu=gpu, record_schedule=True, result_lag=lag, check_invariants=True)
    return simulate(trace, cfg)


def test_first_token_and_finish_seen_one_iteration_late():
    # A alone, then B arrives while A decodes: A's tokens are seen at the end of the following forward
    trace = [TraceRequest("a", 0.0, 500, 40), TraceRequest("b", 0.05, 300, 5)]
    base, lag = _run(False, trace), _run(True, trace)
    recs = base.schedules[0]
    assert recs == lag.schedules[0], "the lag changes what the client sees, never the engine's schedule"
    ends = [r.start + r.duration for r in recs]
    by = {r.rid: r for r in base.requests}
    seen = {r.rid: r for r in lag.requests}
    for rid in ("a", "b"):
        t_first = by[rid].first_token_time
        k = next(i for i, e in enumerate(ends) if e == pytest.approx(t_first))
        nxt = ends[k + 1] if k + 1 < len(ends) else t_first  # no next forward: processed at once
        assert seen[rid].first_token_time == pytest.approx(nxt)
        t_fin = by[rid].finish_time
        k = next(i for i, e in enumerate(ends) if e == pytest.approx(t_fin))
        nxt = ends[k + 1] if k + 1 < len(ends) else t_fin
        assert seen[rid].finish_time == pytest.approx(nxt)
    # the last request to finish leaves an idle engine: its finish is not delayed
    last = max(base.requests, key=lambda r: r.finish_time)
    assert seen[last.rid].finish_time == pytest.approx(last.finish_time)
    assert lag.metrics["ttft_mean"] > base.metrics["ttft_mean"]


def test_default_comes_from_the_hardware_profile():
    assert result_lag(SimConfig(gpu="cpu-engine", model="tiny-llama")) is True
    assert result_lag(SimConfig(gpu="h100")) is False
    assert result_lag(SimConfig(gpu="h100", result_lag=True)) is True
    trace = [TraceRequest("a", 0.0, 100, 8), TraceRequest("b", 0.01, 100, 8)]
    h100 = _run(None, trace)
    assert h100.metrics["ttft_mean"] == _run(False, trace).metrics["ttft_mean"]
