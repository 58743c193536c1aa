"""The plan check's cost on the request path: wall time of the cascade router's own calls that start a check.

    PYTHONPATH=<tree> python scripts/bench_check_path.py [--instances 16] [--requests 6000] [--rate 50]
        [--check-interval-s 2] [--options check_span_s=0] [--label after] [--out docs/results/plan_check_path.csv]

Drives ``CascadeRouter`` directly (no HTTP, no engines) with ShareGPT lengths at ``--rate`` req/s of virtual
time: ``route`` per arrival, ``on_finish`` ``--latency-s`` later, ``rebalance`` every ``--tick-s`` (with the
requests in flight as the running views, ~rate x latency of them; ``--no-running``: none, as before); the
policy is ``cascade:plan_check=1,check_interval_s=...`` with a checker that only records the jobs
(``testing.recording_checker``: never answers, so nothing is scored anywhere; what is timed is what the
router itself does to start a check). Every call is timed with ``perf_counter``; a call after which the
checker holds one more job "started a check". Reported: p50 / p99 / max (ms) of those calls, of the other
route and rebalance calls, and of the constructor (its init check). Uses only APIs older trees have too,
so ``PYTHONPATH=/path/to/old/tree`` measures the code before a change with the same script.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import time

import numpy as np
from rows_csv import write_rows

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.traces import load_trace
from sglang_cascade.core.views import ClusterView, InstanceLoad, RequestView
from sglang_cascade.policies.registry import PolicyContext, make_router
from sglang_cascade.testing.recording_checker import RecordingChecker


def _stats(xs: list[tuple[float, bool]]) -> dict:
    """p50 / p99 / max of the calls' wall times, and of the calls during which no full (generation 2)
    garbage collection ran: one such pause (~10 ms here) can land on any call that allocates."""
    a = np.array([x for x, _ in xs]) * 1e3 if xs else np.array([np.nan])
    b = np.array([x for x, full in xs if not full]) * 1e3 if xs else np.array([np.nan])
    return {
        "n": len(xs),
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
        "full_gc_calls": int(len(a) - len(b)) if xs else 0,
        "max_ms_without_full_gc": float(b.max()) if len(b) else float("nan"),
    }


def _extra(a) -> dict:
    return {"rate": a.rate, "in_flight": 0 if a.no_running else round(a.rate * a.latency_s)}


def run(a) -> list[dict]:
    cm = CostModel.for_names("llama-3-8b", "h100")
    reqs = load_trace("sharegpt", num_requests=a.requests, rate=a.rate, seed=a.seed)
    sample = [(r.prompt_len, r.output_len) for r in reqs[:1000]]
    chk = RecordingChecker()
    opts = f"cascade:plan_check=1,check_interval_s={a.check_interval_s:g},min_replay=200,replay_requests=2000"
    opts += f",{a.options}" if a.options else ""
    t = time.perf_counter()
    r = make_router(opts, PolicyContext(cm, a.instances, a.seed, sample, a.rate, None, chk))
    init_s = time.perf_counter() - t
    cluster = ClusterView([InstanceLoad(i) for i in range(a.instances)], 0.0)
    checks, routes, rebalances = [], [], []
    finishing: list = []  # (finish time, seq, view)
    running: dict[int, dict[str, RequestView]] = {i: {} for i in range(a.instances)}  # in flight, by instance
    outputs: dict[str, int] = {}  # rid -> its output length (set on the view when it finishes)
    next_tick = 0.0

    def timed(fn, *args) -> tuple[tuple[float, bool], bool, object]:
        n0, g0 = len(chk.jobs), gc.get_stats()[2]["collections"]
        t0 = time.perf_counter()
        got = fn(*args)
        dt = time.perf_counter() - t0
        return (dt, gc.get_stats()[2]["collections"] > g0), len(chk.jobs) > n0, got

    for k, q in enumerate(reqs):
        now = q.arrival
        while finishing and finishing[0][0] <= now:
            tf, _, v = heapq.heappop(finishing)
            running[v.instance].pop(v.rid, None)
            v.output_len = outputs.pop(v.rid)
            r.on_finish(v, tf)
        while next_tick <= now:
            views = {} if a.no_running else {i: list(d.values()) for i, d in running.items()}
            dt, fired, _ = timed(r.rebalance, cluster, views, next_tick)
            (checks if fired else rebalances).append(dt)
            next_tick += a.tick_s
        v = RequestView(q.rid, now, q.prompt_len)
        dt, fired, v.instance = timed(r.route, v, cluster, now)
        (checks if fired else routes).append(dt)
        outputs[v.rid] = q.output_len
        running[v.instance][v.rid] = v
        heapq.heappush(finishing, (now + a.latency_s, k, v))
    rows = []
    for what, xs in (("call that started a check", checks), ("other route", routes), ("other rebalance", rebalances)):
        rows.append(
            {"label": a.label, "instances": a.instances, "options": a.options, **_extra(a), "what": what, **_stats(xs)}
        )
    init = {
        "label": a.label,
        "instances": a.instances,
        "options": a.options,
        **_extra(a),
        "what": "constructor (init check)",
    }
    rows.append({**init, **_stats([(init_s, False)])})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", type=int, default=16)
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--rate", type=float, default=50.0, help="arrivals per second of virtual time")
    ap.add_argument("--check-interval-s", type=float, default=2.0)
    ap.add_argument("--tick-s", type=float, default=0.05, help="virtual seconds between rebalance calls")
    ap.add_argument("--latency-s", type=float, default=2.0, help="virtual seconds from arrival to finish")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--options", default="", help="more cascade options, e.g. check_span_s=0")
    ap.add_argument("--no-running", action="store_true", help="rebalance sees no running requests")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default="", help="append the rows to this CSV")
    a = ap.parse_args()
    rows = run(a)
    for x in rows:
        print(
            f"{x['label']:>8} n={x['instances']:<3} {x['what']:<26} calls={x['n']:<6} "
            f"p50 {x['p50_ms']:.3f} ms  p99 {x['p99_ms']:.3f} ms  max {x['max_ms']:.3f} ms  "
            f"(full GC in {x['full_gc_calls']}; max without {x['max_ms_without_full_gc']:.3f} ms)"
        )
    if a.out:
        write_rows(a.out, rows, append=True)


if __name__ == "__main__":
    main()
