"""Validate the CP-SAT model against brute force on random tiny instances (2-3 requests, 1-3 token prompts
and outputs, budgets 1-3, tight KV), both objectives, preemption on and off.

    python scripts/validate_optimal.py [--cases 30] [--seed 1]

Prints one line per case and the number of mismatches (CP-SAT optimum != exhaustive optimum, or a schedule
failing the feasibility checker).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sglang_cascade.optimal.exhaustive import solve_exhaustive
from sglang_cascade.optimal.feasibility import check_problem_schedule
from sglang_cascade.optimal.linearize import LinearTimeModel
from sglang_cascade.optimal.model import solve
from sglang_cascade.optimal.problem import Problem, Req


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--time-limit", type=float, default=60.0)
    a = ap.parse_args()
    # a time model with every term non-zero (incl. the convex hinge) so all constraints matter
    tm = LinearTimeModel(
        per_iteration_s=0.010,
        per_token_s=0.002,
        per_token_above_knee_s=0.003,
        knee=2,
        per_kv_read_s=0.001,
        per_request_s=0.0005,
        unit_s=1e-6,
    )
    rng = random.Random(a.seed)
    bad = 0
    for case in range(a.cases):
        n = rng.randint(2, 3)
        reqs = [
            Req(f"q{i}", rng.choice([0, 0, 0.005, 0.02, 0.05]), rng.randint(1, 3), rng.randint(1, 3)) for i in range(n)
        ]
        cap = max(r.prompt + r.output - 1 for r in reqs) + rng.randint(0, 4)
        B = rng.randint(1, 3)
        pre = rng.random() < 0.5
        obj = rng.choice(["makespan", "mean_e2e"])
        prob = Problem(reqs, B, cap, tm, pre)
        t0 = time.perf_counter()
        ex = solve_exhaustive(prob, obj)
        t1 = time.perf_counter()
        res = solve(prob, obj, a.time_limit)
        t2 = time.perf_counter()
        viol = check_problem_schedule(prob, res.schedule) + check_problem_schedule(prob, ex.schedule)
        ok = abs(ex.objective - res.objective) < 1e-6 and res.optimal and not viol
        bad += not ok
        print(
            f"case {case:2d} N={n} B={B} cap={cap} preempt={int(pre)} {obj:>9}: exhaustive {ex.objective:.6f} "
            f"({ex.nodes} nodes, {t1 - t0:.2f}s)  cp-sat {res.objective:.6f} optimal={res.optimal} "
            f"({t2 - t1:.2f}s)  {'OK' if ok else 'MISMATCH'}",
            flush=True,
        )
    print(f"{a.cases - bad}/{a.cases} cases match")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
