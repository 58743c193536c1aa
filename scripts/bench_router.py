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

    python scripts/bench_router.py --plan-check --workers 16 [--modes off,thread,process] [--repeats 1]
        [--check-interval-s 5] [--replay-requests 2000] [--check-cpu-budget 1] [--duration 6] [--streams 256]

Plan-check mode (issue 14): 16 fake workers, one router at a time with policy ``cascade:check_staging=0`` (check off) and
``cascade:plan_check=1,check_interval_s=...`` with ``SGLANG_CASCADE_PLAN_CHECK_MODE=thread`` / ``process``;
ShareGPT prompt lengths (capped at --plan-prompt-cap) so the replays are realistic. After a warm-up (fills
the replay recorder; the first check and the checker process's start-up happen there), the window runs
the sequential latency requests and the --streams clients; reported: router-added latency p50/p99 (vs
straight to the workers), req/s, the checks that finished in the window and the checker's CPU (in-band:
per-job process_time in the child / thread_time on the thread, from /get_loads ``plan_checker``; psutil: the
router process and its child processes; /get_loads ``plan_budget``: the CPU budget governor's spending and
the checks it deferred). Writes docs/results/router_bench_plan_check.csv.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import importlib.util
import os
import subprocess
import sys
import time

import aiohttp
import numpy as np

from sglang_cascade.testing.server_fixture import free_port, stop_process_group


def spawn(cmd: list[str], log: str, env: dict | None = None) -> subprocess.Popen:
    """A process in its own process group (``stop_all`` stops it with its children, e.g. a plan-check child)."""
    env = {**os.environ, **env} if env else None
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop_all(procs: list[subprocess.Popen]) -> None:
    """Stop every process with its group (SIGTERM, then SIGKILL after 10 s)."""
    for p in procs:
        stop_process_group(p, 10)


def spawn_fake_workers(n: int, time_scale: float, procs: list) -> list[str]:
    """Start ``n`` fake SGLang workers (appended to ``procs`` as they start, so a failure still stops them);
    returns their URLs."""
    urls = []
    for _ in range(n):
        p = free_port()
        cmd = [
            sys.executable,
            "-m",
            "sglang_cascade.testing.fake_worker",
            "--port",
            str(p),
            "--time-scale",
            str(time_scale),
        ]
        procs.append(spawn(cmd, f"/tmp/bench_router_worker_{p}.log"))
        urls.append(f"http://127.0.0.1:{p}")
    return urls


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


async def latency(url, n: int, prompt=None) -> dict[str, np.ndarray]:
    """Sequential requests: non-streaming 1-token e2e (one hop's overhead) and streaming time-to-first-chunk.
    ``prompt(k, i)``: the input_ids of request i (default: 4 tokens)."""
    prompt = prompt or (lambda k, i: [7 + k, 8, i % 97, i])
    async with aiohttp.ClientSession() as http:
        for i in range(10):  # warm connections
            await one(http, pick(url), 1, prompt(0, i), stream=False)
        e2e = [(await one(http, pick(url), 1, prompt(0, i), stream=False))[1] for i in range(n)]
        ttft = [(await one(http, pick(url), 4, prompt(2, i), stream=True))[0] for i in range(n)]
        return {"e2e": np.array(e2e), "ttft": np.array(ttft)}


async def throughput(url: str, streams: int, duration: float, tokens: int, prompt=None) -> tuple[float, int]:
    prompt = prompt or (lambda k, i: [k, i, 5, 6])
    done = errors = 0
    stop = time.perf_counter() + duration
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:

        async def client(k: int):
            nonlocal done, errors
            i = 0
            while time.perf_counter() < stop:
                try:
                    await one(http, pick(url), tokens, prompt(k, i))
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
        wurls = spawn_fake_workers(a.workers, a.time_scale, procs)
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
        if importlib.util.find_spec("sglang_router") is None:  # the Rust router is an optional comparison
            print("sglang_router is not installed (pip install sglang-router): no Rust router in this run")
        else:
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
        stop_all(procs)


# --- plan-check mode (issue 14): router-added latency and checker CPU with the plan check off / thread / process


def _cpu(p) -> float:
    t = p.cpu_times()
    return t.user + t.system


