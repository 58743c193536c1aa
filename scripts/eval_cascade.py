#!/usr/bin/env python3
"""Evaluate the cascade router against every router baseline in the simulator.

Grid: traces x instances x models x loads x routers (+ cascade ablations at the highest load), each with
the ``sglang`` instance scheduler. Loads are fractions of the measured SLO capacity of ``round_robin``
(the highest rate at which >= 90% of requests meet TTFT <= 2 s and TPOT <= 0.1 s, found by bisection
around the analytic estimate of policies/stages.py): low 0.3, medium 0.6, high 0.9. Reported per run: mean and p99 E2E, p99 TPOT, SLO attainment, migrations.
With ``--rate-search`` it also finds, per router, the highest rate whose SLO attainment is >= 90%
(bisection on the rate, same trace lengths and seed).

    python scripts/eval_cascade.py --quick            # a subset that finishes in minutes on 2 cores
    python scripts/eval_cascade.py                    # the full grid (hours on 2 cores)

Writes ``<out>.json`` and ``<out>.csv`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace

import numpy as np
from rows_csv import write_rows

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.specs import get_model
from sglang_cascade.core.traces import TraceRequest, load_trace
from sglang_cascade.policies.stage_model import LengthStats, QoEConfig, StageModel
from sglang_cascade.sim import SimConfig, simulate

BASELINES = ["round_robin", "random", "power_of_two", "least_load", "llumnix", "bucket", "cache_aware"]
ABLATIONS = {
    "cascade:migration=0": {},
    "cascade:refine=0": {},
    "cascade:central=1": {"publish_interval": 0.0},  # centralized: one coordinator with fresh loads
    "cascade:mode=recompute": {},
    "cascade:mode=kv_transfer": {},
}
LOADS = {"low": 0.3, "medium": 0.6, "high": 0.9, "past_knee": 1.2}
TRACES = ["azure_conv", "azure_code", "sharegpt", "arxiv"]
MODELS = ["llama-3-8b", "llama-3.1-8b"]
# the long-context trace: Mooncake's synthetic trace, shipped as the built-in trace "mooncake";
# SGLANG_CASCADE_MOONCAKE points at another file of the same format instead
MOONCAKE = os.environ.get("SGLANG_CASCADE_MOONCAKE", "mooncake")
LONG_CONTEXT = {"mooncake"}
TIMED = {"azure_conv", "azure_code", "mooncake"}  # traces with their own timestamps


def trace_source(name: str) -> str:
    return MOONCAKE if name == "mooncake" else name


def model_tp(name: str) -> tuple[str, int]:
    """``llama-3.1-70b@4`` -> (llama-3.1-70b, 4); no suffix: TP 1."""
    m, _, tp = name.partition("@")
    return m, int(tp or 1)


def capacity_rate(sample, n: int, cm: CostModel, cfg: QoEConfig) -> float:
    """Rate (req/s) at which one pooled stage of n instances reaches utilization 1 (analytic)."""
    stats = LengthStats(sample)
    edges = np.array([0.0, np.inf])
    lo, hi = 1e-3, 1e4
    for _ in range(40):
        mid = (lo * hi) ** 0.5
        model = StageModel(stats, edges, mid, cm, cfg)
        _, parts = model.segment_costs(n)
        rho = float(parts["rho"][0, n - 1])
        lo, hi = (mid, hi) if rho < 1.0 else (lo, mid)
    return lo


def analytic_capacity(trace_name: str, model: str, n: int) -> float:
    """The analytic pooled capacity (req/s at utilization 1) of ``n`` H100 instances of ``model`` (``name@tp``) on
    a trace's first 4,000 requests: what the grid's loads are fractions of with ``--load-basis analytic``."""
    name, tp = model_tp(model)
    cm = CostModel.for_names(name, "h100", tp)
    base = load_trace(trace_source(trace_name), num_requests=4000, rate=1.0, seed=0)
    return capacity_rate([(r.prompt_len, r.output_len) for r in base], n, cm, QoEConfig())


def requests_for(trace_name: str, requests: int, rate: float, seed: int, max_context: int) -> list[TraceRequest]:
    """``requests`` arrivals at mean ``rate``. Length tables: sampled with ``seed``. Timed traces (Azure,
    Mooncake) keep their own arrival pattern, rescaled; seed s > 0 takes the window starting s x requests/2
    requests in (wrapping), so seeds differ there too."""
    src = trace_source(trace_name)
    if seed == 0 or trace_name not in TIMED:
        return load_trace(src, num_requests=requests, rate=rate, seed=seed, max_context=max_context)
    full = load_trace(src, max_context=max_context)
    start = (seed * requests // 2) % len(full)
    win = (full + full)[start : start + min(requests, len(full))]
    t0, span = win[0].arrival, max(1e-9, win[-1].arrival - win[0].arrival)
    if win[-1].arrival < t0:  # wrapped: lay the second lap after the first
        lap = full[-1].arrival
        win = [r if r.arrival >= t0 else replace(r, arrival=r.arrival + lap) for r in win]
        span = max(1e-9, win[-1].arrival - t0)
    scale = (len(win) - 1) / span / rate
    return [replace(r, rid=f"r{i}", arrival=(r.arrival - t0) * scale) for i, r in enumerate(win)]


def sim_config(model: str, n: int, router: str, seed: int, **extra) -> SimConfig:
    """The evaluation's SimConfig: ``n`` H100 instances of ``model`` (``name@tp``), the ``sglang`` scheduler behind
    ``router``; ``router@policy`` runs every engine with SGLang's ``--schedule-policy policy``."""
    name, tp = model_tp(model)
    router, _, order = router.partition("@")
    if order:
        extra = {**extra, "schedule_policy": order}
    return SimConfig(model=name, gpu="h100", tp=tp, instances=n, router=router, scheduler="sglang", seed=seed, **extra)


