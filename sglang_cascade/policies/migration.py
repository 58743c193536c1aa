"""Migration planner: move a running request by recompute or by KV transfer, whichever stalls it less.

Both mechanisms are modelled per request:

- **Recompute** (``MigrationMode.RECOMPUTE``): the source frees the request at once; the destination must
  prefill ``length`` tokens (prompt + generated) before the request decodes again. Stall = time to drain
  the destination's queued prefill work (its published waiting requests x mean prompt, a stale estimate)
  + the prefill of ``length`` tokens (CostModel.batch_time). Costs destination compute, no link traffic.
- **KV transfer** (``MigrationMode.KV_TRANSFER``, Llumnix-style live migration): round 0 copies the KV of
  all ``kv_tokens`` while the request keeps decoding on the source; each next round copies the tokens
  generated meanwhile (one per TPOT); when the residual is at most ``stop_copy_tokens`` (or after
  ``max_rounds``) the request pauses for the final stop-and-copy. Stall = residual copy + a fixed
  handshake (``stop_and_copy_overhead_s``). Needs free KV on the destination; occupies the link for the
  total copy time.

The link time comes from Vidur's measured H100 send_recv curves (``migration_link.py``: nvlink,
infiniband, tcp) or, with ``link="spec"``, from ``CostModel.device_to_device_time`` (datasheet NVLink).
The simulator times its KV copies with :meth:`MigrationPlanner.link_time` (sim/migration.py ``d2d_fn``).

A driver that measures real moves (the HTTP router, ``--migration-mode auto``) gives the planner a
:class:`~.migration_costs.MigrationCosts`: once it has seen enough moves of a mechanism, its measured stall
line replaces that mechanism's model in :meth:`MigrationPlanner.estimate`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.costmodel import CostModel
from ..core.decisions import MigrationMode
from ..core.views import InstanceLoad, RequestView
from .migration_costs import FrozenCosts, MigrationCosts
from .migration_link import link_curve


@dataclass
class MigrationConfig:
    mode: str = "auto"  # "auto" (cheaper per request), "recompute", "kv_transfer"
    link: object = "nvlink"  # Vidur curve name, "spec" (CostModel.device_to_device_time) or time_s(bytes) object
    stop_copy_tokens: int = 4  # residual tokens copied with the request paused
    max_rounds: int = 8  # staged copy rounds before forcing stop-and-copy
    stop_and_copy_overhead_s: float = 0.005  # handshake + block-table update at the final switch
    assumed_tpot_s: float = 0.03  # decode step on the source while copying (tokens generated per round)
    kv_headroom: float = 0.02  # destination must keep this fraction of its KV free after a KV transfer
    mean_prompt_tokens: int = 1024  # prefill tokens per waiting request when estimating a queue


@dataclass
class MigrationEstimate:
    mode: MigrationMode
    stall_s: float  # time the request produces no token because of the move
    link_busy_s: float  # total link time (KV transfer only)
    recompute_stall_s: float
    kv_stall_s: float
    kv_fits: bool


class MigrationPlanner:
    def __init__(self, cm: CostModel, cfg: MigrationConfig | None = None, measured: MigrationCosts | None = None):
        self.cm = cm
        self.cfg = cfg or MigrationConfig()
        self.measured = measured
        if self.cfg.mode not in ("auto", "recompute", "kv_transfer"):
            raise ValueError(f"migration mode must be auto, recompute or kv_transfer, got {self.cfg.mode!r}")
        link = self.cfg.link
        self._curve = link if hasattr(link, "time_s") else None if link == "spec" else link_curve(link)

    # --- link -----------------------------------------------------------------------------------------
    def link_time(self, tokens: int) -> float:
        """KV copy time of ``tokens`` tokens: the measured link once fitted, else the configured curve."""
        if tokens <= 0:
            return 0.0
        curve = (self.measured.link() if self.measured is not None else None) or self._curve
        if curve is None:
            return self.cm.device_to_device_time(tokens)
        return curve.time_s(tokens * self.cm.kv_bytes_per_token)

    # --- mechanisms -------------------------------------------------------------------------------------
    def recompute_stall(self, length: int, dst: InstanceLoad | None = None) -> float:
        queue_tokens = 0
        if dst is not None:
            queue_tokens = dst.num_waiting * self.cfg.mean_prompt_tokens
        queue = self.cm.batch_time(prefill=[(queue_tokens, 0)]) if queue_tokens else 0.0
        return queue + self.cm.batch_time(prefill=[(max(1, length), 0)])

    def kv_transfer(self, kv_tokens: int, tpot: float | None = None) -> tuple[float, float]:
        """(stall, total link time) of a staged copy with a final stop-and-copy."""
        tpot = max(1e-4, tpot or self.cfg.assumed_tpot_s)
        residual, busy = kv_tokens, 0.0
        for _ in range(self.cfg.max_rounds):
            if residual <= self.cfg.stop_copy_tokens:
                break
            t = self.link_time(residual)
            busy += t
            residual = int(t / tpot) + 1  # tokens generated on the source while this round copied
        final = self.link_time(residual)
        return final + self.cfg.stop_and_copy_overhead_s, busy + final

    def estimate(
        self, req: RequestView, dst: InstanceLoad | None = None, tpot: float | None = None
    ) -> MigrationEstimate:
        length = req.length
        kv_tokens = max(req.kv_tokens, length)
        rc = self.recompute_stall(length, dst)
        kv, busy = self.kv_transfer(kv_tokens, tpot)
        if self.measured is not None:
            m_rc = self.measured.stall(MigrationMode.RECOMPUTE, length)
            m_kv = self.measured.stall(MigrationMode.KV_TRANSFER, kv_tokens)
            rc = rc if m_rc is None else m_rc
            kv = kv if m_kv is None else m_kv
        fits = True
        if dst is not None:
            free = dst.kv_capacity * (1.0 - self.cfg.kv_headroom) - dst.kv_used
            fits = free >= kv_tokens
        if self.cfg.mode == "recompute":
            mode = MigrationMode.RECOMPUTE
        elif self.cfg.mode == "kv_transfer":
            mode = MigrationMode.KV_TRANSFER
        else:
            mode = MigrationMode.KV_TRANSFER if (fits and kv <= rc) else MigrationMode.RECOMPUTE
        stall = kv if mode is MigrationMode.KV_TRANSFER else rc
        return MigrationEstimate(mode, stall, busy if mode is MigrationMode.KV_TRANSFER else 0.0, rc, kv, fits)

    def stall_at_length(self, length: int) -> float:
        """Stall of a migration at ``length`` with an idle destination (the DP's migration cost)."""
        r = RequestView("_", 0.0, length, 0, kv_tokens=length)
        return self.estimate(r).stall_s

    def stall_spec(self) -> StallSpec:
        """What :meth:`stall_at_length` depends on besides the cost model, picklable (the measurements
        frozen as they are now): ``StallSpec.planner(cm)`` answers the same stalls in another process."""
        return StallSpec(self.cfg, None if self.measured is None else self.measured.frozen())


@dataclass(frozen=True)
class StallSpec:
    cfg: MigrationConfig
    measured: FrozenCosts | None = None

    def planner(self, cm: CostModel) -> MigrationPlanner:
        return MigrationPlanner(cm, self.cfg, self.measured)
