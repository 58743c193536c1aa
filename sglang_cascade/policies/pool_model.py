"""The prefill pool's latency model: the stage model of the decode side, an M/G/k queue for the pool.

With ``k`` of ``n`` instances in the pool, a request of prompt >= ``prefill_min`` queues for one of the k pool
members (they only prefill: M/G/k on its prefill seconds, the Erlang-C wait the stage model uses for a stage's
members), then decodes on the decode side; the other requests are prefilled and decoded there. The decode side is
the stage model of one stage over ``n - k`` instances that prefills only the short prompts but decodes every
request (:class:`DecodeSideModel`: the stage model with the long prompts' prefill masked out). The predicted mean
latency per request is

    short share x TTFT(decode side) + long share x TTFT(pool) + decode tokens x TPOT(decode side)

``pool_latencies`` evaluates it for every k; ``best_pool_size`` picks the k with the least latency among those
where neither side is overloaded and the decode side is at most ``DECODE_RHO_MAX`` busy; when every such k
overloads the pool (past the knee), the largest of them (the pool's queue holds only the long prompts' TTFT, an
overloaded decode side stretches every request); when none keeps the margin, the k whose busier side is least busy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.costmodel import CostModel
from .stage_model import LengthStats, QoEConfig, StageModel, _erlang_c, prefill_seconds

# The model's decode side is optimistic (it takes the moves' KV imports, and bursts the steady-state view smooths):
# allowing it 0.9 took 70B Mooncake x 16 past the knee from 0.55x to 0.94x the best baseline's mean E2E
# (cascade:pool_decode_rho sweeps it: docs/results/cascade_eval_pool5.md)
DECODE_RHO_MAX = 0.75


class DecodeSideModel(StageModel):
    """One stage over all lengths whose entering prefill work is only that of prompts < ``prefill_min``."""

    def __init__(self, stats: LengthStats, rate: float, cm: CostModel, cfg: QoEConfig, prefill_min: int):
        super().__init__(stats, np.array([0.0, np.inf]), rate, cm, cfg)
        short = stats.p_sorted < prefill_min
        below = stats._below(stats.p_sorted, self.fin_edges)
        sp = prefill_seconds(cm, stats.p_sorted, cfg.prefill_chunk) * short
        ps = stats.p_sorted * short

        def cum(x: np.ndarray) -> np.ndarray:  # per request of the sample, below each edge
            return np.concatenate([[0.0], np.cumsum(x)])[below] / stats.n

        self.S1, self.S2 = cum(sp), cum(sp * sp)
        self.cnt, self.s1, self.s2 = cum(short.astype(np.float64)), cum(ps), cum(ps * ps)


@dataclass
class PoolPoint:
    size: int  # pool instances
    latency_s: float  # predicted mean latency per request (inf: a side overloaded)
    pool_rho: float  # the pool's prefill utilization
    decode_rho: float  # the decode side's utilization
    decode_tpot_s: float
    long_ttft_s: float


def pool_latencies(
    sample: Sequence[tuple[int, int]],
    rate: float,
    n: int,
    cm: CostModel,
    qoe: QoEConfig,
    prefill_min: int,
) -> list[PoolPoint]:
    """The model's prediction for every pool size 1..n-1."""
    stats = LengthStats(sample)
    decode = DecodeSideModel(stats, rate, cm, qoe, prefill_min)
    decode.segment_costs(n)
    prompts = np.array([p for p, _ in sample], dtype=np.float64)
    long = prompts >= prefill_min
    share = float(long.mean())
    secs = prefill_seconds(cm, prompts[long], qoe.prefill_chunk) if long.any() else np.zeros(1)
    es, es2 = float(secs.mean()), float((secs * secs).mean())
    offered = rate * share * es  # the pool's offered prefill load, in instances
    wait_c = _erlang_c(np.array([offered]), n)[0]
    out = []
    for k in range(1, n):
        d = decode.describe(0, 1, n - k)
        pool_rho = offered / k
        ttft = wait_c[k - 1] * es2 / max(2.0 * es * k * (1.0 - pool_rho), 1e-12) + es if pool_rho < 1 else np.inf
        lat = (1.0 - share) * d["ttft_s"] + share * ttft + d["decode_tokens_per_req"] * d["tpot_s"]
        if d["overloaded"] or pool_rho >= 1.0:
            lat = np.inf
        out.append(PoolPoint(k, float(lat), pool_rho, d["rho"], d["tpot_s"], float(ttft)))
    return out


def best_pool_size(points: Sequence[PoolPoint], decode_rho_max: float = DECODE_RHO_MAX) -> PoolPoint:
    """The least predicted latency with the decode side's margin; past the knee the largest pool keeping it; else the
    size whose busier side is least busy."""
    decoding = [p for p in points if p.decode_rho <= decode_rho_max]
    feasible = [p for p in decoding if np.isfinite(p.latency_s)]
    if feasible:
        return min(feasible, key=lambda p: (p.latency_s, p.size))
    if decoding:  # the pool is the side to overload: its queue holds only long prompts' TTFT, an overloaded decode
        return max(decoding, key=lambda p: p.size)  # side stretches every request
    return min(points, key=lambda p: (max(p.pool_rho, p.decode_rho), p.size))
