"""What SGLang, the SGLang model gateway (SMG) and Llumnix do today, as policies over views.

Each model was written from the real code (file and function names are in the docstrings and in
docs/simulator.md); every number comes from a config dataclass whose defaults are the real defaults.

Instance scheduler ``sglang`` (SGLang 0.5.23 default, ``--schedule-policy fcfs``, no mixed chunk):
FCFS waiting queue, prefill-first, chunked prefill, whole running batch decodes each step, retraction on
KV exhaustion, ``new_token_ratio`` admission estimate.

Routers: ``round_robin``, ``random``, ``power_of_two``, ``least_load`` (SMG), ``llumnix`` (Llumnix's
load-balance dispatch and migration).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..core.decisions import IterationPlan, Migration, MigrationMode, PrefillChunk
from ..core.interfaces import InstanceScheduler, RouterPolicy
from ..core.options import config_from_options
from ..core.request_limits import max_req_len
from ..core.views import ClusterView, InstanceLoad, InstanceView, Phase, RequestView
from . import sglang_budget, sglang_order
from .registry import PolicyContext


# ------------------------------------------------------------------------------------------------------
# SGLang instance scheduler
# ------------------------------------------------------------------------------------------------------
@dataclass
class SglangConfig:
    """SGLang 0.5.23 scheduling constants (sglang/srt/environ.py, server_args defaults)."""

    init_new_token_ratio: float = 0.7  # SGLANG_INIT_NEW_TOKEN_RATIO
    min_new_token_ratio_factor: float = 0.14  # SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR (min = init * factor)
    new_token_ratio_decay_steps: int = 600  # SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS
    schedule_conservativeness: float = 1.0  # --schedule-conservativeness
    retract_decode_steps: int = 20  # SGLANG_RETRACT_DECODE_STEPS (ratio estimate after a retraction)
    clip_max_new_tokens: int = sglang_budget.CLIP_MAX_NEW_TOKENS  # SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION
    default_max_new_tokens: int = 1 << 30  # a request without max_new_tokens (init_req_max_new_tokens) ...
    max_req_len: int = 0  # ... is clipped to max_req_len - prompt - 1; 0 = min(context - 1, KV capacity - 1)
    max_prefill_tokens: int = 16384  # --max-prefill-tokens (rem_input_tokens)
    chunked_prefill_size: int = 0  # --chunked-prefill-size; 0 = the instance's max_prefill_tokens (8192 on H100)
    page_size: int = 1  # --page-size (1 for FlashInfer)
    max_running_requests: int = 0  # 0 = the instance's max_running (SGLang derives 2048..4096 from memory)
    max_stable_steps: int = 512  # simulator fast-forward cap per plan (no effect on decisions)
    mixed_chunk: int = -1  # --enable-mixed-chunk: 1 = the running batch rides every prefill forward; 0 = not;
    # -1 = the deployment's (PolicyContext.mixed_chunk; SGLang's default is off)
    schedule_policy: str = ""  # --schedule-policy: fcfs | lpm | shortest-prefill-first | hrrn (sglang_order.py);
    # "" = the deployment's (PolicyContext.schedule_policy; SGLang's default is fcfs)


class SglangScheduler(InstanceScheduler):
    """SGLang's ``Scheduler.get_next_batch_to_run`` (managers/scheduler.py) with the default FCFS policy.

    - Prefill first: ``_get_new_batch_prefill_raw`` builds a prefill batch with ``PrefillAdder``
      (managers/schedule_policy.py): the chunked request continues first (``add_chunked_req``), then
      waiting requests in FCFS order (``add_one_req``) while ``extend + min(max_new, clip) + page <
      remaining``, where remaining = free KV - sum over running requests of ``min(max_new - out, clip) *
      new_token_ratio`` (ratio 1 for a request with ``ignore_eos``: "fixed-length requests cannot benefit from
      the early-EOS estimate", ``_get_running_request_total_token_offset``) - what this round already admitted (``PrefillBudget`` in
      mem_cache/prefill_budget.py). A prompt longer than the chunk budget becomes the chunked request.
      A failed admission sets ``batch_is_full``; admission is not retried until a request leaves.
    - Else decode the whole running batch (``update_running_batch``): if the pool cannot hold one more
      token per request (``check_decode_mem``), ``retract_decode`` (managers/schedule_batch.py) retracts
      the requests with the fewest output tokens (ties: longest prompt) until the rest fits, keeping at
      least one, and resets the ratio to (decoded + 20 * n) / (sum max_new + 1); otherwise the ratio decays
      by (init - min) / 600 per decode step (scheduler_components/new_token_ratio_tracker.py) and resets to
      init whenever the engine idles (``Scheduler.on_idle``).
    - Retracted requests go to the back of the waiting queue and recompute their whole sequence.
    - ``--schedule-policy`` (``schedule_policy``): the waiting queue's order before every prefill batch
      (sglang_order.py: fcfs, lpm = fcfs without a prefix cache, shortest-prefill-first with its chunk cap,
      hrrn).
    - ``--enable-mixed-chunk`` (``mixed_chunk``; off by default, as in SGLang): the running batch rides every
      prefill forward (``mix_with_running``) when the pool holds one more token per decode row, and the
      prefill budget is short by one token per decode row (``PrefillAdder(num_mixed_decode_tokens)``).
    """

    name = "sglang"

    def __init__(
        self,
        cfg: SglangConfig,
        max_req_len: int | None = None,
        mixed_chunk: bool = False,
        schedule_policy: str = sglang_order.FCFS,
    ):
        self.cfg = cfg
        self.mixed = bool(mixed_chunk) if cfg.mixed_chunk < 0 else bool(cfg.mixed_chunk)
        self.policy = sglang_order.check_policy(cfg.schedule_policy or schedule_policy)
        self.processed_tokens = 0  # hrrn: prefill tokens planned so far (Scheduler.processed_tokens_counter)
        self.queued_at: dict[str, int] = {}  # rid -> processed_tokens when it queued (arrival_processed_tokens)
        self.max_req_len = cfg.max_req_len or max_req_len or (1 << 62)
        init = min(cfg.init_new_token_ratio * cfg.schedule_conservativeness, 1.0)
        self.ratio_init = init
        self.ratio_min = min(init * cfg.min_new_token_ratio_factor, 1.0)
        self.ratio_decay = (init - self.ratio_min) / cfg.new_token_ratio_decay_steps
        self.ratio = init
        self.batch_is_full = False
        self.chunked: RequestView | None = None
        self.retractions = 0
        self._decode_iter: int | None = None  # inst.iteration when the last decode plan was made
        self._last_bs = 0

    # --- helpers -------------------------------------------------------------------------------------
    def _max_new(self, r: RequestView) -> int:
        """The request's max_new_tokens as SGLang sets it (Scheduler.init_req_max_new_tokens)."""
        mn = r.max_new_tokens if r.max_new_tokens is not None else self.cfg.default_max_new_tokens
        cap = self.max_req_len - r.prompt_len - 1
        return mn if mn < cap else max(0, cap)

    def _running_reserve(self, running, ratio: float) -> float:
        rows = [(self._max_new(r) - r.output_len, r.ignore_eos) for r in running]
        return sglang_budget.running_reserve(rows, ratio, self.cfg.clip_max_new_tokens)

    def admission_reserve(self, inst: InstanceView, incoming: RequestView | None = None) -> float:
        """KV tokens this instance's admission keeps back beside its used KV: the running requests' reserve and,
        for an ``incoming`` move, what admitting its continuation takes (one token to extend, its output left).
        The running requests count at the ratio's floor (``min_new_token_ratio``; 1 with ignore_eos), not at the
        decaying ratio: a move's room check then reads only the requests' progress (exact at any instant, also
        mid fast-forwarded segment) and never asks more than SGLang's admission would."""
        reserve = self._running_reserve(inst.running, self.ratio_min)  # the ratio's floor: see the docstring
        if incoming is not None:
            left = self._max_new(incoming) - incoming.output_len
            reserve += sglang_budget.admission_tokens(1, left, self.cfg.clip_max_new_tokens, self.cfg.page_size)
        return reserve

    def _decay(self, steps: int = 1) -> None:
        self.ratio = max(self.ratio - self.ratio_decay * steps, self.ratio_min)

    def on_finish(self, req: RequestView, inst: InstanceView, now: float) -> None:
        self.batch_is_full = False  # filter_batch shrank the running batch
        if self.chunked is req:
            self.chunked = None
        if not inst.running and not inst.waiting:
            self.ratio = self.ratio_init  # the engine goes idle: Scheduler.on_idle resets the ratio

    def on_kv_exhausted(self, inst: InstanceView, now: float, needed: int) -> list[RequestView]:
        # SGLang's retraction order: fewest output tokens first, then the longest prompt.
        if len(inst.running) <= 1:
            return []
        return [min(inst.running, key=lambda r: (r.output_len, -r.prompt_len))]

    # --- the scheduling step -------------------------------------------------------------------------
    def schedule(self, inst: InstanceView, now: float) -> IterationPlan:
        # Decode steps the driver fast-forwarded after our last decode plan decayed the ratio too.
        if self._decode_iter is not None:
            extra = inst.iteration - self._decode_iter - 1
            if extra > 0:
                self._decay(extra)
            self._decode_iter = None
        running = inst.running
        if len(running) < self._last_bs or not running:
            self.batch_is_full = False
        ch = self.chunked
        if ch is not None and (ch.phase != Phase.WAITING or ch.instance != inst.iid or ch.tokens_to_prefill <= 0):
            ch = self.chunked = None
        plan = None
        if ch is not None or (inst.waiting and not self.batch_is_full):
            plan = self._prefill(inst, ch)
        if plan is None:
            plan = self._decode(inst)
            if plan.empty:
                self.ratio = self.ratio_init  # nothing to run: on_idle
        self._last_bs = len(running)
        return plan

    def _prefill(self, inst: InstanceView, ch: RequestView | None) -> IterationPlan | None:
        cfg = self.cfg
        page = cfg.page_size
        clip = cfg.clip_max_new_tokens
        ratio = self.ratio
        running = inst.running
        max_running = cfg.max_running_requests or inst.max_running
        if len(running) >= max_running and ch is None:
            self.batch_is_full = True
            return None
        free = inst.kv_capacity - inst.kv_used
        remaining = free - self._running_reserve(running, ratio)
        rem_chunk = cfg.chunked_prefill_size or inst.max_prefill_tokens
        rem_input = cfg.max_prefill_tokens
        if self.mixed and running:  # PrefillAdder(num_mixed_decode_tokens=running_bs): one token per decode row
            rem_chunk -= len(running)
            rem_input -= len(running)
        chunks: list[PrefillChunk] = []
        order = self._order(inst)
        if ch is not None:
            avail = min(rem_chunk, int(remaining))
            if avail <= 0:
                avail = rem_chunk
            need = ch.tokens_to_prefill
            n = min(avail, need)
            if self.policy == sglang_order.SPF:
                cap = sglang_order.chunk_limit(ch, [r for r in order if r is not ch], rem_chunk, page)
                if cap is not None:
                    n = min(n, cap)
            chunks.append(PrefillChunk(ch, n))
            if n >= need:  # last chunk: the request will decode, reserve its output
                remaining -= sglang_budget.admission_tokens(n, self._max_new(ch), clip, page)
                self.chunked = None
            else:
                remaining -= n + page
            rem_chunk -= n
            rem_input -= n
        new_chunked = None
        for req in order:
            if rem_input <= 0 or rem_chunk <= 0:
                break
            if req is ch:
                continue
            if len(running) + len(chunks) >= max_running:
                self.batch_is_full = True
                break
            extend = req.tokens_to_prefill
            if extend <= 0:
                continue
            total = sglang_budget.admission_tokens(extend, self._max_new(req) - req.output_len, clip, page)
            if not (remaining > 0 and total < remaining):
                self.batch_is_full = bool(chunks) or bool(running)
                break
            if extend > rem_chunk:  # becomes the chunked request
                n = rem_chunk // page * page
                if n <= 0:
                    break
                chunks.append(PrefillChunk(req, n))
                remaining -= n + page
                new_chunked = req
                rem_chunk -= n
                rem_input -= n
                break  # only one chunked request; the chunk budget is spent
            chunks.append(PrefillChunk(req, extend))
            remaining -= sglang_budget.admission_tokens(extend, self._max_new(req), clip, page)
            rem_chunk -= extend
            rem_input -= extend
        if new_chunked is not None:
            self.chunked = new_chunked
        if not chunks:
            return None
        if self.policy == sglang_order.HRRN:
            self.processed_tokens += sum(c.tokens for c in chunks)
            for c in chunks:  # left the waiting queue (a chunked request is held apart, as SGLang's chunked_req)
                self.queued_at.pop(c.req.rid, None)
        plan = IterationPlan(prefill=chunks)
        if self.mixed and running:
            # Scheduler._get_new_batch_prefill_raw: mix_with_running when the pool holds one more token per
            # decode row after the admitted prefill (check_decode_mem); else they decode on the next step
            new_kv = sum(c.tokens for c in chunks)
            if inst.kv_capacity - inst.kv_used - new_kv >= len(running) * page:
                plan.decode = list(running)
        return plan

    def _order(self, inst: InstanceView):
        """The waiting queue in the admission order of ``--schedule-policy`` (sglang_order.py)."""
        if self.policy == sglang_order.HRRN:
            for r in inst.waiting:  # arrival_processed_tokens: the counter when the request (re)queued
                self.queued_at.setdefault(r.rid, self.processed_tokens)
        return sglang_order.ordered(self.policy, inst.waiting, self.processed_tokens, self.queued_at)

    def _decode(self, inst: InstanceView) -> IterationPlan:
        running = inst.running
        if not running:
            return IterationPlan()
        page = self.cfg.page_size
        free = inst.kv_capacity - inst.kv_used
        b = len(running)
        if free >= b * page:
            self._decay(1)
            self._decode_iter = inst.iteration
            steps = free // (b * page)
            return IterationPlan(decode=list(running), stable_steps=max(1, min(self.cfg.max_stable_steps, steps)))
        # retract_decode: keep order = (output_len, -prompt_len) descending, pop from the end
        keep = sorted(running, key=lambda r: (r.output_len, -r.prompt_len), reverse=True)
        victims: list[RequestView] = []
        first = True
        while first or free < len(keep) * page:
            if len(keep) == 1:
                break
            first = False
            v = keep.pop()
            victims.append(v)
            free += v.kv_tokens
        self.retractions += len(victims)
        total_out = sum(r.output_len for r in keep)
        total_max = sum(self._max_new(r) for r in keep)
        self.ratio = min(1.0, (total_out + self.cfg.retract_decode_steps * len(keep)) / (total_max + 1))
        self.batch_is_full = False
        keep_set = set(map(id, keep))
        decode = [r for r in running if id(r) in keep_set]
        return IterationPlan(decode=decode, preempt=victims)


