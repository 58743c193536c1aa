#!/usr/bin/env python3
"""Routers x SGLang's --schedule-policy in the simulator: would flipping the engine's waiting-queue order get
what length-aware routing gets?

Every (trace, load, seed) runs each router on engines with each schedule policy (the `sglang` instance
scheduler: fcfs, shortest-prefill-first, hrrn; policies/sglang_order.py). Loads are fractions (low 0.3,
medium 0.6, high 0.9, past_knee 1.2) of the analytic pooled capacity (utilization 1; scripts/eval_cascade_grid.py
--load-basis analytic), 40 s of arrivals (>= 1000 requests) per run, H100. Writes ``<out>.md`` / ``<out>.csv``.

    python scripts/eval_schedule_policy.py --out docs/results/schedule_policy_mooncake
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_cascade as ev

from sglang_cascade.policies.sglang_order import FCFS, HRRN, SPF


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", nargs="*", default=["mooncake"])
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--loads", nargs="*", default=list(ev.LOADS), choices=list(ev.LOADS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--routers", nargs="*", default=["least_load", "llumnix", "cascade"])
    ap.add_argument("--policies", nargs="*", default=[FCFS, SPF, HRRN])
    ap.add_argument("--duration", type=float, default=40.0)
    ap.add_argument("--out", default="docs/results/schedule_policy")
    a = ap.parse_args(argv)
    rows, t0 = [], time.time()
    for trace in a.traces:
        cap = ev.analytic_capacity(trace, a.model, a.instances)
        for load in a.loads:
            rate = ev.LOADS[load] * cap
            for router in a.routers:
                for policy in a.policies:
                    for seed in a.seeds:
                        n_req = ev.n_requests(rate, a.duration, 1000)
                        row = ev.run_one(
                            trace, a.model, a.instances, router, rate, n_req, seed, {"schedule_policy": policy}
                        )
                        row.update(load=load, seed=seed, schedule_policy=policy, capacity_rate=cap)
                        rows.append(row)
                    print(f"[{time.time() - t0:6.1f}s] {trace} {load} {router} {policy} done", flush=True)
    with open(a.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        w.writeheader()
        w.writerows(rows)
    text = summary(rows, a)
    Path(a.out + ".md").write_text(text + "\n")
    print(text)
    return 0


def summary(rows: list[dict], a) -> str:
    def mean(trace, load, router, policy, key):
        xs = [
            r[key]
            for r in rows
            if (r["trace"], r["load"], r["router"], r["schedule_policy"]) == (trace, load, router, policy)
        ]
        return statistics.fmean(xs)

    head = f"Command: `python scripts/eval_schedule_policy.py {' '.join(sys.argv[1:])}`\n\n"
    head += (
        f"{a.model} x {a.instances} H100, means over seeds {a.seeds}. Cells: mean / p99 E2E (s), the mean's ratio to "
    )
    head += "the best baseline router (not cascade) on fcfs engines in that cell, and mean TTFT (s).\n\n"
    cols = [(r, p) for r in a.routers for p in a.policies]
    out = [head + "| trace | load | rate | " + " | ".join(f"{r} {p}" for r, p in cols) + " |"]
    out.append("|---|---|---|" + "---|" * len(cols))
    for trace in a.traces:
        for load in a.loads:
            cell = [r for r in rows if r["trace"] == trace and r["load"] == load]
            if not cell:
                continue
            refs = [r for r in a.routers if r != "cascade"] if FCFS in a.policies else []
            best = min((mean(trace, load, r, FCFS, "e2e_mean") for r in refs), default=None)  # None: no ratio
            vals = []
            for r, p in cols:
                m, p99, ttft = (mean(trace, load, r, p, k) for k in ("e2e_mean", "e2e_p99", "ttft_mean"))
                ratio = f"{m / best:.2f}x; " if best else ""
                vals.append(f"{m:.2f} / {p99:.1f} ({ratio}TTFT {ttft:.2f})")
            out.append(f"| {trace} | {load} | {cell[0]['rate']:.2f} | " + " | ".join(vals) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