def run_one(trace_name, model, n, router, rate, requests, seed, extra):
    """One simulated run (``sim_config``)."""
    cfg = sim_config(model, n, router, seed, **extra)
    router = cfg.router
    reqs = requests_for(trace_name, requests, rate, seed, get_model(cfg.model).max_context)
    res = simulate(reqs, cfg)
    m = res.metrics
    return {
        "trace": trace_name,
        "model": model,
        "instances": n,
        "router": router,
        "rate": rate,
        "requests": len(reqs),
        "completed": m["completed"],
        "e2e_mean": m["e2e_mean"],
        "e2e_p99": m["e2e_p99"],
        "ttft_mean": m["ttft_mean"],
        "ttft_p99": m["ttft_p99"],
        "tpot_p99": m["tpot_p99"],
        "slo_attainment": m["slo_attainment"],
        "migrations": m["migrations"],
        "migrations_aborted": m.get("migrations_aborted", 0),
        "preemptions": m["preemptions"],
        "prefix_hit_rate": m.get("prefix_hit_rate", 0.0),  # SimConfig.prefix_cache_block on traces with hash_ids
        "sim_wall_s": m["sim_wall_s"],
        "trace_span_s": reqs[-1].arrival,  # seconds of arrivals
    }


def n_requests(rate: float, duration: float, floor: int) -> int:
    return max(floor, int(rate * duration))


def max_rate(trace_name, model, n, router, cap, duration, seed, extra, target=0.9, iters=5):
    """Highest rate (req/s) whose SLO attainment is >= target: doubling/halving from ``cap`` to bracket
    it, then geometric bisection; ``duration`` seconds of arrivals per probe."""

    def ok(rate):
        row = run_one(trace_name, model, n, router, rate, n_requests(rate, duration, 500), seed, extra)
        return row["slo_attainment"] >= target

    lo = hi = cap
    if ok(cap):  # expand upward until a rate fails
        while ok(hi * 2) and hi < 64 * cap:
            hi *= 2
        lo, hi = hi, hi * 2
    else:  # expand downward until a rate passes
        while lo > cap / 256:
            lo /= 2
            if ok(lo):
                break
        else:
            return 0.0
        hi = lo * 2
    for _ in range(iters):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small subset (see QUICK below)")
    ap.add_argument("--traces", nargs="*", default=None)
    ap.add_argument("--instances", nargs="*", type=int, default=None)
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--loads", nargs="*", default=None, choices=list(LOADS))
    ap.add_argument("--routers", nargs="*", default=None)
    ap.add_argument("--duration", type=float, default=None, help="seconds of arrivals per run")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--rate-search", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/results/cascade_eval")
    ap.add_argument("--summarize", nargs="*", default=None, help="only print the summary of these result JSONs")
    args = ap.parse_args(argv)
    if args.summarize is not None:
        rows, searches = [], []
        for path in args.summarize:
            with open(path) as f:
                d = json.load(f)
            rows += d["runs"]
            searches += d["rate_search"]
        print(summarize(rows, searches))
        return 0

    if args.quick:  # QUICK: one model, the four traces, 8 instances, medium + high load
        traces = args.traces or TRACES
        insts = args.instances or [8]
        models = args.models or ["llama-3-8b"]
        loads = args.loads or ["medium", "high"]
        duration = args.duration or 40.0
    else:
        traces = args.traces or TRACES
        insts = args.instances or [4, 8, 16]
        models = args.models or MODELS
        loads = args.loads or list(LOADS)
        duration = args.duration or 120.0
    routers = args.routers or (BASELINES + ["cascade"])
    ablations = {} if args.no_ablations else ABLATIONS
    rows, searches = [], []
    t_start = time.time()
    for model in models:
        cm = CostModel.for_names(model, "h100")
        qcfg = QoEConfig()
        for tr in traces:
            base = load_trace(tr, num_requests=4000, rate=1.0, seed=args.seed)
            sample = [(r.prompt_len, r.output_len) for r in base]
            for n in insts:
                # load levels are fractions of the measured capacity of round_robin (max rate with >= 90%
                # of requests meeting both SLOs), found around the analytic estimate
                est = capacity_rate(sample, n, cm, qcfg)
                cap = max_rate(tr, model, n, "round_robin", est, duration, args.seed, {})
                print(
                    f"[{time.time() - t_start:7.1f}s] {model} {tr} N={n}: analytic capacity {est:.1f} req/s, "
                    f"round_robin SLO capacity {cap:.1f} req/s",
                    flush=True,
                )
                for load in loads:
                    rate = LOADS[load] * cap
                    requests = n_requests(rate, duration, 1000)
                    for router in list(routers) + [a for a in ablations if load == loads[-1]]:
                        extra = ablations.get(router, {})
                        row = run_one(tr, model, n, router, rate, requests, args.seed, extra)
                        row.update(load=load, capacity_rate=cap)
                        rows.append(row)
                        print(
                            f"[{time.time() - t_start:7.1f}s] {model} {tr} N={n} {load:6s} {router:26s} "
                            f"rate={rate:6.2f} e2e={row['e2e_mean']:.2f}/{row['e2e_p99']:.2f} "
                            f"tpot99={row['tpot_p99']:.3f} slo={row['slo_attainment']:.2f} "
                            f"mig={row['migrations']}",
                            flush=True,
                        )
                if args.rate_search:
                    for router in routers:
                        r = (
                            cap
                            if router == "round_robin"
                            else max_rate(tr, model, n, router, cap, duration, args.seed, {})
                        )
                        searches.append(
                            {
                                "trace": tr,
                                "model": model,
                                "instances": n,
                                "router": router,
                                "max_rate_slo90": r,
                                "capacity_rate": cap,
                            }
                        )
                        print(f"  max rate meeting SLOs (>=90%): {router:14s} {r:.2f} req/s", flush=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"runs": rows, "rate_search": searches, "args": vars(args)}, f, indent=1)
    write_rows(args.out + ".csv", rows)
    print(markdown(rows, searches))
    print()
    print(summarize(rows, searches))
    return 0


