"""The prefill pool's latency model (policies/pool_model.py): the decode side's stage model without the long
prompts' prefill, an M/G/k queue for the pool, and the size it picks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.policies.pool_model import (
    DECODE_RHO_MAX,
    DecodeSideModel,
    PoolPoint,
    best_pool_size,
    pool_latencies,
)
from sglang_cascade.policies.stage_dp import predict_stages
from sglang_cascade.policies.stage_model import LengthStats, QoEConfig

HEAVY = [(30000, 50)] * 50 + [(500, 200)] * 50  # the long prompts' prefill is nearly all the work


@pytest.fixture(scope="module")
def cm():
    return CostModel.for_names("llama-3-8b", "h100")


def test_the_decode_side_prefills_only_the_short_prompts(cm):
    qoe, rate, m = QoEConfig(), 3.0, 4
    full = predict_stages(HEAVY, rate, [], [m], cm, qoe)[0]

    def side(pmin):
        model = DecodeSideModel(LengthStats(HEAVY), rate, cm, qoe, pmin)
        model.segment_costs(m)
        return model.describe(0, 1, m)

    assert side(10**9) == pytest.approx(full)  # no prompt reaches the pool: the pooled stage itself
    short_only = side(8192)
    assert short_only["prefill_busy"] < 0.1 * full["prefill_busy"]  # the 30K prompts' prefill is gone
    assert short_only["decode_tokens_per_req"] == pytest.approx(full["decode_tokens_per_req"])  # all decode here
    assert short_only["tpot_s"] < full["tpot_s"]  # no long prefill stretches its decode steps


def test_pool_latencies_trade_the_pools_queue_against_the_decode_side(cm):
    pts = pool_latencies(HEAVY, 3.0, 8, cm, QoEConfig(), 8192)
    assert [p.size for p in pts] == list(range(1, 8))
    rho = [p.pool_rho for p in pts]
    assert all(a > b for a, b in zip(rho, rho[1:]))  # a bigger pool is less busy
    assert all(math.isinf(p.latency_s) for p in pts if p.pool_rho >= 1)  # an overloaded pool queues without bound
    finite = [p for p in pts if math.isfinite(p.latency_s)]
    assert finite and all(p.long_ttft_s > 0 for p in finite)
    assert [p.decode_rho for p in finite] == sorted(p.decode_rho for p in finite)  # fewer decode instances: busier


def test_best_size_is_the_least_latency_with_a_decode_side_margin_past_the_knee_the_largest_pool():
    pt = lambda k, lat, a, b: PoolPoint(k, lat, a, b, 0.05, 1.0)  # noqa: E731
    assert best_pool_size([pt(1, np.inf, 1.5, 0.2), pt(2, 4.0, 0.8, 0.4), pt(3, 3.5, 0.6, 0.7)]).size == 3
    # the least latency, but its decode side busier than DECODE_RHO_MAX: the next best is taken
    busy = DECODE_RHO_MAX + 0.1
    assert best_pool_size([pt(1, np.inf, 1.5, 0.2), pt(2, 4.0, 0.8, 0.5), pt(3, 3.5, 0.6, busy)]).size == 2
    # past the knee (every size overloads a side): the pool overloads, the decode side keeps its margin
    over = [pt(1, np.inf, 2.0, 0.3), pt(2, np.inf, 1.1, 0.6), pt(3, np.inf, 0.9, 1.4)]
    assert best_pool_size(over).size == 2
    over = [pt(1, np.inf, 2.0, 0.3), pt(2, np.inf, 1.6, 0.5), pt(3, np.inf, 1.2, 0.7), pt(4, np.inf, 0.9, 1.4)]
    assert best_pool_size(over).size == 3  # not 4 (busier side 1.2 vs 1.4) nor 2: the decode side at 0.7
    worn = [pt(1, np.inf, 2.0, 0.9), pt(2, np.inf, 1.1, 1.2)]
    assert best_pool_size(worn).size == 2  # no size keeps the margin: the busier side least busy (1.2 vs 2.0)
