"""Linear(ised) iteration time for the constraint model.

CP-SAT needs linear integer arithmetic, so the cost model's iteration time is replaced by

    t(iteration) = per_iteration_s + per_token_s * T + per_token_above_knee_s * max(0, T - knee)
                   + per_kv_read_s * R + per_request_s * W                (0 for an empty iteration)

with ``T`` the tokens computed in the iteration (prefill chunk tokens + one per decoding request) and
``R`` the KV read: the sum, over the requests that compute at least one token, of their KV length after
the iteration (context length for a decode; ``kv_before + chunk`` for a prefill chunk), and ``W`` the
number of requests that compute in the iteration (per-request engine and sampling cost). The
``max(0, T - knee)`` term is a convex hinge for the roofline knee (memory-bound below ``knee`` tokens,
compute-bound above); it is exact inside a minimisation because the solver only needs
``hinge >= T - knee, >= 0``.

How it is fitted: :func:`fit_linear_time` samples batches from the instance's own range (request
lengths, chunk sizes up to the token budget, batch sizes up to the request count, KV within capacity),
evaluates ``CostModel.batch_time`` on each, and fits the five coefficients ``>= 0`` by non-negative least
squares on relative error, trying knees on a grid and keeping the best. :attr:`LinearTimeModel.max_rel_error`
and ``mean_rel_error`` are the measured errors on held-out samples. Times are turned into integers in
``unit_s`` units (chosen so the smallest non-zero coefficient is at least ``MIN_COEF`` units) for CP-SAT.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..core.costmodel import CostModel

MIN_COEF = 200  # smallest non-zero integer coefficient (rounding error <= 0.25%)


class IntCoefs(NamedTuple):
    """The model's coefficients in integer ``unit_s`` units, as the CP-SAT model uses them."""

    per_iteration: int
    per_token: int
    per_token_above_knee: int
    per_kv_read: int
    per_request: int


@dataclass(slots=True)
class LinearTimeModel:
    per_iteration_s: float  # seconds per non-empty iteration
    per_token_s: float  # seconds per token
    per_token_above_knee_s: float  # extra seconds per token above ``knee``
    knee: int  # tokens
    per_kv_read_s: float  # seconds per KV token read
    per_request_s: float = 0.0  # seconds per request computing in the iteration
    unit_s: float = 1e-9  # seconds per integer time unit
    max_rel_error: float = 0.0
    mean_rel_error: float = 0.0
    samples: int = 0
    fit_range: dict = field(default_factory=dict)

    # --- evaluation --------------------------------------------------------------------------------------
    def coefs(self) -> tuple[float, float, float, float, float]:
        """The five coefficients (seconds), in :class:`IntCoefs` order."""
        return (
            self.per_iteration_s,
            self.per_token_s,
            self.per_token_above_knee_s,
            self.per_kv_read_s,
            self.per_request_s,
        )

    def time(self, tokens: int, kv_read: int, reqs: int = 1) -> float:
        """Seconds for an iteration computing ``tokens`` tokens of ``reqs`` requests with KV read ``kv_read``."""
        if tokens <= 0:
            return 0.0
        return (
            self.per_iteration_s
            + self.per_token_s * tokens
            + self.per_token_above_knee_s * max(0, tokens - self.knee)
            + self.per_kv_read_s * kv_read
            + self.per_request_s * reqs
        )

    def time_int(self, tokens: int, kv_read: int, reqs: int = 1) -> int:
        """The same in integer units, exactly as the CP-SAT model computes it."""
        if tokens <= 0:
            return 0
        k = self.int_coefs()
        return (
            k.per_iteration
            + k.per_token * tokens
            + k.per_token_above_knee * max(0, tokens - self.knee)
            + k.per_kv_read * kv_read
            + k.per_request * reqs
        )

    def batch_time(self, prefill: Sequence[tuple[int, int]] = (), decode_kv: Sequence[int] = ()) -> float:
        """Same arguments as :meth:`CostModel.batch_time`: ``prefill=[(chunk, kv_before)]``, ``decode_kv``
        the decoding requests' KV lengths before the iteration (each reads kv and writes one)."""
        tokens = sum(n for n, _ in prefill) + len(decode_kv)
        kv_read = sum(n + k for n, k in prefill) + sum(k + 1 for k in decode_kv)
        return self.time(tokens, kv_read, len(prefill) + len(decode_kv))

    def int_coefs(self) -> IntCoefs:
        return IntCoefs(*(int(round(x / self.unit_s)) for x in self.coefs()))

    def to_seconds(self, units: float) -> float:
        return float(units) * self.unit_s

    def describe(self) -> str:
        return (
            f"t = {self.per_iteration_s * 1e3:.4f} ms + {self.per_token_s * 1e6:.4f} us*T + "
            f"{self.per_token_above_knee_s * 1e6:.4f} us*max(0, T-{self.knee}) + "
            f"{self.per_kv_read_s * 1e9:.4f} ns*R"
            f" + {self.per_request_s * 1e6:.4f} us*W   (fit on {self.samples} batches: max rel err "
            f"{self.max_rel_error:.2%}, mean {self.mean_rel_error:.2%})"
        )


def _features(tokens: np.ndarray, kv_read: np.ndarray, reqs: np.ndarray, knee: int) -> np.ndarray:
    return np.stack(
        [
            np.ones_like(tokens, dtype=float),
            tokens.astype(float),
            np.maximum(0, tokens - knee).astype(float),
            kv_read.astype(float),
            reqs.astype(float),
        ],
        axis=1,
    )


