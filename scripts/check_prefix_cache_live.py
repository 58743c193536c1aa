#!/usr/bin/env python3
"""Does the simulator's prefix cache (sim/prefix_cache.py) do what SGLang's radix cache does? The same multi-turn
requests on one real CPU-engine server and in the simulator, with prompts that share prefixes and without.

    python scripts/check_prefix_cache_live.py [--sessions 6] [--turns 5] [--out docs/results/prefix_cache_live]

The slice: ``--sessions`` conversations of ``--turns`` turns; a session's prompts all start with its own document
(``--doc-blocks`` blocks) and turn t adds t x ``--turn-blocks`` blocks of history, ``--block`` tokens per block,
each block named by a hash id as in Mooncake's trace. Turns of a session are ``--gap`` seconds apart (the previous
one has finished), sessions start ``--stagger`` seconds apart. Two replays on one stock server (SGLang 0.5.23 CPU
engine, tiny model, one thread): ``shared`` sends each hash's fixed token ids (``prompt_ids(block=...)``: the radix
cache reuses every earlier prompt's blocks), ``random`` random ids (nothing to reuse). The simulator runs the same
requests with ``prefix_cache_block`` = ``--block`` and 0, each scaled by its run's measured machine speed
(``fidelity.step_speed``, as eval_fidelity's drift-normalized side). Writes ``<out>.csv`` and prints, per variant,
real and simulated TTFT / E2E and the reuse speed-up (random over shared) of each side. The server is stopped by
process group at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sys
import tempfile
import urllib.request
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sglang_cascade.core.traces import TraceRequest
from sglang_cascade.replay import fidelity as fid
from sglang_cascade.replay.cli_replay import replay_metrics
from sglang_cascade.replay.client import ReplayConfig, replay_trace
from sglang_cascade.replay.lengths import prompt_ids
from sglang_cascade.replay.step_log import STEP_LOG_ENV, STEP_LOG_SERVER_ARGS
from sglang_cascade.sim.cluster import simulate
from sglang_cascade.testing.server_fixture import ServerProcess

MODEL, GPU, VOCAB = "tiny-llama", "cpu-engine", 1024
METRICS = ("ttft_mean", "ttft_p50", "e2e_mean", "e2e_p50")


def session_trace(a) -> list[TraceRequest]:
    out = []
    for s in range(a.sessions):
        doc = [s * 10_000 + j for j in range(a.doc_blocks)]
        for t in range(a.turns):
            hist = [s * 10_000 + 1000 + j for j in range(t * a.turn_blocks)]
            blocks = doc + hist
            out.append(TraceRequest(f"s{s}t{t}", s * a.stagger + t * a.gap, len(blocks) * a.block, a.output, blocks))
    return sorted(out, key=lambda r: r.arrival)


def flush(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url + "/flush_cache", data=b"", method="POST"), timeout=30).read()


def run_real(server: ServerProcess, trace, block: int, seed: int) -> dict:
    flush(server.base_url)  # an empty radix cache for each replay
    offset = os.path.getsize(server.log_path)
    recs = asyncio.run(replay_trace(trace, prompt_ids(trace, VOCAB, seed, block=block), ReplayConfig(server.base_url)))
    m = replay_metrics(recs, 2.0, 0.1)
    if m["failed"]:
        raise RuntimeError(f"{m['failed']} requests failed: {next(r.error for r in recs if not r.ok)}")
    with open(server.log_path, "rb") as f:
        f.seek(offset)
        log = f.read().decode(errors="replace")
    m["step_speed"], _ = fid.step_speed([log])
    m["step_speed_prefill"], _ = fid.step_speed([log], kind="prefill")
    return m


def run_sim(trace, block: int, real: dict) -> dict:
    cfg = fid.FidelityConfig("sglang", 1, "round_robin", "sglang", 1.0)
    scale = fid.run_time_scale(real.get("step_speed"), real.get("step_speed_prefill")) or 1.0
    sc = replace(fid.sim_config(cfg, MODEL, GPU, 2.0, 0.1, 0.5, None, scale), prefix_cache_block=block)
    return simulate(trace, sc).metrics


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--doc-blocks", type=int, default=16)
    ap.add_argument("--turn-blocks", type=int, default=8)
    ap.add_argument("--block", type=int, default=64, help="tokens per prefix block (hash id)")
    ap.add_argument("--output", type=int, default=8, help="output tokens per request")
    ap.add_argument("--gap", type=float, default=6.0, help="seconds between a session's turns")
    ap.add_argument("--stagger", type=float, default=1.0, help="seconds between sessions' first turns")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/results/prefix_cache_live")
    a = ap.parse_args(argv)
    trace = session_trace(a)
    log_dir = tempfile.mkdtemp(prefix="prefix_cache_live_")
    server = ServerProcess(
        ["--threads", "1", *STEP_LOG_SERVER_ARGS], env=STEP_LOG_ENV, log_path=f"{log_dir}/server.log"
    )
    rows = []
    server.start()
    try:
        server.wait_ready()
        for name, block in (("random", 0), ("shared", a.block)):
            real = run_real(server, trace, block, a.seed)
            sim = run_sim(trace, block, real)
            for k in METRICS:
                err = fid.rel_err(real[k], sim[k])
                rows.append({"variant": name, "metric": k, "real": real[k], "sim": sim[k], "rel_err": err})
            rows.append({"variant": name, "metric": "prefix_hit_rate", "real": None, "sim": sim.get("prefix_hit_rate")})
            rows.append({"variant": name, "metric": "step_speed", "real": real["step_speed"], "sim": None})
            rows.append(
                {"variant": name, "metric": "step_speed_prefill", "real": real["step_speed_prefill"], "sim": None}
            )
    finally:
        server.stop()
    with open(a.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["variant", "metric", "real", "sim", "rel_err"])
        w.writeheader()
        w.writerows(rows)
    get = {(r["variant"], r["metric"]): r for r in rows}
    for r in rows:
        real = "-" if r["real"] is None else f"{r['real']:.3f}"
        sim = "-" if r["sim"] is None else f"{r['sim']:.3f}"
        err = "" if r.get("rel_err") is None else f"  err {r['rel_err']:+.1%}"
        print(f"{r['variant']:7s} {r['metric']:20s} real {real:>8s}  sim {sim:>8s}{err}")
    for k in METRICS:
        rr = get[("random", k)]["real"] / get[("shared", k)]["real"]
        rs = get[("random", k)]["sim"] / get[("shared", k)]["sim"]
        print(f"reuse speed-up {k:10s}: real x{rr:.2f}, simulated x{rs:.2f}")
    print(f"wrote {a.out}.csv ({len(trace)} requests; server log {log_dir}/server.log)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
