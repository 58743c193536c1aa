"""Where does the simulator's CPU-engine error come from? Controlled request patterns on one real pinned
CPU-engine server against the simulator with the same profile (issue 15, docs/fidelity.md).

    PYTHONPATH=. python scripts/diag_fidelity_gap.py --profile docs/results/fidelity_full3.profile.json \
        [--out docs/results/fidelity_gap.csv]

Patterns: requests sent together (the calibration's own lock-step decode batches), requests arriving one
by one (each arrival's prefill runs between the others' decode steps, as in a trace replay), and long
prompts alone (1,536 / 3,072 tokens, and the Mooncake slice's first 16 requests, one every 2 s). Prints and
writes mean TPOT and TTFT, real and simulated, per pattern.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import eval_fidelity as ev  # noqa: E402
from bench_router import cpu_snapshot  # noqa: E402
from rows_csv import write_rows  # noqa: E402

from sglang_cascade.core.traces import TraceRequest  # noqa: E402
from sglang_cascade.replay import fidelity as fid  # noqa: E402
from sglang_cascade.replay.client import ReplayConfig, replay_trace  # noqa: E402
from sglang_cascade.replay.lengths import prompt_ids  # noqa: E402
from sglang_cascade.replay.step_log import STEP_LOG_ENV, STEP_LOG_SERVER_ARGS  # noqa: E402
from sglang_cascade.sim.metrics import request_arrays  # noqa: E402
from sglang_cascade.testing.server_fixture import ServerProcess, pin_process_group  # noqa: E402


def patterns() -> dict[str, list[TraceRequest]]:
    return {
        "together_8x256": [TraceRequest(f"r{i}", 0.0, 256, 48) for i in range(8)],
        "together_16x64": [TraceRequest(f"r{i}", 0.0, 64, 96) for i in range(16)],
        "one_by_one_0.25s": [TraceRequest(f"r{i}", 0.25 * i, 200, 60) for i in range(24)],
        "one_by_one_0.1s": [TraceRequest(f"r{i}", 0.1 * i, 100, 40) for i in range(40)],
        "one_by_one_1s": [TraceRequest(f"r{i}", 1.0 * i, 200, 60) for i in range(8)],
        # long prompts alone (the Mooncake slice's lengths): one every 2 s, short outputs
        "lone_1536": [TraceRequest(f"r{i}", 2.0 * i, 1536, 8) for i in range(6)],
        "lone_3072": [TraceRequest(f"r{i}", 2.0 * i, 3072, 8) for i in range(6)],
        "lone_4080": [TraceRequest(f"r{i}", 2.0 * i, 4080, 8) for i in range(6)],
        # the same prompts while one short request decodes throughout (a long prefill between decode steps)
        "busy_4080": [TraceRequest("keeper", 0.0, 16, 1400)]
        + [TraceRequest(f"r{i}", 0.5 + 2.0 * i, 4080, 8) for i in range(6)],
        "busy4_4080": [TraceRequest(f"keeper{k}", 0.0, 16, 1400) for k in range(4)]
        + [TraceRequest(f"r{i}", 0.5 + 2.0 * i, 4080, 8) for i in range(6)],
        "lone_mooncake": [
            replace(r, arrival=2.0 * i) for i, r in enumerate(ev.base_slice(_slice_args(), "mooncake")[:16])
        ],
    }


def _slice_args():
    return ev.parse_args(["--trace", "mooncake"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=None, help="cpu-engine profile JSON (default: the shipped one)")
    ap.add_argument("--core", type=int, default=0)
    ap.add_argument("--out", default=None, help="CSV of the rows")
    ap.add_argument("--pattern", action="append", default=None, help="only this pattern (repeatable)")
    ap.add_argument("--slice", default=None, help="instead of the patterns: eval_fidelity's slice of this trace")
    ap.add_argument("--load", type=float, default=0.7, help="--slice: offered load (as eval_fidelity --load)")
    ap.add_argument("--per-request", default=None, help="--slice: CSV of every request, real and simulated")
    ap.add_argument("--config", default="sglang", help="--slice: eval_fidelity's configuration (sglang, rr2, ...)")
    ap.add_argument("--server-arg", action="append", default=[], help="--slice: extra server argument (repeatable)")
    ap.add_argument(
        "--summarize",
        nargs="+",
        default=None,
        metavar="CSV",
        help="no servers: mean and p99 TTFT / TPOT / E2E, real and simulated, of --per-request CSVs (one line each)",
    )
    ap.add_argument(
        "--ab-plugin",
        type=int,
        default=0,
        metavar="N",
        help="patterns on a stock and a plugin server (one core), N rounds in ABBA order: the plugin's own cost",
    )
    a = ap.parse_args()
    if a.summarize:
        return summarize(a.summarize)
    if a.slice:
        return slice_per_request(a)
    if a.ab_plugin:
        return ab_plugin(a)
    if a.profile:
        ev.use_profile(a.profile)
    cfg = fid.FidelityConfig("sglang", 1, "round_robin", "sglang", 1.0)
    rows = []
    server = ServerProcess(["--threads", "1"]).start()
    try:
        server.wait_ready()
        pin_process_group(server.pid, {a.core})
        for name, tr in patterns().items():
            if a.pattern and name not in a.pattern:
                continue
            recs = asyncio.run(replay_trace(tr, prompt_ids(tr, ev.VOCAB, 1), ReplayConfig(server.base_url)))
            ok = [r for r in recs if r.ok]
            if len(ok) != len(tr):
                raise SystemExit(f"{name}: {len(tr) - len(ok)} requests failed")
            sim = fid.simulate_config(tr, cfg, ev.MODEL, ev.GPU, per_request=True)
            tpot, sim_tpot = _mean_tpot(ok), _mean_tpot(sim)
            ttft, sim_ttft = _mean_ttft(ok), _mean_ttft(sim)
            row = {"pattern": name, "real_tpot_s": tpot, "sim_tpot_s": sim_tpot, "real_ttft_s": ttft}
            row["sim_ttft_s"] = sim_ttft
            rows.append(row)
            print(
                f"{name:18s} TPOT real {tpot * 1e3:6.2f} ms sim {sim_tpot * 1e3:6.2f} ms "
                f"({sim_tpot / tpot - 1:+.0%}) | TTFT real {ttft * 1e3:7.1f} ms sim "
                f"{sim_ttft * 1e3:7.1f} ms ({sim_ttft / ttft - 1:+.0%})",
                flush=True,
            )
    finally:
        server.stop()
    if a.out:
        write_rows(a.out, rows)
    return 0


def ab_plugin(a) -> int:
    """Each pattern on a stock and a ``--scheduler-plugin cascade`` server pinned to the same core, ``N`` rounds
    in ABBA order (stock, plugin, plugin, stock, ...) so a drifting machine weighs both alike: the plugin's
    cost on the same requests, which the simulator (plugin = stock scheduling there) does not have."""
    if a.profile:
        ev.use_profile(a.profile)
    servers = {
        "stock": ServerProcess(["--threads", "1"]),
        "plugin": ServerProcess(["--threads", "1", *ev.PLUGIN_ARGS]),
    }
    rows = []
    try:
        for srv in servers.values():
            srv.start()
        for srv in servers.values():
            srv.wait_ready()
            pin_process_group(srv.pid, {a.core})
        for name, tr in patterns().items():
            if a.pattern and name not in a.pattern:
                continue
            got: dict[str, list[tuple[float, float]]] = {"stock": [], "plugin": []}
            for i in range(a.ab_plugin):
                for k in ("stock", "plugin") if i % 2 == 0 else ("plugin", "stock"):
                    recs = asyncio.run(replay_trace(tr, prompt_ids(tr, ev.VOCAB, 1), ReplayConfig(servers[k].base_url)))
                    if not all(r.ok for r in recs):
                        raise SystemExit(f"{name} on {k}: {sum(not r.ok for r in recs)} requests failed")
                    got[k].append((_mean_tpot(recs), _mean_ttft(recs)))
            row = {"pattern": name, "rounds": a.ab_plugin}
            for k, v in got.items():
                row[f"{k}_tpot_s"] = statistics.fmean(x for x, _ in v)
                row[f"{k}_ttft_s"] = statistics.fmean(y for _, y in v)
            rows.append(row)
            print(
                f"{name:18s} TPOT stock {row['stock_tpot_s'] * 1e3:6.2f} ms plugin {row['plugin_tpot_s'] * 1e3:6.2f} ms "
                f"({row['plugin_tpot_s'] / row['stock_tpot_s'] - 1:+.1%}) | TTFT stock {row['stock_ttft_s'] * 1e3:7.1f} "
                f"ms plugin {row['plugin_ttft_s'] * 1e3:7.1f} ms ({row['plugin_ttft_s'] / row['stock_ttft_s'] - 1:+.1%})",
                flush=True,
            )
    finally:
        for srv in servers.values():
            srv.stop()
    if a.out:
        write_rows(a.out, rows)
    return 0


def summarize(paths: list[str]) -> int:
    """One line per ``--per-request`` CSV: mean / p99 of TTFT, TPOT and E2E, real and simulated (repeated runs of
    the same slice side by side: how far two real runs of one configuration lie apart against two
    configurations)."""
    for path in paths:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        cells = []
        for side in ("real", "sim"):
            for m in ("ttft", "tpot", "e2e"):
                x = np.array([float(r[f"{side}_{m}"]) for r in rows])
                cells.append(f"{side} {m} {x.mean():.4f} / {np.percentile(x, 99):.3f}")
        print(f"{Path(path).name}: {len(rows)} requests | " + " | ".join(cells))
    return 0


def _mean_tpot(reqs) -> float:
    """Mean TPOT of every request (a "keeper" included: its steps are the decode the pattern interrupts)."""
    return float(request_arrays(reqs)["tpot"].mean())


def _mean_ttft(reqs) -> float:
    """Mean TTFT of the pattern's own requests (not the keepers that decode throughout)."""
    return float(request_arrays([r for r in reqs if not r.rid.startswith("keeper")])["ttft"].mean())


