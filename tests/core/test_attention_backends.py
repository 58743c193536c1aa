"""The SGLang attention backend is a cost-model parameter: each backend has its own decode heterogeneity
penalty (attention.json), FlashInfer's is the default and unchanged, a calibration can replace each."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from sglang_cascade.core.calibration import HeterogeneityParams, default_path, load_attention
from sglang_cascade.core.costmodel import Calibration, CostModel
from sglang_cascade.sim.config import SimConfig

ROOT = Path(__file__).resolve().parents[2]
SPREAD = [500] * 56 + [8000] * 8  # 1/8 of the batch 16x longer
EQUAL = [sum(SPREAD) // len(SPREAD)] * len(SPREAD)


def _cm(backend: str, gpu: str = "h100") -> CostModel:
    return CostModel.for_names("llama-3-8b", gpu, 1, Calibration(attention_backend=backend))


def test_default_backend_is_flashinfer_with_its_shipped_parameters():
    d, f = CostModel.for_names("llama-3-8b", "h100"), _cm("flashinfer")
    assert d.batch_time(decode_kv=SPREAD) == f.batch_time(decode_kv=SPREAD)
    assert d.linear_coefficients()["heterogeneity_beta"] == load_attention()["h100"].heterogeneity.beta


@pytest.mark.parametrize("backend", ["fa3", "triton"])
def test_backends_differ_only_on_length_spread(backend):
    fi, other = _cm("flashinfer"), _cm(backend)
    assert other.batch_time(decode_kv=EQUAL) == pytest.approx(fi.batch_time(decode_kv=EQUAL), rel=1e-12)
    pen_fi = fi.decode_heterogeneity(len(SPREAD), sum(SPREAD), max(SPREAD))
    pen = other.decode_heterogeneity(len(SPREAD), sum(SPREAD), max(SPREAD))
    assert 1.0 < pen < pen_fi  # the documented priors: milder than FlashInfer's at this batch
    assert other.batch_time(decode_kv=SPREAD) < fi.batch_time(decode_kv=SPREAD)


def test_documented_priors_and_unknown_backends():
    cals = load_attention()
    h = cals["h100"]
    assert h.heterogeneity_for("fa3") == HeterogeneityParams(beta=0.8, lanes=2 * 132)
    assert h.heterogeneity_for("triton") == HeterogeneityParams(beta=0.5, lanes=8 * 132)
    assert cals["a100"].heterogeneity_for("triton") == HeterogeneityParams(beta=0.5, lanes=8 * 108)
    with pytest.raises(ValueError, match="fa3"):
        _cm("fa3", "a100")  # FlashAttention-3 is Hopper-only: no A100 entry
    with pytest.raises(ValueError, match="no 'xformers'"):
        _cm("xformers")


def test_simulator_config_carries_the_backend():
    from sglang_cascade.core.traces import TraceRequest
    from sglang_cascade.sim.cluster import build

    trace = [TraceRequest("0", 0.0, 100, 10)]
    sim = build(SimConfig(attention_backend="triton"), trace)
    assert sim.cm.attention.heterogeneity_for("triton") is sim.cm._het


def _script():
    name = "calibrate_attention_gpu"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts/calibrate_attention_gpu.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def test_calibration_replaces_one_backend_and_keeps_the_others(tmp_path):
    s = _script()
    path = tmp_path / "attention.json"
    path.write_text(default_path().read_text())
    cal = load_attention(path)["h100"]
    cal.heterogeneity = HeterogeneityParams(0.3, 192)  # as if fitted on rows of the named backend
    s.write_calibration(cal, path, "fa3")
    got = load_attention(path)["h100"]
    assert got.heterogeneity_for("fa3") == HeterogeneityParams(0.3, 192)
    assert got.heterogeneity == load_attention()["h100"].heterogeneity  # FlashInfer's untouched
    assert got.heterogeneity_for("triton") == load_attention()["h100"].heterogeneity_for("triton")
    fresh = load_attention(path)["h100"]
    fresh.heterogeneity_backends = {}
    fresh.heterogeneity = HeterogeneityParams(0.9, 256)
    s.write_calibration(fresh, path)  # a FlashInfer run keeps the other backends' entries
    got = load_attention(path)["h100"]
    assert got.heterogeneity == HeterogeneityParams(0.9, 256) and got.heterogeneity_for("fa3").lanes == 192
    bad = json.loads(path.read_text())
    bad["gpus"]["h100"]["heterogeneity_backends"]["fa3"]["beta"] = 1.5
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="beta"):
        load_attention(path)
