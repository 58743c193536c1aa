"""Attention calibration: parameters, the JSON file that holds them, and the fits that produce them.

One file, ``sglang_cascade/data/calibration/attention.json``, holds every attention parameter per GPU:

* decode (FlashInfer-style paged decode, memory-bound), per layer:
  ``t = fixed_s + per_request_s * B + kv_eff * kv_bytes_per_token_per_layer / (hbm_bandwidth * hbm_efficiency)
  + sched``; ``sched`` is the kernel-scheduling term (FlashAttention-2 split-KV heuristic and CTA waves), with
  ``ctas = B * kv_heads_per_gpu``: ``wave_per_kv_s * kv_max * ceil(ctas / (ctas_per_sm * SMs))``, or, when
  ``ctas < split_ctas_fraction * SMs``, the smaller of that and ``split_fixed_s + split_per_kv_s * (kv_sum / B) * ctas / SMs``
* heterogeneity (length spread inside the decode batch, see :func:`heterogeneity_factor`):
  ``kv_eff = kv_sum * (1 + beta * occ * (1 - kv_sum / (B * kv_max)))``,
  ``occ = min(1, B * kv_heads_per_gpu / lanes)``
* prefill (compute-bound on query-key pairs), per layer, for chunks of ``c`` new tokens over ``k`` cached:
  ``t = fixed_s + per_token_s * sum(c) + flops_per_pair * (sum(c*k) / prefix_efficiency
  + sum(c*c/2) / causal_efficiency) / peak_flops``

``scripts/calibrate_attention_gpu.py`` measures FlashInfer on a GPU and refits the file with
:func:`fit_decode`, :func:`fit_heterogeneity` and :func:`fit_prefill`. This module is pure Python + numpy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

ATTENTION_FILE = "attention.json"


@dataclass(slots=True)
class DecodeParams:
    hbm_efficiency: float = 0.75  # fraction of peak HBM bandwidth the KV read reaches
    fixed_s: float = 1.2e-5  # per layer, per decode kernel call
    per_request_s: float = 0.0  # per layer, per request in the batch
    # FlashAttention-2-style scheduling (docs/costmodel.md "Decode waves and split-KV"); 0 disables each term.
    # One CTA per (request, KV head on this GPU). When CTAs < split_ctas_fraction x SMs the kernel splits the KV
    # sequence over more CTAs and adds a combine step (split_fixed_s, split_per_kv_s); otherwise CTAs run in
    # waves of ctas_per_sm x SMs and every wave streams the longest request's KV (wave_per_kv_s).
    wave_per_kv_s: float = 0.0  # per layer, per KV token of the longest request, per wave
    ctas_per_sm: int = 2  # resident decode CTAs per SM (wave size = ctas_per_sm x SMs)
    split_ctas_fraction: float = 0.0  # split-KV used when CTAs < this x SMs (FA2 heuristic: 0.8); 0: never
    split_fixed_s: float = 0.0  # per layer: the split-KV combine step
    split_per_kv_s: float = 0.0  # per layer, per KV token of the mean request, x CTAs / SMs (KV per split CTA)


@dataclass(slots=True)
class PrefillParams:
    fixed_s: float = 1.5e-5  # per layer, per prefill kernel call
    per_token_s: float = 7e-11  # per layer, per new token
    prefix_efficiency: float = 0.45  # fraction of peak FLOP/s on query x cached-key pairs
    causal_efficiency: float = 0.22  # fraction of peak FLOP/s on the causal new x new triangle


@dataclass(slots=True)
class HeterogeneityParams:
    beta: float = 1.0  # penalty at full occupancy and extreme spread: factor -> 1 + beta (beta <= 1 keeps monotone)
    lanes: int = 528  # parallel attention work slots (CTAs resident at once: SMs x blocks per SM)


# SGLang attention backends whose decode heterogeneity penalty the cost model distinguishes
# (``--attention-backend``): ``heterogeneity`` of an attention.json entry is FlashInfer's, the others are
# in ``heterogeneity_backends`` (docs/costmodel.md, "Attention backends")
DEFAULT_BACKEND = "flashinfer"
BACKENDS = ("flashinfer", "fa3", "triton")


def _check_het(het: HeterogeneityParams, what: str) -> HeterogeneityParams:
    if not 0.0 <= het.beta <= 1.0:
        raise ValueError(f"{what} beta must be in [0, 1] (monotone iteration time), got {het.beta}")
    if het.lanes < 1:
        raise ValueError(f"{what} lanes must be >= 1, got {het.lanes}")
    return het


@dataclass(slots=True)
class AttentionCalibration:
    gpu: str
    decode: DecodeParams = field(default_factory=DecodeParams)
    prefill: PrefillParams = field(default_factory=PrefillParams)
    heterogeneity: HeterogeneityParams = field(default_factory=HeterogeneityParams)  # FlashInfer's
    source: str = ""
    heterogeneity_backends: dict[str, HeterogeneityParams] = field(default_factory=dict)  # fa3, triton

    def to_dict(self) -> dict:
        return asdict(self)

    def heterogeneity_for(self, backend: str = DEFAULT_BACKEND) -> HeterogeneityParams:
        """The decode heterogeneity parameters of an SGLang attention backend on this GPU."""
        key = backend.lower()
        if key == DEFAULT_BACKEND:
            return self.heterogeneity
        if key not in self.heterogeneity_backends:
            have = [DEFAULT_BACKEND, *sorted(self.heterogeneity_backends)]
            raise ValueError(f"no {backend!r} attention backend parameters for GPU {self.gpu!r} (have {have})")
        return self.heterogeneity_backends[key]

    @classmethod
    def from_dict(cls, d: dict) -> AttentionCalibration:
        het = _check_het(HeterogeneityParams(**d.get("heterogeneity", {})), "heterogeneity")
        by_backend = {
            k: _check_het(HeterogeneityParams(**v), f"heterogeneity_backends.{k}")
            for k, v in d.get("heterogeneity_backends", {}).items()
        }
        if set(by_backend) - set(BACKENDS[1:]):
            raise ValueError(f"unknown attention backends {sorted(set(by_backend) - set(BACKENDS[1:]))}")
        dec, pre = DecodeParams(**d.get("decode", {})), PrefillParams(**d.get("prefill", {}))
        for name, v in (
            ("decode.hbm_efficiency", dec.hbm_efficiency),
            ("prefill.prefix_efficiency", pre.prefix_efficiency),
            ("prefill.causal_efficiency", pre.causal_efficiency),
        ):
            if not 0.0 < v <= 1.5:
                raise ValueError(f"{name} must be in (0, 1.5], got {v}")
        return cls(
            gpu=d["gpu"],
            decode=dec,
            prefill=pre,
            heterogeneity=het,
            source=d.get("source", ""),
            heterogeneity_backends=by_backend,
        )


def heterogeneity_factor(
    batch: int, kv_sum: float, kv_max: float, kv_heads_per_gpu: int, het: HeterogeneityParams
) -> float:
    """Slow-down of decode attention versus an equal-length batch with the same total KV (>= 1)."""
    if batch <= 1 or kv_max <= 0:
        return 1.0
    full = batch * kv_max
    if kv_sum >= full:
        return 1.0
    occ = batch * kv_heads_per_gpu / het.lanes
    if occ > 1.0:
        occ = 1.0
    return 1.0 + het.beta * occ * (1.0 - kv_sum / full)


# ----------------------------------------------------------------------------------------------- file I/O
def default_path() -> Path:
    return Path(str(resources.files("sglang_cascade.data") / "calibration" / ATTENTION_FILE))


def load_attention(path: str | Path | None = None) -> dict[str, AttentionCalibration]:
    p = Path(path) if path else default_path()
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"attention calibration file not found: {p}") from e
    gpus = raw.get("gpus")
    if not isinstance(gpus, dict) or not gpus:
        raise ValueError(f"{p}: expected a non-empty 'gpus' object")
    return {name: AttentionCalibration.from_dict({"gpu": name, **d}) for name, d in gpus.items()}


def save_attention(cals: dict[str, AttentionCalibration], path: str | Path, note: str = "") -> None:
    body = {
        "schema": 1,
        "note": note,
        "forms": {
            "decode_per_layer": "fixed_s + per_request_s*B + kv_eff*kv_bytes_per_token_per_layer/(hbm_bw*hbm_efficiency)"
            " + sched",
            "decode_sched": "ctas = B*kv_heads_per_gpu; wave = wave_per_kv_s*kv_max*ceil(ctas/(ctas_per_sm*SMs)); "
            "sched = min(wave, split_fixed_s + split_per_kv_s*(kv_sum/B)*ctas/SMs) if ctas < "
            "split_ctas_fraction*SMs else wave",
            "heterogeneity": "kv_eff = kv_sum*(1 + beta*occ*(1 - kv_sum/(B*kv_max))), occ = min(1, B*kv_heads_per_gpu/lanes)",
            "prefill_per_layer": "fixed_s + per_token_s*sum(c) + flops_per_pair*(sum(c*k)/prefix_efficiency"
            " + sum(c*c/2)/causal_efficiency)/peak_flops",
        },
        "gpus": {k: {kk: vv for kk, vv in v.to_dict().items() if kk != "gpu"} for k, v in cals.items()},
    }
    Path(path).write_text(json.dumps(body, indent=1) + "\n")


# ----------------------------------------------------------------------------------------------- fits
def _wls(X: np.ndarray, y: np.ndarray, weighted: bool = True) -> np.ndarray:
    """Least squares on relative error (weights 1/y unless ``weighted=False``: rows pre-scaled by the caller),
    non-negative by dropping negative coefficients and refitting the rest."""
    w = 1.0 / np.maximum(y, 1e-12) if weighted else np.ones_like(y)
    active = np.ones(X.shape[1], dtype=bool)
    coef = np.zeros(X.shape[1])
    for _ in range(X.shape[1]):
        c, *_ = np.linalg.lstsq(X[:, active] * w[:, None], y * w, rcond=None)
        coef[:] = 0.0
        coef[active] = c
        if (coef >= 0).all():
            break
        active &= coef > 0
    return np.maximum(coef, 0.0)


def rel_errors(pred: Iterable[float], meas: Iterable[float]) -> np.ndarray:
    p, m = np.asarray(list(pred), float), np.asarray(list(meas), float)
    return np.abs(p / m - 1.0)


def fit_decode(
    rows: Sequence[tuple[int, int, float]], kv_bytes_per_token_layer: float, hbm_bandwidth: float
) -> DecodeParams:
    """rows: (batch, kv_sum, seconds per layer) of EQUAL-length decode batches."""
    a = np.asarray(rows, float)
    B, S, T = a[:, 0], a[:, 1], a[:, 2]
    X = np.stack([np.ones_like(B), B, S * kv_bytes_per_token_layer / hbm_bandwidth], 1)
    c = _wls(X, T)
    return DecodeParams(
        hbm_efficiency=float(1.0 / c[2]) if c[2] > 0 else 1.0, fixed_s=float(c[0]), per_request_s=float(c[1])
    )


def decode_wave_features(
    batch: int,
    kv_sum: float,
    kv_max: float,
    kv_heads_per_gpu: int,
    sm_count: int,
    ctas_per_sm: int,
    split_ctas_fraction: float,
) -> tuple[float, float, float]:
    """(wave feature, split fixed indicator, split KV feature) of a decode batch, see :class:`DecodeParams`."""
    ctas = batch * kv_heads_per_gpu
    if ctas < split_ctas_fraction * sm_count:
        return 0.0, 1.0, kv_sum / batch * ctas / sm_count  # KV each split CTA streams (splits ~ SMs / CTAs)
    waves = -(-ctas // (ctas_per_sm * sm_count))
    return kv_max * waves, 0.0, 0.0


def fit_decode_waves(
    rows: Sequence[tuple[int, int, float]],
    kv_bytes_per_token_layer: float,
    hbm_bandwidth: float,
    kv_heads_per_gpu: int,
    sm_count: int,
    split_ctas_fraction: float = 0.8,
    ctas_per_sm_grid: Sequence[int] = (1, 2, 3, 4),
    refits: int = 5,
) -> DecodeParams:
    """rows: (batch, kv_sum, seconds per layer) of EQUAL-length decode batches. Fits the base decode terms plus the
    wave / split-KV terms of the SAME rule the cost model predicts with (split only where it is cheaper than the
    wave form): first with the split regime from the heuristic alone, then ``refits`` times with the regime of
    each row given by the previous fit. ``ctas_per_sm`` is picked from the grid by the fit's own (training)
    relative error."""
    a = np.asarray(rows, float)
    B, S, T = a[:, 0], a[:, 1], a[:, 2]
    one, kvb = np.ones_like(B), S * kv_bytes_per_token_layer / hbm_bandwidth
    best: tuple[float, DecodeParams] | None = None
    for cps in ctas_per_sm_grid:
        wave = np.array(
            [decode_wave_features(int(b), s, s / b, kv_heads_per_gpu, sm_count, cps, 1e-12)[0] for b, s in zip(B, S)]
        )
        splitk = S * kv_heads_per_gpu / sm_count  # (kv_sum / B) * CTAs / SMs
        eligible = B * kv_heads_per_gpu < split_ctas_fraction * sm_count
        use = eligible.copy()
        for _ in range(refits + 1):
            X = np.stack([one, B, kvb, np.where(use, 0.0, wave), use * 1.0, np.where(use, splitk, 0.0)], 1)
            c = _wls(X, T)
            use = eligible & (c[4] + c[5] * splitk < c[3] * wave)
        sched = np.where(eligible, np.minimum(c[3] * wave, c[4] + c[5] * splitk), c[3] * wave)
        err = float(np.sum(((c[0] + c[1] * B + c[2] * kvb + sched) / T - 1.0) ** 2))
        d = DecodeParams(
            hbm_efficiency=float(1.0 / c[2]) if c[2] > 0 else 1.0,
            fixed_s=float(c[0]),
            per_request_s=float(c[1]),
            wave_per_kv_s=float(c[3]),
            ctas_per_sm=int(cps),
            split_ctas_fraction=split_ctas_fraction,
            split_fixed_s=float(c[4]),
            split_per_kv_s=float(c[5]),
        )
        if best is None or err < best[0]:
            best = (err, d)
    assert best is not None
    return best[1]


def fit_heterogeneity(
    rows: Sequence[tuple[int, float, float, float]],
    dec: DecodeParams,
    kv_bytes_per_token_layer: float,
    hbm_bandwidth: float,
    kv_heads_per_gpu: int,
    lanes_grid: Sequence[int] = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048),
) -> HeterogeneityParams:
    """rows: (batch, kv_sum, kv_max, seconds per layer) of MIXED-length batches; decode params fitted before.

    Grid over lanes, closed-form least squares for beta (clipped to [0, 1]) on the excess over the equal-length
    prediction, relative-error weighted."""
    a = np.asarray(rows, float)
    B, S, M, T = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
    unit = kv_bytes_per_token_layer / (hbm_bandwidth * dec.hbm_efficiency)
    base = dec.fixed_s + dec.per_request_s * B + S * unit
    best: tuple[float, float, int] | None = None
    for lanes in lanes_grid:
        occ = np.minimum(1.0, B * kv_heads_per_gpu / lanes)
        g = S * unit * occ * (1.0 - S / (B * M))  # d t / d beta
        w = 1.0 / T
        den = float(np.sum((g * w) ** 2))
        beta = float(np.sum(g * w * (T - base) * w) / den) if den > 0 else 0.0
        beta = min(1.0, max(0.0, beta))
        err = float(np.sum(((base + beta * g) / T - 1.0) ** 2))
        if best is None or err < best[0]:
            best = (err, beta, int(lanes))
    assert best is not None
    return HeterogeneityParams(beta=best[1], lanes=best[2])


def fit_prefill(
    rows: Sequence[tuple[int, int, float]], flops_per_pair_layer: float, peak_flops: float
) -> PrefillParams:
    """rows: (chunk, kv_before, seconds per layer) for single-request prefill chunks."""
    a = np.asarray(rows, float)
    C, K, T = a[:, 0], a[:, 1], a[:, 2]
    X = np.stack(
        [
            np.ones_like(C),
            C,
            C * K * flops_per_pair_layer / peak_flops,
            C * C / 2.0 * flops_per_pair_layer / peak_flops,
        ],
        1,
    )
    c = _wls(X, T)
    return PrefillParams(
        fixed_s=float(c[0]),
        per_token_s=float(c[1]),
        prefix_efficiency=float(1.0 / c[2]) if c[2] > 0 else 1.0,
        causal_efficiency=float(1.0 / c[3]) if c[3] > 0 else 1.0,
    )