def make_sglang_scheduler(ctx: PolicyContext, **options) -> SglangScheduler:
    cm = ctx.cost_model
    cap = ctx.kv_capacity or cm.kv_capacity_tokens()
    longest = max_req_len(cm.model.max_context, int(cap))  # tp_worker.py: min(context - 1, pool - 1)
    cfg = config_from_options(SglangConfig, options, what="scheduler 'sglang'")
    return SglangScheduler(cfg, longest, mixed_chunk=ctx.mixed_chunk, schedule_policy=ctx.schedule_policy)


# ------------------------------------------------------------------------------------------------------
# Routers
# ------------------------------------------------------------------------------------------------------
def _healthy_ids(cluster: ClusterView) -> list[int]:
    ids = [x.iid for x in cluster.loads if x.healthy]
    if not ids:
        raise RuntimeError("no healthy instance to route to")
    return ids


@dataclass
class RoundRobinConfig:
    start: int = 0  # first instance id


class RoundRobinRouter(RouterPolicy):
    """SMG ``RoundRobinPolicy``: the next healthy worker in a fixed cycle (a shared atomic counter)."""

    name = "round_robin"

    def __init__(self, n: int, cfg: RoundRobinConfig):
        self.n = n
        self.next = cfg.start

    def route(self, req: RequestView, cluster: ClusterView, now: float) -> int:
        loads = cluster.loads
        for _ in range(self.n):
            i = self.next % self.n
            self.next = i + 1
            if loads[i].healthy:
                return i
        raise RuntimeError("no healthy instance to route to")


