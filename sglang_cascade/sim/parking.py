"""Parking: a plan's park / resume moves a request's KV between GPU and host memory.

A park frees the request's GPU KV and holds it on the host (or, with no host room, drops it: a
preemption); a resume brings it back. Both return the PCIe move time, which the iteration overlaps.
Instances 2k and 2k+1 are partners: with ``SimConfig.paired_prefetch`` they share the move.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.costmodel import CostModel
from ..core.views import Phase
from ..policies.offload import kv_move_time
from .config import SimError
from .instance import SimInstance, SimRequest

KvMove = Callable[[int, str], float]


def kv_move_fn(cm: CostModel, paired: bool = False) -> KvMove:
    """Host<->device KV move time of ``tokens`` tokens in ``direction`` ("h2d" / "d2h").
    ``paired``: the instance has a partner GPU that shares the move (GPU-to-GPU prefetch)."""
    return lambda tokens, direction: kv_move_time(tokens, cm, direction, paired)


class Parking:
    """Simulator mixin. Uses: ``insts``, ``n``, ``kv_move`` / ``kv_move_paired``, ``has_bound``,
    ``migrating`` and the methods ``_preempt``, ``_cancel_migration``, ``_arm_bound``."""

    def _park(self, inst: SimInstance, r: SimRequest) -> float:
        v = inst.view
        if r.instance != inst.iid or r.phase not in (Phase.RUNNING, Phase.WAITING):
            raise SimError(f"{inst.sched.name}: park of {r.rid} which is not running/waiting on {inst.iid}")
        if inst.host_used + r.kv_tokens > v.host_kv_capacity:
            self.park_rejected += 1
            self._preempt(inst, r)  # no room on the host: the KV is dropped (recompute later)
            return 0.0
        self._cancel_migration(r)
        inst.free_request(r)
        r.phase = Phase.PARKED
        v.parked.append(r)
        inst.host_used += r.kv_tokens
        self.parks += 1
        return self._mover(inst.iid)(r.kv_tokens, "d2h")

    def _resume(self, inst: SimInstance, r: SimRequest) -> float:
        v = inst.view
        if r.instance != inst.iid or r.phase != Phase.PARKED:
            raise SimError(f"{inst.sched.name}: resume of {r.rid} which is not parked on {inst.iid}")
        v.parked.remove(r)
        inst.host_used -= r.kv_tokens
        v.kv_used += r.kv_tokens
        if r.length - r.kv_tokens > 1:  # parked mid-prefill: back to the queue with its KV on GPU
            r.phase = Phase.WAITING
            v.waiting.append(r)
            inst.prefill_left += r.length - r.kv_tokens
        else:
            r.phase = Phase.RUNNING
            v.running.append(r)
            if self.has_bound and r.rid not in self.migrating:
                self._arm_bound(r, inst.iid)  # a migration cancelled by the park left it unarmed
        self.resumes += 1
        return self._mover(inst.iid)(r.kv_tokens, "h2d")

    def _mover(self, iid: int) -> KvMove:
        has_partner = (iid ^ 1) < self.n
        return self.kv_move_paired if has_partner else self.kv_move
