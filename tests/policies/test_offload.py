"""CPU pool: transfer model (PCIe, paired NVLink prefetch) and the pool never loses a request."""

from __future__ import annotations

import random

import pytest
from test_instance_helpers import MiniDriver

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.policies.instance import make_cascade_scheduler
from sglang_cascade.policies.offload import TransferConfig, kv_move_time, paired_breakeven_tokens, paired_move_time
from sglang_cascade.policies.registry import PolicyContext

CM = CostModel.for_names("llama-3-8b", "h100")
CTX = PolicyContext(cost_model=CM)


def test_direct_move_is_bytes_over_pcie():
    t = kv_move_time(10_000, CM, "h2d")
    assert t == pytest.approx(10_000 * CM.kv_bytes_per_token / CM.gpu.pcie_bandwidth)
    assert kv_move_time(10_000, CM, "d2h") == t
    assert kv_move_time(0, CM) == 0.0
    with pytest.raises(ValueError):
        kv_move_time(10, CM, "sideways")


def test_paired_prefetch_beats_direct_only_for_large_moves():
    big = 200_000
    direct = kv_move_time(big, CM, "h2d", paired=False)
    paired = paired_move_time(big, CM)
    assert paired < 0.6 * direct  # two PCIe links in parallel, NVLink leg faster than PCIe
    assert kv_move_time(big, CM, "h2d", paired=True) == pytest.approx(paired)
    tiny = 1
    assert paired_move_time(tiny, CM) >= kv_move_time(tiny, CM)  # hop latency: the partner leg is not used
    assert kv_move_time(tiny, CM, paired=True) == kv_move_time(tiny, CM)  # faster path chosen
    n = paired_breakeven_tokens(CM)
    assert 1 < n < 10_000
    # a busy partner link (10% free) gives little
    busy = paired_move_time(big, CM, TransferConfig(partner_pcie_share=0.1))
    assert busy > 0.85 * direct


def _wl(n, seed, rate=300.0):
    rng = random.Random(seed)
    t = 0.0
    out = []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append((t, rng.choice([30, 100, 400, 1200]), int(rng.lognormvariate(4.5, 1.0)) + 1))
    return out


@pytest.mark.parametrize(
    "opts",
    [{}, {"reserve": 1}, {"reserve": 1, "overadmit": 1}, {"reserve": 1, "aligned": 0}, {"reserve": 1, "quantile": 0.2}],
)
def test_pool_never_loses_a_request(opts):
    s = make_cascade_scheduler(CTX, check=1, **opts)
    wl = _wl(250, 3)
    res = MiniDriver(s, kv_capacity=8000, host_kv_capacity=12_000, max_prefill_tokens=2048).run(wl)
    assert len(res.finished) == 250
    assert all(r.output_len == r.extra["_true"] for r in res.finished)
    assert res.max_host <= 12_000 and res.max_kv <= 8000
    m = s.metrics()
    assert m["parked"] == m["resumed"]  # everything parked came back
    if opts.get("overadmit"):
        assert m["parked"] > 0


def test_parking_replaces_preemption():
    wl = _wl(250, 4)
    s0 = make_cascade_scheduler(CTX, offload=0, reserve=1, quantile=0.2)
    r0 = MiniDriver(s0, kv_capacity=6000, max_prefill_tokens=2048).run(wl)
    s1 = make_cascade_scheduler(CTX, offload=1, reserve=1, quantile=0.2)
    r1 = MiniDriver(s1, kv_capacity=6000, host_kv_capacity=50_000, max_prefill_tokens=2048).run(wl)
    assert r0.retractions > 0
    assert r1.retractions < r0.retractions and s1.metrics()["parked"] > 0
