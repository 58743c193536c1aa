"""The fast stage planner gives the reference results: the tabulated iteration time and its bisection,
and the DP's direct (n, i, m) gather, against the straightforward implementations they replaced."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.traces import load_trace
from sglang_cascade.policies.stage_dp import dp_best_per_stage_count, dp_partition, plan_partition
from sglang_cascade.policies.stage_model import (
    DecodeCoeffs,
    IterationTable,
    LengthStats,
    QoEConfig,
    StageModel,
    smallest_batch,
)


@pytest.fixture(scope="module")
def cm():
    return CostModel.for_names("llama-3-8b", "h100")


def _model(cm, trace: str, rate: float, batch_top: bool) -> tuple[StageModel, object, Callable, np.ndarray]:
    reqs = load_trace(trace, num_requests=2000, rate=rate, seed=1)
    stats = LengthStats([(r.prompt_len, r.output_len) for r in reqs])
    model = StageModel(stats, stats.token_quantile_edges(32), rate, cm, QoEConfig(batch_top=batch_top))
    seg = model._segment_demand()
    T, Lm = model._iteration_time(seg, DecodeCoeffs.probe(cm))
    return model, seg, T, Lm


@pytest.mark.parametrize("trace,rate,batch_top", [("sharegpt", 60.0, True), ("azure_conv", 120.0, False)])
def test_iteration_table_gives_the_reference_bisection(cm, trace, rate, batch_top):
    model, seg, T, Lm = _model(cm, trace, rate, batch_top)
    bkv = np.clip(np.floor(cm.kv_capacity_tokens() * 0.9 / Lm), 1, 1024).astype(np.int64)
    tab = IterationTable(T, bkv[:, 0])
    rng = np.random.default_rng(0)
    b = rng.integers(0, bkv + 1, size=(len(bkv), 16))
    assert np.array_equal(tab(b), T(b))  # the table holds T itself
    # demanded rates from far below one request's rate to beyond the KV-bounded batch's
    rate_req = np.exp(rng.uniform(np.log(1.0), np.log(1e5), size=(len(bkv), 16)))
    bmax = np.broadcast_to(bkv, rate_req.shape)
    ref = smallest_batch(rate_req, bmax, T)
    got = tab.smallest_batch(rate_req, bmax)
    assert np.array_equal(got, ref)
    assert (ref == 1).any() and (ref == bmax).any() and ((ref > 1) & (ref < bmax)).any()


def _reference_dp(C: np.ndarray, N: int) -> tuple[float, list[tuple[int, int, int]]]:
    """The DP as first written: (i, n, m) gather, transpose, argmin over (i, m) (ties: smallest i, then m)."""
    B = C.shape[0] - 1
    f = np.full((B + 1, N + 1), np.inf)
    f[0, 0] = 0.0
    ch = np.zeros((B + 1, N + 1, 2), dtype=np.int64)
    nn, mm = np.arange(N + 1), np.arange(1, N + 1)
    idx = nn[:, None] - mm[None, :]
    idx = np.where(idx >= 0, idx, N + 1).ravel()
    for j in range(1, B + 1):
        pad = np.concatenate([f[:j], np.full((j, 1), np.inf)], axis=1)
        tot = pad[:, idx].reshape(j, N + 1, N) + C[:j, j, 1 : N + 1][:, None, :]
        flat = tot.transpose(1, 0, 2).reshape(N + 1, -1)
        arg = np.argmin(flat, axis=1)
        f[j], ch[j, :, 0], ch[j, :, 1] = flat[nn, arg], arg // N, arg % N + 1
    segs, j, n = [], B, N
    while j > 0 and np.isfinite(f[B, N]):
        i, m = ch[j, n]
        segs.append((int(i), int(j), int(m)))
        j, n = int(i), n - int(m)
    return float(f[B, N]), segs[::-1]


def test_dp_gather_gives_the_reference_partition_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(60):
        B, N = int(rng.integers(1, 10)), int(rng.integers(1, 10))
        C = rng.integers(0, 3, size=(B + 1, B + 1, N + 1)).astype(float)  # many exact ties
        C[rng.random(C.shape) < 0.15] = np.inf
        ref = _reference_dp(C, N)
        if not np.isfinite(ref[0]):
            with pytest.raises(ValueError):
                dp_partition(C, N)
            continue
        assert dp_partition(C, N) == ref
        per_k = dp_best_per_stage_count(C, N, 4)  # the stage-count tables reuse the same step
        assert min(c for _, c, _ in per_k) == pytest.approx(ref[0])


def test_plan_64_instances_64_buckets(cm):
    """Table + DP for 64 instances x 64 buckets gives a full plan and times itself with the given clock.
    Its speed target lives in ``scripts/bench_stage_dp.py`` (a timing bound here fails on a slow CI box)."""
    reqs = load_trace("sharegpt", num_requests=5000, rate=200.0, seed=0)
    sample = [(r.prompt_len, r.output_len) for r in reqs]
    ticks = iter(range(100))
    res = plan_partition(sample, 200.0, 64, cm, buckets=64, clock=lambda: float(next(ticks)))
    again = plan_partition(sample, 200.0, 64, cm, buckets=64)
    assert sum(res.plan.counts()) == 64 and res.plan.bounds == again.plan.bounds
    assert res.plan.counts() == again.plan.counts()
    assert res.dp_time_s == 2.0 and res.breakdown["dp_only_time_s"] == 1.0  # three reads of the injected clock