def sample_batches(
    cost_model: CostModel,
    lengths: Sequence[tuple[int, int]],
    token_budget: int,
    kv_capacity: int,
    num_samples: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random feasible batches from an instance's range: (tokens, kv_read, requests, true seconds)."""
    rng = np.random.default_rng(seed)
    lens = list(lengths) or [(16, 16)]
    toks, kvr, nreq, ts = [], [], [], []
    max_batch = max(1, len(lens))
    for _ in range(num_samples):
        k = int(rng.integers(1, max_batch + 1))
        pick = [lens[int(rng.integers(0, len(lens)))] for _ in range(k)]
        n_dec = int(rng.integers(0, k + 1))
        prefill: list[tuple[int, int]] = []
        decode: list[int] = []
        budget = token_budget
        kv_total = 0
        for idx, (p, o) in enumerate(pick):
            if idx < n_dec:
                kv = int(rng.integers(p, p + max(1, o)))
                if kv_total + kv + 1 > kv_capacity:
                    continue
                decode.append(kv)
                kv_total += kv + 1
            else:
                if budget <= 0:
                    continue
                chunk = int(rng.integers(1, min(budget, p + o) + 1))
                before = int(rng.integers(0, max(1, p + o - chunk) + 1))
                if kv_total + before + chunk > kv_capacity:
                    continue
                prefill.append((chunk, before))
                budget -= chunk
                kv_total += before + chunk
        tokens = sum(c for c, _ in prefill) + len(decode)
        if tokens == 0:
            continue
        toks.append(tokens)
        nreq.append(len(prefill) + len(decode))
        kvr.append(sum(c + b for c, b in prefill) + sum(d + 1 for d in decode))
        ts.append(cost_model.batch_time(prefill, decode))
    return np.asarray(toks), np.asarray(kvr), np.asarray(nreq), np.asarray(ts)


def nnls(matrix: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative least squares for a handful of columns, exactly: the NNLS optimum is the ordinary
    least-squares fit on its support, so try every support and keep the best non-negative fit."""
    k = matrix.shape[1]
    best = (np.zeros(k), float(np.sum(target**2)))
    for size in range(1, k + 1):
        for cols in itertools.combinations(range(k), size):
            sol, *_ = np.linalg.lstsq(matrix[:, cols], target, rcond=None)
            if np.any(sol < 0):
                continue
            res = float(np.sum((matrix[:, cols] @ sol - target) ** 2))
            if res < best[1]:
                coef = np.zeros(k)
                coef[list(cols)] = sol
                best = (coef, res)
    return best


def _choose_unit(coefs: Sequence[float]) -> float:
    nz = [c for c in coefs if c > 0]
    smallest = min(nz) if nz else 1e-3
    unit = 1e-6
    while smallest / unit < MIN_COEF and unit > 1e-13:
        unit /= 10.0
    return unit


def fit_linear_time(
    cost_model: CostModel,
    lengths: Sequence[tuple[int, int]],
    token_budget: int,
    kv_capacity: int,
    num_samples: int = 2000,
    seed: int = 0,
) -> LinearTimeModel:
    """Fit the linear model to ``cost_model`` on batches an instance with these (prompt, output) lengths can
    run: the first half of the samples fits, the second half measures the error."""
    tok, kvr, nrq, t = sample_batches(
        cost_model, lengths, token_budget, kv_capacity, num_samples=num_samples, seed=seed
    )
    if len(t) < 8:
        raise ValueError("not enough sample batches to fit the iteration-time model")
    half = len(t) // 2
    fit_idx, test_idx = np.arange(half), np.arange(half, len(t))
    knee, coef = _best_knee(tok, kvr, nrq, t, fit_idx)
    per_iteration, per_token, above_knee, per_kv_read, per_request = (float(x) for x in coef)
    rel = np.abs(_features(tok, kvr, nrq, knee)[test_idx] @ coef - t[test_idx]) / t[test_idx]
    return LinearTimeModel(
        per_iteration_s=per_iteration,
        per_token_s=per_token,
        per_token_above_knee_s=above_knee,
        knee=int(knee),
        per_kv_read_s=per_kv_read,
        per_request_s=per_request,
        unit_s=_choose_unit([float(x) for x in coef]),
        max_rel_error=float(rel.max()),
        mean_rel_error=float(rel.mean()),
        samples=len(t),
        fit_range={
            "token_budget": token_budget,
            "kv_capacity": kv_capacity,
            "max_tokens": int(tok.max()),
            "max_kv_read": int(kvr.max()),
        },
    )


def _best_knee(
    tok: np.ndarray, kvr: np.ndarray, nrq: np.ndarray, t: np.ndarray, fit_idx: np.ndarray
) -> tuple[int, np.ndarray]:
    """(knee, coefficients) of the best relative-least-squares fit over a grid of knees."""
    w = 1.0 / t  # relative least squares
    best = None
    max_tok = int(tok.max())
    knees = sorted({int(k) for k in np.unique(np.linspace(1, max_tok, 40).astype(int))} | {max_tok})
    for knee in knees:
        X = _features(tok, kvr, nrq, knee)
        coef, _ = nnls(X[fit_idx] * w[fit_idx, None], t[fit_idx] * w[fit_idx])
        rel = np.abs(X[fit_idx] @ coef - t[fit_idx]) / t[fit_idx]
        score = float(np.mean(rel**2))
        if best is None or score < best[0]:
            best = (score, knee, coef)
    _, knee, coef = best
    return knee, coef
