#!/usr/bin/env python3
"""Simulator speed benchmark (prints figures; not a timed test).

Default: the whole Azure conv trace (19,366 requests) on 8 instances, sglang scheduler + round_robin
(target <= 10 s on a 2-core machine).

    python scripts/bench_sim.py                         # the Azure conv figure
    python scripts/bench_sim.py --requests 100000 --instances 64   # scale run
    python scripts/bench_sim.py --requests 1000000 --instances 256 # the 1M target (<= 15 min, <= 4 GB)

Scale runs draw (prompt, output) pairs from the Azure conv trace with replacement and Poisson arrivals at
the Azure conv per-instance rate times the number of instances (the same load per instance as the
8-instance run, times --load).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

from sglang_cascade.core.traces import TraceRequest, load_trace, trace_rate
from sglang_cascade.sim import SimConfig, simulate


def scaled_trace(n: int, instances: int, load: float, seed: int) -> list[TraceRequest]:
    base = load_trace("azure_conv")
    rate = trace_rate(base) / 8 * instances * load
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), n)
    gaps = rng.exponential(1.0 / rate, n)
    t = np.cumsum(gaps) - gaps[0]
    p = np.fromiter((base[i].prompt_len for i in idx), np.int64, n)
    o = np.fromiter((base[i].output_len for i in idx), np.int64, n)
    return [TraceRequest(f"r{i}", float(t[i]), int(p[i]), int(o[i])) for i in range(n)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=0, help="scale run with this many requests (0: Azure conv)")
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--router", default="round_robin")
    ap.add_argument("--scheduler", default="sglang")
    ap.add_argument("--load", type=float, default=1.0, help="scale runs: per-instance load vs Azure conv on 8")
    ap.add_argument("--rate-scale", type=float, default=None, help="Azure conv run: rate multiplier")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.requests:
        trace = scaled_trace(args.requests, args.instances, args.load, args.seed)
        name = f"scaled azure_conv x{args.requests}"
    else:
        trace = load_trace("azure_conv", rate_scale=args.rate_scale)
        name = "azure_conv"
    t_load = time.perf_counter() - t0
    cfg = SimConfig(instances=args.instances, router=args.router, scheduler=args.scheduler, seed=args.seed)
    res = simulate(trace, cfg, progress=args.progress)
    m = res.metrics
    ru = resource.getrusage(resource.RUSAGE_SELF)
    peak_mb = ru.ru_maxrss / 1024
    out = {
        "trace": name,
        "requests": len(trace),
        "instances": args.instances,
        "router": args.router,
        "scheduler": args.scheduler,
        "trace_load_s": round(t_load, 2),
        "sim_wall_s": round(m["sim_wall_s"], 2),
        "process_cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "peak_rss_mb": round(peak_mb),
        "load_avg_1min": round(os.getloadavg()[0], 1),
        "iterations": m["iterations"],
        "completed": m["completed"],
        "simulated_s": round(m["duration_s"], 1),
        "ttft_p99": m["ttft_p99"],
        "tpot_p50": m["tpot_p50"],
        "us_per_request": round(1e6 * m["sim_wall_s"] / max(1, len(trace)), 1),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