def make_round_robin(ctx: PolicyContext, **options) -> RoundRobinRouter:
    cfg = config_from_options(RoundRobinConfig, options, what="router 'round_robin'")
    return RoundRobinRouter(ctx.num_instances, cfg)


@dataclass
class RandomConfig:
    seed_offset: int = 0  # added to the context seed


class RandomRouter(RouterPolicy):
    """SMG ``RandomPolicy``: a uniformly random healthy worker."""

    name = "random"

    def __init__(self, n: int, seed: int, cfg: RandomConfig):
        self.n = n
        self.rng = random.Random(seed + cfg.seed_offset)

    def route(self, req: RequestView, cluster: ClusterView, now: float) -> int:
        i = self.rng.randrange(self.n)
        if cluster.loads[i].healthy:
            return i
        return self.rng.choice(_healthy_ids(cluster))


def make_random(ctx: PolicyContext, **options) -> RandomRouter:
    cfg = config_from_options(RandomConfig, options, what="router 'random'")
    return RandomRouter(ctx.num_instances, ctx.seed, cfg)


def smg_load(load: InstanceLoad) -> int:
    """SGLang's reported load ``num_tokens``: KV tokens in use + tokens of waiting requests
    (scheduler_components/load_inquirer.py ``get_loads``); here kv_used + outstanding_tokens."""
    return load.kv_used + load.outstanding_tokens


