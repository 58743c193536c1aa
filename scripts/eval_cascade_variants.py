#!/usr/bin/env python3
"""Compare cascade option variants against the best router baseline over several seeds (tuning evidence).

Reuses the rates of a quick evaluation (``scripts/eval_cascade.py --quick``, Llama-3-8B, 8 x H100):
ShareGPT and arXiv at medium/high load with seeds 0..S-1 (Poisson arrivals and length samples change with
the seed) and azure_conv / azure_code at medium/high load (their real timestamps do not change with the
seed, so seed 0 only). For each variant it prints the geometric mean over these configurations of
(variant mean E2E / best baseline mean E2E) and the same for p99 E2E; best baseline = the best of
round_robin, power_of_two, least_load, llumnix on that configuration and seed (cached in a JSON file).

    python scripts/eval_cascade_variants.py cascade cascade:spill=0 cascade:min_pressure=0.3,imbalance_ratio=1.5
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from sglang_cascade.core.traces import load_trace
from sglang_cascade.sim import SimConfig, simulate

BASELINES = ["least_load", "llumnix", "round_robin", "power_of_two"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("routers", nargs="+")
    ap.add_argument("--rates-from", default="docs/results/cascade_eval_quick.json")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cache", default="/tmp/eval_cascade_variants_baselines.json")
    args = ap.parse_args()
    runs = json.loads(Path(args.rates_from).read_text())["runs"]
    cfgs = {}
    for r in runs:
        if r["instances"] == 8 and r["model"] == "llama-3-8b" and r["router"] == "round_robin":
            cfgs[(r["trace"], r["load"])] = (r["rate"], r["requests"])
    cache = json.loads(Path(args.cache).read_text()) if os.path.exists(args.cache) else {}

    def run(trace, load, router, seed):
        rate, n = cfgs[(trace, load)]
        reqs = load_trace(trace, num_requests=n, rate=rate, seed=seed)
        m = simulate(
            reqs, SimConfig(model="llama-3-8b", gpu="h100", instances=8, router=router, scheduler="sglang", seed=seed)
        ).metrics
        return m["e2e_mean"], m["e2e_p99"]

    def best(trace, load, seed):
        key = f"{trace}|{load}|{seed}"
        if key not in cache:
            vals = [run(trace, load, b, seed) for b in BASELINES]
            cache[key] = [min(v[0] for v in vals), min(v[1] for v in vals)]
            Path(args.cache).write_text(json.dumps(cache))
        return cache[key]

    grid = [(t, l, s) for t in ("sharegpt", "arxiv") for l in ("medium", "high") for s in range(args.seeds)]
    grid += [(t, l, 0) for t in ("azure_conv", "azure_code") for l in ("medium", "high")]
    grid = [g for g in grid if (g[0], g[1]) in cfgs]
    for router in args.routers:
        lm, l99, per = [], [], {}
        for t, l, s in grid:
            b = best(t, l, s)
            m = run(t, l, router, s)
            lm.append(math.log(m[0] / b[0]))
            l99.append(math.log(m[1] / b[1]))
            per.setdefault(t, []).append(m[0] / b[0])
        g = lambda v: math.exp(sum(v) / len(v))  # noqa: E731
        by_trace = " ".join(f"{t}:{g([math.log(x) for x in v]):.3f}" for t, v in per.items())
        print(f"{router:60s} mean {g(lm):.3f} p99 {g(l99):.3f} | {by_trace}", flush=True)


if __name__ == "__main__":
    main()
