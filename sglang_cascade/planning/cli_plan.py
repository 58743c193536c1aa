"""`sglang-cascade plan`: ``policies.cli_plan`` (the DP's partition for a trace, the prefill pool ``auto`` would size)
plus ``--check``: the cascade router built for that traffic with the simulator as its plan checker, and its start-up
decision (``check``: chosen plan and pool, why, every candidate's replay score). Lives in ``planning`` because the
checker is the simulator, which the policy layer must not import."""

from __future__ import annotations

import argparse

from ..core.costmodel import CostModel
from ..core.options import split_name
from ..policies import cli_plan
from ..policies.registry import PolicyContext, make_router
from .factory import make_sim_checker
from .sim_checker import SimCheckerConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    cli_plan.add_arguments(p)
    p.add_argument(
        "--check",
        "--explain",
        action="store_true",
        dest="check",
        help="also build the cascade router for this traffic with the simulator as its plan checker and print its "
        "start-up decision and the plan it runs (check.runs; the top-level stages are the bare DP's): whether to "
        "stage (check_staging, the default), pool sizes where pool_check applies (the default), the DP's next-best "
        "partitions too with --options plan_check=1",
    )
    p.add_argument("--options", default="", help="cascade options for --check, e.g. plan_check=1,check_slo_weight=5")


def run(args) -> int:
    return cli_plan.run(args, extra=checked if args.check else None)


def checked(sample, rate: float, args, cm: CostModel) -> dict:
    """The cascade router built for this traffic (its length sample and rate) with the simulator's plan checker:
    its start-up decision (``PlanDecision``: chosen, reason, every candidate's replay score) and plan info."""
    name = "cascade" + (f":{args.options}" if args.options else "")
    opts = {"prefill_min": args.prefill_min, "pool_decode_rho": args.pool_decode_rho, **split_name(name)[1]}
    opts.setdefault("slo_ttft", args.slo_ttft)
    opts.setdefault("slo_tpot", args.slo_tpot)
    ccfg = SimCheckerConfig(slo_ttft=args.slo_ttft, slo_tpot=args.slo_tpot, router_options=opts, seed=args.seed)
    ctx = PolicyContext(cm, args.instances, args.seed, list(sample), rate, None, make_sim_checker(cm, ccfg))
    router = make_router("cascade", ctx, **opts)
    d = router.last_decision
    runs = {"stages": router.plan.num_stages, "bounds": list(router.plan.bounds), "counts": router.plan.counts()}
    runs["prefill_pool"] = len(router.pool.members) if router.pool is not None else 0
    return {
        "options": opts,
        "decision": d.to_json(),
        "log": d.log_line(),
        "plan_info": router.last_plan_info,
        "runs": runs,
    }
