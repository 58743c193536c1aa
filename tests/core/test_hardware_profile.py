"""Measured hardware profiles (core/hardware.py, core/hardware_fit.py): the CPU engine's profile."""

from __future__ import annotations

import numpy as np
import pytest

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.hardware import hardware_profile
from sglang_cascade.core.hardware_fit import fit_rows, holdout_errors, predict, row_errors
from sglang_cascade.core.validation import hardware_errors


def _synthetic_rows(coef: dict) -> list[dict]:
    rows = []
    for n in (8, 64, 256, 1024, 2048, 4000):
        rows.append({"kind": "prefill", "prefill": [n], "batch": 0, "kv_sum": 0, "kv_max": 0})
    for ctx in (16, 512, 2048):
        for b in (1, 4, 16, 48):
            rows.append({"kind": "decode", "prefill": [], "batch": b, "kv_sum": b * ctx, "kv_max": ctx})
    for r in rows:
        r["seconds"] = predict(coef, r)
    return rows


def test_profile_loads_as_a_device():
    cm = CostModel.for_names("tiny-llama", "cpu-engine")
    assert cm.kv_capacity_tokens() == hardware_profile("cpu-engine")["kv_capacity_tokens"] == 16384
    assert cm.engine.name == "sglang@cpu-engine"
    # prefill time grows with length, decode with batch and KV
    assert cm.batch_time([(64, 0)]) < cm.batch_time([(1024, 0)]) < cm.batch_time([(4000, 0)])
    assert cm.batch_time((), [100] * 4) < cm.batch_time((), [100] * 32) < cm.batch_time((), [2000] * 32)


