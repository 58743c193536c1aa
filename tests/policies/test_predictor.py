"""Response-length predictor: learns a stationary mix, reports accuracy, plugs in, oracle for ablations."""

from __future__ import annotations

import random

import pytest

from sglang_cascade.core.views import RequestView
from sglang_cascade.policies.predictor import (
    BucketQuantilePredictor,
    FixedPredictor,
    OraclePredictor,
    PredictorConfig,
    make_predictor,
)


def _mix(n: int, seed: int):
    """Two prompt classes with different output lengths (short prompts -> long answers and vice versa)."""
    rng = random.Random(seed)
    for i in range(n):
        if rng.random() < 0.5:
            yield RequestView(rid=f"a{i}", arrival=0.0, prompt_len=rng.randint(20, 60)), int(rng.uniform(700, 1000))
        else:
            yield RequestView(rid=f"b{i}", arrival=0.0, prompt_len=rng.randint(2000, 4000)), int(rng.uniform(20, 30))


def _run(pred, n=2000, seed=0):
    errs = []
    for req, true in _mix(n, seed):
        p = pred.predict(req)
        req.predicted_output_len = p.output_len
        errs.append(abs(p.output_len - true))
        pred.observe(req, true)
    return errs


def test_predictor_improves_on_stationary_mix():
    pred = BucketQuantilePredictor(PredictorConfig(quantile=0.5))
    errs = _run(pred)
    early = sum(errs[:50]) / 50
    late = sum(errs[-500:]) / 500
    assert late < 0.5 * early, (early, late)
    st = pred.stats.as_dict()
    assert st["pred_n"] == 2000
    # late predictions land in the right bucket most of the time
    pred2 = BucketQuantilePredictor(PredictorConfig(quantile=0.5))
    _run(pred2, 1500, seed=1)
    before = pred2.stats.bucket_hits
    _run(pred2, 500, seed=2)
    assert (pred2.stats.bucket_hits - before) / 500 > 0.6


def test_predictor_beats_fixed_and_oracle_is_exact():
    learned = BucketQuantilePredictor(PredictorConfig(quantile=0.5))
    fixed = FixedPredictor(output_len=256)
    e_l = sum(_run(learned)[-500:])
    e_f = sum(_run(fixed)[-500:])
    assert e_l < 0.5 * e_f
    oracle = OraclePredictor()
    r = RequestView(rid="x", arrival=0.0, prompt_len=10)
    r.extra["true_output_len"] = 123
    p = oracle.predict(r)
    assert p.output_len == 123 and p.confidence == 1.0
    # without the truth it falls back to the learned predictor
    assert oracle.predict(RequestView(rid="y", arrival=0.0, prompt_len=10)).confidence < 1.0


def test_quantile_controls_under_prediction_and_max_new_tokens_caps():
    lo = BucketQuantilePredictor(PredictorConfig(quantile=0.3))
    hi = BucketQuantilePredictor(PredictorConfig(quantile=0.95))
    _run(lo)
    _run(hi)
    assert hi.stats.under < lo.stats.under
    r = RequestView(rid="c", arrival=0.0, prompt_len=30, max_new_tokens=50)
    assert hi.predict(r).output_len <= 50


def test_buckets_and_bad_config():
    p = BucketQuantilePredictor()
    for n in (1, 16, 17, 100, 1000, 5000):
        b = p.bucket_of(n)
        assert n <= p.bucket_upper(b)
        assert b == 0 or n > p.bucket_upper(b - 1)
    with pytest.raises(ValueError):
        BucketQuantilePredictor(PredictorConfig(bucket_ratio=1.0))
    with pytest.raises(ValueError):
        make_predictor("nope")


def test_pluggable_predictor_is_used_by_scheduler():
    from test_instance_helpers import MiniDriver

    from sglang_cascade.core.costmodel import CostModel
    from sglang_cascade.policies.instance import make_cascade_scheduler
    from sglang_cascade.policies.registry import PolicyContext

    class Const:
        def __init__(self):
            self.inner = BucketQuantilePredictor()
            self.stats = self.inner.stats
            self.calls = 0

        def predict(self, req):
            self.calls += 1
            from sglang_cascade.policies.predictor import Prediction

            return Prediction(40, self.inner.bucket_of(40), 0.9)

        def observe(self, req, true):
            self.inner.observe(req, true)

        def bucket_of(self, n):
            return self.inner.bucket_of(n)

        def bucket_upper(self, b):
            return self.inner.bucket_upper(b)

    c = Const()
    ctx = PolicyContext(cost_model=CostModel.for_names("llama-3-8b", "h100"))
    s = make_cascade_scheduler(ctx, predictor=c, check=1)
    res = MiniDriver(s, kv_capacity=4000).run([(0.0, 100, 40), (0.0, 100, 80)])
    assert len(res.finished) == 2 and c.calls >= 2
    assert s.metrics()["pred_n"] == 2 and s.metrics()["pred_under_rate"] == 0.5
