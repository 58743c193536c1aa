"""CPU-offloaded request pool: which requests park in host memory, which resume, and what moves cost.

The pool keeps more requests in flight than GPU KV holds: whole requests' KV is parked in host memory
(``InstanceView.parked``, capacity ``host_kv_capacity`` tokens) and brought back when its KV-length
bucket is about to be decoded, so the next aligned batch's KV is on GPU.

Rules (:class:`OffloadPolicy`):
- **Park instead of preempt.** Whenever the scheduler must free GPU KV (a recalled loan, an overrun the
  pool cannot cover), the victim is parked if the host pool has room, else preempted (recompute).
- **KV-holding first.** Parked requests resume (oldest first) before any new request is admitted;
  while one still waits for room, new admissions wait too (unless over-admission is on).
- **Over-admission** (off by default: in our simulations it mostly adds PCIe churn). With ``overadmit`` on, when the GPU reservations are full but requests wait, GPU
  requests whose bucket was served most recently (the longest until they are served again) are parked
  to make room, up to ``pool_factor`` x the requests the GPU alone holds.
- **Resume / prefetch.** Parked members of the head bucket are resumed for this iteration (the bound of
  aligned.py holds for parked requests too); parked members of the *next* head bucket are resumed one
  iteration ahead when GPU reservations have room, so their PCIe copy overlaps this iteration's compute.

Transfer model (:func:`kv_move_time`): host<->device over PCIe (``gpu.pcie_bandwidth`` per direction),
or, for a **paired** instance, split between its own PCIe link and its partner's: the partner gathers
a share of the KV from host memory over its PCIe link and pushes it over NVLink (pipelined in chunks,
one chunk of fill latency plus a fixed hop latency). Both links run in parallel, so paired transfers
approach 2x PCIe bandwidth for large moves; for small moves the hop latency makes the direct copy
faster, and ``kv_move_time`` returns the faster of the two paths.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class OffloadConfig:
    offload: bool = True  # park in host memory (needs InstanceView.host_kv_capacity > 0)
    overadmit: bool = False  # park cold GPU requests to admit waiting ones (pool larger than GPU KV)
    pool_factor: float = 2.0  # in-flight requests at most this x what GPU reservations alone hold
    prefetch: bool = True  # resume the next head bucket's parked members one iteration ahead
    max_move_tokens: int = 65536  # KV tokens parked + resumed per iteration (bounds PCIe time)
    swap_reserve: float = 0.25  # over-admission leaves this fraction of the host pool free for swaps


@dataclass(slots=True)
class TransferConfig:
    nvlink_hop_latency_s: float = 20e-6  # per transfer: peer setup + synchronization
    chunk_tokens: int = 256  # pipelining granularity of the NVLink leg
    partner_pcie_share: float = 1.0  # fraction of the partner's PCIe link free for our prefetch


def _direct(tokens: int, bpt: float, pcie: float) -> float:
    return tokens * bpt / pcie


def paired_move_time(tokens: int, cost_model, cfg: TransferConfig | None = None) -> float:
    """Own PCIe link plus partner PCIe -> NVLink, split so both legs end together."""
    cfg = cfg or TransferConfig()
    if tokens <= 0:
        return 0.0
    bpt = float(cost_model.kv_bytes_per_token)
    pcie = float(cost_model.gpu.pcie_bandwidth)
    nvl = float(cost_model.gpu.nvlink_bandwidth)
    f = max(0.0, cfg.partner_pcie_share)
    if f == 0.0:
        return _direct(tokens, bpt, pcie)
    # partner leg throughput: min(partner PCIe share, NVLink); fill latency of one chunk + hop latency
    partner_bw = min(f * pcie, nvl)
    fixed = cfg.nvlink_hop_latency_s + min(tokens, cfg.chunk_tokens) * bpt / nvl
    total = tokens * bpt
    # own leg: x bytes at pcie; partner leg: (total-x) at partner_bw + fixed; equalize
    x = (total * pcie + fixed * pcie * partner_bw) / (pcie + partner_bw)
    x = min(total, max(0.0, x))
    return max(x / pcie, (total - x) / partner_bw + (fixed if total - x > 0 else 0.0))


def kv_move_time(
    tokens: int, cost_model, direction: str = "h2d", paired: bool = False, cfg: TransferConfig | None = None
) -> float:
    """Seconds to move ``tokens`` tokens of KV between host and this GPU.

    ``direction``: "h2d" (resume) or "d2h" (park); the links are symmetric so both cost the same.
    ``paired``: a partner GPU shares the move (see module docstring); the faster path is used.
    The simulator calls this for park/resume when it exists.
    """
    if direction not in ("h2d", "d2h"):
        raise ValueError(f"direction must be 'h2d' or 'd2h', not {direction!r}")
    if tokens <= 0:
        return 0.0
    direct = _direct(tokens, float(cost_model.kv_bytes_per_token), float(cost_model.gpu.pcie_bandwidth))
    if not paired:
        return direct
    return min(direct, paired_move_time(tokens, cost_model, cfg))


def paired_breakeven_tokens(cost_model, cfg: TransferConfig | None = None) -> int:
    """Smallest move (tokens) for which the paired path beats the direct PCIe copy."""
    lo, hi = 1, 1 << 24
    if paired_move_time(hi, cost_model, cfg) >= kv_move_time(hi, cost_model):
        return -1
    while lo < hi:
        mid = (lo + hi) // 2
        if paired_move_time(mid, cost_model, cfg) < kv_move_time(mid, cost_model):
            hi = mid
        else:
            lo = mid + 1
    return lo
