"""Benchmark the CP-SAT optimal scheduler: solve time, optimality and model size vs request count.

    python scripts/bench_optimal.py [--trace azure_conv] [--requests 6,12,18,24] [--length-scale 100]
        [--rate-scale 50] [--token-budget 64] [--kv-frac 0.5] [--time-limit 60] [--objective makespan,mean_e2e]
        [--preemption 0,1] [--csv out.csv]

Prints one line per (K, objective, preemption): optimal?, objective, bound, solve seconds, horizon, variables,
constraints, and the linear-model fit error. The target is 24 requests proven optimal in <= 60 s.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rows_csv import write_rows

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.traces import load_trace
from sglang_cascade.optimal.cli_optimal import build_problem
from sglang_cascade.optimal.feasibility import check_problem_schedule
from sglang_cascade.optimal.model import solve


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default="azure_conv")
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--gpu", default="h100")
    ap.add_argument("--requests", default="6,12,18,24")
    ap.add_argument("--length-scale", type=float, default=100.0)
    ap.add_argument("--rate-scale", type=float, default=50.0)
    ap.add_argument("--token-budget", type=int, default=64)
    ap.add_argument("--kv-frac", type=float, default=0.5, help="KV capacity / total final KV of the set")
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--objective", default="makespan,mean_e2e")
    ap.add_argument("--preemption", default="0")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--csv", default=None)
    a = ap.parse_args()
    cm = CostModel.for_names(a.model, a.gpu)
    rows = []
    print(
        f"{'K':>3} {'objective':>9} {'pre':>3} {'optimal':>7} {'objective_s':>11} {'bound_s':>9} {'solve_s':>7} "
        f"{'H':>4} {'vars':>6} {'cons':>6} {'fit_err':>7} {'kv_cap':>6}"
    )
    for K in [int(x) for x in a.requests.split(",")]:
        reqs = load_trace(a.trace, num_requests=K, rate_scale=a.rate_scale)
        probe = build_problem(reqs, cm, 10**9, a.token_budget, False, a.length_scale)
        need = sum(r.prompt + r.output - 1 for r in probe.requests)
        cap = max(max(r.prompt + r.output - 1 for r in probe.requests), int(a.kv_frac * need))
        for pre in [bool(int(x)) for x in a.preemption.split(",")]:
            prob = build_problem(reqs, cm, cap, a.token_budget, pre, a.length_scale)
            for obj in a.objective.split(","):
                res = solve(prob, obj, a.time_limit, workers=a.workers)
                assert not check_problem_schedule(prob, res.schedule)
                row = dict(
                    K=K,
                    objective=obj,
                    preemption=int(pre),
                    optimal=res.optimal,
                    value=res.objective,
                    bound=res.bound,
                    solve_s=res.solve_s,
                    horizon=res.horizon,
                    vars=res.num_vars,
                    constraints=res.num_constraints,
                    fit_err=prob.time_model.max_rel_error,
                    kv_capacity=cap,
                    horizon_proven=res.horizon_proven,
                )
                rows.append(row)
                print(
                    f"{K:>3} {obj:>9} {int(pre):>3} {str(res.optimal):>7} {res.objective:>11.5f} {res.bound:>9.5f} "
                    f"{res.solve_s:>7.1f} {res.horizon:>4} {res.num_vars:>6} {res.num_constraints:>6} "
                    f"{prob.time_model.max_rel_error:>7.1%} {cap:>6}",
                    flush=True,
                )
    if a.csv:
        write_rows(a.csv, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
