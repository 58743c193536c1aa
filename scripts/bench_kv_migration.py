"""Migration stall of KV transfer vs recompute on the CPU engine (two real SGLang servers with the plugin).

For each context length L: a greedy request with an L-token prompt goes through the router with a cascade
bound a few tokens past L, so it moves once mid-stream. The stall is what the client sees: the time from
the last token streamed by the source to the first token from the destination. Bytes moved = the
destination endpoint's ``bytes_in`` delta. Writes a CSV (default docs/results/kv_migration_cpu.csv) and
prints the crossover: the shortest context at which KV transfer stalls less than recompute.

Modes: ``recompute``, ``kv_transfer`` and ``auto`` (the cascade policy's migration planner picks per move,
with the router's cost model set to this engine's profile, ``tiny-llama`` on ``cpu-engine``; the auto
routers of all lengths share one MigrationCosts, so later moves plan with the stalls measured earlier,
as one long-running router would). The auto rows say how many moves went each way.

    PYTHONPATH=. python scripts/bench_kv_migration.py --lengths 16,64,256,512,2048 --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

import aiohttp
from rows_csv import write_rows

from sglang_cascade.policies.migration_costs import MigrationCosts
from sglang_cascade.router.args import RouterArgs
from sglang_cascade.router.kv_transport import ZmqRelayTransport
from sglang_cascade.router.local import start_router
from sglang_cascade.testing.server_fixture import start_servers


async def _one(http, url: str, prompt: list[int], new: int) -> tuple[float, int, int, str]:
    """(stall seconds, tokens streamed before the move, cached tokens on the destination, the move's mode)."""
    body = {
        "input_ids": prompt,
        "stream": True,
        "sampling_params": {"max_new_tokens": new, "temperature": 0.0, "ignore_eos": True},
    }
    stamps: list[tuple[float, int]] = []
    last = None
    async with http.post(url + "/generate", json=body) as r:
        async for line in r.content:
            if line.startswith(b"data: {"):
                import json

                last = json.loads(line[6:])
                stamps.append((time.perf_counter(), len(last["output_ids"])))
    move = last["meta_info"]["cascade"]["moves"][0]
    at = move["at"]
    before = max(t for t, n in stamps if n <= at)
    after = min(t for t, n in stamps if n > at)
    return after - before, at, int(last["meta_info"].get("cached_tokens", 0)), move["mode"]


async def _router(urls: list[str], L: int, mode: str, costs: MigrationCosts):
    args = RouterArgs(
        host="127.0.0.1",
        port=0,
        worker_urls=urls,
        policy=f"cascade:bounds={L + 4},counts=1/1,refine=0,balance=0,spill=0",  # a fixed bound: one move each
        migration_mode=mode,
        disable_health_check=True,
        load_poll_interval_secs=0,
        cascade_model="tiny-llama",
        cascade_gpu="cpu-engine",
    )
    router, served = await start_router(args)
    if mode == "auto":  # one measurement store across the per-length routers (a long-running router's view)
        router.placement.policy.planner.measured = costs
        router.migrator.costs = costs
    return router, served


async def run(urls: list[str], lengths: list[int], reps: int, new: int, modes: list[str]) -> list[dict]:
    rows = []
    tr = ZmqRelayTransport()
    rng = random.Random(0)
    costs = MigrationCosts()
    async with aiohttp.ClientSession() as http:
        for mode in modes:
            for L in lengths:
                router, served = await _router(urls, L, mode, costs)
                try:
                    dst = await router.migrator.endpoint(http, router.pool.workers[1]) if mode != "recompute" else None
                    stalls, cached, moved, went = [], [], [], []
                    for _ in range(reps):
                        prompt = [rng.randrange(5, 500) for _ in range(L)]
                        b0 = (await tr.stats(dst))["bytes_in"] if dst else 0
                        s, at, c, how = await _one(http, served.url, prompt, new)
                        b1 = (await tr.stats(dst))["bytes_in"] if dst else 0
                        stalls.append(s)
                        cached.append(c)
                        moved.append(b1 - b0)
                        went.append(how)
                    rows.append(
                        {
                            "mode": mode,
                            "context_tokens": L,
                            "reps": reps,
                            "stall_ms_median": round(1e3 * statistics.median(stalls), 2),
                            "stall_ms_max": round(1e3 * max(stalls), 2),
                            "cached_tokens_median": statistics.median(cached),
                            "kv_bytes_moved_median": statistics.median(moved),
                            "moves_kv_transfer": went.count("kv_transfer"),
                            "moves_recompute": went.count("recompute"),
                        }
                    )
                    print(rows[-1], flush=True)
                finally:
                    await served.stop()
    return rows


def crossover(rows: list[dict]) -> int | None:
    """The shortest context from which on kv_transfer's median stall is below recompute's at every measured
    length (None: not at the longest); a single noisy short length where KV happens to win is not one."""
    med = {(r["mode"], r["context_tokens"]): r["stall_ms_median"] for r in rows}
    lengths = sorted({r["context_tokens"] for r in rows})
    both = [L for L in lengths if ("kv_transfer", L) in med and ("recompute", L) in med]
    best = None
    for L in reversed(both):
        if med[("kv_transfer", L)] >= med[("recompute", L)]:
            break
        best = L
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="64,512,2048,4096")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--urls", default="", help="comma-separated running plugin servers (else two are started)")
    ap.add_argument("--modes", default="recompute,kv_transfer,auto")
    ap.add_argument("--out", default="docs/results/kv_migration_cpu.csv")
    a = ap.parse_args()
    lengths = [int(x) for x in a.lengths.split(",")]
    servers = [] if a.urls else start_servers(2, ["--scheduler-plugin", "cascade"])
    try:
        urls = a.urls.split(",") if a.urls else [s.base_url for s in servers]
        rows = asyncio.run(run(urls, lengths, a.reps, a.new_tokens, a.modes.split(",")))
    finally:
        for s in servers:
            s.stop()
    write_rows(a.out, rows)
    print("wrote", a.out)
    print("crossover (shortest context from which on kv_transfer stalls less than recompute):", crossover(rows))


if __name__ == "__main__":
    main()
