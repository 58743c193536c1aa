"""The prefill pool (``cascade:prefill_pool=auto|<count>``): a few instances prefill the long prompts, and each
request moves on to the decode instances after its first token (the same KV-transfer move as a spill).

Why: SGLang runs a prefill batch alone (no mixed chunks by default), so every long prompt stalls each running
decode of the instance it lands on for its whole prefill. Where prefill is most of the work (long-context traffic
near saturation: the DP then runs one stage, ``stage_dp._pooled_instead``), staging by length cannot help, and the
stalls decide TPOT. With a pool the decode instances prefill only short prompts (< ``prefill_min``) and the pool's
instances decode each request for one token.

Sizing (``size_prefill_pool``, from the same length sample and rate as the DP): a pool only where the long prompts'
prefill is most of the pooled cluster's busy time (the stage model's pooled prediction: utilization ``rho``, prefill
utilization ``prefill_busy``; the long prompts' share of the prefill seconds) and the cluster is busy; its size is
the one the pool's latency model (``pool_model.py``: the stage model of the decode side, an M/G/k queue for the
pool) predicts the least mean latency for among those leaving the decode side a utilization margin
(``decode_rho_max``, the router's ``pool_decode_rho``), at most what leaves the decode side room for the KV its
decoding requests hold (Little's law over the decode side's TPOT the model predicts with that pool).

Dispatch inside the pool (``PrefillPool.pick``): the member whose prefills sent by this router would end first
(each prompt's prefill seconds, less what its radix cache saves, queued back to back), plus ``pool_work_weight`` x
the prefill seconds the prompt adds there: near the pool's knee the seconds a cached prefix saves are capacity for
every later prompt, not only this one's earlier first token. A pool member runs no decode batch to stretch.
A request leaving the pool goes to the decode-side member with the most free KV (``MemberPicker.pick_room``,
``pool_move_room``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.costmodel import CostModel
from ..core.views import InstanceLoad, RequestView
from .pool_model import DECODE_RHO_MAX, best_pool_size, pool_latencies
from .prefix_affinity import PrefixTrees, saved_tokens
from .stage_dp import predict_stages
from .stage_model import QoEConfig, prefill_seconds

KV_HEADROOM = 0.8  # the decode side plans to fill at most this fraction of its KV pools
MIN_SHARE = 0.8  # a pool only where the long prompts' prefill is at least this share of the cluster's busy time
MIN_FILL = 0.75  # where the decode side's KV caps the pool below this share of the model's size: no pool
MIN_RHO = 0.4  # ... and the pooled cluster at least this busy (below, a pool ties with the DP's plan at best)
CHECK_SHARE = 0.5  # with a plan checker (``pool_check``): pool sizes are scored on a replay from this share up
CHECK_FRACTIONS = (0.5, 0.625, 0.375, 0.75, 0.25)  # ... the sizes scored besides the model's: these shares of n


@dataclass
class PoolSize:
    size: int  # instances in the pool (0: no pool)
    prefill_min: int  # prompts at least this long are prefilled there
    why: str
    share: float = 0.0  # the long prompts' prefill share of the pooled cluster's busy time (the stage model)
    rho: float = 0.0  # the pooled cluster's utilization (the stage model)


def parse_pool_option(value) -> int | None:
    """``prefill_pool``: "off" / 0 -> 0, "auto" -> None (sized by ``size_prefill_pool``), a count -> that count."""
    text = str(value).strip().lower()
    if text in ("off", "0", "", "false"):
        return 0
    if text == "auto":
        return None
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"prefill_pool takes off, auto or an instance count, not {value!r}") from None
    if count < 0:
        raise ValueError(f"prefill_pool must be >= 0, got {count}")
    return count


def size_prefill_pool(
    sample: Sequence[tuple[int, int]],
    rate: float,
    n: int,
    cm: CostModel,
    qoe: QoEConfig,
    prefill_min: int,
    decode_rho_max: float = DECODE_RHO_MAX,
    min_share: float = MIN_SHARE,
) -> PoolSize:
    """How many of ``n`` instances should prefill the prompts of at least ``prefill_min`` tokens (by the pool
    model; none where the long prompts' prefill is below ``min_share`` of the busy time)."""
    if n < 2 or not sample or rate <= 0:
        return PoolSize(0, prefill_min, "fewer than two instances, or no length sample / rate")
    prompts = np.array([p for p, _ in sample], dtype=np.float64)
    outs = np.array([o for _, o in sample], dtype=np.float64)
    long_share, share, rho = long_prefill_share(sample, rate, n, cm, qoe, prefill_min)
    why = (
        f"prompts >= {prefill_min} take {long_share:.0%} of the prefill seconds, {share:.0%} of the busy time at "
        f"pooled utilization {rho:.2f}"
    )
    if share < min_share or rho < MIN_RHO:
        return PoolSize(
            0, prefill_min, f"{why}; no pool (needs >= {min_share:.0%} at utilization >= {MIN_RHO})", share, rho
        )
    best = best_pool_size(pool_latencies(sample, rate, n, cm, qoe, prefill_min), decode_rho_max)
    # the decode side holds every decoding request's KV: rate x E[output x (prompt + output / 2)] x TPOT tokens, at
    # the decode side's TPOT the model predicts with that pool (at most the SLO's)
    tpot = max(1e-3, min(best.decode_tpot_s, qoe.slo_tpot))
    held = rate * float(np.mean(outs * (prompts + outs / 2))) * tpot
    decode_min = max(1, math.ceil(held / (KV_HEADROOM * cm.kv_capacity_tokens())))
    size = max(0, min(best.size, n - decode_min))
    why += (
        f"; the pool model's best size {best.size} of {n} (predicted {best.latency_s:.2f} s per request, pool / "
        f"decode utilization {best.pool_rho:.2f} / {best.decode_rho:.2f}); the decode side needs >= {decode_min} "
        "for its KV"
    )
    if size < MIN_FILL * best.size:  # a pool far smaller than the model's queues without bound: none rather
        return PoolSize(0, prefill_min, f"{why}; no pool (the decode side's KV leaves it {size} instances)", share, rho)
    return PoolSize(size, prefill_min, why, share, rho)


def long_prefill_share(
    sample: Sequence[tuple[int, int]], rate: float, n: int, cm: CostModel, qoe: QoEConfig, prefill_min: int
) -> tuple[float, float, float]:
    """(the prompts >= ``prefill_min``: share of the prefill seconds, share of the pooled cluster's busy time; the
    pooled cluster's utilization), by the stage model's pooled prediction."""
    prompts = np.array([p for p, _ in sample], dtype=np.float64)
    secs = prefill_seconds(cm, prompts, qoe.prefill_chunk)
    long_share = float(secs[prompts >= prefill_min].sum() / max(secs.sum(), 1e-12))
    pooled = predict_stages(sample, rate, [], [n], cm, qoe)[0]
    rho, busy = pooled["rho"], pooled["prefill_busy"]
    return long_share, busy * long_share / max(rho, 1e-9), rho


def pool_check_applies(
    sample: Sequence[tuple[int, int]], rate: float, n: int, cm: CostModel, qoe: QoEConfig, prefill_min: int
) -> bool:
    """Whether a pool check scores pool sizes (``pool_check``): the long prompts' prefill is at least
    ``CHECK_SHARE`` of the pooled cluster's busy time, at any utilization (the replay decides; with a utilization
    gate of ``MIN_RHO``, as the unchecked pool model has, the low-load cells ran the unchecked DP: 8B Mooncake x 16
    p99 1.02x least_load's, 1.003x checked, docs/results/cascade_eval_pool11.md)."""
    if n < 2 or not sample or rate <= 0:
        return False
    _, share, _ = long_prefill_share(sample, rate, n, cm, qoe, prefill_min)
    return share >= CHECK_SHARE


def largest_refined_pool(n: int) -> int:
    """The largest pool size a check's refinement round scores (``pool_check_refine``): the largest spread size,
    ``max(CHECK_FRACTIONS)`` of ``n``. A replay covers one check interval, too short to show a decode side of fewer
    than n / 4 instances filling its KV: at 70B Mooncake x 8, seed 8, 4.6 req/s, an unbounded refinement chose 7 of 8,
    where a fixed pool of 7 meets the SLOs for 0.166 of the requests against 0.968 for 6
    (docs/results/pool_check_probes_refine.txt)."""
    return _fraction_of(n, max(CHECK_FRACTIONS))


def _fraction_of(n: int, f: float) -> int:
    """A pool of about ``f`` of ``n`` instances: at least 1, at most n - 1."""
    return min(n - 1, max(1, round(f * n)))


def checked_pool_sizes(n: int, model_size: int, count: int) -> list[int]:
    """The pool sizes a plan check scores (``pool_check``): the model's size (when it has one), then
    ``CHECK_FRACTIONS`` of ``n`` (each 1..n-1, distinct), ``count`` in all. The model ignores prefix reuse and
    reads the decode side's utilization as a limit: at 8B Mooncake x 8 it sizes fewer than the 5 of 8 that
    reach the SLO-rate target (docs/results/cascade_eval.md), so a replay chooses among a spread of sizes."""
    sizes = [model_size] if 0 < model_size < n else []
    for f in CHECK_FRACTIONS:
        k = _fraction_of(n, f)
        if k not in sizes:
            sizes.append(k)
    return sizes[: max(0, count)] if n >= 2 else []


class PrefillPool:
    """The pool's members and its dispatcher's queue estimate."""

    def __init__(
        self,
        members: Sequence[int],
        prefill_min: int,
        prefill_s: Callable[[int], float],
        trees: PrefixTrees | None = None,
        work_weight: float = 0.0,
    ):
        self.members = list(members)
        self.work_weight = float(work_weight)  # CascadeRouterConfig.pool_work_weight
        self.prefill_min = int(prefill_min)
        self.prefill_s = prefill_s
        self.trees: PrefixTrees | None = trees  # the router's prefix trees (affinity), shared
        self.busy_until = dict.fromkeys(self.members, 0.0)  # carried over by ``resized``
        self.member_set = set(self.members)
        self.last_work = 0.0  # the prefill seconds of the last pick's prompt on its member

    def resized(self, members: Sequence[int]) -> PrefillPool:
        """The same pool over ``members``: the members that stay keep their queue estimates."""
        pool = PrefillPool(members, self.prefill_min, self.prefill_s, self.trees, self.work_weight)
        pool.busy_until.update({i: t for i, t in self.busy_until.items() if i in pool.member_set})
        return pool

    def takes(self, req: RequestView) -> bool:
        return bool(self.members) and req.prompt_len - req.kv_tokens >= self.prefill_min

    def holds(self, iid: int) -> bool:
        return iid in self.member_set

    def healthy(self, loads: list[InstanceLoad]) -> list[int]:
        """The members whose published load says healthy (all of them when none is: a pool never refuses)."""
        return [i for i in self.members if i >= len(loads) or loads[i].healthy] or self.members

    def pick(
        self, req: RequestView, loads: list[InstanceLoad], now: float, among: Sequence[int] | None = None
    ) -> tuple[int, dict[int, int]]:
        """(the member chosen, the cached prompt tokens per member): the least ``end + work_weight x work``, where
        ``end`` is when the member's queued prefills end with this one and ``work`` this prompt's prefill seconds
        there, less what its radix cache saves. ``work_weight`` 0 is the earliest first token alone; above 0 a
        member holding the prompt's prefix is preferred by more than this request's own gain, because the work it
        saves is pool capacity every later prompt waits for. ``among``: only these members (the hold queue's ready
        ones)."""
        tokens = req.prompt_len - req.kv_tokens
        ids = list(among) if among else self.healthy(loads)
        hashes = req.block_hashes if self.trees is not None else ()
        saved = saved_tokens(self.trees, ids, hashes, tokens) if hashes else {}

        def work(i: int) -> float:
            return self.prefill_s(tokens - saved.get(i, 0))

        def end(i: int) -> float:
            return max(self.busy_until[i], now) + work(i)

        iid = min(ids, key=lambda i: (end(i) + self.work_weight * work(i), i))
        self.busy_until[iid] = end(iid)
        self.last_work = work(iid)
        return iid, saved

    def cached_on(self, req: RequestView, members: Sequence[int], loads: list[InstanceLoad]) -> int | None:
        """A healthy decode-side member whose cache (the router's prefix trees) holds all but fewer than
        ``prefill_min`` of the prompt's tokens, the one holding most: its prefill there is short, and the request
        needs no move (a conversation's next turn, whose earlier turn decoded there). None: the pool takes it."""
        tokens = req.prompt_len - req.kv_tokens
        ids = [i for i in members if i < len(loads) and loads[i].healthy]
        if self.trees is None or not req.block_hashes or not ids:
            return None
        saved = saved_tokens(self.trees, ids, req.block_hashes, tokens)
        if not saved:
            return None
        best = max(saved, key=lambda i: (saved[i], -i))
        return best if tokens - saved[best] < self.prefill_min else None

    def bound(self, req: RequestView) -> int:
        """The length at which a request on a pool member leaves: right after its first token."""
        return req.prompt_len + 1


@dataclass
class PoolValve:
    """``pool_valve`` (opt-in): a pool member joins the decode side once the decode members' mean KV utilization has
    been at least ``threshold`` at two rebalances in a row (the member whose queued prefills end first), and a decode
    member (the one holding least KV) returns to the pool, up to the size the plan chose, once that utilization has
    been at most ``threshold - 0.3`` twice; at most one change per ``cooldown_s``. Requests stay where they are: one
    prefilling on a former pool member decodes there, one decoding on a new pool member finishes there. A larger pool
    (``pool_decode_rho=0.9``) is faster near the knee, but its smaller decode side can run out of KV (moves refused,
    requests decoding on pool members between long prefills); the valve bounds that."""

    threshold: float
    cooldown_s: float = 2.0
    hi: int = 0  # consecutive observations at or above the threshold
    lo: int = 0  # ... at or below threshold - 0.3
    at: float = float("-inf")  # the last change

    def step(
        self, pool: PrefillPool | None, stages: list[list[int]], loads: list[InstanceLoad], planned: int, now: float
    ) -> tuple[str, list[int], list[int]] | None:
        """("out" | "in", the pool's members, the decode side's) after a change; None: no change (no pool, a
        staged decode side, or nothing to do)."""
        if pool is None or len(stages) != 1 or self.threshold <= 0:
            return None
        decode = stages[0]
        utils = [loads[i].kv_utilization for i in decode if i < len(loads)]
        if not utils:
            return None
        util = sum(utils) / len(utils)
        self.hi = self.hi + 1 if util >= self.threshold else 0
        self.lo = self.lo + 1 if util <= self.threshold - 0.3 else 0
        if now - self.at < self.cooldown_s:
            return None
        if self.hi >= 2 and len(pool.members) > 1:
            self.at, self.hi = now, 0
            iid = min(pool.members, key=lambda i: (max(pool.busy_until[i], now), i))
            return "out", [i for i in pool.members if i != iid], [*decode, iid]
        if self.lo >= 2 and len(pool.members) < planned and len(decode) > 1:
            self.at, self.lo = now, 0
            iid = min(decode, key=lambda i: (loads[i].kv_used if i < len(loads) else 0, i))
            return "in", [*pool.members, iid], [i for i in decode if i != iid]
        return None
