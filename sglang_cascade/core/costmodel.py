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

First cut: an analytical roofline. The calibrated version (Vidur operator profiles + GPU measurements)
replaces the internals behind the same API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .specs import GpuSpec, ModelSpec, get_gpu, get_model


def prefill_attn_work(chunks: Sequence[tuple[int, int]]) -> float:
    """Query-key pairs of causal prefill chunks given as (new_tokens, kv_before)."""
    return float(sum(n * (k + n / 2.0) for n, k in chunks))


@dataclass(slots=True)
class Calibration:
    """Parameters a GPU measurement can replace (see scripts/calibrate_attention_gpu.py)."""

    hbm_efficiency: float = 0.7  # fraction of peak HBM bandwidth decode attention reaches
    mfu: float = 0.55  # fraction of peak FLOP/s dense matmuls reach at large token counts
    heterogeneity_beta: float = 0.3  # decode attention penalty weight for KV-length spread
    iteration_overhead_s: float = 0.004  # scheduler + sampling + launch overhead per iteration
    mem_fraction: float = 0.88  # fraction of GPU memory SGLang gives weights + KV (mem_fraction_static)
    activation_reserve_bytes: float = 4e9


class CostModel:
    def __init__(self, model: ModelSpec, gpu: GpuSpec, tp: int = 1, calibration: Calibration | None = None):
        self.model = model
        self.gpu = gpu
        self.tp = tp
        self.cal = calibration or Calibration()
        self.kv_bytes_per_token = model.kv_bytes_per_token(tp)
        m = model
        # FLOPs per token for the linear layers on one GPU (2 * params touched, minus embeddings).
        self._linear_flops_per_token = 2.0 * (m.params - m.vocab * m.hidden) / tp
        self._weight_bytes = m.weight_bytes(tp)
        self._attn_flops_per_pair = 4.0 * m.layers * (m.heads // max(1, tp)) * m.head_dim

    @classmethod
    def for_names(cls, model: str, gpu: str, tp: int = 1, calibration: Calibration | None = None) -> "CostModel":
        return cls(get_model(model), get_gpu(gpu), tp, calibration)

    # --- per-iteration time -------------------------------------------------------------------------
    def linear_time(self, tokens: int) -> float:
        if tokens <= 0:
            return 0.0
        compute = tokens * self._linear_flops_per_token / (self.gpu.peak_flops * self.cal.mfu)
        memory = self._weight_bytes / (self.gpu.hbm_bandwidth * self.cal.hbm_efficiency)
        return max(compute, memory)

    def decode_attention_time(self, batch: int, kv_sum: int, kv_max: int) -> float:
        if batch <= 0:
            return 0.0
        spread = max(0.0, batch * kv_max - kv_sum)  # padding-equivalent tokens of the straggler effect
        eff_tokens = kv_sum + self.cal.heterogeneity_beta * spread
        return eff_tokens * self.kv_bytes_per_token / (self.gpu.hbm_bandwidth * self.cal.hbm_efficiency)

    def prefill_attention_time(self, work: float) -> float:
        return work * self._attn_flops_per_pair / (self.gpu.peak_flops * self.cal.mfu)

    def iteration_time(self, prefill_tokens: int, prefill_attn: float, decode_batch: int,
                       decode_kv_sum: int, decode_kv_max: int) -> float:
        tokens = prefill_tokens + decode_batch
        if tokens <= 0:
            return 0.0
        return (self.cal.iteration_overhead_s + self.linear_time(tokens)
                + self.prefill_attention_time(prefill_attn)
                + self.decode_attention_time(decode_batch, decode_kv_sum, decode_kv_max))

    def batch_time(self, prefill: Sequence[tuple[int, int]] = (), decode_kv: Sequence[int] = ()) -> float:
        return self.iteration_time(sum(n for n, _ in prefill), prefill_attn_work(prefill), len(decode_kv),
                                   int(sum(decode_kv)), int(max(decode_kv, default=0)))

    # --- memory and transfers --------------------------------------------------------------------------
    def kv_capacity_tokens(self) -> int:
        usable = self.gpu.memory_bytes * self.cal.mem_fraction - self._weight_bytes - self.cal.activation_reserve_bytes
        if usable <= 0:
            raise ValueError(f"{self.model.name} does not fit on {self.gpu.name} with tp={self.tp}")
        return int(usable // self.kv_bytes_per_token)

    def host_to_device_time(self, tokens: int) -> float:
        return tokens * self.kv_bytes_per_token / self.gpu.pcie_bandwidth

    def device_to_device_time(self, tokens: int) -> float:
        return tokens * self.kv_bytes_per_token / self.gpu.nvlink_bandwidth