@dataclass
class LeastLoadConfig:
    """SMG ``load_aware`` (sgl-model-gateway policies/load_aware.rs): the least loaded of ALL healthy workers,
    where load = the last polled ``num_tokens`` + tokens dispatched to it since that poll (reset on each poll)."""

    count_dispatched: bool = True  # add the dispatch delta (SMG does; False = polled load only)
    tokens_per_request: int = 0  # delta per request; 0 = its prompt tokens (SMG estimates chars / 4)


class LeastLoadRouter(RouterPolicy):
    name = "least_load"

    def __init__(self, n: int, cfg: LeastLoadConfig):
        self.n = n
        self.cfg = cfg
        self.delta = [0] * n  # tokens dispatched since the worker's last publication
        self.pub_at = [-1.0] * n

    def _effective(self, load: InstanceLoad) -> int:
        i = load.iid
        if load.published_at != self.pub_at[i]:  # a new poll overwrote the cached load: reset the delta
            self.pub_at[i] = load.published_at
            self.delta[i] = 0
        return smg_load(load) + (self.delta[i] if self.cfg.count_dispatched else 0)

    def route(self, req: RequestView, cluster: ClusterView, now: float) -> int:
        return self.route_credited(req, cluster)

    def route_credited(
        self, req: RequestView, cluster: ClusterView, credit: dict[int, float] | None = None, saved: dict | None = None
    ) -> int:
        """``route`` with per-worker ``credit`` tokens off the load (cascade's prefix affinity: the prompt tokens a
        worker's cache would not prefill) and ``saved`` tokens off the chosen one's dispatch delta."""
        best, best_s = -1, 0
        for load in cluster.loads:
            if not load.healthy:
                continue
            s = self._effective(load) - (credit.get(load.iid, 0.0) if credit else 0.0)
            if best < 0 or s < best_s:  # ties: the first worker wins, as in SMG
                best, best_s = load.iid, s
        if best < 0:
            raise RuntimeError("no healthy instance to route to")
        self.delta[best] += (self.cfg.tokens_per_request or req.prompt_len) - (saved.get(best, 0) if saved else 0)
        return best


