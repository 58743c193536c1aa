"""Decentralized load balance for cascade stages.

Who knows what (and how stale it is):

- **Instances** know their own state exactly and publish an :class:`InstanceLoad` every
  ``publish_interval`` (simulator setting; the HTTP router polls ``/v1/loads`` similarly). A router reads a
  load that is up to ``publish_interval`` (+ transport delay) old.
- **In-stage dispatch** (:class:`MemberPicker`) runs wherever requests are routed (each router replica).
  It knows the members' last published loads and the requests *it itself* sent to each member since that
  publication (``pending``), which it adds to the stale load so a burst does not all land on one member.
  It never sees other replicas' dispatches.
- **Cross-stage balance** (:class:`StagePairBalancer`) is one agent per boundary between stages k and k+1.
  It reads only the published loads of the members of those two stages and decides alone: shift the
  shared boundary by a bounded step toward the overloaded side, or, for a large sustained imbalance, hand
  one instance over from the lighter stage to the heavier. Agents of different boundaries do not talk;
  a boundary may move at most once per ``cooldown_s``. No component sees all stages or decides globally
  (the ``centralized`` ablation in cascade.py does exactly that, for comparison).

Pressure of an instance = predicted iteration time (cost model on its published running batch and KV)
over the TPOT SLO, plus a queue term for waiting requests. Stage pressure = mean over its members.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..core.costmodel import CostModel
from ..core.views import InstanceLoad


@dataclass
class BalanceConfig:
    slo_tpot: float = 0.1  # s; pressure 1.0 = an instance at the TPOT SLO
    slo_ttft: float = 2.0  # s; the prefill backlog is measured against it
    waiting_weight: float = 1.0  # weight of the prefill backlog (queued prompts) in the pressure
    agent_waiting_weight: float = 1.0  # the same weight in the boundary agents' stage pressure (0: agents
    # balance decode pressure only; a long prompt's backlog is transient and entry spill handles it)
    default_kv: int = 1024  # assumed tokens per request when an instance has none running
    imbalance_ratio: float = 1.5  # act when heavier stage pressure > ratio x lighter stage pressure
    min_pressure: float = 0.3  # ... and the heavier stage is at least this loaded (no churn when idle)
    patience: int = 2  # consecutive observations of the same imbalance before acting (hysteresis)
    boundary_step: float = 0.1  # max boundary move per action, as a fraction of the boundary
    min_stage_width: int = 16  # a stage's range never shrinks below this many tokens
    handover_ratio: float = 3.0  # hand over an instance when imbalance exceeds this (and the donor has > 1)
    cooldown_s: float = 2.0  # min time between two actions of the same boundary agent
    prefill_horizon_s: float = 0.0  # > 0: queued prefill is assumed to drain within this time, stretching
    # every decode step of the instance meanwhile (0 = the backlog counts only against the TTFT SLO; 0.5
    # measured slightly worse in the simulator, see docs/results/cascade_eval.md)


def queued_prefill_tokens(load: InstanceLoad, cfg: BalanceConfig, pending_tokens: int = 0) -> int:
    """Prompt tokens waiting for prefill: the published ``outstanding_tokens`` (prefill left, plus predicted
    decode tokens when the engine attaches predictions, which over-counts) and the prompts this dispatcher
    sent since (migrations by KV transfer bring none); an engine that publishes no token count falls back
    to queued requests x default_kv."""
    if load.outstanding_tokens > 0 or load.num_waiting == 0:
        return int(load.outstanding_tokens) + pending_tokens
    return load.num_waiting * cfg.default_kv + pending_tokens


def instance_pressure(
    load: InstanceLoad, cm: CostModel, cfg: BalanceConfig, pending: int = 0, pending_tokens: int = 0
) -> float:
    """Predicted TPOT / SLO of the batch the instance will run once its queue (published waiting requests
    plus ``pending`` sends not yet reflected) joins, plus the prefill backlog (queued prompt tokens, timed
    with the cost model) over the TTFT SLO, plus the backlog spread over ``prefill_horizon_s`` of decode
    iterations over the TPOT SLO: prefill-first engines stretch every co-running decode step by the prefill
    they run, which is what hurts a prefill-heavy instance's TPOT."""
    running = load.num_running
    queued = load.num_waiting + pending
    n = running + queued
    if n <= 0:
        return 0.0
    mean_kv = load.kv_used / running if running else float(cfg.default_kv)
    kv_sum = int(load.kv_used + queued * mean_kv)
    kv_max = int(mean_kv * 1.5) if load.range_hi is None else max(int(mean_kv), load.range_hi)
    t = cm.iteration_time(0, 0.0, n, kv_sum, kv_max)
    qtok = queued_prefill_tokens(load, cfg, pending_tokens) if queued else 0
    backlog = cm.iteration_time(qtok, 0.0, 0, 0, 0) if qtok else 0.0
    stretch = min(0.95, backlog / cfg.prefill_horizon_s) if cfg.prefill_horizon_s > 0 else 0.0
    return (
        t / (1.0 - stretch) / cfg.slo_tpot
        + cfg.waiting_weight * backlog / cfg.slo_ttft
        + max(0.0, load.kv_utilization - 0.9) * 10
    )


