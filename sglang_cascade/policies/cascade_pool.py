"""The cascade router's prefill-pool glue (a mixin of ``CascadeRouter``): the pool's membership as plans and the
valve change it, and the hold queue's release (``pool_hold.py``). The policies themselves live in
``prefill_pool.py`` and ``pool_hold.py``."""

from __future__ import annotations

from ..core.decisions import HOLD
from ..core.views import ClusterView, RequestView
from .pool_hold import PoolHold
from .prefill_pool import PrefillPool, pool_check_applies
from .stages import StagePlan


class CascadePool:
    """Uses the router's ``cfg``, ``qoe``, ``pool``, ``pool_count``, ``plan``, ``loads``, ``entry``, ``valve``, ``stats``,
    ``last_plan_info``, ``req_stage``, ``_see``, ``_index`` and ``_route``."""

    def _init_hold(self) -> None:
        c = self.cfg
        self.hold = None
        if c.pool_hold > 0:
            self.hold = PoolHold(c.pool_hold, c.pool_hold_order, self.qoe.slo_ttft, window=c.pool_hold_window)

    def _set_pool(self, members: list[int], why: str = "", planned: bool = True) -> None:
        if planned:  # the size a plan chose (pool_valve moves members away from it and back)
            self._pool_planned = len(members)
        if not members:
            self.pool = None
        elif self.pool is not None:
            self.pool = self.pool.resized(members)
        else:
            self.pool = PrefillPool(
                members, self.cfg.prefill_min, self.entry.prefill_s, self.entry.trees, self.cfg.pool_work_weight
            )
        if self.pool_count != 0:
            self.last_plan_info["prefill_pool"] = {"instances": list(members), "min_prompt": self.cfg.prefill_min}
            self.last_plan_info["prefill_pool_why"] = why

    def _pool_size(self) -> int:
        return len(self.pool.members) if self.pool is not None else 0

    def _order(self) -> list[int]:
        """The plan's instances stage by stage, then the pool's: the layout every plan-check candidate shares (a
        candidate with a pool of k runs it on the last k)."""
        return self.plan.order() + (list(self.pool.members) if self.pool is not None else [])

    def _check_sizes(self, sample, rate: float) -> int | None:
        """Whether a start-up or drift re-plan goes to the plan checker, and with how many pool sizes: always with
        ``plan_check`` or ``check_replans``; with ``check_staging``, while one stage is in force (the start-up plan
        is); with ``pool_check`` alone, where pool sizes are scored (``_pool_sizes``); None: no check, the unchecked
        DP runs."""
        sizes = self._pool_sizes(sample, rate)
        if self.check_cfg.plan_check or sizes:
            return sizes
        if self.replan_checks and (self.cfg.check_replans or self.plan.num_stages == 1):
            return sizes
        return None

    def _pool_sizes(self, sample, rate: float) -> int:
        """How many pool sizes a check scores (``CandidateSpec.pool_sizes``; the checker picks them): with
        ``pool_check`` and an auto pool where ``prefill_pool.pool_check_applies``, ``pool_check_sizes``; else 0."""
        c = self.cfg
        if not self.pool_checks or not pool_check_applies(sample, rate, self.n, self.cm, self.qoe, c.prefill_min):
            return 0
        return c.pool_check_sizes

    def _pool_valve(self, now: float) -> None:
        """``pool_valve`` (opt-in, ``PoolValve``): one instance between the pool and the decode side."""
        step = self.valve.step(self.pool, self.plan.members, self.loads, self._pool_planned, now)
        if step is not None:
            way, pool, decode = step
            self._set_pool(pool, f"pool_valve: {way}", False)
            self.plan = StagePlan([], [decode])
            self.stats[f"pool_valve_{way}"] = self.stats.get(f"pool_valve_{way}", 0) + 1
            self._index()

    def _to_pool(self, req: RequestView, now: float) -> int:
        """A long prompt for the pool: held (``pool_hold``), or sent to the member ``PrefillPool.pick`` chooses."""
        if self.hold is not None:
            self.hold.add(req, self.pool.prefill_s(req.prompt_len - req.kv_tokens), now)
            return HOLD
        iid, _ = self.pool.pick(req, self.loads, now)
        self._sent_to_pool(req, iid)
        return iid

    def _sent_to_pool(self, req: RequestView, iid: int) -> None:
        self.entry.remember(iid, req, self.loads)
        if self.checker is not None:  # a held request's instance (route recorded HOLD)
            self.placed[req.rid] = iid
        self.req_stage[req.rid] = self.plan.stage_of(req.prompt_len)
        self.stats["pool_prefills"] += 1

    def _pool_prefilled(self, iid: int | None, rid: str, now: float) -> None:
        """``rid`` is past its prefill on ``iid`` (its first token, or it finished): the hold queue's count."""
        if self.hold is not None:
            self.hold.first_token(self.pool, iid, rid, now)

    # --- RouterPolicy -----------------------------------------------------------------------------------
    def release(self, cluster: ClusterView, now: float) -> list[tuple[RequestView, int]]:
        if self.hold is None or not len(self.hold):
            return []
        self._see(cluster)
        if self.pool is None:  # the plan has no pool any more: the held requests go where a new one would
            return [(r, self._route(r, cluster, now)) for r in self.hold.drain()]
        sent = self.hold.release(self.pool, self.loads, now)
        for req, iid in sent:
            self._sent_to_pool(req, iid)
        return sent

    def release_at(self, now: float) -> float | None:
        return None if self.hold is None else self.hold.release_at(self.pool, self.loads, now)