def cpu_snapshot(pid: int) -> tuple[float, float]:
    """(CPU s of the router process itself, CPU s of its live descendants: the checker process)."""
    import psutil

    p = psutil.Process(pid)
    kids = 0.0
    for c in p.children(recursive=True):
        try:
            kids += _cpu(c)
        except psutil.NoSuchProcess:
            pass
    return _cpu(p), kids


async def get_json(url: str, path: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(url + path) as r:
        return await r.json()


def sharegpt_prompts(cap: int, n: int = 4000, seed: int = 0) -> list[list[int]]:
    from sglang_cascade.core.traces import load_trace

    reqs = load_trace("sharegpt", num_requests=n, seed=seed)
    rng = np.random.default_rng(seed)
    return [list(rng.integers(5, 30000, size=max(1, min(cap, r.prompt_len))).tolist()) for r in reqs]


async def plan_check_async(a) -> list[dict]:
    """16 fake workers; one router at a time, policy cascade with the plan check off, on a thread, in a process;
    the same traffic through each (warm-up, then sequential latency requests and ``--streams`` clients)."""
    py = sys.executable
    pool = sharegpt_prompts(a.plan_prompt_cap)

    def prompt(k: int, i: int) -> list[int]:
        return pool[(k * 7919 + i) % len(pool)]

    procs, rows = [], []
    try:
        wurls = spawn_fake_workers(a.workers, a.time_scale, procs)
        for u in wurls:
            await wait_ready(u)
        base = await latency(wurls, a.latency_requests, prompt)
        check = (
            f"cascade:plan_check=1,check_interval_s={a.check_interval_s:g},min_replay={a.min_replay},"
            f"replay_requests={a.replay_requests},check_cpu_budget={a.check_cpu_budget:g}"
        )
        modes = [m for m in a.modes.split(",") if m]
        for rep in range(a.repeats):
            for mode in modes:
                policy = "cascade:check_staging=0" if mode == "off" else check  # ShareGPT: no pool check either
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                rp = spawn(
                    [py, "-m", "sglang_cascade.router", "--host", "127.0.0.1", "--port", str(port), "--policy", policy]
                    + ["--worker-urls", *wurls, "--log-level", "warn"],
                    f"/tmp/bench_router_plan_{mode}.log",
                    {"SGLANG_CASCADE_PLAN_CHECK_MODE": "process" if mode == "off" else mode},
                )
                try:
                    await wait_ready(url)
                    # warm-up: fills the arrival recorder (min_replay) so the timer checks run in the window;
                    # the checker process's start-up (imports) happens here, outside the measured window
                    await throughput(url, a.streams, a.plan_warmup_s, a.tokens, prompt)
                    st0 = (await get_json(url, "/get_loads")).get("plan_checker") or {}
                    r0, k0 = cpu_snapshot(rp.pid)
                    t0 = time.perf_counter()
                    lat = await latency(url, a.latency_requests, prompt)
                    rps, errs = await throughput(url, a.streams, a.duration, a.tokens, prompt)
                    wall = time.perf_counter() - t0
                    r1, k1 = cpu_snapshot(rp.pid)
                    end = await get_json(url, "/get_loads")
                    st1, gov = end.get("plan_checker") or {}, end.get("plan_budget") or {}
                finally:
                    rp.terminate()
                    try:
                        rp.wait(10)
                    except subprocess.TimeoutExpired:
                        rp.kill()
                        rp.wait()
                row = {"mode": mode, "repeat": rep, "workers": a.workers}
                for kind in ("e2e", "ttft"):
                    x, b = lat[kind], base[kind]
                    for q in (50, 99):
                        row[f"{kind}_p{q}_ms"] = 1e3 * np.percentile(x, q)
                        row[f"added_{kind}_p{q}_ms"] = 1e3 * (np.percentile(x, q) - np.percentile(b, q))
                jobs = int(st1.get("jobs", 0)) - int(st0.get("jobs", 0))
                chk_cpu = float(st1.get("cpu_s", 0.0)) - float(st0.get("cpu_s", 0.0))
                minutes = wall / 60.0
                row.update(
                    req_per_s_at_streams=rps,
                    errors=errs,
                    window_s=wall,
                    checks=jobs,
                    checker_cpu_s=chk_cpu,  # in-band: the child's process_time / the thread's thread_time per job
                    checker_core_s_per_traffic_min=chk_cpu / minutes,
                    cpu_s_per_check=chk_cpu / jobs if jobs else float("nan"),
                    router_process_cpu_s=r1 - r0,
                    child_process_cpu_s=k1 - k0,  # psutil: the checker process (process mode)
                    checks_total=int(st1.get("jobs", 0)),  # warm-up included
                    checker_cpu_total_s=float(st1.get("cpu_s", 0.0)),
                    checker_busy_at_end=bool(st1.get("busy", False)),
                    check_cpu_budget=a.check_cpu_budget if mode != "off" else float("nan"),
                    governor_spent_core_s=float(gov.get("spent_core_s", float("nan"))),  # since the first check
                    governor_core_s_per_traffic_min=float(gov.get("core_s_per_traffic_min") or float("nan")),
                    governor_deferred_timer=int(gov.get("deferred_timer", 0)),
                    governor_deferred_drift=int(gov.get("deferred_drift", 0)),
                )
                rows.append(row)
                print(
                    f"{mode:>8} #{rep}: added 1-token e2e p50 {row['added_e2e_p50_ms']:+.2f} p99 "
                    f"{row['added_e2e_p99_ms']:+.2f} ms; added first chunk p50 {row['added_ttft_p50_ms']:+.2f} p99 "
                    f"{row['added_ttft_p99_ms']:+.2f} ms; {rps:.0f} req/s ({errs} errors); window {wall:.1f} s, "
                    f"{jobs} checks, checker {chk_cpu:.2f} CPU s ({row['checker_core_s_per_traffic_min']:.2f} core-s "
                    f"per traffic minute, {row['cpu_s_per_check']:.2f} s per check); router process "
                    f"{row['router_process_cpu_s']:.2f} s, child processes {row['child_process_cpu_s']:.2f} s CPU",
                    flush=True,
                )
        return rows
    finally:
        stop_all(procs)


def write_csv(rows: list[dict], out: str) -> None:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--time-scale", type=float, default=0.0, help="fake-worker time scale (0: CPU-bound)")
    ap.add_argument("--tokens", type=int, default=8, help="output tokens per request")
    ap.add_argument("--latency-requests", type=int, default=200)
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--skip-cascade", action="store_true")
    ap.add_argument(
        "--out",
        default=None,
        help="CSV (default docs/results/router_bench.csv, docs/results/router_bench_plan_check.csv with --plan-check)",
    )
    ap.add_argument(
        "--plan-check", action="store_true", help="plan-check mode: cascade with the check off/thread/process"
    )
    ap.add_argument("--modes", default="off,thread,process", help="--plan-check: the modes, in order")
    ap.add_argument("--repeats", type=int, default=1, help="--plan-check: passes over the modes")
    ap.add_argument("--check-interval-s", type=float, default=5.0, help="--plan-check: cascade check_interval_s")
    ap.add_argument("--replay-requests", type=int, default=2000, help="--plan-check: cascade replay_requests")
    ap.add_argument("--min-replay", type=int, default=200, help="--plan-check: cascade min_replay")
    ap.add_argument(
        "--check-cpu-budget", type=float, default=1.0, help="--plan-check: cascade check_cpu_budget (0: no governor)"
    )
    ap.add_argument("--plan-warmup-s", type=float, default=4.0, help="--plan-check: traffic before the window")
    ap.add_argument("--plan-prompt-cap", type=int, default=1024, help="--plan-check: ShareGPT prompt lengths, capped")
    a = ap.parse_args()
    if a.plan_check:
        a.out = a.out or "docs/results/router_bench_plan_check.csv"
        rows = asyncio.run(plan_check_async(a))
        write_csv(rows, a.out)
        print(
            f"wrote {a.out}; machine: {os.cpu_count()} CPUs shared by client, router, checker and workers; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        return 0
    a.out = a.out or "docs/results/router_bench.csv"
    rows = asyncio.run(main_async(a))
    rust = next((r["req_per_s_at_streams"] for r in rows if r["target"] == "rust_round_robin"), 0.0)
    for r in rows:
        r["throughput_vs_rust"] = r["req_per_s_at_streams"] / rust if rust else float("nan")
    write_csv(rows, a.out)
    print(
        f"wrote {a.out}; machine: {os.cpu_count()} CPUs shared by client, routers and workers; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
