"""Start-up time and decode throughput of a CPU-engine SGLang server (tiny model).

    python scripts/bench_cpu_engine.py [--url http://127.0.0.1:PORT] [--out docs/results/cpu_engine_bench.csv]

Without --url it starts a server with ServerProcess (measuring time to /health == 200) and stops it
after. Then: one request generating --tokens-single tokens, and --concurrency concurrent requests of
--tokens-batch tokens each (greedy, ignore_eos). Prints one row per measurement.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import time

from rows_csv import write_rows

from sglang_cascade.testing.server_fixture import ServerProcess, post_json


def _one(url: str, prompt: str, n: int) -> int:
    res = post_json(
        url + "/generate",
        {"text": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": n, "ignore_eos": True}},
        timeout=600,
    )
    if res.status != 200:
        raise RuntimeError(f"/generate -> {res.status}: {res.body[:300]!r}")
    return len(res.json()["output_ids"])


def run(url: str, tokens_single: int, tokens_batch: int, concurrency: int) -> list[dict]:
    rows = []
    _one(url, "warm up", 8)
    t = time.perf_counter()
    n = _one(url, "The cat is", tokens_single)
    dt = time.perf_counter() - t
    rows.append(
        {
            "measure": "decode_1_request",
            "requests": 1,
            "tokens": n,
            "seconds": round(dt, 3),
            "tokens_per_s": round(n / dt, 1),
        }
    )
    prompts = [f"request {i} the model server" for i in range(concurrency)]
    t = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as ex:
        total = sum(ex.map(lambda p: _one(url, p, tokens_batch), prompts))
    dt = time.perf_counter() - t
    rows.append(
        {
            "measure": f"decode_{concurrency}_concurrent",
            "requests": concurrency,
            "tokens": total,
            "seconds": round(dt, 3),
            "tokens_per_s": round(total / dt, 1),
        }
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=None, help="use a running server instead of starting one")
    ap.add_argument("--tokens-single", type=int, default=256)
    ap.add_argument("--tokens-batch", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--out", default=None, help="CSV file to write the rows to")
    ap.add_argument("--server-args", default="", help="extra cpu_server args, e.g. '--threads 1'")
    args = ap.parse_args()
    rows: list[dict] = []
    server = None
    url = args.url
    if url is None:
        server = ServerProcess(args.server_args.split()).start()
        server.wait_ready()
        url = server.base_url
        rows.append(
            {
                "measure": "startup_to_health_200",
                "requests": 0,
                "tokens": 0,
                "seconds": round(server.ready_after_s, 2),
                "tokens_per_s": "",
            }
        )
    try:
        rows += run(url, args.tokens_single, args.tokens_batch, args.concurrency)
    finally:
        if server is not None:
            server.stop()
    load = os.getloadavg()
    print(f"# server args: {args.server_args!r}")
    print(f"# cpus={os.cpu_count()} loadavg(1,5,15)={load[0]:.2f},{load[1]:.2f},{load[2]:.2f}")
    print(f"{'measure':28s} {'requests':>8s} {'tokens':>7s} {'seconds':>8s} {'tokens/s':>9s}")
    for r in rows:
        print(f"{r['measure']:28s} {r['requests']:8d} {r['tokens']:7d} {r['seconds']:8} {r['tokens_per_s']:>9}")
    if args.out:
        write_rows(args.out, rows)


if __name__ == "__main__":
    main()
