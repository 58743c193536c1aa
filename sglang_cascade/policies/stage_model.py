"""The analytic per-stage model: the cost of serving a length range with m instances (offline planning).

policies/stage_dp.py chooses a stage plan (policies/stages.py) by an exact DP over the cost table
``StageModel.segment_costs`` builds from a length sample (``LengthStats``).

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.costmodel import CostModel

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
    def probe(cls, cm: CostModel) -> DecodeCoeffs:
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


class IterationTable:
    """T(b) of every segment tabulated once for b = 0..bmax(segment) (a ragged table: segment s occupies
    ``bmax[s] + 1`` consecutive entries), so the bisection of the steady-state batch and the final lookups
    are gathers instead of re-evaluations of T. The values are T itself evaluated elementwise, so every
    result is the same as evaluating T at each bisection step, at several times less work."""

    def __init__(self, T: Callable, bmax: np.ndarray):
        n = np.asarray(bmax, dtype=np.int64) + 1
        off = np.concatenate([[0], np.cumsum(n)[:-1]])
        seg = np.repeat(np.arange(len(n)), n)
        b = np.arange(int(n.sum()), dtype=np.int64) - off[seg]
        self.tab = np.asarray(T(b, seg), dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.thr = b / self.tab  # b / T(b): decode tokens per second at batch b
        self.rows = off[:, None]

    def __call__(self, b: np.ndarray) -> np.ndarray:
        return self.tab.take(self.rows + b)

    def smallest_batch(self, rate: np.ndarray, bmax: np.ndarray) -> np.ndarray:
        """``smallest_batch(rate, bmax, self)`` (the same bisection path, hence the same result) on the
        tabulated throughput, with flat indices into the table."""
        rows = np.broadcast_to(self.rows, rate.shape)
        lo = rows + 1
        hi = rows + np.asarray(bmax, dtype=np.int64)
        mid, ok = np.empty_like(lo), np.empty(rate.shape, dtype=bool)
        for _ in range(int(np.ceil(np.log2(max(2, int(np.max(bmax)))))) + 1):
            np.add(lo, hi, out=mid)
            mid >>= 1
            np.greater_equal(self.thr.take(mid), rate, out=ok)
            np.copyto(hi, mid, where=ok)  # ok: the answer is at most mid
            mid += 1
            np.minimum(mid, hi, out=mid)
            np.logical_not(ok, out=ok)
            np.copyto(lo, mid, where=ok)  # not ok: it is above mid
        return hi - rows


@dataclass
class _Segments:
    """Every segment [i, j) of buckets, as parallel arrays: its demand per request of the sample."""

    i: np.ndarray
    j: np.ndarray
    D: np.ndarray  # decode tokens produced inside the segment
    Lbar: np.ndarray  # their mean KV length
    top: np.ndarray  # the largest length decoded inside
    A_new: np.ndarray  # new requests entering (arrivals whose prompt lies inside)
    M_in: np.ndarray  # migrations in at the segment's lower bound
    pre_tok: np.ndarray  # prefill tokens entering
    pre_pairs: np.ndarray  # prefill attention pairs entering
    mean_prompt: np.ndarray


@dataclass
class _Load:
    """Per (segment, instance count): the steady state of a stage."""

    u_p: np.ndarray  # prefill busy share
    rho: np.ndarray  # utilization (>= 1: overloaded)
    batch: np.ndarray  # steady decode batch
    tpot: np.ndarray
    ttft: np.ndarray
    over: np.ndarray


class StageModel:
    """Precomputes the per-segment cost table C[i, j, m] (segment of buckets [i, j), m instances)."""

    def __init__(
        self, stats: LengthStats, edges: np.ndarray, rate: float, cm: CostModel, cfg: QoEConfig, migration_stall=None
    ):
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
        seg = self._segment_demand()
        K = DecodeCoeffs.probe(self.cm)
        T, Lm = self._iteration_time(seg, K)
        load = self._steady_state(seg, K, T, Lm, max_instances)
        cost, viol, lat = self._segment_cost(seg, load)
        C = np.full((self.B + 1, self.B + 1, max_instances + 1), np.inf)
        C[seg.i, seg.j, 1:] = cost
        C[:, :, 1 : min(max_instances, max(1, self.cfg.min_stage_instances))] = np.inf
        parts = {
            "i": seg.i,
            "j": seg.j,
            "tpot": load.tpot,
            "ttft": load.ttft,
            "viol": viol,
            "lat": lat,
            "rho": load.rho,
            "D": seg.D,
            "over": load.over,
            "u_p": load.u_p,
            "batch": load.batch,
        }
        self._parts = parts
        return C, parts

    def _segment_demand(self) -> _Segments:
        """Per segment [i, j) of buckets (all of them at once): the work one request brings it."""
        B, cfg = self.B, self.cfg
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
        mean_prompt = np.where(A_new > 0, P1 / np.maximum(A_new, 1e-12), lo)
        return _Segments(i_idx, j_idx, D, Lbar, top, A_new, M_in, pre_tok, pre_pairs, mean_prompt)

    def _iteration_time(self, seg: _Segments, K: DecodeCoeffs) -> tuple[Callable, np.ndarray]:
        """T(b): the decode iteration time of a b-request batch in each segment (vectorized over b)."""
        cm, cfg = self.cm, self.cfg
        Lbar, top = seg.Lbar, seg.top
        base = base_iteration_table(cm, cfg.max_running)  # base[b]: iteration of b decodes, KV excluded
        Lm = np.maximum(Lbar, 1.0)[:, None]
        if not cfg.batch_top:
            het = 1.0 + K.beta * (1.0 - Lbar / np.maximum(top, 1.0))
            dkm = (K.k * Lbar * het)[:, None]  # decode attention time each request adds (range_top model)

            def T_range(b, seg=None):
                return base[b] + b * (dkm if seg is None else dkm[:, 0][seg])

            return T_range, Lm
        # the slow-down is set by the longest sequence *in the batch*: for b requests whose lengths are
        # drawn from the stage's decode-token distribution that is about its b/(b+1) token quantile
        # (found on the bucket edges, which carry the cumulative decode tokens G), not the stage's top
        occ = het_occupancy_table(cm, cfg.max_running)
        Gs, gi, gj = self.G, self.G[seg.i][:, None], self.G[seg.j][:, None]
        pos_axis = np.arange(len(Gs), dtype=np.float64)
        Gx = Gs + np.arange(len(Gs)) * 1e-15  # strictly increasing for interpolation
        # top_b tabulated once per segment on a geometric grid of batch sizes, linear in between
        bg = np.unique(np.round(np.geomspace(1, cfg.max_running, 48)).astype(np.int64))
        q = gi + (gj - gi) * (bg / (bg + 1.0))[None, :]
        tab = np.interp(np.interp(q, Gx, pos_axis), pos_axis, self.fin_edges)
        tab = np.clip(np.minimum(tab, top[:, None]), np.maximum(Lbar, 1.0)[:, None], None)
        # per (segment, grid point): the attention term's heterogeneity 1 - Lbar / top_b
        spread = (1.0 - np.maximum(Lbar, 1.0)[:, None] / np.maximum(tab, 1.0)).ravel()
        rows = (np.arange(len(seg.i)) * len(bg))[:, None]
        kLm = K.k * Lm
        pos_of = np.interp(np.arange(cfg.max_running + 1), bg, np.arange(len(bg), dtype=np.float64))
        betaocc = K.beta * occ

        def T(b, seg=None):  # b broadcast against the segments (S, 1), or per element of ``seg``
            p = pos_of[b]
            k0 = np.minimum(p.astype(np.int64), len(bg) - 2)
            w = p - k0
            f = (rows if seg is None else rows[:, 0][seg]) + k0
            sp = spread.take(f) * (1.0 - w) + spread.take(f + 1) * w
            return base[b] + b * (kLm if seg is None else kLm[:, 0][seg]) * (1.0 + betaocc[b] * sp)

        return T, Lm

    def _steady_state(self, seg: _Segments, K: DecodeCoeffs, T: Callable, Lm: np.ndarray, max_instances: int) -> _Load:
        """Per (segment, m instances): prefill busy share, steady decode batch, TPOT, TTFT, utilization."""
        cfg, lam = self.cfg, self.rate
        m = np.arange(1, max_instances + 1, dtype=np.float64)[None, :]  # (1, M)
        u_p = lam * K.prefill_time(seg.pre_tok, seg.pre_pairs)[:, None] / m
        r = lam * seg.D[:, None] / m
        kvcap = self.cm.kv_capacity_tokens() * cfg.kv_fill
        Bkv = np.clip(np.floor(kvcap / Lm), 1, cfg.max_running).astype(np.int64)
        T = IterationTable(T, Bkv[:, 0])
        thr_max = Bkv / T(Bkv)  # (S, 1): the KV-bounded batch's token rate
        Bkv = np.broadcast_to(Bkv, u_p.shape)
        mean_prefill_1 = K.prefill_time(seg.mean_prompt, seg.mean_prompt**2 / 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = u_p + r / thr_max  # >= 1 exactly when r / (1 - u_p) >= thr_max (overload)
            rp = r / np.maximum(1e-12, 1.0 - u_p)
            Bs = T.smallest_batch(rp, Bkv)
            if cfg.burst_z > 0:  # Poisson fluctuation of the stage's concurrency (square-root staffing)
                rp = rp * (1.0 + cfg.burst_z / np.sqrt(np.maximum(1.0, Bs * m)))
                rho = u_p + rp * np.maximum(1e-12, 1.0 - u_p) / thr_max
                Bs = T.smallest_batch(rp, Bkv)
            # prefill chunks share iterations with decode: each decode step is stretched by 1 / (1 - u_p)
            tpot = T(Bs) / np.maximum(1e-3, 1.0 - np.minimum(u_p, 0.999))
            ttft = tpot + mean_prefill_1[:, None] / np.maximum(1e-3, 1.0 - np.minimum(rho, 0.999))
        return _Load(u_p, rho, Bs, tpot, ttft, ~(rho < 1.0))

    def _segment_cost(self, seg: _Segments, load: _Load) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The DP cost (see the module docstring) of each (segment, m), with its violation and latency."""
        cfg = self.cfg
        Dm, A_new, M_in = seg.D[:, None], seg.A_new[:, None], seg.M_in[:, None]
        share_tok = Dm / max(1e-12, self.G[-1])
        share_req = (seg.A_new + seg.M_in)[:, None]
        viol = 0.5 * share_tok * (load.tpot > cfg.slo_tpot) + 0.5 * A_new * (load.ttft > cfg.slo_ttft)
        stall = self.mig_stall[seg.i][:, None]
        viol = viol + 0.5 * M_in * (stall > cfg.slo_ttft)
        lat = Dm * load.tpot + A_new * load.ttft + M_in * stall
        cost = cfg.slo_weight * viol + lat
        cost = np.where(
            load.over, cfg.overload_weight * (1.0 + np.nan_to_num(load.rho, posinf=1e3)) * (share_tok + share_req), cost
        )
        empty = (seg.D <= 0) & (seg.A_new <= 0)
        return np.where(empty[:, None], 0.0, cost), viol, lat

    def describe(self, i: int, j: int, m: int) -> dict:
        p = self._parts
        s = np.flatnonzero((p["i"] == i) & (p["j"] == j))[0]
        k = m - 1
        return {
            "tpot_s": float(p["tpot"][s, k]),
            "ttft_s": float(p["ttft"][s, k]),
            "rho": float(p["rho"][s, k]),
            "prefill_busy": float(p["u_p"][s, k]),
            "decode_batch": float(p["batch"][s, k]),
            "decode_tokens_per_req": float(p["D"][s]),
            "violation": float(p["viol"][s, k]),
            "latency_s_per_req": float(p["lat"][s, k]),
            "overloaded": bool(p["over"][s, k]),
        }
