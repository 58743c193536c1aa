"""`sglang-cascade analyze`: replay small request sets under every instance scheduler and the optimum.

For each trace (a comma-separated list = several length mixes), ``--sets`` windows of ``--requests``
consecutive requests (random offsets, arrivals shifted to 0 and sped up by ``--rate-scale``), lengths
divided by ``--length-scale``, and each KV-pressure level in ``--kv-fracs`` (capacity = that fraction of the
set's total final KV, at least the longest prompt + longest output + 2 so SGLang's admission can admit
every request): solve the optimum with and without preemption
(CP-SAT, both objectives) and replay every scheduler in ``--schedulers`` in the simulator; write
``DIR/report.md``, ``DIR/results.csv`` and plots.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import numpy as np

from ..core.costmodel import CostModel
from ..core.traces import TraceError, TraceRequest, load_trace
from .cli_optimal import build_problem
from .feasibility import check_problem_schedule
from .model import solve
from .replay import replay

DEFAULT_SCHEDULERS = "sglang,cascade,reserve"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", required=True, help="trace path(s) or built-in name(s), comma-separated")
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--gpu", default="h100")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--sets", type=int, default=3, help="request sets per trace")
    p.add_argument("--requests", type=int, default=8, help="requests per set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--length-scale", type=float, default=50.0, help="divide lengths by this (tractability)")
    p.add_argument("--rate-scale", type=float, default=50.0, help="speed up arrivals (load)")
    p.add_argument("--token-budget", type=int, default=64, help="prefill tokens per iteration")
    p.add_argument(
        "--kv-fracs",
        default="1.0,0.5,0.3",
        help="KV capacity as fractions of the set's total final KV (memory pressure levels)",
    )
    p.add_argument(
        "--schedulers",
        default=DEFAULT_SCHEDULERS,
        help="instance schedulers (registry names with :opts, or 'reserve' = oracle no-preemption)",
    )
    p.add_argument("--time-limit", type=float, default=20.0, help="CP-SAT time limit per solve (s)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", required=True, help="output directory")


def _windows(trace: list[TraceRequest], sets: int, k: int, rng: np.random.Generator, rate_scale: float):
    if len(trace) < k:
        raise ValueError(f"trace has {len(trace)} requests, fewer than --requests {k}")
    for s in range(sets):
        off = int(rng.integers(0, len(trace) - k + 1))
        win = trace[off : off + k]
        t0 = win[0].arrival
        yield (
            s,
            [
                TraceRequest(f"s{s}r{i}", (r.arrival - t0) / rate_scale, r.prompt_len, r.output_len)
                for i, r in enumerate(win)
            ],
        )


def run(args: argparse.Namespace) -> int:
    try:
        cm = CostModel.for_names(args.model, args.gpu, args.tp)
        traces = {name: load_trace(name, seed=args.seed) for name in args.trace.split(",") if name}
        fracs = [float(x) for x in args.kv_fracs.split(",") if x]
        scheds = [s for s in args.schedulers.split(",") if s]
        if not traces or not fracs or not scheds or args.sets < 1 or args.requests < 1:
            raise ValueError("need at least one trace, kv fraction, scheduler, set and request")
    except (TraceError, ValueError) as e:
        print(f"sglang-cascade analyze: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    rows: list[dict] = []
    t_start = time.perf_counter()
    for tname, trace in traces.items():
        for s, reqs in _windows(trace, args.sets, args.requests, rng, args.rate_scale):
            base = build_problem(reqs, cm, 10**9, args.token_budget, False, args.length_scale, args.seed)
            total_kv = sum(r.prompt + r.output - 1 for r in base.requests)
            # SGLang-style admission needs prompt + max_new_tokens (+1 page) < free KV for every request,
            # with max_new_tokens = the set's longest output (see replay.py)
            biggest = max(r.prompt for r in base.requests) + max(r.output for r in base.requests) + 2
            for f in fracs:
                cap = max(biggest, int(round(f * total_kv)))
                probs = {
                    pre: build_problem(reqs, cm, cap, args.token_budget, pre, args.length_scale, args.seed)
                    for pre in (False, True)
                }
                row = {
                    "trace": tname,
                    "set": s,
                    "kv_frac": f,
                    "kv_capacity": cap,
                    "requests": len(reqs),
                    "mean_prompt": float(np.mean([r.prompt for r in base.requests])),
                    "mean_output": float(np.mean([r.output for r in base.requests])),
                    "lin_fit_max_err": probs[True].time_model.max_rel_error,
                    "lin_fit_mean_err": probs[True].time_model.mean_rel_error,
                }
                for obj in ("makespan", "mean_e2e"):
                    hint = None
                    for pre, prob in probs.items():  # no preemption first; its schedule seeds the other
                        res = solve(prob, obj, args.time_limit, workers=args.workers, seed=args.seed, hint=hint)
                        hint = res.schedule
                        if check_problem_schedule(prob, res.schedule):
                            raise RuntimeError("solver schedule failed the feasibility check")
                        tag = f"opt{'_pre' if pre else ''}_{obj}"
                        row[tag] = res.objective
                        row[tag + "_bound"] = res.bound
                        row[tag + "_optimal"] = res.optimal
                        row[tag + "_solve_s"] = res.solve_s
                for name in scheds:
                    try:
                        rp = replay(probs[True], name, cm, args.seed)
                    except Exception as e:  # a scheduler that stalls or errors is reported, not hidden
                        row[f"{name}|error"] = f"{type(e).__name__}: {e}"[:200]
                        print(f"  {name} failed: {row[f'{name}|error']}", file=sys.stderr)
                        for k in ("makespan", "mean_e2e", "preemptions", "violations", "lin_err_max", "lin_err_mean"):
                            row[f"{name}|{k}"] = float("nan")
                        continue
                    row[f"{name}|makespan"] = rp.makespan
                    row[f"{name}|mean_e2e"] = rp.mean_e2e
                    row[f"{name}|preemptions"] = rp.preemptions
                    row[f"{name}|violations"] = len(rp.violations)
                    row[f"{name}|lin_err_max"] = rp.lin_rel_err_max
                    row[f"{name}|lin_err_mean"] = rp.lin_rel_err_mean
                rows.append(row)
                print(
                    f"[{time.perf_counter() - t_start:7.1f}s] {tname} set {s} kv {f}: "
                    f"opt makespan {row['opt_makespan']:.4f}/{row['opt_pre_makespan']:.4f} (pre) "
                    f"e2e {row['opt_mean_e2e']:.4f}/{row['opt_pre_mean_e2e']:.4f}",
                    file=sys.stderr,
                )
    from .report import write_report

    keys = sorted({k for r in rows for k in r})
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    meta = dict(vars(args))
    meta["wall_s"] = round(time.perf_counter() - t_start, 1)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(meta, f, indent=1)
    write_report(rows, scheds, meta, args.out)
    print(os.path.join(args.out, "report.md"))
    return 0
