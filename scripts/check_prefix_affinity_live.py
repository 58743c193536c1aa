#!/usr/bin/env python3
"""Does prefix affinity pay on real SGLang, as the simulator says? Multi-turn sessions with shared-prefix prompts
through our router over two real CPU-engine servers, per routing policy, against the simulator on the same requests.

    python scripts/check_prefix_affinity_live.py [--routers least_load cascade cache_aware] [--out docs/results/prefix_affinity_live]

The slice is scripts/check_prefix_cache_live.py's (``--sessions`` conversations of ``--turns`` turns, each turn's
prompt = the session's document + its history, ``--block``-token blocks named by hash ids), with prompts built from
the hashes so the servers' radix caches reuse what a session sent before, if the router sends the next turn to the
same server. Two stock servers (SGLang 0.5.23 CPU engine, tiny model, one thread each, pinned to one core each)
behind ``python -m sglang_cascade.router --policy P`` (the router hashes the token ids in 32-token blocks); both
radix caches are flushed before each policy. The simulator runs 2 instances with the same router and
``prefix_cache_block`` = ``--block``, scaled by the run's measured decode speed. Writes ``<out>.csv`` (per policy
and metric: real, simulated, relative error) and prints whether the simulator orders the policies as the servers
did. Servers and routers are stopped by process group at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_prefix_cache_live as pcl
import eval_fidelity as ef

from sglang_cascade.replay import fidelity as fid
from sglang_cascade.replay.cli_replay import replay_metrics
from sglang_cascade.replay.client import ReplayConfig, replay_trace
from sglang_cascade.replay.lengths import prompt_ids
from sglang_cascade.replay.step_log import parse_lines
from sglang_cascade.sim.cluster import simulate

METRICS = ("ttft_mean", "ttft_p50", "e2e_mean", "e2e_p99")


def run_policy(policy: str, servers: list, trace, a, log_dir: str) -> dict:
    for s in servers:
        pcl.flush(s.base_url)
    offsets = [ef.log_size(s) for s in servers]
    router, url = ef.start_router(policy, [s.base_url for s in servers], f"{log_dir}/router_{policy}.log")
    try:
        prompts = prompt_ids(trace, pcl.VOCAB, a.seed, block=a.block)
        recs = asyncio.run(replay_trace(trace, prompts, ReplayConfig(url)))
    finally:
        ef.stop_group(router)
    m = replay_metrics(recs, 2.0, 0.1)
    if m["failed"]:
        raise RuntimeError(f"{policy}: {m['failed']} requests failed: {next(r.error for r in recs if not r.ok)}")
    logs = [ef.log_since(s, off) for s, off in zip(servers, offsets)]
    m["step_speed"], _ = fid.step_speed(logs)
    m["cached_tokens"] = sum(x.cached_tokens for text in logs for x in parse_lines(text.splitlines()))
    return m


def run_sim(policy: str, trace, a, real: dict) -> dict:
    cfg = fid.FidelityConfig(policy, 2, policy, "sglang", 2.0)
    scale = fid.run_time_scale(real.get("step_speed")) or 1.0
    sc = replace(fid.sim_config(cfg, pcl.MODEL, pcl.GPU, 2.0, 0.1, 0.5, None, scale), prefix_cache_block=a.block)
    return simulate(trace, sc).metrics


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--routers", nargs="*", default=["least_load", "cascade", "cache_aware"])
    pcl.add_session_arguments(ap, sessions=8, gap=5.0, stagger=0.6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/results/prefix_affinity_live")
    a = ap.parse_args(argv)
    trace = pcl.session_trace(a)
    log_dir = tempfile.mkdtemp(prefix="prefix_affinity_live_")
    servers = ef.start_servers(need_plugin=False, need_two=True, log_dir=log_dir)
    rows, real, sim = [], {}, {}
    try:
        for policy in a.routers:
            real[policy] = run_policy(policy, [servers["stock0"], servers["stock1"]], trace, a, log_dir)
            sim[policy] = run_sim(policy, trace, a, real[policy])
            for k in METRICS:
                r, s = real[policy][k], sim[policy][k]
                rows.append({"policy": policy, "metric": k, "real": r, "sim": s, "rel_err": fid.rel_err(r, s)})
            prompt = sum(t.prompt_len for t in trace)
            rows.append(
                {
                    "policy": policy,
                    "metric": "prefix_hit_rate",
                    "real": real[policy]["cached_tokens"] / prompt,
                    "sim": sim[policy].get("prefix_hit_rate", 0.0),
                    "rel_err": None,
                }
            )
    finally:
        for s in servers.values():
            s.stop()
    with open(a.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["policy", "metric", "real", "sim", "rel_err"])
        w.writeheader()
        w.writerows(rows)
    for r in rows:
        err = "" if r["rel_err"] is None else f"  err {r['rel_err']:+.1%}"
        print(f"{r['policy']:12s} {r['metric']:16s} real {r['real']:8.3f}  sim {r['sim']:8.3f}{err}")
    errs = [r["rel_err"] for r in rows if r["rel_err"] is not None]
    print(f"median relative error {statistics.median(errs):.1%} over {len(errs)} (policy, metric) pairs")
    for k in ("ttft_mean", "e2e_mean"):
        order_real = sorted(a.routers, key=lambda p: real[p][k])
        order_sim = sorted(a.routers, key=lambda p: sim[p][k])
        print(
            f"order on {k}: real {order_real}, simulated {order_sim} ({'same' if order_real == order_sim else 'differs'})"
        )
    print(f"wrote {a.out}.csv ({len(trace)} requests; logs in {log_dir})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
