"""Batch-time cost model: one engine iteration's time from its work.

PUBLIC API (stable; the simulator, policies, optimal solver and fake worker call exactly this):

    cm = CostModel.for_names("llama-3-8b", "h100", tp=1)
    cm.iteration_time(prefill_tokens, prefill_attn_work, decode_batch, decode_kv_sum, decode_kv_max) -> s
    cm.batch_time(prefill=[(new_tokens, kv_before), ...], decode_kv=[kv_len, ...]) -> s
    cm.kv_capacity_tokens() -> int          # GPU KV pool size in tokens (memory minus weights, per GPU)
    cm.kv_bytes_per_token -> int
    cm.host_to_device_time(tokens) / cm.device_to_device_time(tokens) -> s   # KV moves

``prefill_attn_work`` is sum over prefill chunks of ``chunk * (kv_before + chunk / 2)`` (query-key pairs);
use :func:`prefill_attn_work` to compute it.

Added (optional) API: ``iteration_time(..., prefill_causal=x)`` (sum of ``chunk**2 / 2``; default: a single
chunk is assumed), :meth:`CostModel.breakdown`, :meth:`CostModel.decode_heterogeneity`,
:meth:`CostModel.linear_coefficients`, :meth:`CostModel.kv_capacity_breakdown`, ``cm.linear_source``,
:meth:`CostModel.decode_schedule_time`.

Model (docs/costmodel.md):
  t = engine overhead (per iteration, per layer, per request)
    + linear layers: Vidur per-layer operator medians at ``prefill_tokens + decode_batch`` tokens (piecewise
      linear, linear extrapolation) x layers + embedding + 2 all-reduces per layer (Vidur NCCL fit) when tp > 1
      (+ an engine profile's all-reduce excess per token beyond a threshold, x 2(tp-1)/tp; 0 for ``sglang``)
    + LM head (roofline) on the tokens that produce logits
    + prefill attention (compute-bound on query-key pairs; causal triangle and cached prefix separately)
    + decode attention (memory-bound on KV bytes read, times a length-heterogeneity factor, plus a
      kernel-scheduling term: CTA waves that each stream the longest request's KV, or split-KV + combine for
      small batches; see :meth:`CostModel.decode_schedule_time`).
Attention parameters live in ``data/calibration/attention.json`` (core/calibration.py); engine overheads in
``data/calibration/engine.json``. A (model, gpu, tp) without a Vidur profile falls back to a roofline for the
linear layers (``cm.linear_source`` says so and a warning is issued).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from .calibration import AttentionCalibration, heterogeneity_factor, load_attention
from .hardware import hardware_engine_name, hardware_kv_capacity, hardware_profiles
from .profiles import EngineParams, LinearProfile, allreduce_fit, engine_params, interp, linear_profile, tail_slope
from .specs import GpuSpec, ModelSpec, get_gpu, get_model


def prefill_attn_work(chunks: Sequence[tuple[int, int]]) -> float:
    """Query-key pairs of causal prefill chunks given as (new_tokens, kv_before)."""
    return float(sum(n * (k + n / 2.0) for n, k in chunks))


@dataclass(slots=True)
class Calibration:
    """Knobs outside the measured tables. ``mfu``/``hbm_efficiency`` drive only the roofline fallback and
    the LM head; the other three fields are filled from the measured model for old callers that read them
    (``iteration_overhead_s``, ``heterogeneity_beta``) and are not inputs."""

    hbm_efficiency: float = 0.8  # roofline fallback: fraction of peak HBM bandwidth for weight reads
    mfu: float = 0.55  # roofline fallback: fraction of peak FLOP/s for dense matmuls
    heterogeneity_beta: float = 1.0  # (read-only mirror of attention.json heterogeneity.beta)
    iteration_overhead_s: float = 0.0  # (read-only mirror of the engine profile's per-iteration cost)
    mem_fraction: float | None = None  # None: SGLang 0.5.23's mem_fraction_static heuristic for this GPU
    activation_reserve_bytes: float = 1.0e9  # CUDA context + library workspaces outside SGLang's reserve
    engine: str = "sglang"  # engine profile in data/calibration/engine.json
    attention_file: str | None = None  # another attention.json (e.g. one written by the GPU calibration)
    attention_backend: str = "flashinfer"  # SGLang --attention-backend: flashinfer | fa3 | triton (heterogeneity)


# ------------------------------------------------------------------------------------------ SGLang memory
def sglang_mem_fraction_static(gpu_mem_bytes: float, tp: int, chunked_prefill_size: int = 8192) -> float:
    """SGLang 0.5.23 ``handle_gpu_memory_settings`` default (arg_groups/memory_hook.py), non-MLA, CUDA graphs on."""
    mb = gpu_mem_bytes / 2**20
    if mb < 20 * 1024:
        chunk, max_bs = 2048, 8
    elif mb < 35 * 1024:
        chunk, max_bs = 4096, (48 if tp < 4 else 160)
    elif mb < 60 * 1024:
        chunk, max_bs = 4096, (32 if tp < 4 else 160)
    else:
        chunk, max_bs = chunked_prefill_size, (256 if tp < 4 else 512)
    reserved = 512 + max(chunk, 2048) * 1.5 + tp / 8 * 1024 + max_bs * 2
    if mb > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    return round((mb - reserved) / mb, 3)


# ------------------------------------------------------------------------------------------ shared tables
@dataclass(frozen=True, slots=True)
class _LinearTable:
    per_token: tuple[float, ...]  # seconds for n tokens, n = 0..N: linear_scale*(layers + emb + all-reduce) + per-layer
    # overhead + the engine's all-reduce excess (EngineParams.comm_per_token_s)
    slope: float  # seconds per token beyond N
    source: str


def _roofline_profile(m: ModelSpec, g: GpuSpec, tp: int, mfu: float, eff: float) -> LinearProfile:
    nonemb = m.params - 2 * m.vocab * m.hidden  # embedding + LM head are not decoder-layer weights
    per_layer_params = nonemb / m.layers / tp
    toks = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    lay = [
        max(n * 2 * per_layer_params / (g.peak_flops * mfu), per_layer_params * m.dtype_bytes / (g.hbm_bandwidth * eff))
        for n in toks
    ]
    return LinearProfile("roofline", tuple(toks), tuple(lay), tuple(0.0 for _ in toks))


@lru_cache(maxsize=64)
def _linear_table(model: str, gpu: str, tp: int, engine: str, mfu: float, eff: float) -> _LinearTable:
    m, g = get_model(model), get_gpu(gpu)
    prof = linear_profile(g.name, m.vidur_name, tp) if m.vidur_name else None
    if prof is None:
        prof = _roofline_profile(m, g, tp, mfu, eff)
        source = f"roofline (no Vidur profile for {m.name} on {g.name} tp={tp}; mfu={mfu}, hbm_eff={eff})"
    else:
        source = f"vidur:{prof.key}"
    ar = allreduce_fit(g.name, tp) if tp > 1 else None
    if tp > 1 and ar is None:  # no NCCL profile: NVLink datasheet bandwidth, ring all-reduce 2(tp-1)/tp
        ar = (2.5e-5, g.nvlink_bandwidth * tp / (2 * (tp - 1)))
        source += f"; all-reduce from NVLink spec (no Vidur profile for {g.name} tp={tp})"
    eng = engine_params(engine)
    layer_fixed, sc = eng.per_layer_s, eng.linear_scale
    L = m.layers
    xs, ys, es = prof.tokens, prof.layer_s, prof.emb_s
    N = xs[-1]
    table = [0.0] * (N + 1)
    for n in range(1, N + 1):
        t = L * interp(xs, ys, n) + interp(xs, es, n)
        if ar is not None:
            t += 2 * L * (ar[0] + n * m.hidden * m.dtype_bytes / ar[1])
        table[n] = sc * t + L * layer_fixed
    ring = 2.0 * (tp - 1) / tp  # ring all-reduce bytes factor; engine all-reduce excess beyond a token threshold
    comm, c0 = eng.comm_per_token_s * ring, eng.comm_threshold_tokens
    if comm > 0.0:
        if c0 > N:
            raise ValueError(f"engine {engine!r}: comm_threshold_tokens={c0} beyond the profiled range ({N} tokens)")
        for n in range(c0 + 1, N + 1):
            table[n] += comm * (n - c0)
    # slope beyond the last point: last profiled segment (+ all-reduce bytes)
    slope = L * tail_slope(xs, ys) + tail_slope(xs, es)
    if ar is not None:
        slope += 2 * L * m.hidden * m.dtype_bytes / ar[1]
    slope = slope * sc + comm
    return _LinearTable(tuple(table), max(slope, 0.0), source)


@lru_cache(maxsize=8)
def _attention_cals(path: str | None) -> dict[str, AttentionCalibration]:
    cals = load_attention(path)
    for name, prof in hardware_profiles().items():  # measured devices carry their own attention parameters
        if name not in cals and "attention" in prof:
            cals[name] = AttentionCalibration.from_dict({"gpu": name, **prof["attention"]})
    return cals


@lru_cache(maxsize=64)
def _wave_table(wave_s: float, kv_heads_per_gpu: int, wave_ctas: int, n: int) -> tuple[float, ...]:
    """wave_s x number of CTA waves for decode batch sizes 0..n-1."""
    return tuple(wave_s * (-(-(b * kv_heads_per_gpu) // wave_ctas)) for b in range(n))


_WARNED: set[str] = set()


def clear_caches() -> None:
    """Forget loaded calibration files and tables (after a refit rewrote them)."""
    from . import profiles

    _linear_table.cache_clear()
    _attention_cals.cache_clear()
    _wave_table.cache_clear()
    for f in (profiles._load, profiles.linear_profile, profiles.allreduce_fit, profiles.engine_params):
        f.cache_clear()
    hardware_profiles.cache_clear()


class CostModel:
    def __init__(self, model: ModelSpec, gpu: GpuSpec, tp: int = 1, calibration: Calibration | None = None):
        if tp < 1:
            raise ValueError(f"tp must be >= 1, got {tp}")
        if model.heads % tp or (model.kv_heads % tp and tp % model.kv_heads):
            raise ValueError(f"{model.name}: {model.heads} heads / {model.kv_heads} KV heads do not split over tp={tp}")
        self.model, self.gpu, self.tp = model, gpu, tp
        self.cal = cal = calibration or Calibration()
        m, g = model, gpu
        self.kv_bytes_per_token = m.kv_bytes_per_token(tp)
        self.kv_heads_per_gpu = max(1, m.kv_heads // tp)
        engine = hardware_engine_name(g.name, cal.engine)  # a measured device brings its own engine overheads
        self.engine: EngineParams = engine_params(engine)
        cals = _attention_cals(cal.attention_file)
        if g.name not in cals:
            raise ValueError(f"no attention calibration for GPU {g.name!r} in attention.json (have {sorted(cals)})")
        self.attention: AttentionCalibration = cals[g.name]
        tab = _linear_table(m.name, g.name, tp, engine, cal.mfu, cal.hbm_efficiency)
        self._lin, self._lin_n, self._lin_slope = tab.per_token, len(tab.per_token) - 1, tab.slope
        self.linear_source = tab.source
        if tab.source.startswith("roofline") and tab.source not in _WARNED:
            _WARNED.add(tab.source)
            warnings.warn(f"cost model linear layers: {tab.source}", stacklevel=2)
        # --- constants for the hot path
        L = m.layers
        e, d, p = self.engine, self.attention.decode, self.attention.prefill
        h = self.attention.heterogeneity_for(cal.attention_backend)
        self._fixed = e.iteration_s + e.per_tp_s * (tp - 1)
        self._per_req = e.per_request_s
        self._dec_fixed = L * d.fixed_s
        self._dec_per_req = L * d.per_request_s
        self._dec_per_kv = self.kv_bytes_per_token / (g.hbm_bandwidth * d.hbm_efficiency)
        # waves / split-KV (calibration.DecodeParams): CTAs = batch x kv_heads_per_gpu
        self._dec_wave = L * d.wave_per_kv_s
        self._dec_wave_ctas = max(1, d.ctas_per_sm * g.sm_count)
        self._dec_split_ctas = d.split_ctas_fraction * g.sm_count
        self._dec_split_fixed = L * d.split_fixed_s
        self._dec_split_kv = (
            L * d.split_per_kv_s * self.kv_heads_per_gpu / g.sm_count
        )  # x kv_sum (= kv_mean x CTAs / SMs)
        # per batch size b < _dec_wave_n: wave seconds per KV token of the longest request; split-KV below _dec_split_b
        self._dec_wave_n = 4096 if self._dec_wave > 0.0 else 0
        self._dec_wave_tab = _wave_table(self._dec_wave, self.kv_heads_per_gpu, self._dec_wave_ctas, self._dec_wave_n)
        self._dec_split_b = min(self._dec_wave_n, math.ceil(self._dec_split_ctas / self.kv_heads_per_gpu))
        heads_gpu = m.heads // tp
        fpp = 4.0 * heads_gpu * m.head_dim  # FLOPs per query-key pair per layer (QK^T and PV)
        self._pre_fixed = L * p.fixed_s
        self._pre_per_tok = L * p.per_token_s
        self._pre_prefix = L * fpp / (g.peak_flops * p.prefix_efficiency)
        self._pre_causal = L * fpp / (g.peak_flops * p.causal_efficiency)
        self._het = h
        lm_params = m.vocab * m.hidden / tp
        self._lm_mem = lm_params * m.dtype_bytes / (g.hbm_bandwidth * cal.hbm_efficiency)
        self._lm_flop = 2.0 * lm_params / (g.peak_flops * cal.mfu)
        # --- attributes read by older callers (policies/stages.py): a linearization consistent with the
        # tables. New code should call linear_coefficients().
        self._weights = m.weight_bytes(tp)  # physical weight bytes per GPU (KV capacity)
        n_hi = self._lin_n
        slope_hi = (self._lin[n_hi] - self._lin[n_hi // 2]) / (n_hi - n_hi // 2)
        self._linear_flops_per_token = slope_hi * g.peak_flops * cal.mfu
        self._weight_bytes = (self._lin[1] + self._lm_mem) * g.hbm_bandwidth * cal.hbm_efficiency
        self._attn_flops_per_pair = L * fpp * (cal.mfu / p.prefix_efficiency)
        cal.heterogeneity_beta = h.beta
        cal.iteration_overhead_s = self._fixed

    @classmethod
    def for_names(cls, model: str, gpu: str, tp: int = 1, calibration: Calibration | None = None) -> CostModel:
        return cls(get_model(model), get_gpu(gpu), tp, calibration)

    # --- per-iteration time -------------------------------------------------------------------------
    def linear_time(self, tokens: int) -> float:
        """Linear layers + embedding + TP all-reduce + per-layer engine overhead for ``tokens`` tokens."""
        if tokens <= 0:
            return 0.0
        if tokens <= self._lin_n:
            return self._lin[tokens]
        return self._lin[self._lin_n] + (tokens - self._lin_n) * self._lin_slope

    def lm_head_time(self, out_tokens: int) -> float:
        if out_tokens <= 0:
            return 0.0
        f = out_tokens * self._lm_flop
        return f if f > self._lm_mem else self._lm_mem

    def decode_heterogeneity(self, batch: int, kv_sum: float, kv_max: float) -> float:
        """Decode-attention slow-down of this batch versus equal KV lengths with the same total (>= 1)."""
        return heterogeneity_factor(batch, kv_sum, kv_max, self.kv_heads_per_gpu, self._het)

    def decode_schedule_time(self, batch: int, kv_sum: int, kv_max: int) -> float:
        """Decode-attention time from kernel scheduling: waves of CTAs (each wave streams the longest request's KV)
        or, for small batches, split-KV with its combine step, whichever is cheaper (the split path is only
        taken when it helps; this also keeps the time monotone in ``batch``)."""
        if batch <= 0 or self._dec_wave <= 0.0 and self._dec_split_fixed <= 0.0 and self._dec_split_kv <= 0.0:
            return 0.0
        ctas = batch * self.kv_heads_per_gpu
        wave = self._dec_wave * kv_max * (-(-ctas // self._dec_wave_ctas))
        if ctas < self._dec_split_ctas:
            split = self._dec_split_fixed + self._dec_split_kv * kv_sum
            return split if split < wave else wave
        return wave

    def decode_attention_time(self, batch: int, kv_sum: int, kv_max: int) -> float:
        if batch <= 0:
            return 0.0
        f = heterogeneity_factor(batch, kv_sum, kv_max, self.kv_heads_per_gpu, self._het)
        return (
            self._dec_fixed
            + self._dec_per_req * batch
            + kv_sum * f * self._dec_per_kv
            + self.decode_schedule_time(batch, kv_sum, kv_max)
        )

    def prefill_attention_time(self, work: float, tokens: int = 0, causal: float | None = None) -> float:
        if work <= 0:
            return 0.0
        if causal is None:  # single chunk assumed: causal triangle tokens^2/2, the rest is cached prefix
            causal = tokens * tokens / 2.0 if tokens > 0 else work
        if causal > work:
            causal = work
        return (
            self._pre_fixed
            + self._pre_per_tok * tokens
            + (work - causal) * self._pre_prefix
            + causal * self._pre_causal
        )

    def iteration_time(
        self,
        prefill_tokens: int,
        prefill_attn: float,
        decode_batch: int,
        decode_kv_sum: int,
        decode_kv_max: int,
        prefill_causal: float | None = None,
    ) -> float:
        tokens = prefill_tokens + decode_batch
        if tokens <= 0:
            return 0.0
        # linear layers (inlined linear_time)
        if tokens <= self._lin_n:
            t = self._lin[tokens]
        else:
            t = self._lin[self._lin_n] + (tokens - self._lin_n) * self._lin_slope
        out = decode_batch + (1 if prefill_tokens > 0 else 0)
        t += self._fixed + self._per_req * out
        f = out * self._lm_flop
        t += f if f > self._lm_mem else self._lm_mem
        if prefill_tokens > 0 and prefill_attn > 0:
            causal = prefill_tokens * prefill_tokens / 2.0 if prefill_causal is None else prefill_causal
            if causal > prefill_attn:
                causal = prefill_attn
            t += (
                self._pre_fixed
                + self._pre_per_tok * prefill_tokens
                + (prefill_attn - causal) * self._pre_prefix
                + causal * self._pre_causal
            )
        if decode_batch > 0:
            t += self._dec_fixed + self._dec_per_req * decode_batch
            kv = decode_kv_sum
            if decode_batch > 1 and decode_kv_max > 0:
                full = decode_batch * decode_kv_max
                if kv < full:
                    h = self._het
                    occ = decode_batch * self.kv_heads_per_gpu / h.lanes
                    if occ > 1.0:
                        occ = 1.0
                    kv = kv * (1.0 + h.beta * occ * (1.0 - kv / full))
            t += kv * self._dec_per_kv
            wt = self._dec_wave_tab
            if wt:  # waves / split-KV (inlined decode_schedule_time)
                if decode_batch < self._dec_split_b:
                    w = wt[decode_batch] * decode_kv_max
                    sp = self._dec_split_fixed + self._dec_split_kv * decode_kv_sum
                    t += sp if sp < w else w
                elif decode_batch < self._dec_wave_n:
                    t += wt[decode_batch] * decode_kv_max
                else:
                    t += self.decode_schedule_time(decode_batch, decode_kv_sum, decode_kv_max)
        return t

    def batch_time(self, prefill: Sequence[tuple[int, int]] = (), decode_kv: Sequence[int] = ()) -> float:
        causal = float(sum(n * n / 2.0 for n, _ in prefill))
        return self.iteration_time(
            sum(n for n, _ in prefill),
            prefill_attn_work(prefill),
            len(decode_kv),
            int(sum(decode_kv)),
            int(max(decode_kv, default=0)),
            prefill_causal=causal,
        )

    def isolated_prefill_time(self, prompt: int, chunk: int, cached: int = 0) -> float:
        """Seconds to prefill a ``prompt``-token request alone, in chunks of at most ``chunk`` tokens (one
        iteration each, nothing else in the batch): its time to first token on an idle instance. ``cached``
        leading tokens come from the prefix cache: only the rest is computed, attending to them."""
        t, done, chunk = 0.0, max(0, int(cached)), max(1, int(chunk))
        while done < prompt:
            n = min(chunk, prompt - done)
            t += self.batch_time(prefill=[(n, done)])
            done += n
        return t

    def breakdown(self, prefill: Sequence[tuple[int, int]] = (), decode_kv: Sequence[int] = ()) -> dict[str, float]:
        """Seconds per component of :meth:`batch_time` (they sum to the total)."""
        pt, B = sum(n for n, _ in prefill), len(decode_kv)
        tokens, out = pt + B, B + (1 if pt > 0 else 0)
        if tokens <= 0:
            return {"total": 0.0}
        work, causal = prefill_attn_work(prefill), float(sum(n * n / 2.0 for n, _ in prefill))
        parts = {
            "engine_overhead": self._fixed + self._per_req * out,
            "linear": self.linear_time(tokens),
            "lm_head": self.lm_head_time(out),
            "prefill_attention": self.prefill_attention_time(work, pt, causal),
            "decode_attention": self.decode_attention_time(B, int(sum(decode_kv)), int(max(decode_kv, default=0))),
        }
        parts["total"] = sum(parts.values())
        return parts

    def linear_coefficients(self, tokens_hi: int = 4096) -> dict[str, float]:
        """A linearization for analytic planners: ``t ~= overhead + max(weight_floor, per_token * n)
        + per_kv_token * kv_sum * heterogeneity + per_pair * pairs``."""
        lo = self.linear_time(1) + self.lm_head_time(1)
        hi = self.linear_time(tokens_hi)
        return {
            "overhead_s": self._fixed + self._per_req + self._dec_fixed,
            "weight_floor_s": lo,
            "per_token_s": hi / tokens_hi,
            "per_request_s": self._per_req + self._dec_per_req + self._lm_flop,
            "per_kv_token_s": self._dec_per_kv,
            "per_pair_s": self._pre_prefix,
            "per_causal_pair_s": self._pre_causal,
            "heterogeneity_beta": self._het.beta,
            "heterogeneity_lanes": float(self._het.lanes),
            "kv_heads_per_gpu": float(self.kv_heads_per_gpu),
        }

    # --- memory and transfers --------------------------------------------------------------------------
    def mem_fraction_static(self) -> float:
        if self.cal.mem_fraction is not None:
            return self.cal.mem_fraction
        return sglang_mem_fraction_static(self.gpu.memory_bytes, self.tp)

    def kv_capacity_breakdown(self) -> dict[str, float]:
        frac = self.mem_fraction_static()
        total = self.gpu.memory_bytes
        static = total * frac
        kv = static - self._weights - self.cal.activation_reserve_bytes
        return {
            "gpu_bytes": total,
            "mem_fraction_static": frac,
            "static_bytes": static,
            "reserved_bytes": total - static,
            "weight_bytes": self._weights,
            "other_bytes": self.cal.activation_reserve_bytes,
            "kv_bytes": kv,
            "kv_bytes_per_token": float(self.kv_bytes_per_token),
        }

    def kv_capacity_tokens(self) -> int:
        measured = hardware_kv_capacity(self.gpu.name)  # a measured device: its server's KV pool
        if measured is not None:
            return measured
        b = self.kv_capacity_breakdown()
        if b["kv_bytes"] <= 0:
            raise ValueError(
                f"{self.model.name} does not fit on {self.gpu.name} with tp={self.tp}: weights need "
                f"{b['weight_bytes'] / 1e9:.1f} GB per GPU but SGLang's static pool is {b['static_bytes'] / 1e9:.1f} GB "
                f"(mem_fraction_static={b['mem_fraction_static']}) minus {b['other_bytes'] / 1e9:.1f} GB other; "
                f"use a larger --tp"
            )
        return int(b["kv_bytes"] // self.kv_bytes_per_token)

    def host_to_device_time(self, tokens: int) -> float:
        return tokens * self.kv_bytes_per_token / self.gpu.pcie_bandwidth

    def device_to_device_time(self, tokens: int) -> float:
        return tokens * self.kv_bytes_per_token / self.gpu.nvlink_bandwidth