def make_least_load(ctx: PolicyContext, **options) -> LeastLoadRouter:
    cfg = config_from_options(LeastLoadConfig, options, what="router 'least_load'")
    return LeastLoadRouter(ctx.num_instances, cfg)


@dataclass
class PowerOfTwoConfig:
    """SMG ``power_of_two`` (policies/power_of_two.rs): two distinct random healthy workers, the one whose
    cached (polled) load is lower wins; ties go to the first. No dispatch delta."""

    seed_offset: int = 0  # added to the context seed


class PowerOfTwoRouter(RouterPolicy):
    name = "power_of_two"

    def __init__(self, n: int, seed: int, cfg: PowerOfTwoConfig):
        self.n = n
        self.rng = random.Random(seed + cfg.seed_offset)

    def route(self, req: RequestView, cluster: ClusterView, now: float) -> int:
        loads = cluster.loads
        ids = range(self.n)
        if self.n > 1 and not (all(x.healthy for x in loads)):
            ids = _healthy_ids(cluster)
        m = len(ids)
        if m == 1:
            return ids[0]
        i1 = self.rng.randrange(m)
        i2 = (i1 + 1 + self.rng.randrange(m - 1)) % m  # a different worker, O(1), as SMG does
        a, b = ids[i1], ids[i2]
        return a if smg_load(loads[a]) <= smg_load(loads[b]) else b


