"""`sglang-cascade plan`: DP stage partition for a trace, printed as JSON, with the prefill pool the router's
``prefill_pool=auto`` would size for the same traffic (``prefill_pool``: its size, why, and the pool model's
prediction for every size). ``planning.cli_plan`` (the command's entry point) adds ``--check``."""

from __future__ import annotations

import argparse
import json
import math
import time

from ..core.costmodel import Calibration, CostModel
from ..core.traces import load_trace, trace_rate
from .migration import MigrationConfig, MigrationPlanner
from .pool_model import DECODE_RHO_MAX, pool_latencies
from .prefill_pool import size_prefill_pool
from .stage_dp import plan_partition
from .stage_model import QoEConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trace", required=True, help="trace path or built-in name (azure_conv, azure_code, sharegpt, arxiv)"
    )
    p.add_argument("--instances", type=int, required=True)
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--gpu", default="h100")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--attention-backend", default="flashinfer", choices=("flashinfer", "fa3", "triton"))
    p.add_argument("--rate", type=float, default=None, help="arrival rate req/s (default: the trace's own)")
    p.add_argument("--num-requests", type=int, default=5000, help="requests sampled from the trace")
    p.add_argument("--buckets", type=int, default=64)
    p.add_argument("--max-stages", type=int, default=0, help="0 = DP chooses")
    p.add_argument("--slo-ttft", type=float, default=2.0)
    p.add_argument("--slo-tpot", type=float, default=0.1)
    p.add_argument("--link", default="nvlink", help="KV link: nvlink, infiniband, tcp, spec")
    p.add_argument("--migration-mode", default="auto", choices=["auto", "recompute", "kv_transfer"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefill-min", type=int, default=8192, help="the pool's prompts: at least this many tokens")
    p.add_argument(
        "--pool-decode-rho", type=float, default=DECODE_RHO_MAX, help="cascade:pool_decode_rho (pool_model.py)"
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the DP this many times on the same input and report the first (cold: builds the cost "
        "model's tables) and the median of the rest (warm: a router re-planning) as dp_time_s / dp_time_s_warm",
    )


def run(args, extra=None) -> int:
    """Prints the plan as JSON; ``extra(sample, rate, args, cm) -> dict``, when given, adds its result as ``check``
    (``planning.cli_plan``: the router's checked start-up decision; the simulator lives above this layer)."""
    if args.instances < 1:
        raise SystemExit("--instances must be >= 1")
    if args.buckets < 1:
        raise SystemExit("--buckets must be >= 1")
    reqs = load_trace(args.trace, num_requests=args.num_requests, rate=args.rate, seed=args.seed)
    rate = args.rate or trace_rate(reqs)
    if rate <= 0:
        raise SystemExit("cannot infer an arrival rate from this trace; pass --rate")
    cm = CostModel.for_names(args.model, args.gpu, args.tp, Calibration(attention_backend=args.attention_backend))
    if args.repeat < 1:
        raise SystemExit("--repeat must be >= 1")
    planner = MigrationPlanner(cm, MigrationConfig(mode=args.migration_mode, link=args.link))
    sample = [(r.prompt_len, r.output_len) for r in reqs]
    qoe = QoEConfig(slo_ttft=args.slo_ttft, slo_tpot=args.slo_tpot)
    runs = [
        plan_partition(
            sample,
            rate,
            args.instances,
            cm,
            qoe,
            buckets=args.buckets,
            max_stages=args.max_stages or None,
            migration_stall=planner.stall_at_length,
            clock=time.perf_counter,
        )  # the CLI (a driver) times the DP; policies read no clock
        for _ in range(args.repeat)
    ]
    res = runs[0]
    out = {
        "trace": args.trace,
        "model": args.model,
        "gpu": args.gpu,
        "tp": args.tp,
        "instances": args.instances,
        "rate": rate,
        "buckets": args.buckets,
        "stages": [{"lo": s.lo, "hi": s.hi, "instances": len(s.instances)} for s in res.plan.stages()],
        "objective": res.objective,
        "qoe": res.qoe,
        "qoe_breakdown": dict(res.breakdown.items()),
        "dp_time_s": res.dp_time_s,
    }
    if len(runs) > 1:
        warm = sorted(r.dp_time_s for r in runs[1:])
        out["dp_time_s_warm"] = warm[len(warm) // 2]
        out["dp_time_s_warm_max"] = warm[-1]
        out["table_time_s_warm"] = sorted(r.breakdown["table_time_s"] for r in runs[1:])[len(warm) // 2]
    out["prefill_pool"] = pool_explained(sample, rate, args, cm, qoe)
    if extra is not None:
        out["check"] = extra(sample, rate, args, cm)
    print(json.dumps(out, indent=2, default=float))
    return 0


def pool_explained(sample, rate: float, args, cm: CostModel, qoe: QoEConfig) -> dict:
    """What ``prefill_pool=auto`` sizes for this sample and rate, and the pool model's prediction per size
    (null where it predicts an overloaded side)."""
    sized = size_prefill_pool(sample, rate, args.instances, cm, qoe, args.prefill_min, args.pool_decode_rho)
    points = pool_latencies(sample, rate, args.instances, cm, qoe, args.prefill_min) if args.instances > 1 else []
    return {
        "instances": sized.size,
        "min_prompt": sized.prefill_min,
        "why": sized.why,
        "model": [
            {
                "size": p.size,
                "latency_s": p.latency_s if math.isfinite(p.latency_s) else None,
                "pool_rho": p.pool_rho,
                "decode_rho": p.decode_rho,
                "decode_tpot_s": p.decode_tpot_s,
            }
            for p in points
        ],
    }
