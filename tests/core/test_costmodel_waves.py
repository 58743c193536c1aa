"""Decode waves / split-KV term and the engine all-reduce excess term of the cost model."""

from __future__ import annotations

import random

import pytest

from sglang_cascade.core.calibration import DecodeParams, decode_wave_features, fit_decode_waves
from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.validation import attention_rows, fit_attention_a100

KVB, BW, KVH, SMS = 2048.0, 2.04e12, 4, 108  # llama-2-70b TP2 per layer on A100


def _truth_time(d: DecodeParams, b: int, kv: int) -> float:
    """The cost model's rule: split-KV (if the heuristic allows it) only where it beats the wave form."""
    wave = d.wave_per_kv_s * decode_wave_features(b, b * kv, kv, KVH, SMS, d.ctas_per_sm, 0.0)[0]
    _, eligible, split_kv = decode_wave_features(b, b * kv, kv, KVH, SMS, d.ctas_per_sm, d.split_ctas_fraction)
    sched = min(wave, d.split_fixed_s + d.split_per_kv_s * split_kv) if eligible else wave
    return d.fixed_s + d.per_request_s * b + b * kv * KVB / (BW * d.hbm_efficiency) + sched


def test_fit_decode_waves_recovers_known_parameters():
    truth = DecodeParams(
        hbm_efficiency=0.9,
        fixed_s=4e-6,
        per_request_s=1e-7,
        wave_per_kv_s=2e-8,
        ctas_per_sm=2,
        split_ctas_fraction=0.8,
        split_fixed_s=1.2e-5,
        split_per_kv_s=1e-9,
    )
    rows = [(b, b * kv, _truth_time(truth, b, kv)) for b in range(1, 129, 3) for kv in range(64, 4097, 256)]
    got = fit_decode_waves(rows, KVB, BW, KVH, SMS)
    assert got.ctas_per_sm == 2
    assert got.hbm_efficiency == pytest.approx(0.9, rel=1e-3)
    assert got.wave_per_kv_s == pytest.approx(2e-8, rel=1e-3)
    assert got.split_fixed_s == pytest.approx(1.2e-5, rel=1e-3)


def test_split_kv_threshold_follows_fa2_heuristic():
    # CTAs = batch x KV heads; split-KV while CTAs < 0.8 x SMs (86.4 on A100): batch 21 splits, 22 does not
    assert decode_wave_features(21, 21 * 100, 100, KVH, SMS, 2, 0.8)[1] == 1.0
    assert decode_wave_features(22, 22 * 100, 100, KVH, SMS, 2, 0.8)[1] == 0.0
    # waves of 2 x 108 CTAs: batch 54 -> 1 wave, 55 -> 2 waves
    assert decode_wave_features(54, 5400, 100, KVH, SMS, 2, 0.8)[0] == 100
    assert decode_wave_features(55, 5500, 100, KVH, SMS, 2, 0.8)[0] == 200


def test_a100_fit_shows_wave_step_in_measured_data_and_model():
    """The measured A100 kernels step up when the batch crosses a wave boundary (54 -> 56 requests x 4 KV heads
    over 216 CTA slots); the fitted model reproduces the step and the fit picked 2 CTAs per SM."""
    a = fit_attention_a100()
    assert a.decode.ctas_per_sm == 2 and a.decode.wave_per_kv_s > 0 and a.decode.split_fixed_s > 0
    dec, _ = attention_rows()
    meas = {(b, k): t for b, k, t in dec}
    kv = max(k for b, k in meas if b == 54)
    step_meas = meas[(56, kv)] / meas[(54, kv)]
    cm = CostModel.for_names("llama-2-70b", "a100", 2)
    step_model = cm.decode_attention_time(56, 56 * kv, kv) / cm.decode_attention_time(54, 54 * kv, kv)
    assert step_meas > 1.3 and step_model > 1.2  # per-request growth 56/54 = 1.04 alone would not give this


@pytest.mark.parametrize(
    "model,gpu,tp", [("llama-2-70b", "a100", 2), ("llama-3-8b", "h100", 1), ("llama-3-70b", "a100", 8)]
)
def test_decode_schedule_monotone_and_inlined_path_matches(model, gpu, tp):
    cm = CostModel.for_names(model, gpu, tp)
    rng = random.Random(3)
    for kv_max in (16, 300, 4000):
        prev = 0.0
        for b in range(1, 700):  # monotone in batch across the split-KV and wave boundaries
            t = cm.decode_attention_time(b, b * kv_max // 2, kv_max)
            assert t >= prev - 1e-15, (b, kv_max)
            prev = t
    for _ in range(3000):  # iteration_time's inlined decode path == the component functions
        b = rng.randint(1, 5000)
        kmax = rng.randint(1, 9000)
        ksum = rng.randint(b, b * kmax)
        whole = cm.iteration_time(0, 0.0, b, ksum, kmax)
        parts = (
            cm.linear_time(b)
            + cm._fixed
            + cm._per_req * b
            + cm.lm_head_time(b)
            + cm.decode_attention_time(b, ksum, kmax)
        )
        assert whole == pytest.approx(parts, rel=1e-12)


def test_engine_allreduce_excess_only_beyond_threshold_and_scaled_by_ring_factor():
    from sglang_cascade.core.costmodel import Calibration
    from sglang_cascade.core.profiles import engine_params

    e = engine_params("splitwise-a100")
    assert e.comm_per_token_s > 0 and e.comm_threshold_tokens > 0
    c0 = e.comm_threshold_tokens
    for tp in (2, 4, 8):
        fitted = CostModel.for_names("llama-2-70b", "a100", tp, Calibration(engine="splitwise-a100"))
        plain = CostModel.for_names("llama-2-70b", "a100", tp, Calibration(engine="kernels_only"))
        ring = 2.0 * (tp - 1) / tp
        for n in (c0 // 2, c0, c0 + 1000, 3 * c0, 20000):
            excess = fitted.linear_time(n) - e.linear_scale * plain.linear_time(n)
            assert excess == pytest.approx(ring * e.comm_per_token_s * max(0, n - c0), rel=1e-6, abs=1e-9), (tp, n)
