#!/usr/bin/env python3
"""Cascade router options against least_load in one grid cell, mean over seeds (the issue-14 arXiv tail study).

    python scripts/sweep_cascade_options.py --trace arxiv --model llama-3.1-8b --instances 16 --load 0.9 \
        least_load cascade cascade:spill=0 cascade:balance=0 cascade:max_stages=2

The rate is ``--load`` x the grid's cached round_robin capacity of that (model, trace, N) in ``--grid``
(scripts/eval_cascade_grid.py's JSONL); each router runs ``eval_cascade.run_one`` with 40 s of arrivals
(>= 1,000 requests) per seed, as the grid's cells do. Prints mean / p99 E2E and migrations per router.
"""

from __future__ import annotations

import argparse
import json

import eval_cascade as ev


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("routers", nargs="+")
    ap.add_argument("--trace", default="arxiv")
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--instances", type=int, default=16)
    ap.add_argument("--load", type=float, default=0.9, help="fraction of the grid's round_robin capacity")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--duration", type=float, default=40.0)
    ap.add_argument("--grid", default="docs/results/cascade_eval_grid2.jsonl")
    a = ap.parse_args()
    cap = None
    with open(a.grid) as f:
        for line in f:
            d = json.loads(line)
            if d["kind"] == "capacity" and (d["model"], d["trace"], d["instances"]) == (a.model, a.trace, a.instances):
                cap = d["rate"]
    if cap is None:
        raise SystemExit(f"no cached capacity for {a.model} {a.trace} N={a.instances} in {a.grid}")
    rate = a.load * cap
    print(f"{a.model} {a.trace} N={a.instances}: {rate:.2f} req/s ({a.load:g} x capacity {cap:.2f}), seeds {a.seeds}")
    for router in a.routers:
        rows = [
            ev.run_one(a.trace, a.model, a.instances, router, rate, ev.n_requests(rate, a.duration, 1000), s, {})
            for s in a.seeds
        ]
        mean = sum(r["e2e_mean"] for r in rows) / len(rows)
        p99 = sum(r["e2e_p99"] for r in rows) / len(rows)
        mig = sum(r["migrations"] for r in rows) / len(rows)
        print(f"  {router:36s} mean {mean:.3f} s  p99 {p99:.3f} s  migrations {mig:.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
