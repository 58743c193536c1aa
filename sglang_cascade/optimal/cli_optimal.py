"""`sglang-cascade optimal`: optimal single-instance schedule of a trace prefix with CP-SAT.

Example::

    sglang-cascade optimal --trace azure_conv --max-requests 12 --model llama-3-8b --gpu h100 \\
        --length-scale 40 --rate-scale 20 --time-limit 30 --json --schedule-out sched.json

prints ``{"optimal": bool, "objective": s, "bound": s, "solve_s": s, "requests": K, ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..core.costmodel import CostModel
from ..core.traces import TraceError, load_trace
from .feasibility import check_problem_schedule
from .linearize import fit_linear_time
from .model import solve
from .problem import OBJECTIVES, Problem, scale_requests

DEFAULT_BUDGET = 8192  # SGLang's chunked-prefill size; divided by --length-scale


def add_problem_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trace", required=True, help="trace path or built-in name (azure_conv, azure_code, sharegpt, arxiv)"
    )
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--gpu", default="h100")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument(
        "--kv-capacity",
        type=int,
        default=None,
        help="GPU KV tokens (default: the cost model's capacity / length-scale)",
    )
    p.add_argument(
        "--token-budget",
        type=int,
        default=None,
        help=f"prefill tokens per iteration (default {DEFAULT_BUDGET} / length-scale)",
    )
    p.add_argument(
        "--length-scale",
        type=float,
        default=1.0,
        help="divide prompt and output lengths by this (rounded up) for tractability",
    )
    p.add_argument("--rate-scale", type=float, default=None, help="multiply the trace's arrival rate")
    p.add_argument("--seed", type=int, default=0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_problem_arguments(p)
    p.add_argument("--max-requests", type=int, required=True, help="first K requests of the trace")
    p.add_argument("--objective", choices=OBJECTIVES, default="makespan")
    p.add_argument("--preemption", action="store_true", help="allow preemption (recompute)")
    p.add_argument("--time-limit", type=float, default=60.0, help="solver time limit (s)")
    p.add_argument("--horizon", type=int, default=None, help="iterations in the model (default: provable bound)")
    p.add_argument("--max-horizon", type=int, default=400)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--schedule-out", default=None, help="write the schedule (JSON) here")


def limits(cm: CostModel, kv_capacity: int | None, token_budget: int | None, length_scale: float) -> tuple[int, int]:
    cap = kv_capacity if kv_capacity is not None else int(cm.kv_capacity_tokens() / length_scale)
    budget = token_budget if token_budget is not None else max(1, int(DEFAULT_BUDGET / length_scale))
    if cap < 1 or budget < 1:
        raise ValueError("KV capacity and token budget must be >= 1")
    return cap, budget


def build_problem(
    reqs, cm: CostModel, kv_capacity: int, token_budget: int, preemption: bool, length_scale: float = 1.0, seed: int = 0
) -> Problem:
    sreqs = scale_requests(reqs, length_scale)
    tm = fit_linear_time(cm, [(r.prompt, r.output) for r in sreqs], token_budget, kv_capacity, seed=seed)
    return Problem(sreqs, token_budget, kv_capacity, tm, preemption)


def run(args: argparse.Namespace) -> int:
    try:
        if args.max_requests < 1:
            raise ValueError("--max-requests must be >= 1")
        cm = CostModel.for_names(args.model, args.gpu, args.tp)
        cap, budget = limits(cm, args.kv_capacity, args.token_budget, args.length_scale)
        reqs = load_trace(args.trace, num_requests=args.max_requests, rate_scale=args.rate_scale, seed=args.seed)
        prob = build_problem(reqs, cm, cap, budget, args.preemption, args.length_scale, args.seed)
    except (TraceError, ValueError) as e:
        print(f"sglang-cascade optimal: {e}", file=sys.stderr)
        return 2
    res = solve(
        prob,
        args.objective,
        args.time_limit,
        horizon=args.horizon,
        max_horizon=args.max_horizon,
        workers=args.workers,
        seed=args.seed,
    )
    viol = check_problem_schedule(prob, res.schedule)
    if viol:  # never expected: the checker and the model disagree
        print(f"sglang-cascade optimal: solver schedule failed the feasibility check: {viol[:3]}", file=sys.stderr)
        return 1
    out = res.summary()
    out["requests"] = len(prob.requests)
    out.update(
        {
            "objective_name": args.objective,
            "kv_capacity": cap,
            "token_budget": budget,
            "length_scale": args.length_scale,
            "preemption": args.preemption,
            "linear_model": prob.time_model.describe(),
            "linearization_max_rel_error": prob.time_model.max_rel_error,
            "greedy_objective": res.stats["greedy_objective"],
        }
    )
    if args.schedule_out:
        with open(args.schedule_out, "w") as f:
            f.write(res.schedule.to_json())
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>30}: {v}")
    return 0
