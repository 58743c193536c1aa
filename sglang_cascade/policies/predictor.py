"""Response-length prediction for the instance scheduler (no GPU, no download).

A predictor says, for a request about to be admitted, how many tokens it will generate in total, as a
length *bucket* (geometric, ratio ``bucket_ratio``) with a confidence. The scheduler reserves KV for the
prediction and groups decode work by predicted bucket.

- :class:`BucketQuantilePredictor` (default, name ``bucket``) learns online from finished requests: for
  each prompt-length bucket (log2) it keeps a decayed histogram of output-length buckets and predicts
  the ``quantile`` of that histogram (falling back to the global histogram, then to a prior). Requests
  with ``max_new_tokens`` are capped by it. Confidence is the histogram mass of the predicted bucket.
- :class:`OraclePredictor` (name ``oracle``) reads ``req.extra["true_output_len"]`` (or the simulator's
  private ``SimRequest.target``). **Only the simulator provides the truth**; it exists for ablations (what perfect prediction would buy) and
  falls back to the bucket predictor when the field is missing.
- Any object with ``predict(req) -> Prediction`` and ``observe(req, true_output_len)`` plugs in (e.g. a
  small learned classifier a user trains offline): pass it as ``predictor=`` to the scheduler factory.

Every predictor here reports accuracy (:class:`PredictorStats`): bucket hit rate, mean absolute error
and under-prediction rate, measured on finished requests against the prediction made at admission.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from ..core.views import RequestView


@dataclass(slots=True)
class PredictorConfig:
    bucket_ratio: float = 2.0  # output-length buckets are [base*r^k, base*r^(k+1))
    bucket_base: int = 16  # upper bound of the first output bucket (tokens)
    prompt_bucket_base: int = 64  # prompt buckets: log2(prompt / base)
    quantile: float = 0.8  # predicted length = this quantile of the bucket's history (upper edge of the bucket)
    decay: float = 0.999  # per-observation decay of old histogram counts (adapts to drift)
    min_samples: int = 20  # a prompt bucket needs this many samples before it is used alone
    refresh: int = 8  # cached quantiles are recomputed after this many new observations
    prior_output_len: int = 256  # prediction before anything finished
    max_output_len: int = 32768  # predictions are capped here (and by max_new_tokens)


@dataclass(slots=True)
class Prediction:
    output_len: int  # predicted total output tokens
    bucket: int  # output-length bucket index
    confidence: float  # in [0, 1]


@dataclass(slots=True)
class PredictorStats:
    """Accuracy on finished requests (prediction made at admission vs the true length)."""

    n: int = 0
    bucket_hits: int = 0
    abs_err_sum: float = 0.0
    under: int = 0  # true length > predicted length (the reservation had to be extended)

    def record(self, predicted: int, true: int, pred_bucket: int, true_bucket: int) -> None:
        self.n += 1
        self.bucket_hits += int(pred_bucket == true_bucket)
        self.abs_err_sum += abs(predicted - true)
        self.under += int(true > predicted)

    def as_dict(self) -> dict[str, float]:
        n = max(1, self.n)
        return {
            "pred_n": self.n,
            "pred_bucket_hit": self.bucket_hits / n,
            "pred_mae": self.abs_err_sum / n,
            "pred_under_rate": self.under / n,
        }


class LengthPredictor(Protocol):
    stats: PredictorStats

    def predict(self, req: RequestView) -> Prediction: ...

    def observe(self, req: RequestView, true_output_len: int) -> None: ...

    def bucket_of(self, output_len: int) -> int: ...

    def bucket_upper(self, bucket: int) -> int: ...


class BucketQuantilePredictor:
    """Per prompt-length bucket histograms of output-length buckets, learned online."""

    name = "bucket"

    def __init__(self, cfg: PredictorConfig | None = None, warm_start: list[tuple[int, int]] | None = None):
        self.cfg = cfg or PredictorConfig()
        if self.cfg.bucket_ratio <= 1.0:
            raise ValueError("bucket_ratio must be > 1")
        if not 0.0 < self.cfg.quantile <= 1.0:
            raise ValueError("quantile must be in (0, 1]")
        self._log_r = math.log(self.cfg.bucket_ratio)
        self.nbuckets = self.bucket_of(self.cfg.max_output_len) + 1
        self._hist: dict[int, list[float]] = {}  # prompt bucket -> weights per output bucket
        self._count: dict[int, int] = {}
        self._global = [0.0] * self.nbuckets
        self._global_n = 0
        self._inc = 1.0  # lazy decay: each new sample weighs 1/decay more than the previous one
        self._cache: dict[int, tuple[int, float, int]] = {}  # prompt bucket -> (bucket, conf, n at compute)
        self.stats = PredictorStats()
        for p, o in warm_start or []:
            self._learn(p, o)

    # --- buckets --------------------------------------------------------------------------------------
    def bucket_of(self, output_len: int) -> int:
        if output_len <= self.cfg.bucket_base:
            return 0
        return int(math.log(output_len / self.cfg.bucket_base) / self._log_r - 1e-9) + 1

    def bucket_upper(self, bucket: int) -> int:
        return int(math.ceil(self.cfg.bucket_base * self.cfg.bucket_ratio**bucket))

    def _prompt_bucket(self, prompt_len: int) -> int:
        return (
            max(0, int(math.log2(max(1, prompt_len) / self.cfg.prompt_bucket_base)) + 1)
            if prompt_len > self.cfg.prompt_bucket_base
            else 0
        )

    # --- learning -------------------------------------------------------------------------------------
    def _learn(self, prompt_len: int, true_len: int, true_bucket: int | None = None) -> None:
        b = min(self.nbuckets - 1, self.bucket_of(max(1, true_len)) if true_bucket is None else true_bucket)
        pb = self._prompt_bucket(prompt_len)
        h = self._hist.get(pb)
        if h is None:
            h = self._hist[pb] = [0.0] * self.nbuckets
        # decaying old counts by ``decay`` == growing the weight of new ones by 1/decay (quantiles are
        # scale-free); renormalize before floats overflow
        self._inc /= self.cfg.decay
        if self._inc > 1e150:
            for hist in [self._global, *self._hist.values()]:
                for i in range(self.nbuckets):
                    hist[i] /= self._inc
            self._inc = 1.0
        h[b] += self._inc
        self._global[b] += self._inc
        self._count[pb] = self._count.get(pb, 0) + 1
        self._global_n += 1

    def observe(self, req: RequestView, true_output_len: int) -> None:
        tb = self.bucket_of(true_output_len)  # (== bucket_of(max(1, len)): lengths <= base are bucket 0)
        pred = req.predicted_output_len
        if pred is not None:
            self.stats.record(pred, true_output_len, self.bucket_of(pred), tb)
        self._learn(req.prompt_len, true_output_len, tb)

    def _quantile_bucket(self, h: list[float]) -> tuple[int, float]:
        total = sum(h)
        target = self.cfg.quantile * total
        acc = 0.0
        for i, w in enumerate(h):
            acc += w
            if acc >= target - 1e-12:
                return i, w / total
        return self.nbuckets - 1, h[-1] / total

    def _cached(self, key: int, h: list[float]) -> tuple[int, float]:
        c = self._cache.get(key)
        if c is None or self._global_n - c[2] >= self.cfg.refresh:
            b, conf = self._quantile_bucket(h)
            self._cache[key] = c = (b, conf, self._global_n)
        return c[0], c[1]

    def predict(self, req: RequestView) -> Prediction:
        pb = self._prompt_bucket(req.prompt_len)
        if self._count.get(pb, 0) >= self.cfg.min_samples:
            b, conf = self._cached(pb, self._hist[pb])
            out = self.bucket_upper(b)
        elif self._global_n > 0:
            b, conf = self._cached(-1, self._global)
            out = self.bucket_upper(b)
            conf *= 0.5  # no prompt-specific history yet
        else:
            out = self.cfg.prior_output_len
            b, conf = self.bucket_of(out), 0.0
        cap = min(self.cfg.max_output_len, req.max_new_tokens or self.cfg.max_output_len)
        if out > cap:
            out, b = cap, self.bucket_of(cap)
        return Prediction(max(1, out), b, conf)


class OraclePredictor(BucketQuantilePredictor):
    """Perfect prediction from ``req.extra["true_output_len"]`` (simulator only; ablations only)."""

    name = "oracle"

    def predict(self, req: RequestView) -> Prediction:
        true = req.extra.get("true_output_len") if req.extra else None
        if true is None:  # the simulator's SimRequest keeps the truth in ``target`` (ablations only)
            true = getattr(req, "target", None) or None
        if true is None:
            return super().predict(req)
        return Prediction(int(true), self.bucket_of(int(true)), 1.0)


@dataclass(slots=True)
class FixedPredictor:
    """Predicts a constant (``max_new_tokens`` if set): the no-prediction ablation."""

    output_len: int = 512
    stats: PredictorStats = field(default_factory=PredictorStats)
    _inner: BucketQuantilePredictor = field(default_factory=BucketQuantilePredictor)
    name: str = "fixed"

    def predict(self, req: RequestView) -> Prediction:
        out = req.max_new_tokens or self.output_len
        return Prediction(out, self._inner.bucket_of(out), 0.0)

    def observe(self, req: RequestView, true_output_len: int) -> None:
        if req.predicted_output_len is not None:
            p = req.predicted_output_len
            self.stats.record(p, true_output_len, self._inner.bucket_of(p), self._inner.bucket_of(true_output_len))

    def bucket_of(self, output_len: int) -> int:
        return self._inner.bucket_of(output_len)

    def bucket_upper(self, bucket: int) -> int:
        return self._inner.bucket_upper(bucket)


def make_predictor(
    name: str, cfg: PredictorConfig | None = None, warm_start: list[tuple[int, int]] | None = None
) -> LengthPredictor:
    if name in ("bucket", "quantile", "online"):
        return BucketQuantilePredictor(cfg, warm_start)
    if name == "oracle":
        return OraclePredictor(cfg, warm_start)
    if name in ("fixed", "none"):
        return FixedPredictor(output_len=(cfg or PredictorConfig()).prior_output_len)
    raise ValueError(f"unknown predictor {name!r}; choose bucket, oracle or fixed")
