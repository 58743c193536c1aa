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
real and simulated TTFT / E2E and the reuse speed-up (random over shared) of each side. First, lone prefills
(``<out>.lone.csv``): new tokens after a cached prefix against the cost model, relative to 512 tokens alone. The
server is stopped by process group at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import statistics
import sys
import tempfile
import urllib.request
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_fidelity as ef  # the server-log helpers (log_size, log_since)
import numpy as np

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.hardware import hardware_profile
from sglang_cascade.core.hardware_fit import prefix_efficiency_fit
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
    offset = ef.log_size(server)
    recs = asyncio.run(replay_trace(trace, prompt_ids(trace, VOCAB, seed, block=block), ReplayConfig(server.base_url)))
    m = replay_metrics(recs, 2.0, 0.1)
    if m["failed"]:
        raise RuntimeError(f"{m['failed']} requests failed: {next(r.error for r in recs if not r.ok)}")
    log = ef.log_since(server, offset)
    m["step_speed"], _ = fid.step_speed([log])
    m["step_speed_prefill"], _ = fid.step_speed([log], kind="prefill")
    return m


LONE = ((512, 0), (512, 1024), (512, 2048), (512, 2560), (1536, 0), (2560, 0), (3072, 0))  # (new, cached) tokens


def one_request_s(server: ServerProcess, ids: list[int]) -> float:
    """Seconds from send to the one output token of a lone request (its prefill)."""
    tr = TraceRequest("lone", 0.0, len(ids), 1)
    rec = asyncio.run(replay_trace([tr], [ids], ReplayConfig(server.base_url)))[0]
    if not rec.ok:
        raise RuntimeError(f"lone request failed: {rec.error}")
    return rec.finish_time - rec.arrival


def lone_prefills(server: ServerProcess, repeats: int = 3) -> list[dict]:
    """Each (new, cached) point alone on the idle server: the cache flushed, the cached part sent first (one
    output token), then the whole prompt; the median of ``repeats`` against the cost model's prefill time of
    ``new`` tokens after ``cached`` ones (sim side of a hit, ``batch_time([(new, cached)])``)."""
    cm = CostModel.for_names(MODEL, GPU)
    rng = np.random.default_rng(7)
    rows = []
    for new, cached in LONE:
        times = []
        for _ in range(repeats):
            flush(server.base_url)
            prefix = rng.integers(10, VOCAB, size=cached).tolist()
            if cached:
                one_request_s(server, prefix)
            times.append(one_request_s(server, prefix + rng.integers(10, VOCAB, size=new).tolist()))
        rows.append(
            {
                "new": new,
                "cached": cached,
                "real_s": statistics.median(times),
                "model_s": cm.batch_time([(new, cached)]),
            }
        )
    base = next(r for r in rows if r["cached"] == 0 and r["new"] == 512)
    for r in rows:  # relative to 512 new tokens without a cached prefix: the machine's speed cancels
        r["real_rel"], r["model_rel"] = r["real_s"] / base["real_s"], r["model_s"] / base["model_s"]
    return rows


def run_sim(trace, block: int, real: dict) -> dict:
    cfg = fid.FidelityConfig("sglang", 1, "round_robin", "sglang", 1.0)
    scale = fid.run_time_scale(real.get("step_speed"), real.get("step_speed_prefill")) or 1.0
    sc = replace(fid.sim_config(cfg, MODEL, GPU, 2.0, 0.1, 0.5, None, scale), prefix_cache_block=block)
    return simulate(trace, sc).metrics


def add_session_arguments(ap: argparse.ArgumentParser, sessions: int, gap: float, stagger: float) -> None:
    """The session slice's flags (:func:`session_trace`), shared with check_prefix_affinity_live.py."""
    ap.add_argument("--sessions", type=int, default=sessions)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--doc-blocks", type=int, default=16)
    ap.add_argument("--turn-blocks", type=int, default=8)
    ap.add_argument("--block", type=int, default=64, help="tokens per prefix block (hash id)")
    ap.add_argument("--output", type=int, default=8, help="output tokens per request")
    ap.add_argument("--gap", type=float, default=gap, help="seconds between a session's turns")
    ap.add_argument("--stagger", type=float, default=stagger, help="seconds between sessions' first turns")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_session_arguments(ap, sessions=6, gap=6.0, stagger=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/results/prefix_cache_live")
    ap.add_argument(
        "--write-profile",
        default=None,
        metavar="JSON",
        help="store the fitted prefix_efficiency (hardware_fit.prefix_efficiency_fit of the lone prefills) in this "
        "hardware profile, e.g. sglang_cascade/data/calibration/hardware/cpu-engine.json (this run's simulations "
        "still use the profile it started with: run again to see the refit's)",
    )
    a = ap.parse_args(argv)
    trace = session_trace(a)
    log_dir = tempfile.mkdtemp(prefix="prefix_cache_live_")
    server = ServerProcess(
        ["--threads", "1", *STEP_LOG_SERVER_ARGS], env=STEP_LOG_ENV, log_path=f"{log_dir}/server.log"
    )
    rows, lone = [], []
    server.start()
    try:
        server.wait_ready()
        lone = lone_prefills(server)
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
    with open(a.out + ".lone.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["new", "cached", "real_s", "model_s", "real_rel", "model_rel"])
        w.writeheader()
        w.writerows(lone)
    fit = prefix_efficiency_fit(lone, hardware_profile(GPU)["attention"]["prefill"]["prefix_efficiency"])
    print(f"prefix_efficiency fit: x{fit['scale']:.2f} the modelled prefix cost -> {fit['prefix_efficiency']:.4f}")
    if a.write_profile:
        prof = json.loads(Path(a.write_profile).read_text())
        prof["attention"]["prefill"]["prefix_efficiency"] = fit["prefix_efficiency"]
        prof["prefix_fit"] = {**fit, "source": "scripts/check_prefix_cache_live.py --write-profile"}
        Path(a.write_profile).write_text(json.dumps(prof, indent=1) + "\n")
        print(f"wrote prefix_efficiency {fit['prefix_efficiency']:.4f} to {a.write_profile}")
    for r in lone:
        print(
            f"lone prefill {r['new']:5d} new after {r['cached']:5d} cached: real {r['real_s']:.3f} s (x{r['real_rel']:.2f}"
            f" of 512 alone), model {r['model_s']:.3f} s (x{r['model_rel']:.2f})"
        )
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