def make_power_of_two(ctx: PolicyContext, **options) -> PowerOfTwoRouter:
    cfg = config_from_options(PowerOfTwoConfig, options, what="router 'power_of_two'")
    return PowerOfTwoRouter(ctx.num_instances, ctx.seed, cfg)


# ------------------------------------------------------------------------------------------------------
# Llumnix
# ------------------------------------------------------------------------------------------------------
@dataclass
class LlumnixConfig:
    """Llumnix defaults (AlibabaPAI/llumnix llumnix/config/default.py, load_computation.py,
    global_scheduler/{dispatch_policy,migration_filter,migration_policy}.py)."""

    block_size: int = 16  # KV block size of the engine Llumnix manages (vLLM default)
    migrate_out_threshold: float = 3.0  # MIGRATE_OUT_THRESHOLD: freeness (blocks per request) below it = source
    rebalance_interval: float = 0.05  # POLLING_INTERVAL x PAIR_MIGRATION_FREQUENCY (s)
    pair_migration_policy: str = "defrag_constrained"  # PAIR_MIGRATION_POLICY (or "balanced")
    request_migration_policy: str = "SR"  # REQUEST_MIGRATION_POLICY: SR shortest / LR longest / LCFS last
    migration_mode: str = "kv_transfer"  # Llumnix copies KV blocks in stages ("recompute" for comparison)
    topk_random_dispatch: int = 1  # choose at random among the k freest instances
    seed_offset: int = 0


