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
  (prefill-first iterations stretch every decode step), capped at the saturation ceiling
  (``_tpot_ceiling``). The largest batch is KV-bounded (B_kv = kv_capacity * kv_fill / Lbar); r beyond
  B_kv / T(B_kv) is overload.
- Prefill: each sampled prompt's exact chunked prefill seconds (``prefill_seconds``), summed per segment;
  TTFT from the prefill-first M/G/1 queue (``_ttft_queue``). ``QoEConfig(ttft_queue=False,
  burst_batch=True)`` is the first version (linearized prefill, TTFT ~ T(B) + prefill(mean prompt) /
  (1 - rho), burst head-room in the batch); docs/cascade.md has the measured errors of both.
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
    prefill_bound: float = 0.0  # > 0: one stage when the pooled plan's utilization is at least this and
    # prefill is at least this fraction of it: splitting by length frees no prefill capacity
    ttft_queue: bool = True  # TTFT from the prefill-first queue (M/G/1 on prefill work, decode iterations as
    # non-preemptive interruptions; True) or the first version's iteration + mean prefill / (1 - rho) (False)
    prefill_chunk: int = 8192  # engine chunked-prefill size (SGLang --chunked-prefill-size / max_prefill_tokens)
    burst_batch: bool = False  # the Poisson head-room (burst_z) also inflates the steady decode batch (the
    # first version; over-predicts batch and TPOT near saturation) or only the utilization rho (False)


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


def _erlang_c(A: np.ndarray, M: int) -> np.ndarray:
    """Erlang C (probability of waiting in M/M/m) for offered loads A (per segment, in servers) and
    m = 1..M servers -> (len(A), M); 1 where A >= m. Erlang B by its recursion, then C from B."""
    A = np.asarray(A, dtype=np.float64)
    out = np.empty((len(A), M))
    b = np.ones_like(A)
    for k in range(1, M + 1):
        b = A * b / (k + A * b)
        rho = A / k
        with np.errstate(divide="ignore", invalid="ignore"):
            c = b / (1.0 - rho * (1.0 - b))
        out[:, k - 1] = np.where(rho < 1.0, c, 1.0)
    return np.clip(np.nan_to_num(out, nan=1.0), 0.0, 1.0)


