"""The ``cascade`` router's options (``cascade:migration=0,...``): the fields of :class:`CascadeRouterConfig`.

A field that shares its name with a field of the DP's ``QoEConfig``, the balancer's ``BalanceConfig``, the migration
planner's ``MigrationConfig`` or the plan checker's ``PlanCheckConfig`` is passed on to it
(``core.options.shared_options``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core.options import config_from_options
from .prefill_pool import parse_pool_option


@dataclass
class CascadeRouterConfig:
    migration: bool = True  # 0: requests never leave their entry stage (ablation "no migration")
    refine: bool = True  # 0: static ranges from the initial plan (ablation "static ranges")
    balance: bool = True  # 0: no cross-stage boundary shifts / instance handovers
    central: bool = False  # 1: one global balancer over all stages (ablation "centralized balance")
    mode: str = "auto"  # migration mechanism: auto | recompute | kv_transfer
    link: str = "nvlink"  # KV link curve: nvlink | infiniband | tcp | spec
    buckets: int = 64  # DP length buckets
    max_stages: int = 0  # 0 = let the DP choose
    min_stage_instances: int = 1  # DP constraint: instances per stage
    burst_z: float = 1.0  # DP head-room for load swings (QoEConfig.burst_z)
    min_gain: float = 0.05  # QoEConfig.min_gain: fewest stages within this fraction of the best objective
    # (0.05 since issue 14: with the corrected stage model, a plan predicted < 5% better than fewer stages
    # mostly lost to pooling in the grid; docs/results/cascade_eval.md)
    prefill_bound: float = 0.85  # QoEConfig.prefill_bound: one stage when the pooled plan is at least this busy
    # and prefill is at least this fraction of it (70B Mooncake past the knee: the DP staged it, 1.16x)
    batch_top: bool = True  # QoEConfig.batch_top: heterogeneity from the batch's expected longest sequence
    slo_ttft: float = 2.0
    slo_tpot: float = 0.1
    min_pressure: float = 0.15  # BalanceConfig.min_pressure: cross-stage balance acts above this pressure
    imbalance_ratio: float = 1.25  # BalanceConfig.imbalance_ratio
    cooldown_s: float = 2.0  # BalanceConfig.cooldown_s: min time between two actions of one boundary agent
    agent_waiting_weight: float = 0.0  # BalanceConfig.agent_waiting_weight: the boundary agents balance decode
    # pressure only (1 = also the prefill backlog, the previous default: one queued long prompt then moves
    # boundaries / instances; issue-14 grid, docs/results/cascade_eval.md)
    defer_tokens: int = 16  # when no destination can take a migration now, retry after this many tokens
    rate_window: int = 512  # arrivals kept to estimate the rate when the context gives none
    spill: bool = True  # 1: a new request may be prefilled on an instance of an earlier (shorter) stage when
    # that is less pressured, then moves forward to its own stage after its first token (KV transfer)
    spill_penalty: float = 0.1  # pressure added to spill candidates (the extra migration), SLO units
    # The prefill-stall term (issue 14, loaded long context): SGLang runs a prefill batch alone, so a new prompt
    # stalls the running decodes of the instance it lands on. A candidate's penalty grows by spill_harm x the
    # prompt's prefill seconds x its running requests / slo_ttft: on spill candidates, and with harm_own on the
    # own stage's members too, only where KV use is below harm_kv_max (a full pool decodes few requests; past the
    # knee the term broke the tail). Defaults 0.1 / 1 / 0.5 since issue 14's loaded-Mooncake study: 35 of 80 grid
    # cells meet the targets (30 without), 8B Mooncake past the knee 0.84x -> 0.67x the best baseline's mean; cost:
    # past-the-knee p99 up to 1.21x the previous default on 8B azure_conv x 16 (docs/results/cascade_eval.md).
    spill_harm: float = 0.1  # 0 = off (the previous behaviour)
    harm_own: bool = True
    harm_kv_max: float = 0.5
    affinity: float = 3.0  # prefix-cache affinity (cascade_entry.py; 0 = off): a candidate that was sent the prompt's
    # leading blocks (RequestView.block_hashes) is credited affinity x what its radix cache saves, in its dispatcher's
    # units (staged: prefill seconds / slo_ttft; one stage: prompt tokens off least_load's load). Mooncake grid
    # (docs/results/cascade_eval.md): 0 / 1 / 3 / 6 / 10 measured, 3 the best mean over both models
    pooled_dispatch: str = "least_load"  # one stage: "least_load" (exactly its decisions) | "pressure" (the
    # in-stage picker's cost-model pressure over every instance; opt-in: over the 33 pooled cells of the issue-14
    # grid a better mean in 27 but a worse p99 in 19, docs/results/cascade_eval_pooled_pressure.md)
    prefill_pool: str = "auto"  # prefill_pool.py: a count of instances that prefill the prompts of >= prefill_min
    # tokens, each request moving on after its first token; "auto" sizes one with each DP plan where the long prompts'
    # prefill is most of the work (by the pool model, or by replays with pool_check; none with a fixed bounds/counts
    # plan); "off". Default auto since issue 14's Mooncake grid: 70B mean 0.53-0.80x the best baseline at medium load
    # and above, SLO-meeting rate 1.10-1.13x (docs/results/cascade_eval_pool.md)
    prefill_min: int = 8192
    pool_decode_rho: float = 0.75  # an auto pool leaves its decode side at most this busy by the pool model
    # (pool_model.DECODE_RHO_MAX); 0.7 / 0.75 / 0.8 / 0.9 measured (docs/results/cascade_eval_pool5.md); with the hold
    # queue 0.8 gives 1.60x / 1.57x against 1.54x / 1.54x and 0.9 collapses on a seed (cascade_eval_pool9_variants)
    pool_work_weight: float = 1.0  # pool dispatch: the member with the least (its queue's end with this prompt) + this
    # x the prompt's prefill seconds there, less its radix cache's saving (PrefillPool.pick; 0 = earliest end alone,
    # the behaviour before). 70B Mooncake x 16: SLO rate 1.28x -> 1.29x and hit rate 8.9% -> 11.4% with the cache filled
    # at prefill completion (pool7); with the chunk-level cache (pool8) no measurable effect: kept as harmless
    pool_move_room: bool = True  # a request leaving the pool goes to the decode-side member with the most free KV
    # (MemberPicker.pick_room), not the least TPOT pressure (0 = the behaviour before): at 70B Mooncake x 16 the
    # pressure pick left one decode member with 2-3x the others' requests and its moves refused for KV
    pool_valve: float = 0.0  # > 0 (opt-in): a pool member joins the decode side while the decode members' mean KV
    # utilization is at least this, and returns when it is at most this - 0.3 (CascadeRouter._pool_valve). With
    # pool_decode_rho=0.9, 70B Mooncake x 16: SLO rate 1.27x / 1.31x (FCFS / SPF, 5 seeds) against the defaults' 1.24x /
    # 1.29x, past the knee 0.57x / 0.55x against 0.51x / 0.43x (docs/results/cascade_eval.md, cascade_eval_pool8_valve)
    pool_hold: int = 1  # > 0 (pool_hold.py): the router holds the pool's prompts and sends one to a member only while
    # that member has fewer than this many prefills outstanding (sent, no first token yet), in deadline order; 0 = send
    # at arrival (the behaviour before). 70B Mooncake, 10 seeds: SLO rate 1.54x / 1.54x the best baseline's (N = 8 /
    # 16) against 1.24x / 1.25x (docs/results/cascade_eval_pool9.md)
    pool_hold_order: float = 30.0  # the hold queue's deadline: arrival + max(slo_ttft, this x the prompt's prefill s)
    # (0 = FCFS, 3 = EDF on the length-scaled TTFT SLO: 1.45x / 1.44x; 100 ~ shortest first: 1.69x / 1.64x, 3 seeds,
    # 70B; 10, the default before the twentieth session: SLO rate 8B 1.29x / 1.35x, 70B 1.68x / 1.64x, against 30's
    # 1.39x / 1.41x and 1.80x / 1.64x, both with pool_check_refine: docs/results/cascade_eval_pool11.md)
    pool_hold_window: int = 16  # a ready member takes, of the first this many held prompts, the one its cache saves
    # most on (1: deadline order alone, prefix hit rate 5.0% against 9.4%)
    pool_check: bool = True  # with prefill_pool=auto and a plan checker (the simulator's; the HTTP router's process):
    # where the long prompts' prefill is >= prefill_pool.CHECK_SHARE of the busy time, the start-up and drift re-plans
    # score pool sizes (the model's and pool_check_sizes - 1 spread ones, each with one stage over the rest and, with
    # pool_check_dp, with the DP's plan over the rest) against
    # the DP's plan and pooled on a replay (plan_check.py's machinery) instead of taking the pool model's size; 0 = the
    # pool model alone (the behaviour before)
    pool_check_sizes: int = 4  # pool sizes a pool check scores (prefill_pool.checked_pool_sizes)
    pool_check_dp: bool = True  # each pool size also with the DP's staged plan over the other instances (what a fixed
    # prefill_pool=k runs): 8B Mooncake SLO rate 1.29x / 1.27x against 1.12x / 1.10x with one stage beside each pool
    # (docs/results/cascade_eval_pool10.md); 0 = one stage only
    pool_check_refine: bool = True  # then the best-ranked pool size's neighbours, k - 1 and k + 1, in its form, up to
    # 3/4 of N (plan_candidates.pool_neighbours): the spread sizes are N/8 apart. 8B Mooncake x 16 SLO rate 1.41x
    # against 1.38x without (docs/results/cascade_eval_pool11.md)
    pool_cached: bool = True  # with a pool: a long prompt whose uncached rest on a decode-side instance (the prefix
    # trees: e.g. the earlier turn of its conversation decoded there) is < prefill_min is prefilled there, not pooled
    prefill_horizon_s: float = 0.0  # BalanceConfig.prefill_horizon_s (0: queued prefill counts only against
    # the TTFT SLO; 0.5 also stretches the TPOT term, measured worse: docs/results/cascade_eval.md)
    # plans checked by simulation (policies/plan_check.py; only with a checker in PolicyContext.plan_checker)
    check_replans: bool = False  # the start-up and drift re-plans go to the plan checker on every trace (pooled, the
    # plan in force and the DP's best scored on a replay; pool sizes where pool_check applies), no timer check; 0 = only
    # where pool_check applies (plan_check=1 adds the timer and the DP's next-best partitions)
    check_staging: bool = True  # the plan checker decides whether to stage: the start-up re-plan and every drift
    # re-plan made while one stage is in force go to it (pooled against the DP's best on a replay), as with
    # check_replans, and while staged a timer check (check_interval_s) asks whether staging still pays; a drift
    # re-plan of a staged plan is the DP's, unchecked. Short traces' worst p99 1.03x against
    # 1.13x without (docs/results/cascade_eval_grid10.md); 0 = the DP's plans unchecked where pool_check does not apply
    plan_check: bool = False  # PlanCheckConfig.plan_check; opt-in (cascade:plan_check=1) until the Mooncake eval pays
    check_top_k: int = 3  # PlanCheckConfig.check_top_k
    hysteresis: float = 0.05  # PlanCheckConfig.hysteresis
    stage_gain: float = 0.03  # PlanCheckConfig.stage_gain
    tail_weight: float = 0.2  # PlanCheckConfig.tail_weight
    check_slo_weight: float = 0.0  # PlanCheckConfig.check_slo_weight
    check_slo_target: float = 0.0  # PlanCheckConfig.check_slo_target
    check_interval_s: float = 60.0  # PlanCheckConfig.check_interval_s
    replay_requests: int = 2000  # PlanCheckConfig.replay_requests
    min_replay: int = 200  # PlanCheckConfig.min_replay
    check_instances: int = 0  # PlanCheckConfig.check_instances: replay on a proportional sub-cluster
    check_open: bool = True  # PlanCheckConfig.check_open: replay the unfinished recent arrivals too
    check_warm: bool = True  # PlanCheckConfig.check_warm: the replay starts from the in-flight requests
    check_span_s: float = 30.0  # PlanCheckConfig.check_span_s: replay at least this many seconds
    dp_margin: bool = True  # PlanCheckConfig.dp_margin: another staged plan must beat the DP's by hysteresis
    check_cpu_budget: float = 1.0  # PlanCheckConfig.check_cpu_budget: checker core-s per traffic minute (0: off)
    bounds: str = ""  # fixed initial bounds "512/2048" (with counts) instead of the DP
    counts: str = ""  # fixed instances per stage "2/2/4"


def checks_pool(cfg: CascadeRouterConfig) -> bool:
    """An auto prefill pool whose size the plan checker scores (``pool_check``): not with a fixed pool count
    (``prefill_pool=<k>`` / ``off``) nor with a fixed ``bounds`` / ``counts`` plan."""
    return bool(cfg.pool_check) and parse_pool_option(cfg.prefill_pool) is None and not _fixed_plan(cfg)


def checks_replans(cfg: CascadeRouterConfig) -> bool:
    """``check_replans`` or ``check_staging`` where they can act: not with a fixed pool count or a fixed ``bounds`` /
    ``counts`` plan; ``check_staging`` not where the pool model sizes an auto pool unchecked (``pool_check=0``)."""
    staging = cfg.check_staging and (cfg.pool_check or parse_pool_option(cfg.prefill_pool) == 0)
    return bool(cfg.check_replans or staging) and not parse_pool_option(cfg.prefill_pool) and not _fixed_plan(cfg)


def _fixed_plan(cfg: CascadeRouterConfig) -> bool:
    return bool(cfg.bounds or cfg.counts)


def wants_plan_checker(options: Mapping[str, Any]) -> bool:
    """Whether a cascade router built with these options uses a plan checker (``plan_check``, ``checks_replans``
    or ``checks_pool``): a driver makes one only then (the live router's background process)."""
    cfg = config_from_options(CascadeRouterConfig, options, what="router 'cascade'")
    return bool(cfg.plan_check) or checks_replans(cfg) or checks_pool(cfg)