class LlumnixRouter(RouterPolicy):
    """Llumnix's global scheduler over published loads.

    - Load ``remaining_steps`` (load_computation.py ``RemainingStepsLoad``, no defrag): freeness =
      (free KV blocks - blocks wanted by all waiting requests) / (running + waiting requests); infinite
      when idle. Dispatch (dispatch_policy.py ``Load``) sends a request to the freest instance.
    - Every ``rebalance_interval`` (migration_filter.py ``LoadFilter``): sources are instances with
      freeness below ``migrate_out_threshold``, destinations those above it; ``defrag_constrained`` /
      ``Defrag`` pairs the least free source with the freest destination, the next with the next...;
      ``balanced`` keeps a pair only if the migration narrows the gap. One request per pair per round:
      the shortest running one (``SR``), moved by staged KV transfer.
    """

    name = "llumnix"
    migrates = True

    def __init__(self, n: int, seed: int, cfg: LlumnixConfig):
        if cfg.pair_migration_policy not in ("defrag_constrained", "defrag", "balanced"):
            raise ValueError(f"unknown pair_migration_policy {cfg.pair_migration_policy!r}")
        if cfg.request_migration_policy not in ("SR", "LR", "LCFS"):
            raise ValueError(f"unknown request_migration_policy {cfg.request_migration_policy!r}")
        self.n = n
        self.cfg = cfg
        self.rebalance_interval = cfg.rebalance_interval
        self.mode = MigrationMode(cfg.migration_mode)
        self.rng = random.Random(seed + cfg.seed_offset)

    def freeness(self, load: InstanceLoad, extra_requests: int = 0, extra_tokens: int = 0) -> float:
        bs = self.cfg.block_size
        n = load.num_running + load.num_waiting + extra_requests
        if n <= 0:
            return float("inf")
        free_blocks = (load.kv_capacity - load.kv_used - extra_tokens) / bs
        return (free_blocks - load.outstanding_tokens / bs) / n

    def route(self, req: RequestView, cluster: ClusterView, now: float) -> int:
        cands = [x for x in cluster.loads if x.healthy]
        if not cands:
            raise RuntimeError("no healthy instance to route to")
        cands.sort(key=lambda x: -self.freeness(x))
        k = min(self.cfg.topk_random_dispatch, len(cands))
        return (cands[0] if k == 1 else self.rng.choice(cands[:k])).iid

    def _pick(self, reqs: list[RequestView]) -> RequestView | None:
        if not reqs:
            return None
        p = self.cfg.request_migration_policy
        if p == "SR":
            return min(reqs, key=lambda r: r.length)
        if p == "LR":
            return max(reqs, key=lambda r: r.length)
        return reqs[-1]

    def rebalance(self, cluster: ClusterView, running: dict[int, list[RequestView]], now: float) -> list[Migration]:
        th = self.cfg.migrate_out_threshold
        loads = [x for x in cluster.loads if x.healthy]
        free = {x.iid: self.freeness(x) for x in loads}
        srcs = sorted((x for x in loads if free[x.iid] < th), key=lambda x: free[x.iid])
        dsts = sorted((x for x in loads if free[x.iid] > th), key=lambda x: -free[x.iid])
        out: list[Migration] = []
        for s, d in zip(srcs, dsts):
            req = self._pick([r for r in running.get(s.iid, ()) if r.phase == Phase.RUNNING])
            if req is None:
                continue
            if self.cfg.pair_migration_policy == "balanced":
                before = free[d.iid] - free[s.iid]
                after = self.freeness(d, 1, req.kv_tokens) - self.freeness(s, -1, -req.kv_tokens)
                if not (0 < after < before):
                    continue
            out.append(Migration(req, s.iid, d.iid, self.mode, reason="llumnix"))
        return out


def make_llumnix(ctx: PolicyContext, **options) -> LlumnixRouter:
    cfg = config_from_options(LlumnixConfig, options, what="router 'llumnix'")
    return LlumnixRouter(ctx.num_instances, ctx.seed, cfg)