def summarize(rows, searches) -> str:
    """Cascade vs the best router baseline per (model, trace, N, load): relative mean/p99 E2E, p99 TPOT."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["model"], r["trace"], r["instances"], r["load"]), {})[r["router"]] = r
    out = [
        "| model | trace | N | load | best baseline (mean E2E) | its mean / p99 E2E | cascade mean / p99 E2E | "
        "mean E2E vs best | p99 E2E vs best-p99 baseline | p99 TPOT cascade / best |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, tr, n, load), g in groups.items():
        if "cascade" not in g:
            continue
        base = {k: v for k, v in g.items() if k in BASELINES}
        if not base:
            continue
        bm = min(base, key=lambda k: base[k]["e2e_mean"])
        bp = min(base, key=lambda k: base[k]["e2e_p99"])
        bt = min(base, key=lambda k: base[k]["tpot_p99"])
        c = g["cascade"]
        out.append(
            f"| {model} | {tr} | {n} | {load} | {bm} | {base[bm]['e2e_mean']:.2f} / {base[bm]['e2e_p99']:.2f} | "
            f"{c['e2e_mean']:.2f} / {c['e2e_p99']:.2f} | {100 * (c['e2e_mean'] / base[bm]['e2e_mean'] - 1):+.0f}% | "
            f"{100 * (c['e2e_p99'] / base[bp]['e2e_p99'] - 1):+.0f}% ({bp}) | "
            f"{c['tpot_p99']:.3f} / {base[bt]['tpot_p99']:.3f} |"
        )
    if searches:
        by: dict = {}
        for s in searches:
            by.setdefault((s["model"], s["trace"], s["instances"]), {})[s["router"]] = s["max_rate_slo90"]
        out += [
            "",
            "| model | trace | N | best baseline | its max rate | cascade max rate | ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for (model, tr, n), g in by.items():
            base = {k: v for k, v in g.items() if k in BASELINES}
            if "cascade" not in g or not base:
                continue
            b = max(base, key=base.get)
            out.append(
                f"| {model} | {tr} | {n} | {b} | {base[b]:.1f} | {g['cascade']:.1f} | "
                f"{g['cascade'] / max(1e-9, base[b]):.2f}x |"
            )
    return "\n".join(out)


def markdown(rows, searches) -> str:
    out = [
        "| model | trace | N | load | router | mean E2E (s) | p99 E2E (s) | p99 TPOT (s) | SLO att. | migr. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['trace']} | {r['instances']} | {r['load']} | {r['router']} | "
            f"{r['e2e_mean']:.2f} | {r['e2e_p99']:.2f} | {r['tpot_p99']:.3f} | {r['slo_attainment']:.2f} | "
            f"{r['migrations']} |"
        )
    if searches:
        out += ["", "| model | trace | N | router | max rate @ SLO>=90% (req/s) |", "|---|---|---|---|---|"]
        for s in searches:
            out.append(
                f"| {s['model']} | {s['trace']} | {s['instances']} | {s['router']} | {s['max_rate_slo90']:.2f} |"
            )
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
