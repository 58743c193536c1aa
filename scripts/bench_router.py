"""Router overhead: sglang-cascade's router vs sglang-router 0.3.2 (Rust) on the same fake workers, one run.

    python scripts/bench_router.py [--workers 2] [--latency-requests 200] [--streams 256] [--duration 6]

Starts fake workers (``sglang_cascade.testing.fake_worker``), our router (--policy round_robin and
--policy cascade) and ``sglang_router.launch_router`` (--policy round_robin) as subprocesses on loopback
ports, then measures from this process (the client):
- added latency: sequential requests through each router vs straight to the workers: a non-streaming
  1-token /generate (end to end: one hop's overhead) and a streaming one (time to the first chunk);
  added p50 = p50(router) - p50(direct), same for p99;
- max requests/s with ``--streams`` concurrent streaming clients for ``--duration`` seconds.
Writes a CSV to docs/results/router_bench.csv and prints a table. Everything shares this machine's CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import socket
import subprocess
import sys
import time

import aiohttp
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(cmd: list[str], log: str) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)


async def wait_ready(url: str, timeout: float = 90.0, path: str = "/health") -> None:
    t0 = time.time()
    async with aiohttp.ClientSession() as s:
        while time.time() - t0 < timeout:
            try:
                async with s.get(url + path, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            except Exception:
                pass
            await asyncio.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout}s")


async def one(
    http: aiohttp.ClientSession, url: str, tokens: int, prompt: list[int], stream: bool = True
) -> tuple[float, float]:
    """(time to the first body bytes, end-to-end) of one /generate."""
    t0 = time.perf_counter()
    first = None
    async with http.post(
        url + "/generate", json={"input_ids": prompt, "stream": stream, "sampling_params": {"max_new_tokens": tokens}}
    ) as r:
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}")
        async for _ in r.content.iter_any():
            if first is None:
                first = time.perf_counter() - t0
    return first or 0.0, time.perf_counter() - t0


def pick(url) -> str:
    return url if isinstance(url, str) else url[int(time.perf_counter_ns()) % len(url)]


async def latency(url, n: int) -> dict[str, np.ndarray]:
    """Sequential requests: non-streaming 1-token e2e (one hop's overhead) and streaming time-to-first-chunk."""
    async with aiohttp.ClientSession() as http:
        for i in range(10):  # warm connections
            await one(http, pick(url), 1, [1, 2, 3, i], stream=False)
        e2e = [(await one(http, pick(url), 1, [7, 8, i % 97, i], stream=False))[1] for i in range(n)]
        ttft = [(await one(http, pick(url), 4, [9, 8, i % 89, i], stream=True))[0] for i in range(n)]
        return {"e2e": np.array(e2e), "ttft": np.array(ttft)}


async def throughput(url: str, streams: int, duration: float, tokens: int) -> tuple[float, int]:
    done = errors = 0
    stop = time.perf_counter() + duration
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:

        async def client(k: int):
            nonlocal done, errors
            i = 0
            while time.perf_counter() < stop:
                try:
                    await one(http, pick(url), tokens, [k, i, 5, 6])
                    done += 1
                except Exception:
                    errors += 1
                i += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(streams)))
        return done / (time.perf_counter() - t0), errors


async def main_async(a) -> list[dict]:
    procs = []
    py = sys.executable
    try:
        wurls = []
        for _ in range(a.workers):
            p = free_port()
            procs.append(
                spawn(
                    [
                        py,
                        "-m",
                        "sglang_cascade.testing.fake_worker",
                        "--port",
                        str(p),
                        "--time-scale",
                        str(a.time_scale),
                    ],
                    f"/tmp/bench_router_worker_{p}.log",
                )
            )
            wurls.append(f"http://127.0.0.1:{p}")
        targets = {"direct": wurls}  # the client alternates over the workers itself
        for name, policy in (("ours_round_robin", "round_robin"), ("ours_cascade", "cascade")):
            if name == "ours_cascade" and a.skip_cascade:
                continue
            p = free_port()
            procs.append(
                spawn(
                    [
                        py,
                        "-m",
                        "sglang_cascade.router",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(p),
                        "--policy",
                        policy,
                        "--worker-urls",
                        *wurls,
                        "--log-level",
                        "warn",
                    ],
                    f"/tmp/bench_router_{name}.log",
                )
            )
            targets[name] = f"http://127.0.0.1:{p}"
        p = free_port()
        procs.append(
            spawn(
                [
                    py,
                    "-m",
                    "sglang_router.launch_router",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(p),
                    "--policy",
                    "round_robin",
                    "--worker-urls",
                    *wurls,
                    "--prometheus-host",
                    "127.0.0.1",
                    "--prometheus-port",
                    str(free_port()),
                    "--log-level",
                    "warn",
                ],
                "/tmp/bench_router_rust.log",
            )
        )
        targets["rust_round_robin"] = f"http://127.0.0.1:{p}"
        for u in wurls + [t for t in targets.values() if isinstance(t, str)]:
            await wait_ready(u)
        await asyncio.sleep(2.0)  # the Rust router registers workers asynchronously
        rows = []
        lat = {name: await latency(url, a.latency_requests) for name, url in targets.items()}
        base = lat["direct"]
        for name, url in targets.items():
            rps, errs = await throughput(url, a.streams, a.duration, a.tokens)
            row = {"target": name}
            for kind in ("e2e", "ttft"):
                x, b = lat[name][kind], base[kind]
                for q in (50, 99):
                    row[f"{kind}_p{q}_ms"] = 1e3 * np.percentile(x, q)
                    row[f"added_{kind}_p{q}_ms"] = 1e3 * (np.percentile(x, q) - np.percentile(b, q))
            row.update(req_per_s_at_streams=rps, errors=errs)
            rows.append(row)
            print(
                f"{name:>18}: 1-token e2e p50 {row['e2e_p50_ms']:.2f} p99 {row['e2e_p99_ms']:.2f} ms "
                f"(added {row['added_e2e_p50_ms']:+.2f} / {row['added_e2e_p99_ms']:+.2f});  stream first chunk "
                f"p50 {row['ttft_p50_ms']:.2f} p99 {row['ttft_p99_ms']:.2f} ms (added {row['added_ttft_p50_ms']:+.2f}"
                f" / {row['added_ttft_p99_ms']:+.2f});  {rps:.0f} req/s @ {a.streams} streams x {a.tokens} tokens "
                f"({errs} errors)",
                flush=True,
            )
        return rows
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--time-scale", type=float, default=0.0, help="fake-worker time scale (0: CPU-bound)")
    ap.add_argument("--tokens", type=int, default=8, help="output tokens per request")
    ap.add_argument("--latency-requests", type=int, default=200)
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--skip-cascade", action="store_true")
    ap.add_argument("--out", default="docs/results/router_bench.csv")
    a = ap.parse_args()
    rows = asyncio.run(main_async(a))
    rust = next(r for r in rows if r["target"] == "rust_round_robin")["req_per_s_at_streams"]
    for r in rows:
        r["throughput_vs_rust"] = r["req_per_s_at_streams"] / rust if rust else float("nan")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()})
    print(
        f"wrote {a.out}; machine: {os.cpu_count()} CPUs shared by client, routers and workers; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
