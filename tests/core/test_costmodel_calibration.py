"""GPU calibration script (CPU parts) and the attention calibration file."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from sglang_cascade.core.calibration import (
    AttentionCalibration,
    DecodeParams,
    HeterogeneityParams,
    PrefillParams,
    load_attention,
    save_attention,
)
from sglang_cascade.core.costmodel import Calibration, CostModel

ROOT = Path(__file__).resolve().parents[2]


def _script():
    name = "calibrate_attention_gpu"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts/calibrate_attention_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)  # import-safe: no torch/flashinfer at import time
    return mod


def test_sweep_plan_pairs_every_mixed_batch_with_equal_twin():
    s = _script()
    plan = s.sweep_plan(262_144)
    info = s.check_plan(plan)
    assert info["decode_configs"] > 100 and info["prefill_configs"] > 10
    for p in plan:
        if p["kind"] == "decode":
            assert min(p["lens"]) >= 1 and sum(p["lens"]) <= 262_144


def test_spread_lengths_keep_total():
    s = _script()
    import random

    rng = random.Random(0)
    for sp in s.SPREADS:
        lens = s.spread_lengths(sp, 64, 1024, rng)
        assert len(lens) == 64 and sum(lens) == 64 * 1024
        if sp != "equal":
            assert max(lens) > 1024


def test_fit_recovers_known_parameters_from_synthetic_csv(tmp_path):
    s = _script()
    shape = s.Shape.of("llama-3-8b", 1)
    truth = AttentionCalibration(
        "h100", DecodeParams(0.68, 9e-6, 3e-8), PrefillParams(1.1e-5, 4e-8, 0.55, 0.35), HeterogeneityParams(0.7, 256)
    )
    rows = s.synthetic_rows(s.sweep_plan(262_144), truth, shape, "h100", noise=0.01, seed=3)
    csv_path = tmp_path / "att.csv"
    s.write_csv(rows, csv_path)
    cal, rep = s.fit_rows(s.read_csv(csv_path), "h100", shape)
    assert cal.decode.hbm_efficiency == pytest.approx(0.68, rel=0.03)
    assert cal.decode.fixed_s == pytest.approx(9e-6, rel=0.15)
    assert cal.heterogeneity.beta == pytest.approx(0.7, abs=0.08)
    assert cal.heterogeneity.lanes == 256
    assert cal.prefill.prefix_efficiency == pytest.approx(0.55, rel=0.08)
    assert cal.prefill.causal_efficiency == pytest.approx(0.35, rel=0.08)
    assert rep["decode_equal_median_rel_err"] < 0.02
    # written file loads and drives a cost model
    out = tmp_path / "attention.json"
    s.write_calibration(cal, out)
    cm = CostModel.for_names("llama-3-8b", "h100", 1, Calibration(attention_file=str(out)))
    assert cm.attention.heterogeneity.beta == cal.heterogeneity.beta


def test_dry_run_main_returns_zero(capsys):
    s = _script()
    assert s.main(["--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plan"]["equal_length_groups"] > 10


def test_shipped_file_loads_and_bad_values_are_rejected(tmp_path):
    cals = load_attention()
    assert set(cals) >= {"h100", "a100"}
    assert "PRIOR" in cals["h100"].source  # H100 attention has not been measured yet
    bad = AttentionCalibration("h100", heterogeneity=HeterogeneityParams(beta=1.5, lanes=128))
    p = tmp_path / "bad.json"
    save_attention({"h100": bad}, p)
    with pytest.raises(ValueError, match="beta"):
        load_attention(p)
    with pytest.raises(FileNotFoundError):
        load_attention(tmp_path / "missing.json")
