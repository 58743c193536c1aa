"""Fit the cost model's form to measured iteration times of one device and write it as a hardware profile.

A measured row is one engine iteration: ``{"prefill": [new tokens per sequence], "batch": B, "kv_sum": S,
"kv_max": M, "seconds": t}`` (prefill chunks start from an empty cache). The cost model
(``core/costmodel.py``) prices such an iteration as a sum of terms that are linear in its parameters:

    t = iteration_s + per_request_s * out + linear_per_token * n + lm_head(out)
      + [prefill] prefill_call + causal_pair * sum(c^2 / 2)
      + [decode]  decode_call + decode_request * B + decode_kv * S

(``out`` = B + 1 if anything is prefilled, ``n`` = prefill tokens + B). The fit is non-negative least squares
on relative error; ``lm_head`` is the cost model's roofline on the profile's effective peak FLOP/s and
bandwidth, which are themselves set from the fitted causal-pair and KV coefficients (attention efficiency 1),
so the fit is repeated until they agree. :func:`profile_body` turns the coefficients into the profile's
``gpu``, ``engine``, ``attention`` and ``linear`` blocks; :func:`predict` is exactly what
``CostModel.batch_time`` then returns (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .calibration import _wls
from .specs import get_model

FEATURES = (
    "iteration_s",
    "per_request_s",
    "linear_per_token_s",
    "prefill_call_s",
    "causal_pair_s",
    "decode_call_s",
    "decode_request_s",
    "decode_kv_s",
)
LM_MFU, LM_HBM_EFF = 0.55, 0.8  # core.costmodel.Calibration defaults (the LM-head roofline)
LINEAR_TOKENS = (1, 16384)  # the profile's linear-layer table (linear in tokens)


def row_features(row: dict) -> list[float]:
    pre = [int(c) for c in row.get("prefill", [])]
    B = int(row.get("batch", 0))
    p = sum(pre)
    return [
        1.0,
        B + (1.0 if p else 0.0),
        p + B,
        1.0 if p else 0.0,
        sum(c * c / 2.0 for c in pre),
        1.0 if B else 0.0,
        float(B),
        float(row.get("kv_sum", 0.0)) if B else 0.0,
    ]


def effective_rates(coef: dict, model: str = "tiny-llama") -> tuple[float, float]:
    """(peak FLOP/s, memory bytes/s) at which the cost model's attention terms equal the fitted coefficients
    with efficiency 1; a zero coefficient gets a rate that makes its term negligible."""
    m = get_model(model)
    fpp = 4.0 * m.heads * m.head_dim * m.layers  # FLOPs per query-key pair, all layers
    peak = fpp / coef["causal_pair_s"] if coef["causal_pair_s"] > 0 else 1e18
    bw = m.kv_bytes_per_token() / coef["decode_kv_s"] if coef["decode_kv_s"] > 0 else 1e18
    return peak, bw


def lm_head_s(out: float, peak: float, bw: float, model: str = "tiny-llama") -> float:
    m = get_model(model)
    lm_params = m.vocab * m.hidden
    if out <= 0:
        return 0.0
    return max(out * 2.0 * lm_params / (peak * LM_MFU), lm_params * m.dtype_bytes / (bw * LM_HBM_EFF))


def predict(coef: dict, row: dict, model: str = "tiny-llama") -> float:
    f = row_features(row)
    peak, bw = effective_rates(coef, model)
    return float(sum(coef[k] * x for k, x in zip(FEATURES, f))) + lm_head_s(f[1], peak, bw, model)


def fit_rows(rows: Sequence[dict], model: str = "tiny-llama", rounds: int = 8) -> dict:
    """Non-negative least squares on relative error of every row (see the module docstring)."""
    X = np.array([row_features(r) for r in rows], float)
    y = np.array([float(r["seconds"]) for r in rows], float)
    w = 1.0 / y
    lm = np.zeros_like(y)
    coef: dict = {}
    for _ in range(rounds):
        c = _wls(X * w[:, None], (y - lm) * w, weighted=False)
        coef = {k: float(v) for k, v in zip(FEATURES, c)}
        peak, bw = effective_rates(coef, model)
        new = np.array([lm_head_s(f[1], peak, bw, model) for f in X])
        if np.allclose(new, lm, rtol=1e-6, atol=1e-12):
            break
        lm = new
    return coef


def row_errors(coef: dict, rows: Sequence[dict], model: str = "tiny-llama") -> np.ndarray:
    return np.array([abs(predict(coef, r, model) / float(r["seconds"]) - 1.0) for r in rows])


def profile_body(
    coef: dict,
    rows: Sequence[dict],
    name: str = "cpu-engine",
    model: str = "tiny-llama",
    kv_capacity_tokens: int = 16384,
    chunked_prefill_size: int = 4096,
    note: str = "",
    co_run: dict | None = None,
    prefix_fit: dict | None = None,
) -> dict:
    """The hardware-profile JSON (core/hardware.py) of fitted coefficients; ``co_run``: the measured
    slow-down with another instance busy on the same host (:func:`co_run_ratios`); ``prefix_fit``: the measured
    cost of attending to a cached prefix (:func:`prefix_efficiency_fit`), kept across re-fits."""
    m = get_model(model)
    L = m.layers
    peak, bw = effective_rates(coef, model)
    layer_ms = [coef["linear_per_token_s"] * n / L * 1e3 for n in LINEAR_TOKENS]
    return {
        "name": name,
        "note": note,
        "source": "SGLang 0.5.23 CPU engine, tiny Llama (float32), --threads 1, measured by "
        "scripts/calibrate_cpu_engine.py on the client (TTFT of single prefills, time per token of "
        "lock-step decode batches); fit by core/hardware_fit.py",
        "gpu": {
            "memory_bytes": 24e9,
            "hbm_bandwidth": bw,
            "peak_flops": peak,
            "nvlink_bandwidth": 1e9,
            "pcie_bandwidth": 1e9,
            "sm_count": 1,
        },
        "kv_capacity_tokens": kv_capacity_tokens,
        "chunked_prefill_size": chunked_prefill_size,
        # SGLang's overlap scheduler runs on the CPU engine (disable_overlap_schedule=False) but the forward
        # is synchronous: a batch's tokens reach the client one iteration late (sim SimConfig.result_lag)
        "result_lag": True,
        # instances of this device share one host (two pinned servers on a 2-core VM share its caches, memory
        # bandwidth and the client's core): an iteration runs this much slower while another one is busy
        # (sim SimConfig.co_run_slowdown); measured by calibrate_cpu_engine.py --co-runner, 0 if not measured
        "co_run_slowdown": co_run_slowdowns(co_run),
        **({"co_run": co_run} if co_run else {}),
        **({"prefix_fit": prefix_fit} if prefix_fit else {}),
        "engine": {
            "iteration_s": coef["iteration_s"],
            "per_layer_s": 0.0,
            "per_request_s": coef["per_request_s"],
            "per_tp_s": 0.0,
            "linear_scale": 1.0,
            "source": "fitted (scripts/calibrate_cpu_engine.py)",
        },
        "attention": {
            "decode": {
                "hbm_efficiency": 1.0,
                "fixed_s": coef["decode_call_s"] / L,
                "per_request_s": coef["decode_request_s"] / L,
                "split_ctas_fraction": 0.0,
            },
            "prefill": {
                "fixed_s": coef["prefill_call_s"] / L,
                "per_token_s": 0.0,
                "prefix_efficiency": float(prefix_fit["prefix_efficiency"]) if prefix_fit else 1.0,
                "causal_efficiency": 1.0,
            },
            "heterogeneity": {"beta": 0.0, "lanes": 1},
            "source": "fitted (scripts/calibrate_cpu_engine.py); torch_native attention: no length heterogeneity",
        },
        "linear": {f"{m.vidur_name}/tp1": {"tokens": list(LINEAR_TOKENS), "layer_ms": layer_ms, "emb_ms": [0.0, 0.0]}},
        "fit": coef,
        "rows": list(rows),
    }


def holdout_errors(rows: Sequence[dict], model: str = "tiny-llama") -> dict:
    """Fit on the even rows of each kind, report the odd ones (the split ``costmodel --validate`` uses)."""
    train, test = [], []
    for kind in ("prefill", "decode"):
        mine = [r for r in rows if r.get("kind") == kind]
        train += mine[0::2]
        test += mine[1::2]
    coef = fit_rows(train, model)
    return {"errors": row_errors(coef, test, model), "train": len(train), "test": len(test)}


def co_run_slowdowns(co_run: dict | None) -> dict:
    """The profile's ``co_run_slowdown`` (SimConfig.co_run_slowdown) from :func:`co_run_ratios`' summary: decode and
    prefill next to a mixed co-runner, and ``decode_next_to_prefill`` when a prefilling co-runner was measured."""
    out = {k: float((co_run or {}).get(f"{k}_slowdown", 0.0)) for k in ("decode", "prefill")}
    if co_run and "next_to_prefill" in co_run:
        out["decode_next_to_prefill"] = float(co_run["next_to_prefill"]["decode_slowdown"])
    return out


def co_run_ratios(lone: Sequence[dict], co: Sequence[dict]) -> dict:
    """Per calibration row measured alone and again with a co-running instance busy (same grid, same order):
    the time ratios. ``<kind>_slowdown`` = the kind's median ratio - 1 (>= 0), min / median / max per kind."""
    if len(lone) != len(co) or not lone:
        raise ValueError(f"co-run rows must pair the lone rows one to one ({len(lone)} vs {len(co)})")
    ratios: dict[str, list[float]] = {}
    for a, b in zip(lone, co):
        if a["kind"] != b["kind"] or a["batch"] != b["batch"] or sum(a["prefill"]) != sum(b["prefill"]):
            raise ValueError(f"co-run row {b} does not match lone row {a}")
        ratios.setdefault(a["kind"], []).append(float(b["seconds"]) / float(a["seconds"]))
    out: dict = {"rows": len(lone)}
    for kind, v in sorted(ratios.items()):
        out[f"{kind}_slowdown"] = max(0.0, float(np.median(v)) - 1.0)
        out[f"{kind}_median_ratio"] = float(np.median(v))
        out[f"{kind}_min_ratio"], out[f"{kind}_max_ratio"] = float(min(v)), float(max(v))
    return out


def prefix_efficiency_fit(points: Sequence[dict], current: float) -> dict:
    """The prefill attention's ``prefix_efficiency`` that makes the model's extra time for new tokens after a
    cached prefix match the measured one. ``points``: lone prefills of the same ``new`` tokens after ``cached``
    ones, each with ``real_rel`` / ``model_rel`` (time over the same prefill without a prefix, measured and
    modelled with ``current``). The extra ``rel - 1`` is the prefix term alone, linear in 1 / efficiency, so the
    least-squares scale k of real over model gives ``current / k``."""
    pts = [p for p in points if p["cached"] > 0]
    num = sum((p["real_rel"] - 1.0) * (p["model_rel"] - 1.0) for p in pts)
    den = sum((p["model_rel"] - 1.0) ** 2 for p in pts)
    if not pts or den <= 0 or num <= 0:
        raise ValueError("need lone prefills after a cached prefix that took longer than without one")
    k = num / den
    return {"prefix_efficiency": current / k, "scale": k, "points": [dict(p) for p in points]}