class MemberPicker:
    """Least-loaded member of a stage from published loads plus this dispatcher's own recent sends."""

    def __init__(self, cm: CostModel, cfg: BalanceConfig):
        self.cm, self.cfg = cm, cfg
        self.pending: dict[int, int] = {}  # iid -> requests this dispatcher sent since the last publish
        self.pending_tokens: dict[int, int] = {}  # iid -> their prompt tokens
        self.seen_at: dict[int, float] = {}  # iid -> published_at of the load we last saw
        self.pending_kv: dict[int, int] = {}  # iid -> KV tokens of moves this dispatcher sent since the last publish

    def on_publish(self, load: InstanceLoad) -> None:
        if load.published_at > self.seen_at.get(load.iid, -1.0):
            self.seen_at[load.iid] = load.published_at
            self.pending[load.iid] = 0
            self.pending_tokens[load.iid] = 0
            self.pending_kv[load.iid] = 0

    def score(self, load: InstanceLoad) -> float:
        if load.published_at > self.seen_at.get(load.iid, -1.0):
            self.on_publish(load)
        return instance_pressure(
            load, self.cm, self.cfg, self.pending.get(load.iid, 0), self.pending_tokens.get(load.iid, 0)
        )

    def pick(
        self,
        members: list[int],
        loads: list[InstanceLoad],
        tokens: int = 0,
        penalty: dict[int, float] | None = None,
        discount: dict[int, int] | None = None,
    ) -> int:
        """Least-pressured healthy member; ``tokens`` = prompt tokens the request brings (prefill), counted
        as pending on the chosen member less its ``discount`` (cached prompt tokens); ``penalty`` adds a
        per-member cost (e.g. an extra migration; negative: a credit)."""
        if not members:
            raise ValueError("stage has no members")
        healthy = [i for i in members if i < len(loads) and loads[i].healthy] or list(members)
        pen = penalty or {}
        best = min(
            healthy,
            key=lambda i: (
                (self.score(loads[i]) if i < len(loads) else 0.0) + pen.get(i, 0.0),
                self.pending.get(i, 0),
                i,
            ),
        )
        self.pending[best] = self.pending.get(best, 0) + 1
        self.pending_tokens[best] = self.pending_tokens.get(best, 0) + int(tokens) - (discount or {}).get(best, 0)
        return best

    def pick_room(self, members: list[int], loads: list[InstanceLoad], kv_tokens: int) -> int:
        """The healthy member with the largest share of its KV pool free, less the KV of the moves this
        dispatcher sent it since its last publication; ``kv_tokens`` (the move's KV) is then counted as sent.
        For moves out of a prefill pool: on a long-context decode side a decode step's time hardly grows with the
        batch (weights dominate), so the pressure score barely separates the members, while the KV a move brings
        decides whether the destination can take it and its admission (``instance_pressure`` counts KV only
        above 90%, and a KV move brings no prompt tokens to count as pending)."""
        healthy = [i for i in members if i < len(loads) and loads[i].healthy] or [i for i in members if i < len(loads)]
        if not healthy:
            raise ValueError("no member with a published load")

        def room(i: int) -> float:
            ld = loads[i]
            if ld.published_at > self.seen_at.get(i, -1.0):
                self.on_publish(ld)
            return (ld.kv_capacity - ld.kv_used - self.pending_kv.get(i, 0)) / max(1, ld.kv_capacity)

        best = max(healthy, key=lambda i: (room(i), -i))
        self.pending[best] = self.pending.get(best, 0) + 1
        self.pending_kv[best] = self.pending_kv.get(best, 0) + int(kv_tokens)
        return best


