"""Policy cost: wall time of CascadeScheduler.schedule() per iteration with ~1,024 running requests.

A tiny driver keeps ``--running`` requests in flight (a finished request is replaced by a new arrival, so
admissions, prefill completions, bucket crossings, reservation extensions and finishes all happen during
the measurement) and times only ``schedule()``; applying the plan is not timed.

    python scripts/bench_policy_cost.py [--running 1024] [--iters 3000] [--variants cascade,...]

Target (issue 4): <= 100 us per iteration with 1,024 running requests.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.views import InstanceView, RequestView
from sglang_cascade.policies.registry import PolicyContext, make_instance_scheduler
from sglang_cascade.testing.plan_applier import apply_plan, retire


def _new(rng: random.Random, i: int, now: float, mu: float = 5.0) -> RequestView:
    r = RequestView(rid=f"r{i}", arrival=now, prompt_len=rng.randint(50, 400))
    r.extra["_true"] = int(rng.lognormvariate(mu, 0.8)) + 1
    return r


def bench(
    variant: str,
    running: int,
    iters: int,
    warm: int,
    seed: int = 0,
    freeze_gc: bool = False,
    mu: float = 5.0,
    kv: int = 0,
) -> dict:
    rng = random.Random(seed)
    cm = CostModel.for_names("llama-3-8b", "h100")
    sched = make_instance_scheduler(variant, PolicyContext(cost_model=cm))
    inst = InstanceView(
        iid=0,
        kv_capacity=kv or cm.kv_capacity_tokens() * 2,
        max_prefill_tokens=8192,
        max_running=running,
        host_kv_capacity=0,
    )
    nid = 0
    now = 0.0
    for _ in range(running):
        r = _new(rng, nid, now, mu)
        nid += 1
        sched.on_arrival(r, inst, now)
        inst.waiting.append(r)
    times = []
    decoded = 0
    for it in range(warm + iters):
        if freeze_gc and it == warm:
            gc.collect()
            gc.freeze()  # what a serving process does after start-up; young-generation GC still runs
        inst.iteration = it + 1
        t0 = time.perf_counter_ns()
        plan = sched.schedule(inst, now)
        dt = time.perf_counter_ns() - t0
        if it >= warm:
            times.append(dt / 1000.0)
            decoded += len(plan.decode)
        # apply the plan (not timed)
        now += 0.02
        done = apply_plan(inst, plan)
        for r in done:
            retire(inst, sched, r, now)
            n = _new(rng, nid, now, mu)
            nid += 1
            sched.on_arrival(n, inst, now)
            inst.waiting.append(n)
        inst.recount_kv_used()
    if freeze_gc:
        gc.unfreeze()
    times.sort()
    return {
        "variant": variant + (" (gc frozen)" if freeze_gc else ""),
        "running_mean": len(inst.running),
        "mean_us": statistics.fmean(times),
        "p50_us": times[len(times) // 2],
        "p99_us": times[int(len(times) * 0.99)],
        "decode_batch_mean": decoded / max(1, iters),
        "events_per_iter": _events(sched) / max(1, warm + iters),
    }


def _events(sched) -> float:
    m = sched.metrics() if hasattr(sched, "metrics") else {}
    return float(m.get("admitted", 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--running", type=int, default=1024)
    ap.add_argument("--kv", type=int, default=0, help="KV capacity in tokens (0: 2x llama-3-8b on H100)")
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--warm", type=int, default=300)
    ap.add_argument("--variants", default="cascade,cascade:reserve=1,cascade:aligned=0,cascade:merge=0,sglang")
    ap.add_argument(
        "--mu",
        type=float,
        default=5.0,
        help="log-mean of output lengths (5.0: median ~150 tokens, "
        "~5 finishes+admissions per iteration at 1,024 running; 8.0: almost no churn)",
    )
    a = ap.parse_args()
    variants = []
    for v in a.variants.split(","):  # "cascade:reserve=1,aligned=0" arrives split at every comma
        if ":" not in v and "=" in v and variants and ":" in variants[-1]:
            variants[-1] += "," + v
        else:
            variants.append(v)
    print(
        f"{'variant':44s} {'running':>7s} {'batch':>7s} {'admit/it':>8s} {'mean_us':>8s} {'p50_us':>8s} {'p99_us':>8s}"
    )
    for v, fz in [(v, fz) for v in variants for fz in (False, True)]:
        r = bench(v, a.running, a.iters, a.warm, freeze_gc=fz, mu=a.mu, kv=a.kv)
        print(
            f"{r['variant']:44s} {r['running_mean']:7d} {r['decode_batch_mean']:7.0f} {r['events_per_iter']:8.2f} "
            f"{r['mean_us']:8.1f} "
            f"{r['p50_us']:8.1f} {r['p99_us']:8.1f}"
        )


if __name__ == "__main__":
    main()
