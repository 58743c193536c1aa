"""Length-range stages: the plan type, an analytic per-stage quality model, and the exact DP partition.

A *stage plan* splits N instances into K stages; stage k serves sequences whose current length
(prompt + generated) lies in ``[bounds[k-1], bounds[k])`` (``bounds[-1]`` of the last stage is open).
A request longer than every bound stays in the last stage; a request exactly at a bound belongs to the
stage *starting* there.

QoE (what the DP maximizes; defined here and in docs/cascade.md)
----------------------------------------------------------------
The DP minimizes ``cost = slo_weight * violation + latency`` summed over stages, i.e. it maximizes

    QoE = (1 - violation)  with ties broken by the predicted mean per-request latency (seconds)

- ``violation`` (0..1) = 1/2 * (share of decode tokens produced in stages whose predicted TPOT exceeds
  the TPOT SLO) + 1/2 * (share of requests that enter (arrive in or migrate into) a stage whose predicted
  TTFT / migration-stall exceeds the TTFT SLO). It is the analytic proxy of *goodput under TTFT/TPOT SLOs*:
  a request whose tokens all come from SLO-meeting stages meets its SLOs.
- ``latency`` = sum over stages of (decode tokens x TPOT + entries x TTFT + migrations in x migration
  stall) per request = predicted mean E2E (minus nothing: every term of E2E is counted once).
- Overloaded stages (required throughput at or above the stage's KV-limited maximum) cost
  ``overload_weight * (1 + rho) * traffic share``, which dominates everything else, so the DP first
  removes overload, then SLO violations, then latency. Tail E2E is controlled through the per-stage SLO
  indicator (a single slow stage costs all tokens produced there) rather than a non-additive p99 term.

Why this objective: users see TTFT/TPOT SLOs (goodput is what capacity planning sells), the E2E mean is
the paper's headline metric, and both decompose additively over stages, which makes the DP exact.

Per-stage analytic model (vectorized over all segments and instance counts)
---------------------------------------------------------------------------
For a segment of length buckets [i, j) served by m instances at arrival rate lam (req/s):
- D = decode tokens per request produced inside the range (each request contributes the part of its
  decode whose length lies in the range), Lbar = their mean KV length, top = the largest length decoded
  there; per-instance token rate r = lam * D / m.
- Prefill work entering: new prompts (tokens, attention pairs) and, for migrations into the stage,
  recompute of ``lo`` tokens when the migration planner would recompute; prefill busy fraction u_p.
- One iteration with batch B costs T(B) = base(B) + B k Lbar (1 + beta (1 - Lbar/top)): ``base`` is the
  cost model's iteration time of B decodes without KV (tabulated), k and beta are probed from
  ``CostModel.iteration_time`` (``DecodeCoeffs``); the last factor is the cost model's heterogeneity
  penalty for the spread of lengths inside the stage. With ``QoEConfig.batch_top`` (default) ``top`` is
  the expected longest sequence of a b-request batch (the stage's b/(b+1) decode-token quantile) and the
  penalty is scaled by the kernel's lane occupancy at b (``het_occupancy_table``), as in the cost model. In steady state B / T(B) = r / (1 - u_p); the
  smallest such integer B is found by vectorized bisection; TPOT = T(B) / (1 - u_p)
  (chunked prefill shares the iterations, stretching every decode step). The largest batch
  is KV-bounded (B_kv = kv_capacity * kv_fill / Lbar); r beyond B_kv / T(B_kv) is overload.
- TTFT ~ T(B) + prefill(mean prompt) / (1 - rho) (wait one iteration, then a prefill slowed by load).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..core.costmodel import CostModel

# ---------------------------------------------------------------------------------------------- plan


@dataclass
class Stage:
    lo: int
    hi: int | None  # None = unbounded (last stage)
    instances: list[int] = field(default_factory=list)

    def contains(self, length: int) -> bool:
        return length >= self.lo and (self.hi is None or length < self.hi)


@dataclass
class StagePlan:
    """K stages over instance ids. ``bounds`` are the K-1 inner boundaries (strictly increasing)."""

    bounds: list[int]
    members: list[list[int]]

    def __post_init__(self) -> None:
        if len(self.members) != len(self.bounds) + 1:
            raise ValueError(f"{len(self.members)} stages need {len(self.members) - 1} bounds, got {self.bounds}")
        if any(b2 <= b1 for b1, b2 in zip(self.bounds, self.bounds[1:])) or any(b <= 0 for b in self.bounds):
            raise ValueError(f"stage bounds must be positive and strictly increasing: {self.bounds}")
        if any(not m for m in self.members):
            raise ValueError(f"every stage needs at least one instance: {self.members}")
        ids = [i for m in self.members for i in m]
        if len(ids) != len(set(ids)):
            raise ValueError(f"an instance is in two stages: {self.members}")

    @property
    def num_stages(self) -> int:
        return len(self.members)

    def stage_of(self, length: int) -> int:
        """Stage serving ``length``: [b(k-1), b(k)); exactly-at-bound goes up; beyond every bound: last."""
        return bisect.bisect_right(self.bounds, length)

    def lo(self, k: int) -> int:
        return 0 if k == 0 else self.bounds[k - 1]

    def hi(self, k: int) -> int | None:
        return self.bounds[k] if k < len(self.bounds) else None

    def stages(self) -> list[Stage]:
        return [Stage(self.lo(k), self.hi(k), list(m)) for k, m in enumerate(self.members)]

    def counts(self) -> list[int]:
        return [len(m) for m in self.members]

    @classmethod
    def from_counts(cls, bounds: Sequence[int], counts: Sequence[int], instance_ids: Sequence[int] | None = None
                    ) -> "StagePlan":
        ids = list(instance_ids) if instance_ids is not None else list(range(sum(counts)))
        if len(ids) != sum(counts):
            raise ValueError(f"counts {list(counts)} need {sum(counts)} instances, got {len(ids)}")
        members, at = [], 0
        for c in counts:
            members.append(ids[at:at + c])
            at += c
        return cls(list(bounds), members)

    def to_json(self) -> list[dict]:
        return [{"lo": s.lo, "hi": s.hi, "instances": len(s.instances), "instance_ids": s.instances}
                for s in self.stages()]


# ------------------------------------------------------------------------------------ length statistics


class LengthStats:
    """Cumulative functions of a (prompt, output) sample, evaluated at any length in O(log n).

    ``G(l)``: decode tokens (over all requests) produced while the sequence length was < l;
    ``H(l)``: sum of those lengths; ``P(l)``: requests with prompt < l, with sums of prompts and squares;
    ``X(l)``: requests whose decode crosses l (p < l < p + o) -> migrations at a bound l.
    A request of prompt p and output o decodes at lengths p, p+1, ..., p+o-1.
    """

    def __init__(self, sample: Sequence[tuple[int, int]]):
        if len(sample) == 0:
            raise ValueError("length sample is empty")
        arr = np.asarray(sample, dtype=np.float64).reshape(-1, 2)
        if (arr[:, 0] < 0).any() or (arr[:, 1] < 0).any():
            raise ValueError("lengths must be non-negative")
        p, o = arr[:, 0], np.maximum(arr[:, 1], 1.0)
        e = p + o
        self.n = len(p)
        ip = np.argsort(p, kind="stable")
        ie = np.argsort(e, kind="stable")
        self.p_sorted = p[ip]
        self.e_sorted = e[ie]
        z = np.zeros(1)
        self.cp1 = np.concatenate([z, np.cumsum(p[ip])])
        self.cp2 = np.concatenate([z, np.cumsum(p[ip] ** 2)])
        self.ce1 = np.concatenate([z, np.cumsum(e[ie])])
        self.ce2 = np.concatenate([z, np.cumsum(e[ie] ** 2)])
        self.max_len = float(e.max())
        self.total_decode = float(o.sum())

    def _below(self, sorted_arr: np.ndarray, l: np.ndarray) -> np.ndarray:
        return np.searchsorted(sorted_arr, l, side="left")  # count of values < l

    def G(self, l) -> np.ndarray:
        l = np.asarray(l, dtype=np.float64)
        a = self._below(self.p_sorted, l)
        b = np.searchsorted(self.e_sorted, l, side="right")  # e <= l: fully decoded below l
        return (a * l - self.cp1[a]) - (b * l - self.ce1[b])

    def H(self, l) -> np.ndarray:
        # sum over x in [p, min(l, e)) of x  =  S(p, min(l,e)) with S(a, b) = (b^2 - b - a^2 + a) / 2
        l = np.asarray(l, dtype=np.float64)
        a = self._below(self.p_sorted, l)
        b = np.searchsorted(self.e_sorted, l, side="right")
        sl = l * l - l
        part_p = a * sl - (self.cp2[a] - self.cp1[a])  # sum over p<l of (l^2 - l - p^2 + p)
        part_e = b * sl - (self.ce2[b] - self.ce1[b])  # sum over e<=l of (l^2 - l - e^2 + e)
        return (part_p - part_e) / 2.0

    def prompts_below(self, l) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = self._below(self.p_sorted, np.asarray(l, dtype=np.float64))
        return a.astype(np.float64), self.cp1[a], self.cp2[a]

    def crossing(self, l) -> np.ndarray:
        l = np.asarray(l, dtype=np.float64)
        return (self._below(self.p_sorted, l) - np.searchsorted(self.e_sorted, l, side="right")).astype(np.float64)

    def token_quantile_edges(self, buckets: int) -> np.ndarray:
        """Bucket edges (0 = e_0 < ... < e_B = inf) splitting decode tokens into ~equal-mass buckets."""
        if buckets < 1:
            raise ValueError("buckets must be >= 1")
        grid = np.unique(np.concatenate([np.geomspace(1, self.max_len + 1, 4096).round(), self.p_sorted + 1]))
        cdf = self.G(grid) / max(1.0, self.total_decode)
        targets = np.arange(1, buckets) / buckets
        idx = np.searchsorted(cdf, targets, side="left")
        inner = np.unique(grid[np.clip(idx, 0, len(grid) - 1)].astype(np.int64))
        inner = inner[(inner > 0)]
        return np.concatenate([[0], inner, [np.inf]]).astype(np.float64)


# ---------------------------------------------------------------------------------------------- model


@dataclass
class QoEConfig:
    slo_ttft: float = 2.0  # s, time to first token SLO
    slo_tpot: float = 0.1  # s, time per output token SLO
    slo_weight: float = 1000.0  # seconds of mean latency one unit of SLO-violation share is worth
    overload_weight: float = 1e6  # cost of an overloaded stage per traffic share (dominates everything)
    kv_fill: float = 0.9  # usable fraction of the KV pool for the running batch
    max_running: int = 1024  # engine cap on concurrent requests (SGLang --max-running-requests)
    migration_stall_s: float | None = None  # None: ask the migration planner per bound length
    recompute_migrations: bool = False  # whether migrations add recompute prefill work at the destination
    burst_z: float = 1.0  # head-room for Poisson load swings: rate x (1 + z / sqrt(concurrent requests))
    min_stage_instances: int = 1  # no stage smaller than this (unless N is smaller)
    batch_top: bool = True  # heterogeneity from the expected longest sequence of a batch (True) or from
    # the stage range's top length (False: over-charges wide stages, i.e. favours narrow ones)
    min_gain: float = 0.0  # use the fewest stages whose objective is within this fraction of the best


@dataclass
class PartitionResult:
    plan: StagePlan
    objective: float  # the DP cost (lower is better)
    qoe: float  # 1 - violation
    breakdown: dict
    dp_time_s: float
    edges: list[float]


@dataclass(frozen=True)
class DecodeCoeffs:
    """A linearization of the cost model for the analytic stage model, measured through the public
    ``CostModel.iteration_time`` (so it follows whatever calibration the cost model carries):

    T(batch B, mean KV Lbar, max KV top) ~= o + max(W, c B) + B (r + k Lbar h),  h = 1 + beta (1 - Lbar/top)
    prefill(p) ~= c p + a p^2 / 2
    """

    o: float  # per-iteration overhead
    W: float  # weight-read floor of the linear layers
    c: float  # linear-layer time per token once compute-bound
    r: float  # per-request decode cost
    k: float  # decode attention time per KV token
    beta: float  # heterogeneity slow-down at full spread
    a: float  # prefill attention time per causal query-key pair

    @classmethod
    def probe(cls, cm: CostModel) -> "DecodeCoeffs":
        it = cm.iteration_time
        # linear part from pure-prefill iterations without attention: t(P) = o + max(W, c P)
        p1, p2 = 16384, 32768
        c = (it(p2, 0.0, 0, 0, 0) - it(p1, 0.0, 0, 0, 0)) / (p2 - p1)
        o = max(0.0, it(p1, 0.0, 0, 0, 0) - c * p1)
        W = max(0.0, it(1, 0.0, 0, 0, 0) - o)
        k = (it(0, 0.0, 1, 20000, 20000) - it(0, 0.0, 1, 10000, 10000)) / 10000
        r = max(0.0, (it(0, 0.0, 64, 64, 1) - it(0, 0.0, 32, 32, 1)) / 32)
        B = 512
        hom = it(0, 0.0, B, B * 1000, 1000)
        het = it(0, 0.0, B, B * 1000, 2000)
        beta = max(0.0, (het - hom) / max(1e-15, k * B * 1000 * 0.5))
        # prefill attention from the causal triangle: f(p) - c p - o, fitted at two sizes
        f = lambda p: it(p, p * p / 2.0, 0, 0, 0) - o - c * p  # noqa: E731
        q1, q2 = 8192, 16384
        a = max(0.0, (f(q2) - f(q1)) / ((q2 * q2 - q1 * q1) / 2.0))
        return cls(o, W, c, r, k, beta, a)

    def prefill_time(self, tokens, pairs):
        return tokens * self.c + pairs * self.a


def het_occupancy_table(cm: CostModel, max_batch: int) -> np.ndarray:
    """occ[b] = the cost model's heterogeneity slow-down of a b-request decode batch at full spread, relative
    to ``DecodeCoeffs.beta`` (the kernel's lanes fill up with the batch: small batches pay less), probed
    through ``iteration_time`` like the other coefficients."""
    key = ("occ", id(cm), max_batch)
    hit = _BASE_CACHE.get(key)
    if hit is not None and hit[0] is cm:
        return hit[1]
    K = DecodeCoeffs.probe(cm)
    it = cm.iteration_time
    occ = [0.0, 0.0]
    for b in range(2, max_batch + 1):
        het = it(0, 0.0, b, b * 1000, 2000) - it(0, 0.0, b, b * 1000, 1000)
        occ.append(max(0.0, het / max(1e-15, K.k * b * 1000 * 0.5 * max(K.beta, 1e-9))))
    tab = np.minimum(1.0, np.array(occ))
    _BASE_CACHE[key] = (cm, tab)
    return tab


def base_iteration_table(cm: CostModel, max_batch: int) -> np.ndarray:
    """base[b] = iteration time of b decoding requests with empty KV (linear layers, overheads, LM head)."""
    key = (id(cm), max_batch)
    hit = _BASE_CACHE.get(key)
    if hit is not None and hit[0] is cm:
        return hit[1]
    tab = np.array([0.0] + [cm.iteration_time(0, 0.0, b, 0, 0) for b in range(1, max_batch + 1)])
    _BASE_CACHE[key] = (cm, tab)
    return tab


_BASE_CACHE: dict = {}


def smallest_batch(rate: np.ndarray, bmax: np.ndarray, T) -> np.ndarray:
    """Smallest integer batch b in [1, bmax] with b / T(b) >= rate (the steady-state decode batch when
    tokens are demanded at ``rate`` per second); bmax where even that is too slow. Vectorized bisection:
    b / T(b) increases with b."""
    lo = np.ones(rate.shape, dtype=np.int64)
    hi = np.array(bmax, dtype=np.int64, copy=True)
    for _ in range(int(np.ceil(np.log2(max(2, int(hi.max()))))) + 1):
        mid = (lo + hi) // 2
        ok = mid / T(mid) >= rate
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, np.minimum(mid + 1, hi))
    return hi


class StageModel:
    """Precomputes the per-segment cost table C[i, j, m] (segment of buckets [i, j), m instances)."""

    def __init__(self, stats: LengthStats, edges: np.ndarray, rate: float, cm: CostModel, cfg: QoEConfig,
                 migration_stall=None):
        self.stats, self.edges, self.rate, self.cm, self.cfg = stats, edges, float(rate), cm, cfg
        self.B = len(edges) - 1
        n = stats.n
        fin = np.where(np.isinf(edges), stats.max_len + 1.0, edges)
        self.fin_edges = fin
        G, H = stats.G(fin), stats.H(fin)
        cnt, s1, s2 = stats.prompts_below(fin)
        self.cross = stats.crossing(fin[:-1]) / n  # migrations per request at each lower edge
        self.cross[0] = 0.0
        self.G, self.H, self.cnt, self.s1, self.s2 = G / n, H / n, cnt / n, s1 / n, s2 / n
        if migration_stall is None:
            self.mig_stall = np.zeros(self.B)
        else:
            self.mig_stall = np.array([migration_stall(int(e)) if i > 0 else 0.0 for i, e in enumerate(fin[:-1])])
        # top length decoded in each bucket (largest edge with tokens); last bucket: the sample's max length
        tok = np.diff(G)
        self.bucket_top = np.minimum(fin[1:], stats.max_len)
        self.has_tokens = tok > 0

    def segment_costs(self, max_instances: int) -> tuple[np.ndarray, dict]:
        """C[i, j, m] for 0 <= i < j <= B, 1 <= m <= max_instances (inf elsewhere), plus parts for reports."""
        B, cm, cfg, lam = self.B, self.cm, self.cfg, self.rate
        i_idx, j_idx = np.triu_indices(B + 1, k=1)  # all segments
        D = self.G[j_idx] - self.G[i_idx]  # decode tokens per request in segment
        Hs = self.H[j_idx] - self.H[i_idx]
        Lbar = np.where(D > 0, Hs / np.maximum(D, 1e-12), 0.0)
        # top: largest bucket edge with tokens inside [i, j)
        last_tok = np.where(self.has_tokens, np.arange(B), -1)
        last_tok = np.maximum.accumulate(last_tok)
        lt = last_tok[j_idx - 1]
        top = np.where(lt >= i_idx, self.bucket_top[np.maximum(lt, 0)], Lbar)
        top = np.maximum(top, Lbar)
        A_new = self.cnt[j_idx] - self.cnt[i_idx]  # new requests entering (per request of the sample)
        P1 = self.s1[j_idx] - self.s1[i_idx]
        P2 = self.s2[j_idx] - self.s2[i_idx]
        M_in = self.cross[i_idx]
        lo = self.fin_edges[i_idx]
        # prefill work per request: tokens and attention pairs (p^2/2); recompute migrations add lo tokens
        pre_tok = P1 + (M_in * lo if cfg.recompute_migrations else 0.0)
        pre_pairs = P2 / 2.0 + (M_in * lo * lo / 2.0 if cfg.recompute_migrations else 0.0)
        K = DecodeCoeffs.probe(cm)
        het = 1.0 + K.beta * (1.0 - Lbar / np.maximum(top, 1.0))
        dk = K.k * Lbar * het  # decode attention time each request adds to an iteration (range_top model)
        pre_time = K.prefill_time(pre_tok, pre_pairs)
        mean_prompt = np.where(A_new > 0, P1 / np.maximum(A_new, 1e-12), lo)
        mean_prefill_1 = K.prefill_time(mean_prompt, mean_prompt ** 2 / 2)
        kvcap = cm.kv_capacity_tokens() * cfg.kv_fill
        base = base_iteration_table(cm, cfg.max_running)  # base[b]: iteration of b decodes, KV excluded

        M = max_instances
        m = np.arange(1, M + 1, dtype=np.float64)[None, :]  # (1, M)
        Dm, dkm, Lm = D[:, None], dk[:, None], np.maximum(Lbar, 1.0)[:, None]
        u_p = lam * pre_time[:, None] / m
        r = lam * Dm / m
        Bkv = np.clip(np.floor(kvcap / Lm), 1, cfg.max_running).astype(np.int64)
        Bkv = np.broadcast_to(Bkv, u_p.shape)

        if cfg.batch_top:
            # the slow-down is set by the longest sequence *in the batch*: for b requests whose lengths are
            # drawn from the stage's decode-token distribution that is about its b/(b+1) token quantile
            # (found on the bucket edges, which carry the cumulative decode tokens G), not the stage's top
            occ = het_occupancy_table(cm, cfg.max_running)
            Gs, gi, gj = self.G, self.G[i_idx][:, None], self.G[j_idx][:, None]
            pos_axis = np.arange(len(Gs), dtype=np.float64)
            Gx = Gs + np.arange(len(Gs)) * 1e-15  # strictly increasing for interpolation
            # top_b tabulated once per segment on a geometric grid of batch sizes, linear in between
            bg = np.unique(np.round(np.geomspace(1, cfg.max_running, 48)).astype(np.int64))
            q = gi + (gj - gi) * (bg / (bg + 1.0))[None, :]
            tab = np.interp(np.interp(q, Gx, pos_axis), pos_axis, self.fin_edges)
            tab = np.clip(np.minimum(tab, top[:, None]), np.maximum(Lbar, 1.0)[:, None], None)
            # per (segment, grid point): the attention term's heterogeneity 1 - Lbar / top_b
            spread = (1.0 - np.maximum(Lbar, 1.0)[:, None] / np.maximum(tab, 1.0)).ravel()
            rows = (np.arange(len(i_idx)) * len(bg))[:, None]
            kLm = K.k * Lm
            pos_of = np.interp(np.arange(cfg.max_running + 1), bg, np.arange(len(bg), dtype=np.float64))
            betaocc = K.beta * occ

            def T(b):
                p = pos_of[b]
                k0 = np.minimum(p.astype(np.int64), len(bg) - 2)
                w = p - k0
                f = rows + k0
                sp = spread.take(f) * (1.0 - w) + spread.take(f + 1) * w
                return base[b] + b * kLm * (1.0 + betaocc[b] * sp)
        else:
            def T(b):
                return base[b] + b * dkm

        with np.errstate(divide="ignore", invalid="ignore"):
            thr_max = Bkv / T(Bkv)
            rho = u_p + r / thr_max  # >= 1 exactly when r / (1 - u_p) >= thr_max (overload)
            rp = r / np.maximum(1e-12, 1.0 - u_p)
            Bs = smallest_batch(rp, Bkv, T)
            if cfg.burst_z > 0:  # Poisson fluctuation of the stage's concurrency (square-root staffing)
                rp = rp * (1.0 + cfg.burst_z / np.sqrt(np.maximum(1.0, Bs * m)))
                rho = u_p + rp * np.maximum(1e-12, 1.0 - u_p) / thr_max
                Bs = smallest_batch(rp, Bkv, T)
            # prefill chunks share iterations with decode: each decode step is stretched by 1 / (1 - u_p)
            tpot = T(Bs) / np.maximum(1e-3, 1.0 - np.minimum(u_p, 0.999))
            ttft = tpot + mean_prefill_1[:, None] / np.maximum(1e-3, 1.0 - np.minimum(rho, 0.999))
        over = ~(rho < 1.0)
        share_tok = Dm / max(1e-12, self.G[-1])
        share_req = (A_new + M_in)[:, None]
        viol = 0.5 * share_tok * (tpot > cfg.slo_tpot) + 0.5 * A_new[:, None] * (ttft > cfg.slo_ttft)
        stall = self.mig_stall[i_idx][:, None]
        viol = viol + 0.5 * M_in[:, None] * (stall > cfg.slo_ttft)
        lat = Dm * tpot + A_new[:, None] * ttft + M_in[:, None] * stall
        cost = cfg.slo_weight * viol + lat
        cost = np.where(over, cfg.overload_weight * (1.0 + np.nan_to_num(rho, posinf=1e3)) *
                        (share_tok + share_req), cost)
        empty = (D <= 0) & (A_new <= 0)
        cost = np.where(empty[:, None], 0.0, cost)
        C = np.full((B + 1, B + 1, M + 1), np.inf)
        C[i_idx, j_idx, 1:] = cost
        C[:, :, 1:min(M, max(1, cfg.min_stage_instances))] = np.inf
        parts = {"i": i_idx, "j": j_idx, "tpot": tpot, "ttft": ttft, "viol": viol, "lat": lat, "rho": rho,
                 "D": D, "over": over, "u_p": u_p, "batch": Bs}
        self._parts = parts
        return C, parts

    def describe(self, i: int, j: int, m: int) -> dict:
        p = self._parts
        s = np.flatnonzero((p["i"] == i) & (p["j"] == j))[0]
        k = m - 1
        return {"tpot_s": float(p["tpot"][s, k]), "ttft_s": float(p["ttft"][s, k]), "rho": float(p["rho"][s, k]),
                "prefill_busy": float(p["u_p"][s, k]), "decode_batch": float(p["batch"][s, k]),
                "decode_tokens_per_req": float(p["D"][s]), "violation": float(p["viol"][s, k]),
                "latency_s_per_req": float(p["lat"][s, k]), "overloaded": bool(p["over"][s, k])}


# ------------------------------------------------------------------------------------------------- DP


def dp_partition(C: np.ndarray, N: int, max_stages: int | None = None) -> tuple[float, list[tuple[int, int, int]]]:
    """Exact DP: cover buckets [0, B) with contiguous segments, each with >= 1 instance, N in total.

    ``C[i, j, m]`` is the cost of segment [i, j) with m instances. Returns (cost, [(i, j, m), ...]).
    f[j, n] = best cost of covering buckets [0, j) with n instances (any number of stages; each stage
    has >= 1 instance so there are at most N). With ``max_stages`` the table gains a stage index.
    The min over (i, m) is vectorized: O(B^2 N^2) work in O(B) numpy steps.
    """
    B = C.shape[0] - 1
    if N < 1:
        raise ValueError("need at least one instance")
    if C.shape[2] < N + 1:
        raise ValueError("cost table has fewer instance counts than N")
    INF = np.inf
    nn = np.arange(N + 1)
    mm = np.arange(1, N + 1)
    idx = nn[:, None] - mm[None, :]  # (n, m): instances left for the prefix
    idx = np.where(idx >= 0, idx, N + 1)  # -> the padded inf column
    flat_idx = idx.ravel()
    Ct = np.ascontiguousarray(np.transpose(C[:, :, 1:N + 1], (1, 0, 2)))  # (j, i, m)

    def step(prev: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pad = np.concatenate([prev[:j], np.full((j, 1), INF)], axis=1)  # (i, N + 2)
        tot = pad[:, flat_idx].reshape(j, N + 1, N)  # (i, n, m): prefix cost with n - m instances
        tot += Ct[j, :j][:, None, :]
        flat = tot.transpose(1, 0, 2).reshape(N + 1, -1)  # (n, i*m)
        arg = np.argmin(flat, axis=1)
        return flat[nn, arg], arg // N, arg % N + 1

    if max_stages is None:
        f = np.full((B + 1, N + 1), INF)
        f[0, 0] = 0.0
        ch = np.zeros((B + 1, N + 1, 2), dtype=np.int64)
        for j in range(1, B + 1):
            f[j], ch[j, :, 0], ch[j, :, 1] = step(f, j)
        cost = float(f[B, N])
        if not np.isfinite(cost):
            raise ValueError("no feasible partition")
        segs, j, n = [], B, N
        while j > 0:
            i, m = ch[j, n]
            segs.append((int(i), int(j), int(m)))
            j, n = int(i), n - int(m)
        return cost, segs[::-1]

    K = max(1, min(B, N, max_stages))
    fk = np.full((B + 1, N + 1), INF)
    fk[0, 0] = 0.0
    chs, best = [], (INF, 0)
    for k in range(1, K + 1):
        nf = np.full((B + 1, N + 1), INF)
        ch = np.zeros((B + 1, N + 1, 2), dtype=np.int64)
        for j in range(1, B + 1):
            nf[j], ch[j, :, 0], ch[j, :, 1] = step(fk, j)
        chs.append(ch)
        if nf[B, N] < best[0]:
            best = (float(nf[B, N]), k)
        fk = nf
    if not np.isfinite(best[0]):
        raise ValueError("no feasible partition")
    segs, j, n = [], B, N
    for k in range(best[1], 0, -1):
        i, m = chs[k - 1][j, n]
        segs.append((int(i), int(j), int(m)))
        j, n = int(i), n - int(m)
    return best[0], segs[::-1]


def brute_force_partition(C: np.ndarray, N: int) -> tuple[float, list[tuple[int, int, int]]]:
    """Enumerate every partition (tests only; exponential)."""
    B = C.shape[0] - 1
    best = [np.inf, None]

    def rec(i: int, n: int, acc: float, segs: list):
        if i == B:
            if n == 0 and acc < best[0]:
                best[0], best[1] = acc, list(segs)
            return
        for j in range(i + 1, B + 1):
            for m in range(1, n + 1):
                segs.append((i, j, m))
                rec(j, n - m, acc + C[i, j, m], segs)
                segs.pop()

    rec(0, N, 0.0, [])
    return float(best[0]), best[1]


def plan_partition(sample: Sequence[tuple[int, int]], rate: float, num_instances: int, cm: CostModel,
                   cfg: QoEConfig | None = None, buckets: int = 64, max_stages: int | None = None,
                   migration_stall=None, instance_ids: Sequence[int] | None = None,
                   clock: Callable[[], float] | None = None) -> PartitionResult:
    """Best stage plan for a length sample at ``rate`` req/s on ``num_instances`` instances.

    Policies read no clock: pass ``clock`` (e.g. ``time.perf_counter``, as the CLI does) to have the
    table and DP timed in ``dp_time_s`` / ``breakdown``; without it those times are 0.
    """
    clock = clock or (lambda: 0.0)
    if rate <= 0:
        raise ValueError(f"arrival rate must be positive, got {rate}")
    cfg = cfg or QoEConfig()
    if migration_stall is None:
        from .migration import MigrationPlanner
        migration_stall = MigrationPlanner(cm).stall_at_length
    t0 = clock()
    stats = LengthStats(sample)
    edges = stats.token_quantile_edges(buckets)
    model = StageModel(stats, edges, rate, cm, cfg, migration_stall)
    C, _ = model.segment_costs(num_instances)
    t1 = clock()
    cost, segs = dp_partition(C, num_instances, max_stages)
    if cfg.min_gain > 0 and len(segs) > 1:
        # fewer stages unless more buy a clear predicted gain: the model's error is of the order of
        # min_gain, and every extra stage costs pooling (a smaller, burstier group) and migrations
        for k in range(1, len(segs)):
            ck, sk = dp_partition(C, num_instances, k)
            if ck <= cost + abs(cost) * cfg.min_gain:
                cost, segs = ck, sk
                break
    t2 = clock()
    dt = t2 - t0
    # merge: drop empty bound duplicates; segments are contiguous by construction
    bounds = [int(edges[i]) for (i, _, _) in segs[1:]]
    counts = [m for (_, _, m) in segs]
    plan = StagePlan.from_counts(bounds, counts, instance_ids)
    per_stage = [model.describe(i, j, m) for (i, j, m) in segs]
    viol = sum(s["violation"] for s in per_stage)
    lat = sum(s["latency_s_per_req"] for s in per_stage)
    breakdown = {"table_time_s": t1 - t0, "dp_only_time_s": t2 - t1, "violation": viol, "mean_latency_s": lat, "overloaded_stages": sum(s["overloaded"] for s in per_stage),
                 "stages": per_stage}
    return PartitionResult(plan, cost, max(0.0, 1.0 - viol), breakdown, dt, [float(e) for e in edges])
