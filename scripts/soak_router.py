"""Soak / fault benchmark: our router and sglang-router side by side, a worker killed and restarted mid-run.

    python scripts/soak_router.py [--requests 10000] [--concurrency 64] [--workers 3] \
        [--sglang-router-python /path/to/python-with-sglang_router]

For each router (ours: ``python -m sglang_cascade.router``; sglang-router: ``sglang_router.launch_router`` run
by ``--sglang-router-python``, skipped with a note when it cannot start) over fresh fake workers
(``sglang_cascade.testing.fake_worker``) on 127.0.0.1: ``--requests`` streaming /generate requests with
``--concurrency`` clients; worker 0 is SIGKILLed after 30% of the requests were sent and restarted on its
port after 60%. Every stream is checked against the fake worker's deterministic tokens:
- lost: no 200 answer (error status, connection error, timeout);
- cut: a 200 stream without ``[DONE]``, or ended with an error event / fewer tokens than asked;
- duplicated: tokens that are not exactly the expected continuation (a repeated or skipped token).
Also p50/p99 end-to-end latency and the router's RSS after a warm-up and at the end. Writes
docs/results/router_soak.csv and .txt. Every process runs in its own process group and is killed on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_router import wait_ready

from sglang_cascade.testing.fake_worker import expected_tokens
from sglang_cascade.testing.server_fixture import free_port

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "results")


@dataclass
class Tally:
    ok: int = 0
    lost: int = 0
    cut: int = 0
    duplicated: int = 0
    latencies: list[float] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    def bad(self, kind: str, why: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples) < 5:
            self.examples.append(f"{kind}: {why[:160]}")


class Procs:
    """Subprocesses in their own process groups; ``stop_all`` kills the groups."""

    def __init__(self, logdir: str):
        self.logdir, self.procs = logdir, {}

    def start(self, name: str, cmd: list[str]) -> None:
        with open(os.path.join(self.logdir, f"{name}.log"), "w") as log:  # the child keeps its own descriptor
            self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, name: str) -> None:
        p = self.procs.pop(name, None)
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name)

    def rss_mb(self, name: str) -> float:
        with open(f"/proc/{self.procs[name].pid}/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmRSS")) / 1024


def worker_cmd(port: int, time_scale: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sglang_cascade.testing.fake_worker",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--time-scale",
        str(time_scale),
    ]


def router_cmd(kind: str, a, port: int, urls: list[str]) -> list[str]:
    common = [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--worker-urls",
        *urls,
        "--policy",
        "round_robin",
        "--health-check-interval-secs",
        "1",
        "--max-concurrent-requests",
        "-1",
    ]
    if kind == "ours":
        return [sys.executable, "-m", "sglang_cascade.router", *common, "--log-level", "warning"]
    return [
        a.sglang_router_python,
        "-m",
        "sglang_router.launch_router",
        *common,
        "--log-level",
        "warn",
        "--prometheus-port",
        str(free_port()),
    ]


async def one(http, url: str, i: int, rng: random.Random, t: Tally) -> None:
    prompt = [rng.randrange(1, 30000) for _ in range(rng.randint(4, 64))]
    n = rng.randint(8, 48)
    t0 = time.perf_counter()
    done, last = False, None
    try:
        async with http.post(
            url + "/generate",
            json={"input_ids": prompt, "stream": True, "rid": f"soak-{i}", "sampling_params": {"max_new_tokens": n}},
        ) as r:
            if r.status != 200:
                return t.bad("lost", f"HTTP {r.status}: {(await r.text())[:120]}")
            async for line in r.content:
                line = line.strip()
                if line == b"data: [DONE]":
                    done = True
                elif line.startswith(b"data: "):
                    last = json.loads(line[6:])
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        return t.bad("cut" if last else "lost", f"{type(e).__name__}: {e}")
    if not done or last is None or "error" in last:
        return t.bad("cut", f"done={done} last={str(last)[:100]}")
    ids = last.get("output_ids") or []
    if ids != expected_tokens(prompt, n)[: len(ids)] or len(ids) > n:
        return t.bad("duplicated", f"req {i}: tokens differ from the expected continuation")
    if len(ids) < n:
        return t.bad("cut", f"req {i}: {len(ids)}/{n} tokens")
    t.ok += 1
    t.latencies.append(time.perf_counter() - t0)


async def drive(a, url: str, procs: Procs, ports: list[int], t: Tally) -> None:
    rng = random.Random(a.seed)
    queue = iter(range(a.requests))
    sent = 0

    async def client(http) -> None:
        nonlocal sent
        for i in queue:
            sent += 1
            if sent == int(0.3 * a.requests):
                procs.kill("w0")
            elif sent == int(0.6 * a.requests):
                procs.start("w0", worker_cmd(ports[0], a.time_scale))
            await one(http, url, i, rng, t)

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as http:
        await asyncio.gather(*(client(http) for _ in range(a.concurrency)))


async def run_one(kind: str, a, logdir: str) -> dict:
    procs = Procs(logdir)
    ports = [free_port() for _ in range(a.workers)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for i, p in enumerate(ports):
            procs.start(f"w{i}", worker_cmd(p, a.time_scale))
        for u in urls:
            await wait_ready(u)
        rport = free_port()
        procs.start("router", router_cmd(kind, a, rport, urls))
        rurl = f"http://127.0.0.1:{rport}"
        await wait_ready(rurl, path="/health")
        warm = Tally()
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(one(http, rurl, -1 - i, random.Random(i), warm) for i in range(200)))
        rss0 = procs.rss_mb("router")
        t = Tally()
        t0 = time.time()
        await drive(a, rurl, procs, ports, t)
        wall = time.time() - t0
        await asyncio.sleep(1.0)
        rss1 = procs.rss_mb("router")
    finally:
        procs.stop_all()
    lat = np.array(t.latencies or [0.0]) * 1e3
    return {
        "router": kind,
        "requests": a.requests,
        "concurrency": a.concurrency,
        "ok": t.ok,
        "lost": t.lost,
        "cut": t.cut,
        "duplicated": t.duplicated,
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "wall_s": round(wall, 1),
        "rss_before_mb": round(rss0, 1),
        "rss_after_mb": round(rss1, 1),
        "rss_growth_pct": round(100 * (rss1 - rss0) / rss0, 1),
        "examples": " | ".join(t.examples),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--time-scale", type=float, default=0.05, help="fake workers' iteration-time scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--sglang-router-python",
        default=None,
        help="a python with sglang_router installed (pip install sglang-router); omitted: ours only",
    )
    ap.add_argument("--out", default=os.path.join(RESULTS, "router_soak"))
    ap.add_argument("--logdir", default="/tmp/soak_router_logs")
    a = ap.parse_args()
    os.makedirs(a.logdir, exist_ok=True)
    rows, notes = [], []
    for kind in ["ours"] + (["sglang-router"] if a.sglang_router_python else []):
        try:
            rows.append(asyncio.run(run_one(kind, a, a.logdir)))
        except Exception as e:  # e.g. sglang-router missing: report, keep ours
            notes.append(f"{kind}: could not run ({type(e).__name__}: {e}); logs in {a.logdir}")
    if not a.sglang_router_python:
        notes.append("sglang-router: not run (no --sglang-router-python)")
    write(rows, notes, a)
    return 0


def write(rows: list[dict], notes: list[str], a) -> None:
    keys = [k for k in (rows[0] if rows else {}) if k != "examples"]
    lines = [
        f"router soak: {a.requests} streaming /generate, concurrency {a.concurrency}, {a.workers} fake workers "
        f"(time_scale {a.time_scale}); worker 0 SIGKILLed at 30% of requests sent, restarted at 60%",
        "",
    ]
    lines.append("  ".join(f"{k:>14}" for k in keys))
    lines += ["  ".join(f"{str(r[k]):>14}" for k in keys) for r in rows]
    lines += [""] + [f"{r['router']} examples: {r['examples']}" for r in rows if r["examples"]] + notes
    text = "\n".join(lines) + "\n"
    print(text)
    with open(a.out + ".txt", "w") as f:
        f.write(text)
    with open(a.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys + ["examples"])
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    raise SystemExit(main())
