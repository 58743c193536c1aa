"""Fit the simulator checker's modelled CPU cost (policies/check_cost.py) to measured CPU.

    PYTHONPATH=. nice -n 10 python scripts/calibrate_check_cost.py [--repeats 2] [--out docs/results/check_cost_fit.csv]

Scores plan-check jobs with ``SimPlanChecker`` (ShareGPT lengths; 8 and 16 instances; 500-2,000 replayed
requests, and 6,000 / 25,000 with outputs capped at 64 / 8 tokens at 200 / 800 req/s, the router
benchmark's traffic; whole cluster and a 4-instance sub-cluster; candidates given, or built from a ``CandidateSpec`` so
the DP runs in the checker) and times each ``score`` with ``time.process_time`` (best of ``--repeats``).
Fits ``cpu_s = sum(constant x CheckWork field)`` (iterations, requests, replays, DP runs, DP instances; least
squares, no intercept, non-negative) and prints the constants, the fit per job, and the constants in use
(``check_cost.CPU_S``: paste the fit there).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rows_csv import write_rows

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.traces import load_trace
from sglang_cascade.planning.factory import make_sim_checker
from sglang_cascade.policies import check_cost
from sglang_cascade.policies.plan_check import Candidate, PlanCheckJob
from sglang_cascade.policies.registry import PolicyContext, make_router

CM = CostModel.for_names("llama-3-8b", "h100")


def jobs() -> list[tuple[str, PlanCheckJob]]:
    out = []
    # (instances, rate, arrivals, output cap): ShareGPT lengths, and short outputs at a high rate (what the
    # router benchmark's fake workers produce: 8 tokens at ~800 req/s, 30 s = 25,000 arrivals per replay)
    groups = ((8, 25.0, 500, 0), (16, 50.0, 1000, 0), (16, 50.0, 2000, 0), (8, 40.0, 2000, 0))
    groups += ((16, 800.0, 25000, 8), (16, 200.0, 6000, 64))
    for n, rate, size, cap in groups:
        reqs = load_trace("sharegpt", num_requests=size, rate=rate, seed=1)
        outputs = [min(r.output_len, cap) if cap else r.output_len for r in reqs]
        arrivals = [(r.arrival, r.prompt_len, o) for r, o in zip(reqs, outputs)]
        sample = [(r.prompt_len, o) for r, o in zip(reqs[:1000], outputs)]
        spec = make_router("cascade:plan_check=1", PolicyContext(CM, n, 0, sample, rate))._spec(sample, rate)
        given = [Candidate("pooled", [], [n]), Candidate("dp1", [600], [n // 4, n - n // 4])]
        for sub in (0, 4):
            tag = f"n={n} rate={rate:g} requests={size}{f' out<={cap}' if cap else ''} sub={sub}"
            out.append((tag + " given", PlanCheckJob(list(given), arrivals, n, "timer", 0.0, 0.2, sub)))
            out.append((tag + " spec", PlanCheckJob([], arrivals, n, "timer", 0.0, 0.2, sub, spec=spec)))
    return out


def nonneg_lstsq(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0: refit without the negative ones until none is left."""
    keep = list(range(X.shape[1]))
    coef = np.zeros(X.shape[1])
    while keep:
        c = np.linalg.lstsq(X[:, keep], y, rcond=None)[0]
        if (c >= 0).all():
            coef[keep] = c
            break
        keep = [k for k, v in zip(keep, c) if v >= 0]
    return coef


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    rows = []
    for tag, job in jobs():
        best, work = float("inf"), None
        for _ in range(a.repeats):
            chk = make_sim_checker(CM)
            j = PlanCheckJob(
                list(job.candidates), job.arrivals, job.num_instances, "timer", 0.0, 0.2, job.sub_instances
            )
            j.spec = job.spec
            t0 = time.process_time()
            chk.score(j)
            best = min(best, time.process_time() - t0)
            work = chk.last_work
        rows.append({"job": tag, "work": work, "cpu_s": best, "modelled_s": work.cpu_s()})
        print(f"{tag:<46} {work} cpu {best:.3f} s")
    names = list(check_cost.CPU_S)
    X = np.array([r["work"].features() for r in rows], dtype=float)
    y = np.array([r["cpu_s"] for r in rows])
    coef = nonneg_lstsq(X, y)
    fit = X @ coef
    print("fit:  " + ", ".join(f'"{k}": {c:.3g}' for k, c in zip(names, coef)))
    print("used: " + ", ".join(f'"{k}": {c:.3g}' for k, c in check_cost.CPU_S.items()))
    for r, f in zip(rows, fit):
        r["fit_s"] = float(f)
        print(
            f"{r['job']:<46} measured {r['cpu_s']:.3f} s  fit {f:.3f} s ({f / r['cpu_s']:.2f}x)  in use {r['modelled_s']:.3f} s"
        )
    for r in rows:
        r.update(zip(names, r.pop("work").features()))
    if a.out:
        write_rows(a.out, rows)


if __name__ == "__main__":
    main()
