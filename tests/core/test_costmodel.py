"""Cost model: tables, attention, heterogeneity, KV capacity, monotonicity, CLI and validation errors."""

from __future__ import annotations

import json
import random

import pytest

from sglang_cascade.cli import main as cli_main
from sglang_cascade.core.calibration import HeterogeneityParams, heterogeneity_factor
from sglang_cascade.core.costmodel import CostModel, prefill_attn_work, sglang_mem_fraction_static
from sglang_cascade.core.profiles import available_profiles, interp, isotonic, linear_profile, raw_profile
from sglang_cascade.core.specs import get_gpu, get_model

COMBOS = [
    ("llama-2-7b", "h100", 1),
    ("llama-3-8b", "h100", 1),
    ("llama-3.1-8b", "a100", 1),
    ("llama-2-70b", "h100", 4),
    ("llama-3-70b", "a100", 8),
    ("llama-3-70b", "h100", 2),
]


# ------------------------------------------------------------------------------------------ tables
def test_isotonic_removes_dips_and_keeps_monotone_data():
    assert isotonic([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]
    out = isotonic([1.0, 3.0, 2.0, 4.0])
    assert out == [1.0, 2.5, 2.5, 4.0]


def test_interpolation_exact_at_points_and_monotone_between():
    prof = linear_profile("h100", "Meta-Llama-3-8B", 1)
    xs, ys = prof.tokens, prof.layer_s
    for x, y in zip(xs, ys):
        assert interp(xs, ys, x) == pytest.approx(y, rel=1e-12)
    prev = -1.0
    for n in range(1, xs[-1] + 1, 7):
        v = interp(xs, ys, n)
        assert v >= prev - 1e-15
        prev = v
    # linear extrapolation past the last point keeps rising
    assert interp(xs, ys, 2 * xs[-1]) > ys[-1]


def test_cost_model_linear_matches_profile_points():
    cm = CostModel.for_names("llama-3-8b", "h100", 1)
    prof = linear_profile("h100", "Meta-Llama-3-8B", 1)
    L = cm.model.layers
    for i in (0, 10, 100, len(prof.tokens) - 1):
        n = prof.tokens[i]
        expect = L * (prof.layer_s[i] + cm.engine.per_layer_s) + prof.emb_s[i]
        assert cm.linear_time(n) == pytest.approx(expect, rel=1e-9)


def test_profiles_cover_required_models_and_gpus():
    keys = available_profiles()
    for gpu in ("h100", "a100"):
        for name in ("Llama-2-7b-hf", "Llama-2-70b-hf", "Meta-Llama-3-8B", "Meta-Llama-3-70B"):
            assert any(k.startswith(f"{gpu}/{name}/") for k in keys), (gpu, name)
    assert raw_profile("h100", "Meta-Llama-3-70B", 1) is None  # not profiled (does not fit anyway)


def test_unprofiled_combination_falls_back_to_roofline_and_says_so():
    with pytest.warns(UserWarning, match="roofline"):
        cm = CostModel.for_names("llama-3-70b", "h100", 1)
    assert cm.linear_source.startswith("roofline")
    assert CostModel.for_names("llama-3-70b", "h100", 2).linear_source.startswith("vidur:")


def test_llama31_has_same_shape_as_llama3_8b_but_long_context():
    a, b = get_model("llama-3-8b"), get_model("llama-3.1-8b")
    assert (a.layers, a.hidden, a.kv_heads, a.intermediate) == (b.layers, b.hidden, b.kv_heads, b.intermediate)
    assert b.max_context == 131072
    ca, cb = CostModel.for_names("llama-3-8b", "h100"), CostModel.for_names("llama-3.1-8b", "h100")
    assert ca.batch_time([(512, 0)], [1000] * 8) == pytest.approx(cb.batch_time([(512, 0)], [1000] * 8))


def test_llama31_70b_tp4_is_the_128k_variant_of_llama3_70b():
    a, b = get_model("llama-3-70b"), get_model("llama-3.1-70b")
    assert (a.layers, a.hidden, a.kv_heads, a.intermediate, a.params) == (
        b.layers,
        b.hidden,
        b.kv_heads,
        b.intermediate,
        b.params,
    )
    assert (a.max_context, b.max_context) == (8192, 131072)
    assert get_model("llama-3-70b-128k") is b
    cb = CostModel.for_names("llama-3.1-70b", "h100", 4)
    assert cb.linear_source == "vidur:h100/Meta-Llama-3-70B/tp4"  # measured table, not the roofline
    assert cb.kv_capacity_tokens() > 131072  # one full-context request fits at TP 4
    ca = CostModel.for_names("llama-3-70b", "h100", 4)
    assert ca.batch_time([(8192, 0)], [4000] * 16) == pytest.approx(cb.batch_time([(8192, 0)], [4000] * 16))


# ------------------------------------------------------------------------------------------ heterogeneity
def _spread(kind: str, b: int, mean: int, rng: random.Random) -> list[int]:
    total = b * mean
    if kind == "bimodal":  # 1/8 of the batch r=16x longer
        n_long = max(1, b // 8)
        short = total / (n_long * 16 + b - n_long)
        lens = [short * 16] * n_long + [short] * (b - n_long)
    elif kind == "lognormal":
        lens = [rng.lognormvariate(0, 1.0) for _ in range(b)]
    else:  # one request holds half the KV
        lens = [total / 2] + [total / 2 / (b - 1)] * (b - 1)
    s = total / sum(lens)
    return [max(1, int(x * s)) for x in lens]


def test_heterogeneity_is_one_for_equal_lengths_and_bounded_for_spreads():
    rng = random.Random(0)
    for model, gpu, tp in COMBOS:
        cm = CostModel.for_names(model, gpu, tp)
        seen_penalty = 0.0
        for b in (2, 8, 32, 64, 128, 256):
            for mean in (256, 1024, 4096, 16384):
                assert cm.decode_heterogeneity(b, b * mean, mean) == 1.0
                for kind in ("bimodal", "lognormal", "one_long"):
                    lens = _spread(kind, b, mean, rng)
                    f = cm.decode_heterogeneity(b, sum(lens), max(lens))
                    assert 1.0 <= f <= 2.1
                    seen_penalty = max(seen_penalty, f)
        assert seen_penalty >= 1.1  # the published range starts at 1.1x: spreads must cost something


def test_heterogeneity_factor_grows_with_spread_and_occupancy():
    h = HeterogeneityParams(beta=1.0, lanes=256)
    assert heterogeneity_factor(64, 64 * 1000, 1000, 8, h) == 1.0
    f1 = heterogeneity_factor(64, 64 * 1000, 2000, 8, h)
    f2 = heterogeneity_factor(64, 64 * 1000, 8000, 8, h)
    assert 1.0 < f1 < f2 <= 2.0
    assert heterogeneity_factor(4, 4000, 3000, 8, h) < heterogeneity_factor(64, 64000, 48000, 8, h)


def test_decode_attention_equal_vs_mixed_same_total():
    cm = CostModel.for_names("llama-3-8b", "h100")
    eq = cm.batch_time(decode_kv=[2000] * 64)
    mixed = cm.batch_time(decode_kv=[500] * 48 + [6500] * 16)
    assert sum([500] * 48 + [6500] * 16) == 2000 * 64
    assert mixed > eq


# ------------------------------------------------------------------------------------------ memory
def test_kv_capacity_sane():
    cap = CostModel.for_names("llama-3-8b", "h100").kv_capacity_tokens()
    assert 200_000 < cap < 800_000
    cap70 = CostModel.for_names("llama-2-70b", "h100", 4).kv_capacity_tokens()
    assert 200_000 < cap70 < 1_500_000
    with pytest.raises(ValueError, match="does not fit.*tp"):
        CostModel.for_names("llama-2-70b", "h100", 1).kv_capacity_tokens()


def test_mem_fraction_follows_sglang_heuristic():
    # SGLang 0.5.23: reserved = max(512 + 8192*1.5 + tp/8*1024 + max_bs*2, 10 GiB) MiB on 60-90 GB GPUs
    h100 = get_gpu("h100").memory_bytes
    mb = h100 / 2**20
    assert sglang_mem_fraction_static(h100, 1) == round((mb - (512 + 12288 + 128 + 512)) / mb, 3)
    assert sglang_mem_fraction_static(h100, 4) == round((mb - (512 + 12288 + 512 + 1024)) / mb, 3)


# ------------------------------------------------------------------------------------------ iteration time
@pytest.mark.parametrize("model,gpu,tp", COMBOS[:5])
def test_iteration_time_monotone_in_each_argument(model, gpu, tp):
    cm = CostModel.for_names(model, gpu, tp)
    rng = random.Random(1)
    for _ in range(150):
        pt = rng.choice([0, 0, rng.randint(1, 40000)])
        work = pt * rng.randint(0, 8000) + pt * pt / 2 if pt else 0.0
        b = rng.randint(0, 300)
        kmax = rng.randint(1, 100_000) if b else 0
        ksum = rng.randint(b, b * kmax) if b else 0
        base = cm.iteration_time(pt, work, b, ksum, kmax)
        assert base >= 0.0
        assert cm.iteration_time(pt + 64, work, b, ksum, kmax) >= base
        assert cm.iteration_time(pt, work + 1e5, b, ksum, kmax) >= base
        if b:
            assert cm.iteration_time(pt, work, b, min(ksum + 997, b * kmax), kmax) >= base - 1e-15
            assert cm.iteration_time(pt, work, b, ksum, kmax + 1000) >= base
            assert cm.iteration_time(pt, work, b + 1, ksum + 1, kmax) >= base


def test_batch_time_equals_iteration_time_and_breakdown_sums():
    cm = CostModel.for_names("llama-3-8b", "h100")
    pre, dec = [(512, 0), (256, 1000)], [100, 2000, 300]
    t = cm.batch_time(pre, dec)
    causal = 512 * 512 / 2 + 256 * 256 / 2
    assert t == pytest.approx(cm.iteration_time(768, prefill_attn_work(pre), 3, 2400, 2000, prefill_causal=causal))
    bd = cm.breakdown(pre, dec)
    assert bd["total"] == pytest.approx(t)
    assert cm.iteration_time(0, 0.0, 0, 0, 0) == 0.0
    # the 5-argument call (single chunk assumed) equals batch_time for one chunk
    assert cm.iteration_time(512, prefill_attn_work([(512, 300)]), 0, 0, 0) == pytest.approx(
        cm.batch_time([(512, 300)])
    )


def test_decode_is_memory_bound_and_prefill_compute_bound():
    cm = CostModel.for_names("llama-3-8b", "h100")
    # KV read: 64 x 4000 tokens x 128 KiB = 33.5 GB/s-scale bytes; doubling KV adds the bytes over HBM BW
    d1, d2 = cm.batch_time(decode_kv=[4000] * 64), cm.batch_time(decode_kv=[8000] * 64)
    added = 64 * 4000 * cm.kv_bytes_per_token / cm.gpu.hbm_bandwidth
    assert added < d2 - d1 < 2.5 * added
    # prefill: 8x the tokens costs >= 4x the time (compute-bound linear layers + quadratic attention)
    assert cm.batch_time([(8192, 0)]) > 4 * cm.batch_time([(1024, 0)])


def test_old_attributes_still_present():
    cm = CostModel.for_names("llama-3-8b", "h100")
    for a in ("_linear_flops_per_token", "_weight_bytes", "_attn_flops_per_pair"):
        assert getattr(cm, a) > 0
    assert cm.cal.heterogeneity_beta == cm.attention.heterogeneity.beta
    lc = cm.linear_coefficients()
    assert lc["per_kv_token_s"] > 0 and lc["weight_floor_s"] > 0
    assert cm.host_to_device_time(1000) > cm.device_to_device_time(1000) > 0


def test_bad_tp_is_rejected():
    with pytest.raises(ValueError):
        CostModel.for_names("llama-3-8b", "h100", 3)
    with pytest.raises(ValueError, match="unknown GPU"):
        CostModel.for_names("llama-3-8b", "b200")


# ------------------------------------------------------------------------------------------ CLI
def test_cli_batch_prediction_json(capsys):
    rc = cli_main(
        [
            "costmodel",
            "--model",
            "llama-3-8b",
            "--gpu",
            "h100",
            "--tp",
            "1",
            "--prefill",
            "512",
            "--decode-kv",
            "1000x64",
            "--json",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["batch"]["decode_requests"] == 64 and out["batch"]["prefill_tokens"] == 512
    cm = CostModel.for_names("llama-3-8b", "h100")
    assert out["iteration_ms"] == pytest.approx(cm.batch_time([(512, 0)], [1000] * 64) * 1e3, rel=1e-4)
    assert out["kv_capacity_tokens"] == cm.kv_capacity_tokens()


def test_cli_rejects_bad_batch_spec(capsys):
    assert cli_main(["costmodel", "--decode-kv", "1000xz"]) == 2
    assert "not an integer" in capsys.readouterr().err


def test_cli_validate_json_keys_and_errors(capsys):
    assert cli_main(["costmodel", "--validate", "--json"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0  # one JSON object on one line
    res = json.loads(out)
    bounds = {  # the target (median <= 8%) on every dataset; measured values in docs/costmodel.md
        "vidur_linear_holdout": 0.02,
        "vidur_attention_a100_decode": 0.08,
        "vidur_attention_a100_prefill": 0.07,
        "splitwise_token_time": 0.05,
        "splitwise_prompt_time": 0.08,
    }
    for name, bound in bounds.items():
        v = res[name]
        assert set(v) >= {"median_rel_err", "p90_rel_err", "points"}
        assert v["points"] > 20
        assert v["median_rel_err"] <= bound, (name, v)