def prefill_seconds(cm: CostModel, prompts: np.ndarray, chunk: int) -> np.ndarray:
    """Prefill time of each prompt as the engine runs it alone: chunks of ``chunk`` tokens, each attending
    to the chunks before it (``CostModel.batch_time``), tabulated on a geometric grid and interpolated."""
    top = float(max(1.0, np.max(prompts))) if len(prompts) else 1.0
    hi = 2 ** int(np.ceil(np.log2(top + 1)))
    key = ("prefill", id(cm), int(chunk), hi)
    hit = _BASE_CACHE.get(key)
    if hit is None or hit[0] is not cm:
        grid = np.unique(np.round(np.geomspace(1, hi, 160)))
        vals = []
        for p in grid.astype(np.int64):
            t, done = 0.0, 0
            while done < p:
                c = int(min(chunk, p - done))
                t += cm.batch_time([(c, done)])
                done += c
            vals.append(t)
        hit = (cm, (grid, np.array(vals)))
        _BASE_CACHE[key] = hit
    grid, vals = hit[1]
    return np.interp(np.asarray(prompts, dtype=np.float64), grid, vals)


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
    S1: np.ndarray  # sum over entering prompts of their prefill seconds (per request of the sample)
    S2: np.ndarray  # ... of its square


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
        # exact prefill seconds of every sampled prompt (chunked as the engine does), summed below each edge
        sp = prefill_seconds(cm, stats.p_sorted, cfg.prefill_chunk)
        below = stats._below(stats.p_sorted, fin)
        self.S1 = np.concatenate([[0.0], np.cumsum(sp)])[below] / n
        self.S2 = np.concatenate([[0.0], np.cumsum(sp * sp)])[below] / n
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
        S1, S2 = self.S1[j_idx] - self.S1[i_idx], self.S2[j_idx] - self.S2[i_idx]
        return _Segments(i_idx, j_idx, D, Lbar, top, A_new, M_in, pre_tok, pre_pairs, mean_prompt, S1, S2)

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
        # per batch size b: the grid cell and its interpolation weights (looked up, not recomputed)
        k0_of = np.minimum(pos_of.astype(np.int64), len(bg) - 2)
        w_of = pos_of - k0_of
        w0_of = 1.0 - w_of

        def T(b, seg=None):  # b broadcast against the segments (S, 1), or per element of ``seg``
            k0 = k0_of.take(b)
            f = (rows if seg is None else rows[:, 0].take(seg)) + k0
            sp = spread.take(f) * w0_of.take(b) + spread.take(f + 1) * w_of.take(b)
            return base.take(b) + b * (kLm if seg is None else kLm[:, 0].take(seg)) * (1.0 + betaocc.take(b) * sp)

        return T, Lm

    def _steady_state(self, seg: _Segments, K: DecodeCoeffs, T: Callable, Lm: np.ndarray, max_instances: int) -> _Load:
        """Per (segment, m instances): prefill busy share, steady decode batch, TPOT, TTFT, utilization."""
        cfg, lam = self.cfg, self.rate
        m = np.arange(1, max_instances + 1, dtype=np.float64)[None, :]  # (1, M)
        if cfg.ttft_queue:  # exact chunked prefill seconds of the entering prompts (+ recompute migrations)
            lo = self.fin_edges[seg.i]
            extra = K.prefill_time(seg.M_in * lo, seg.M_in * lo * lo / 2.0) if cfg.recompute_migrations else 0.0
            u_p = lam * (seg.S1 + extra)[:, None] / m
        else:  # the first version: the linearized prefill of the entering tokens and pairs
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
                if cfg.burst_batch:  # the head-room also in the mean batch (first version)
                    Bs = T.smallest_batch(rp, Bkv)
            # prefill-first iterations: decode gets the 1 - u_p of the time left, each step is stretched
            free = np.maximum(1e-3, 1.0 - np.minimum(u_p, 0.999))
            tpot = T(Bs) / free
            if cfg.ttft_queue:  # saturation ceiling (see _tpot_ceiling)
                tpot = np.minimum(tpot, self._tpot_ceiling(seg, T, Bkv))
            if cfg.ttft_queue:
                ttft = self._ttft_queue(seg, K, T(Bs), free, m)
            else:
                ttft = tpot + mean_prefill_1[:, None] / np.maximum(1e-3, 1.0 - np.minimum(rho, 0.999))
        return _Load(u_p, rho, Bs, tpot, ttft, ~(rho < 1.0))

    def _tpot_ceiling(self, seg: _Segments, T: IterationTable, Bkv: np.ndarray) -> np.ndarray:
        """TPOT of a saturated stage. Past the knee the KV pool is full and a new prompt is admitted (and
        prefilled, prefill-first) only as running requests finish, so the prefill share is set by the
        completions instead of growing without bound: with the batch at B_kv, TPOT (1 - u) = T(B_kv) and
        u = B_kv E[S] / (D_e TPOT) (D_e decode tokens and E[S] prefill seconds per entering request) give
        TPOT = T(B_kv) + B_kv S1 / D. The steady-state T(B) / (1 - u_p) would diverge as u_p -> 1."""
        return T(Bkv) + Bkv * (seg.S1 / np.maximum(seg.D, 1e-12))[:, None]

    def _ttft_queue(self, seg: _Segments, K: DecodeCoeffs, t_iter: np.ndarray, free: np.ndarray, m: np.ndarray):
        """Mean TTFT under SGLang's prefill-first FCFS scheduling (no mixed chunks): an arrival waits for the
        iteration in progress and the prefill work queued ahead of it, then its own prefill (chunks back to
        back). Prefills are an M/G/1 queue whose server is also busy with non-preemptive decode iterations
        (share 1 - u_p, length T(B)): Pollaczek-Khinchine with that residual,
        W = lam_i E[S^2] / (2 (1 - u_p)) + T(B) / 2, TTFT = W + E[S]; for m members dispatched
        least-loaded the queueing term is M/G/m's: Erlang C(m, A) E[S^2] / (2 E[S] m (1 - u_p)) (equal to
        P-K at m = 1), which credits a pooled stage for sharing its members. S(p) = c p + a p^2 / 2, so E[S^2] needs
        S is each sampled prompt's exact prefill time, chunked by ``prefill_chunk`` as the engine runs it
        (``prefill_seconds``): most of a long prompt's attention pairs are then cheaper prefix pairs. A
        long-prompt stage thus pays its own long prefills through E[S^2], instead of the old
        prefill(mean prompt) / (1 - rho), which charged decode load as prefill queueing."""
        es = np.where(seg.A_new > 0, seg.S1 / np.maximum(seg.A_new, 1e-12), 0.0)[:, None]
        # the stage's m members share one queue (least-loaded dispatch): M/G/m, i.e. the M/G/1 wait scaled
        # by Erlang C (Allen-Cunneen); offered prefill load A = rate x S1 (in instances) is per segment
        erlang_c = _erlang_c(self.rate * seg.S1, m.shape[1])
        wait = erlang_c * seg.S2[:, None] / np.maximum(2.0 * es * m * free, 1e-12) + t_iter / 2.0
        return wait + es

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
