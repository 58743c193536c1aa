"""`sglang-cascade compare`: a grid of routers x schedulers x loads on one trace.

Writes ``results.json`` (one object per run), ``results.md`` (a markdown table) and
``latency_vs_load.png`` into ``--out-dir``.
"""

from __future__ import annotations

import json
import os
import sys

from ..core.costmodel import Calibration, CostModel
from ..core.options import split_name
from ..core.traces import TraceError
from ..policies.registry import INSTANCE_SCHEDULERS, ROUTERS, PolicyContext, make_instance_scheduler, make_router
from .cli_simulate import add_deployment_arguments, add_trace_arguments, config_from_args, option_flags, trace_from_args
from .config import SimError
from .report import markdown_table, plot_latency_vs_load


def add_arguments(p) -> None:
    add_trace_arguments(p)
    add_deployment_arguments(p)
    p.add_argument("--routers", default="round_robin,least_load", help="comma-separated router names")
    p.add_argument("--schedulers", default="sglang", help="comma-separated instance scheduler names")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rate-scales", default=None, help="comma-separated rate multipliers (default 1)")
    g.add_argument("--rates", default=None, help="comma-separated mean arrival rates (requests/s)")
    p.add_argument("--out-dir", required=True)


def _names(text: str, table: dict, kind: str) -> list[str]:
    names = [x.strip() for x in text.split(";" if ";" in text else ",") if x.strip()]
    for n in names:
        base, _ = split_name(n)
        if base not in table:
            raise ValueError(f"unknown {kind} {n!r}; choose one of: {', '.join(sorted(table))}")
    if not names:
        raise ValueError(f"no {kind} given")
    return names


def _check_options(args, routers: list[str], scheds: list[str]) -> None:
    """Build every policy of the grid once, so a bad option fails before the first (long) run."""
    router_opts, sched_opts = option_flags(args)
    ctx = PolicyContext(
        cost_model=CostModel.for_names(
            args.model, args.gpu, args.tp, Calibration(attention_backend=args.attention_backend)
        ),
        num_instances=args.instances,
        seed=args.seed,
    )
    for name in routers:
        make_router(name, ctx, **router_opts)
    for name in scheds:
        make_instance_scheduler(name, ctx, **sched_opts)


def run(args) -> int:
    from tqdm import tqdm

    from .cluster import simulate

    try:
        routers = _names(args.routers, ROUTERS, "router")
        scheds = _names(args.schedulers, INSTANCE_SCHEDULERS, "instance scheduler")
        _check_options(args, routers, scheds)
        if args.rates:
            loads = [("rate", float(x)) for x in args.rates.split(",")]
        else:
            loads = [("rate_scale", float(x)) for x in (args.rate_scales or "1").split(",")]
    except ValueError as e:
        print(f"sglang-cascade compare: error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out_dir, exist_ok=True)
    rows = []
    grid = [(kind, x, r, s) for kind, x in loads for r in routers for s in scheds]
    bar = tqdm(grid, desc="compare", unit="run")
    for kind, x, router, sched in bar:
        bar.set_postfix_str(f"{router}/{sched} {kind}={x}")
        try:
            trace = trace_from_args(args, **{kind: x})
            res = simulate(trace, config_from_args(args, router, sched))
        except (TraceError, SimError, ValueError, KeyError) as e:
            print(f"sglang-cascade compare: error in {router}/{sched} {kind}={x}: {e}", file=sys.stderr)
            return 2
        m = dict(res.metrics)
        m.update(trace=args.trace, load=x, load_kind=kind)
        rows.append(m)
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(rows, f, indent=2)
    title = (
        f"# {args.trace}: {args.model} on {args.gpu} (tp={args.tp}) x {args.instances} instances\n\n"
        f"load = {loads[0][0]}; SLO TTFT <= {args.slo_ttft} s, TPOT <= {args.slo_tpot} s; "
        f"times in seconds\n\n"
    )
    with open(os.path.join(args.out_dir, "results.md"), "w") as f:
        f.write(title + markdown_table(rows))
    plot_latency_vs_load(rows, os.path.join(args.out_dir, "latency_vs_load.png"), loads[0][0])
    print(markdown_table(rows))
    return 0
