"""Measured operator tables shipped as package data (written by scripts/extract_vidur_profiles.py).

* linear layers: Vidur per-layer operator medians vs token count, per (gpu, model shape, tp)
* all-reduce: alpha-beta fit of Vidur NCCL all_reduce medians per (gpu, tp)
* engine overheads: per-iteration costs outside the GPU kernels, per engine profile

Everything here is loaded once and cached; :class:`LinearTable` turns a profile into an O(1) per-token lookup.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from .hardware import hardware_engine, hardware_linear


def calibration_dir() -> Path:
    return Path(str(resources.files("sglang_cascade.data") / "calibration"))


@cache
def _load(name: str) -> dict:
    p = calibration_dir() / name
    try:
        return json.loads(p.read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"cost-model data file missing: {p} (run scripts/extract_vidur_profiles.py)") from e


def isotonic(y: Sequence[float]) -> list[float]:
    """Non-decreasing least-squares fit (pool adjacent violators); removes measurement-noise dips."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in y:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    out: list[float] = []
    for s, c in blocks:
        out.extend([s / c] * int(c))
    return out


@dataclass(frozen=True, slots=True)
class LinearProfile:
    key: str
    tokens: tuple[int, ...]
    layer_s: tuple[float, ...]  # per-layer seconds (monotone)
    emb_s: tuple[float, ...]


def profile_key(gpu: str, vidur_name: str, tp: int) -> str:
    return f"{gpu}/{vidur_name}/tp{tp}"


def raw_profile(gpu: str, vidur_name: str, tp: int) -> dict | None:
    raw = _load("linear_ops.json")["profiles"].get(profile_key(gpu, vidur_name, tp))
    return raw if raw is not None else hardware_linear(gpu, vidur_name, tp)


def available_profiles() -> list[str]:
    return sorted(_load("linear_ops.json")["profiles"])


def make_profile(key: str, tokens: Sequence[int], layer_ms: Sequence[float], emb_ms: Sequence[float]) -> LinearProfile:
    if len(tokens) < 2 or any(b <= a for a, b in zip(tokens, tokens[1:])):
        raise ValueError(f"profile {key}: need >= 2 strictly increasing token counts")
    return LinearProfile(
        key,
        tuple(int(t) for t in tokens),
        tuple(v * 1e-3 for v in isotonic(layer_ms)),
        tuple(v * 1e-3 for v in isotonic(emb_ms)),
    )


@cache
def linear_profile(gpu: str, vidur_name: str, tp: int) -> LinearProfile | None:
    raw = raw_profile(gpu, vidur_name, tp)
    if raw is None:
        return None
    return make_profile(profile_key(gpu, vidur_name, tp), raw["tokens"], raw["layer_ms"], raw["emb_ms"])


def tail_slope(xs: Sequence[int], ys: Sequence[float]) -> float:
    """Slope for extrapolation past the last point: chord over the upper half of the token range (robust to
    noise in the last few points; compute-bound there, so close to linear)."""
    half = xs[-1] / 2.0
    i = max(0, min(len(xs) - 2, bisect_right(xs, half) - 1))
    return max(0.0, (ys[-1] - ys[i]) / (xs[-1] - xs[i]))


def interp(xs: Sequence[int], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear through the points; beyond the last point, linear with :func:`tail_slope`; below the
    first, the first segment's line (clamped at >= 0)."""
    n = len(xs)
    if x > xs[-1]:
        return ys[-1] + (x - xs[-1]) * tail_slope(xs, ys)
    i = bisect_right(xs, x)
    if i <= 0:
        i = 1
    elif i >= n:
        i = n - 1
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    v = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return v if v > 0.0 else 0.0


@cache
def allreduce_fit(gpu: str, tp: int) -> tuple[float, float] | None:
    """(alpha_s, bytes_per_s) of one all-reduce across ``tp`` GPUs of one node, or None if not profiled."""
    fit = _load("allreduce.json")["fits"].get(f"{gpu}/tp{tp}")
    return None if fit is None else (float(fit["alpha_s"]), float(fit["bytes_per_s"]))


@dataclass(frozen=True, slots=True)
class EngineParams:
    """Per-iteration costs outside the profiled kernels (scheduler, sampling, launches, sync)."""

    name: str
    iteration_s: float  # fixed per iteration
    per_layer_s: float  # per layer per iteration (launch / sync gaps not hidden by CUDA graphs)
    per_request_s: float  # per request in the batch (batch building, sampling)
    per_tp_s: float  # extra per iteration per additional TP rank (tp - 1)
    linear_scale: float = 1.0  # multiplies the profiled linear-layer kernel times (another engine's GEMMs)
    source: str = ""
    # all-reduce excess (docs/costmodel.md): seconds per iteration token beyond comm_threshold_tokens, times the
    # ring all-reduce factor 2(tp-1)/tp (0 at tp=1) -- this engine's all-reduce is slower than the NCCL profile
    comm_per_token_s: float = 0.0
    comm_threshold_tokens: int = 0


@cache
def engine_params(name: str) -> EngineParams:
    engines = _load("engine.json")["engines"]
    e = engines.get(name) or hardware_engine(name)
    if e is None:
        raise ValueError(f"unknown engine profile {name!r}; known: {', '.join(sorted(engines))}")
    return EngineParams(
        name,
        float(e["iteration_s"]),
        float(e["per_layer_s"]),
        float(e["per_request_s"]),
        float(e.get("per_tp_s", 0.0)),
        float(e.get("linear_scale", 1.0)),
        e.get("source", ""),
        float(e.get("comm_per_token_s", 0.0)),
        int(e.get("comm_threshold_tokens", 0)),
    )
