"""Policy names -> factories, resolved lazily so importing one policy never imports the others.

Every driver (simulator, SGLang plugin, HTTP router) builds policies through these two functions, so a
name means the same code everywhere.

Factories are called as ``factory(ctx: PolicyContext, **options)`` and build their config dataclass with
``core.options.config_from_options``: an option's key is a field name of that config (``"cascade:reserve=0"``,
``--router-opt migration=0``, ``--cascade-options pipelining=0``), and an unknown key is an error naming the
valid ones.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from ..core.costmodel import CostModel
from ..core.options import split_name


@dataclass
class PolicyContext:
    """What a policy may know about its deployment when it is built."""

    cost_model: CostModel
    num_instances: int = 1
    seed: int = 0
    length_sample: list[tuple[int, int]] = field(default_factory=list)  # (prompt, output) pairs, if known
    arrival_rate: float | None = None  # requests/s, if known
    kv_capacity: int | None = None  # KV tokens of one instance, where the driver knows it (else the cost model's)
    plan_checker: object | None = None  # a policies.plan_check.PlanChecker the driver provides (cascade scores
    # candidate stage plans with it; the simulator's lives in sglang_cascade/planning/), or None
    mixed_chunk: bool = False  # the engine runs prefill chunks and decode steps in one forward (SGLang's
    # --enable-mixed-chunk); without it a plan's decode part waits while prefill chunks run
    schedule_policy: str = "fcfs"  # the engine's --schedule-policy (SGLang's waiting-queue order;
    # policies/sglang_order.py): the `sglang` scheduler follows it, the cascade scheduler orders new arrivals by it
    migration_costs: object | None = None  # a policies.migration_costs.MigrationCosts the driver feeds with the
    # stalls of real moves (the router); a policy's MigrationPlanner prefers them to its model


# name -> "module:callable"
INSTANCE_SCHEDULERS: dict[str, str] = {
    "sglang": "sglang_cascade.policies.baselines:make_sglang_scheduler",
    "cascade": "sglang_cascade.policies.instance:make_cascade_scheduler",
}

ROUTERS: dict[str, str] = {
    "round_robin": "sglang_cascade.policies.baselines:make_round_robin",
    "random": "sglang_cascade.policies.baselines:make_random",
    "power_of_two": "sglang_cascade.policies.baselines:make_power_of_two",
    "least_load": "sglang_cascade.policies.baselines:make_least_load",
    "llumnix": "sglang_cascade.policies.baselines:make_llumnix",
    "bucket": "sglang_cascade.policies.bucket:make_bucket_router",
    "cascade": "sglang_cascade.policies.cascade:make_cascade_router",
    "cache_aware": "sglang_cascade.policies.cache_aware:make_cache_aware",
}


def _resolve(table: dict[str, str], kind: str, name: str):
    base = name.split(":", 1)[0]
    if base not in table:
        raise ValueError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(table))}")
    mod, attr = table[base].split(":")
    return getattr(importlib.import_module(mod), attr)


def make_instance_scheduler(name: str, ctx: PolicyContext, **options):
    base, opts = split_name(name)
    sched = _resolve(INSTANCE_SCHEDULERS, "instance scheduler", base)(ctx, **{**opts, **options})
    sched.name = name
    return sched


def make_router(name: str, ctx: PolicyContext, **options):
    base, opts = split_name(name)
    router = _resolve(ROUTERS, "router", base)(ctx, **{**opts, **options})
    router.name = name
    return router
