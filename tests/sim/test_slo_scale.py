"""The length-scaled TTFT SLO (``SimConfig.slo_ttft_scale``): a prompt whose prefill alone takes longer than
the absolute TTFT SLO can still meet it; short prompts keep the absolute SLO."""

from __future__ import annotations

import pytest

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.traces import TraceRequest
from sglang_cascade.sim import SimConfig, simulate

CM = CostModel.for_names("llama-3.1-8b", "h100")


def test_isolated_prefill_time_is_the_sum_of_its_chunks():
    one = CM.isolated_prefill_time(8192, 8192)
    assert one == pytest.approx(CM.batch_time(prefill=[(8192, 0)]))
    two = CM.isolated_prefill_time(16384, 8192)
    assert two == pytest.approx(CM.batch_time(prefill=[(8192, 0)]) + CM.batch_time(prefill=[(8192, 8192)]))
    assert CM.isolated_prefill_time(0, 8192) == 0.0
    assert CM.isolated_prefill_time(100_000, 8192) > 2.0  # a 100K prompt alone misses a 2 s TTFT SLO


def _run(scale: float, prompts) -> dict:
    trace = [TraceRequest(f"r{i}", 30.0 * i, p, 4) for i, p in enumerate(prompts)]  # far apart: each alone
    return simulate(trace, SimConfig(model="llama-3.1-8b", gpu="h100", slo_ttft_scale=scale)).metrics


def test_a_long_prompt_alone_meets_the_scaled_slo_only():
    prompts = [500, 100_000]
    assert _run(0.0, prompts)["slo_attainment"] == 0.5  # the long one cannot meet TTFT <= 2 s
    m = _run(3.0, prompts)
    assert m["slo_attainment"] == 1.0 and m["slo_ttft_scale"] == 3.0
    assert m["ttft_p99"] > 2.0  # the same schedule: only the SLO changed
    assert _run(0.0, [500])["slo_attainment"] == _run(3.0, [500])["slo_attainment"] == 1.0
    # scale below 1: even alone the long prompt's TTFT exceeds its (scaled) SLO
    assert _run(0.5, prompts)["slo_attainment"] == 0.5