class PrefillTimes:
    """The cost model's prefill seconds of a prompt alone, memoized per 256-token bucket (the request path)."""

    def __init__(self, cm: CostModel):
        self.cm, self.memo = cm, {}

    def __call__(self, tokens: int) -> float:
        b = max(1, -(-int(tokens) // 256))
        t = self.memo.get(b)
        if t is None:
            t = self.memo[b] = self.cm.batch_time(prefill=[(b * 256, 0)])
        return t


def entry_candidates(plan, k: int, loads: list[InstanceLoad], cfg, prefill_s: float, spill: bool):
    """Where a new request of stage ``k`` may be prefilled: (members, penalty or None, spill members).

    With ``spill`` any member of an earlier stage too, at ``cfg.spill_penalty`` (forward-only: the request then
    moves up to stage k). ``cfg.spill_harm`` > 0 charges a spill candidate (every candidate with
    ``cfg.harm_own``) ``spill_harm x prefill_s x its running requests / slo_ttft``: SGLang runs a prefill batch
    alone, so the prompt stalls the running decodes where it lands."""
    members = list(plan.members[k])
    penalty: dict[int, float] | None = None
    spill_ids: set[int] = set()
    if spill and k > 0:
        penalty = {i: cfg.spill_penalty for j in range(k) for i in plan.members[j]}
        spill_ids = set(penalty)
        members += list(penalty)
    if cfg.spill_harm > 0 and (spill_ids or cfg.harm_own):
        stall = cfg.spill_harm * prefill_s / cfg.slo_ttft
        penalty = penalty or {}
        for i in members if cfg.harm_own else spill_ids:
            if i < len(loads) and loads[i].kv_used < cfg.harm_kv_max * loads[i].kv_capacity:
                penalty[i] = penalty.get(i, 0.0) + stall * loads[i].num_running
    return members, penalty, spill_ids


@dataclass
class PairDecision:
    kind: str  # "shift" | "handover" | "none"
    boundary: int = 0  # index k of the boundary between stage k and k+1
    new_bound: int | None = None
    instance: int | None = None  # handed-over instance id
    from_stage: int | None = None
    to_stage: int | None = None


@dataclass
class StagePairBalancer:
    """The agent of boundary k (between stages k and k+1); sees only those two stages' loads."""

    k: int
    cm: CostModel
    cfg: BalanceConfig
    streak: int = 0
    streak_side: int = 0  # +1: left (shorter) stage heavier, -1: right heavier
    last_action: float = field(default=-1e18)

    def stage_pressure(self, members: list[int], loads: list[InstanceLoad]) -> float:
        if not members:
            return 0.0
        cfg = self.cfg
        if cfg.agent_waiting_weight != cfg.waiting_weight:
            cfg = replace(cfg, waiting_weight=cfg.agent_waiting_weight)
        return sum(instance_pressure(loads[i], self.cm, cfg) for i in members) / len(members)

    def decide(
        self,
        bound: int,
        lo_left: int,
        hi_right: int | None,
        left: list[int],
        right: list[int],
        loads: list[InstanceLoad],
        now: float,
    ) -> PairDecision:
        pl, pr = self.stage_pressure(left, loads), self.stage_pressure(right, loads)
        heavy, light = max(pl, pr), min(pl, pr)
        side = 1 if pl > pr else -1
        if heavy < self.cfg.min_pressure or heavy <= self.cfg.imbalance_ratio * max(light, 1e-9):
            self.streak, self.streak_side = 0, 0
            return PairDecision("none", self.k)
        self.streak = self.streak + 1 if side == self.streak_side else 1
        self.streak_side = side
        if self.streak < self.cfg.patience or now - self.last_action < self.cfg.cooldown_s:
            return PairDecision("none", self.k)
        self.streak = 0
        self.last_action = now
        ratio = heavy / max(light, 1e-9)
        donor, taker = (right, left) if side == 1 else (left, right)
        if ratio >= self.cfg.handover_ratio and len(donor) > 1:
            inst = min(donor, key=lambda i: (instance_pressure(loads[i], self.cm, self.cfg), i))
            return PairDecision(
                "handover",
                self.k,
                instance=inst,
                from_stage=self.k + 1 if side == 1 else self.k,
                to_stage=self.k if side == 1 else self.k + 1,
            )
        step = max(1, int(bound * self.cfg.boundary_step))
        if side == 1:  # left (shorter lengths) overloaded: lower the bound, right takes more lengths
            nb = max(lo_left + self.cfg.min_stage_width, bound - step)
        else:
            nb = bound + step
            if hi_right is not None:
                nb = min(nb, hi_right - self.cfg.min_stage_width)
        if nb == bound:
            return PairDecision("none", self.k)
        return PairDecision("shift", self.k, new_bound=int(nb))