def test_cost_model_reproduces_the_fitted_form():
    """What the simulator prices (CostModel.batch_time) is the fitted formula on every measured row."""
    prof = hardware_profile("cpu-engine")
    cm = CostModel.for_names("tiny-llama", "cpu-engine")
    for r in prof["rows"]:
        pre = [(int(c), 0) for c in r.get("prefill", [])]
        dec = [int(r["kv_sum"]) // max(1, int(r["batch"]))] * int(r["batch"])
        if r["batch"] and r["kv_sum"] % r["batch"]:
            continue  # per-request KV is not an integer split; the sum is what matters, checked below
        assert cm.batch_time(pre, dec) == pytest.approx(predict(prof["fit"], r), rel=1e-6)


def test_fit_recovers_known_coefficients():
    true = {
        "iteration_s": 0.01,
        "per_request_s": 5e-4,
        "linear_per_token_s": 3e-4,
        "prefill_call_s": 0.008,
        "causal_pair_s": 2e-7,
        "decode_call_s": 0.0015,
        "decode_request_s": 1e-5,
        "decode_kv_s": 4e-6,
    }
    rows = _synthetic_rows(true)
    coef = fit_rows(rows)
    assert float(np.max(row_errors(coef, rows))) < 0.01
    for k in ("iteration_s", "linear_per_token_s", "causal_pair_s", "decode_kv_s"):
        assert coef[k] == pytest.approx(true[k], rel=0.1), k


def test_validate_reports_the_cpu_engine_fit_error():
    errs = hardware_errors()
    assert {"cpu-engine_holdout", "cpu-engine_in_sample"} <= set(errs)
    # the shipped profile: median in-sample error under 10%, held-out under 15%
    assert errs["cpu-engine_in_sample"]["median_rel_err"] < 0.10
    assert errs["cpu-engine_holdout"]["median_rel_err"] < 0.15
    h = holdout_errors(hardware_profile("cpu-engine")["rows"])
    assert h["train"] + h["test"] == len(hardware_profile("cpu-engine")["rows"])


def test_machine_profile_dir_replaces_the_shipped_profile(tmp_path, monkeypatch):
    """$SGLANG_CASCADE_HARDWARE_DIR: this machine's calibration (scripts/eval_fidelity.py --calibrate) replaces
    the shipped profile of the same name, and adds new names; unset, the shipped one is back."""
    import json

    from sglang_cascade.core.hardware import HARDWARE_DIR_ENV, hardware_profiles

    shipped = hardware_profile("cpu-engine")
    mine = dict(shipped, co_run_slowdown={"decode": 0.25, "prefill": 0.0}, note="this machine")
    (tmp_path / "cpu-engine.json").write_text(json.dumps(mine))
    (tmp_path / "other.json").write_text(json.dumps(dict(shipped, name="cpu-engine-b")))
    monkeypatch.setenv(HARDWARE_DIR_ENV, str(tmp_path))
    hardware_profiles.cache_clear()
    try:
        assert hardware_profile("cpu-engine")["note"] == "this machine"
        assert hardware_profile("cpu-engine-b")["engine"] == shipped["engine"]
        assert hardware_profile("h100") == hardware_profiles().get("h100")  # other shipped names untouched
        from sglang_cascade.sim import SimConfig
        from sglang_cascade.sim.cluster import co_run_slowdown

        assert co_run_slowdown(SimConfig(gpu="cpu-engine", model="tiny-llama")) == (
            0.25,
            0.0,
            0.25,
        )  # decode next to a prefill: decode's
    finally:
        monkeypatch.delenv(HARDWARE_DIR_ENV)
        hardware_profiles.cache_clear()
    assert hardware_profile("cpu-engine")["note"] == shipped["note"]
    assert hardware_profile("cpu-engine-b") is None


def test_prefix_efficiency_fit_scales_the_modelled_prefix_cost_to_the_measured_one():
    from sglang_cascade.core.hardware_fit import prefix_efficiency_fit, profile_body

    pts = [{"new": 512, "cached": 0, "real_rel": 1.0, "model_rel": 1.0}] + [
        {"new": 512, "cached": c, "real_rel": 1.0 + 3.0 * m, "model_rel": 1.0 + m}
        for c, m in ((1024, 0.4), (2048, 0.8), (2560, 1.0))
    ]  # the prefix's extra time measured 3x what the model says
    fit = prefix_efficiency_fit(pts, current=0.9)
    assert fit["scale"] == pytest.approx(3.0) and fit["prefix_efficiency"] == pytest.approx(0.3)
    with pytest.raises(ValueError):
        prefix_efficiency_fit(pts[:1], 1.0)  # no point after a cached prefix
    prof = hardware_profile("cpu-engine")
    body = profile_body(prof["fit"], prof["rows"], prefix_fit=fit)
    assert body["attention"]["prefill"]["prefix_efficiency"] == pytest.approx(0.3) and body["prefix_fit"] == fit
    assert "prefix_fit" not in profile_body(prof["fit"], prof["rows"])


def test_the_prefix_efficiency_prices_attention_to_a_cached_prefix(tmp_path, monkeypatch):
    """A profile's prefix_efficiency divides the cost of each (new token, cached token) pair; causal pairs and
    prefills without a prefix are untouched."""
    import json

    from sglang_cascade.core import costmodel
    from sglang_cascade.core.hardware import HARDWARE_DIR_ENV, hardware_profiles

    shipped = hardware_profile("cpu-engine")
    base = CostModel.for_names("tiny-llama", "cpu-engine")
    eff = shipped["attention"]["prefill"]["prefix_efficiency"]
    mine = json.loads(json.dumps(shipped))
    mine["attention"]["prefill"]["prefix_efficiency"] = eff / 2.0
    (tmp_path / "cpu-engine.json").write_text(json.dumps(mine))
    monkeypatch.setenv(HARDWARE_DIR_ENV, str(tmp_path))
    hardware_profiles.cache_clear()
    costmodel._attention_cals.cache_clear()
    try:
        half = CostModel.for_names("tiny-llama", "cpu-engine")
        extra = base.batch_time([(512, 2048)]) - base.batch_time([(512, 0)])
        assert half.batch_time([(512, 0)]) == pytest.approx(base.batch_time([(512, 0)]))
        assert half.batch_time([(512, 2048)]) - half.batch_time([(512, 0)]) == pytest.approx(2.0 * extra)
    finally:
        monkeypatch.delenv(HARDWARE_DIR_ENV)
        hardware_profiles.cache_clear()
        costmodel._attention_cals.cache_clear()