def slice_per_request(a) -> int:
    """eval_fidelity's slice of one trace (its arrivals at ``--load`` per server) on the real deployment of
    ``--config`` (servers with per-step logging, pinned one core each; a router for two) and in the simulator;
    one row per request (real, simulated, and simulated at the run's own machine speed from its step logs:
    ``simn_*``; TTFT, TPOT, E2E), the router's CPU time, the logs kept."""
    if a.profile:
        ev.use_profile(a.profile)
    sargs = ev.parse_args(["--trace", a.slice, "--load", str(a.load)])
    cfg = next(c for c in ev.configs(sargs) if c.name == a.config)
    cfg = replace(cfg, server_args=[*cfg.server_args, *a.server_arg])  # the simulator models e.g. mixed chunks
    tr = ev.make_trace(sargs, a.slice, cfg.rate_scale)
    extra = cfg.server_args
    servers: list[ServerProcess] = []
    router, router_cpu = None, None
    try:
        for _ in range(cfg.instances):
            servers.append(ServerProcess(["--threads", "1", *STEP_LOG_SERVER_ARGS, *extra], env=STEP_LOG_ENV).start())
        for i, srv in enumerate(servers):
            srv.wait_ready()
            pin_process_group(srv.pid, {(a.core + i) % (os.cpu_count() or 1)})
        url = servers[0].base_url
        if cfg.instances > 1:
            router, url = ev.start_router(cfg.router, [x.base_url for x in servers], "/tmp/diag_router.log")
        recs = asyncio.run(replay_trace(tr, prompt_ids(tr, ev.VOCAB, sargs.seed), ReplayConfig(url)))
        if router is not None:
            router_cpu = sum(cpu_snapshot(router.pid))  # the router process and any child of it
    finally:
        if router is not None:
            ev.stop_group(router)
        for srv in servers:
            srv.stop()
    print("server logs (step lines):", " ".join(x.log_path for x in servers))
    bad = [r for r in recs if not r.ok]
    if bad:
        raise SystemExit(f"{len(bad)} requests failed (first: {bad[0].error})")
    span = max(r.finish_time for r in recs) - min(r.arrival for r in recs)
    if router_cpu is not None:
        print(f"router CPU: {router_cpu:.2f} s over {span:.1f} s ({router_cpu / span:.1%} of one core)")
    sim = {r.rid: r for r in fid.simulate_config(tr, cfg, ev.MODEL, ev.GPU, per_request=True)}
    # the same simulation with this run's own machine speed (eval_fidelity's drift normalization)
    logs = [Path(x.log_path).read_text(errors="replace") for x in servers]
    mixed = fid.MIXED_CHUNK_ARG in cfg.server_args
    k, _ = fid.step_speed(logs, ev.GPU, ev.MODEL)
    kp, _ = fid.step_speed(logs, ev.GPU, ev.MODEL, kind="prefill", mixed_chunk=mixed)
    scale = fid.run_time_scale(k, kp) or 1.0  # (no decode step lines: the simulation as it is)
    print(f"step speed: decode x{k:.3f}, prefill x{kp:.3f}")
    simn = {r.rid: r for r in fid.simulate_config(tr, cfg, ev.MODEL, ev.GPU, per_request=True, time_scale=scale)}
    sides = (
        ("real", request_arrays(recs)),
        ("sim", request_arrays([sim[r.rid] for r in recs])),
        ("simn", request_arrays([simn[r.rid] for r in recs])),
    )
    rows = [
        {"rid": r.rid, "arrival": r.scheduled, "prompt": r.prompt_len, "output": r.output_len}
        | {f"{tag}_{k}": float(a[k][i]) for tag, a in sides for k in ("ttft", "tpot", "e2e")}
        for i, r in enumerate(recs)
    ]
    for m in ("ttft", "tpot", "e2e"):
        real = statistics.fmean(x[f"real_{m}"] for x in rows)
        simv = statistics.fmean(x[f"sim_{m}"] for x in rows)
        simn_v = statistics.fmean(x[f"simn_{m}"] for x in rows)
        print(
            f"{m}: mean real {real:.4f} s, sim {simv:.4f} s ({simv / real - 1:+.0%}), "
            f"at the run's speed {simn_v:.4f} s ({simn_v / real - 1:+.0%})"
        )
    worst = sorted(rows, key=lambda x: x["real_tpot"] - x["sim_tpot"], reverse=True)[:8]
    for x in worst:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in x.items()})
    if a.per_request:
        write_rows(a.per_request, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
