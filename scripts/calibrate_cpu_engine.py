"""Measure the SGLang CPU engine (tiny model, --threads 1) and fit the cost model's form to it.

    python scripts/calibrate_cpu_engine.py [--url URL] [--quick] [--csv docs/results/cpu_engine_calibration.csv]
        [--out sglang_cascade/data/calibration/hardware/cpu-engine.json]

Controlled runs, timed on the client (streaming /generate, random token ids, ignore_eos):

* prefill rows: one request of L prompt tokens and ``max_new_tokens=1`` on an idle server; its TTFT is one
  prefill iteration plus the HTTP / tokenizer-manager / detokenizer path (no overlap lag: no next batch).
* decode rows: B requests of C prompt tokens sent at once (SGLang prefills them together), 48 output tokens
  each; once all decode in lock-step, the time per token of every request is one decode iteration of batch B
  at KV ~C + k. The estimate is the median over requests of the slope of (time, tokens) from token 12 on.

Then :func:`sglang_cascade.core.hardware.fit_rows` fits the cost model's own terms (per-iteration and
per-request overheads, linear layers per token, prefill call + causal pairs, decode call + per request + per KV
token) by non-negative least squares on relative error, and the profile is written where
``CostModel.for_names("tiny-llama", "cpu-engine")`` (``--model tiny-llama --gpu cpu-engine``) finds it. The
measured rows go into the profile too: ``sglang-cascade costmodel --validate`` refits on the even rows and
reports the odd ones.

``--step-log`` takes the decode rows from the server's own per-step log instead (prefill rows stay
client-timed). ``--source server-log`` takes every row from it: the server it starts runs with
``--decode-log-interval 1``, ``SGLANG_LOG_MS=1`` and ``SGLANG_LOG_FORWARD_ITERS=1``, the prefill rows are sent
again while a long request decodes (so each prefill batch sits between busy iterations), and
:func:`sglang_cascade.replay.step_log.step_rows` times each batch (prefill and decode; iteration time without
the HTTP / tokenizer / detokenizer path). ``--from-log LOG`` fits the batch lines of an existing log of such
a server (no measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sglang_cascade.core.hardware import HARDWARE_DIR  # noqa: E402
from sglang_cascade.core.hardware_fit import co_run_ratios, fit_rows, profile_body, row_errors  # noqa: E402
from sglang_cascade.replay.step_log import STEP_LOG_ENV, STEP_LOG_SERVER_ARGS  # noqa: E402

PREFILL_L = (8, 32, 128, 256, 512, 1024, 1536, 2048, 3072, 4000)
DECODE_GRID = {  # prompt length C -> batch sizes B (B * (C + out) stays inside the 16384-token KV pool)
    16: (1, 2, 4, 8, 16, 32, 64, 128),
    256: (1, 4, 8, 16, 32, 48),
    1024: (1, 2, 4, 8, 12),
    2048: (1, 2, 4, 6),
    3500: (1, 2, 3),
}
DECODE_OUT = 48
DECODE_SKIP = 12  # tokens before the lock-step window (prefill of the batch, first iterations)
CO_RUN_STREAMS = 4  # --co-runner: closed-loop clients keeping the second server busy
CHUNK = 4096  # the server's chunked prefill size (profile_body's default): fuller prefill lines are chunks


RESENDS = 2  # a request whose pooled keep-alive connection the server closed as it was sent is sent again


async def _stream(s: aiohttp.ClientSession, url: str, ids: list[int], max_new: int) -> list[tuple[float, int]]:
    """(client time, tokens so far) at every stream event; the first entry is the send time with 0 tokens. A
    request that fails before the server answered (the server closed the idle keep-alive connection it went out
    on: "Cannot write to closing transport") is sent again on a new connection, at most RESENDS times."""
    for _ in range(RESENDS + 1):
        try:
            return await _stream_once(s, url, ids, max_new)
        except (aiohttp.ClientConnectionResetError, aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as e:
            dropped = e
    raise RuntimeError(f"{url}: request not sent after {RESENDS + 1} tries: {dropped}") from dropped


async def _stream_once(s: aiohttp.ClientSession, url: str, ids: list[int], max_new: int) -> list[tuple[float, int]]:
    body = {
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": max_new, "ignore_eos": True, "temperature": 0.0},
        "stream": True,
    }
    marks = [(time.perf_counter(), 0)]
    async with s.post(url + "/generate", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
        try:
            async for line in r.content:
                line = line.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                ev = json.loads(line[5:])
                n = (ev.get("meta_info") or {}).get("completion_tokens") or len(ev.get("output_ids") or [])
                if n > marks[-1][1]:
                    marks.append((time.perf_counter(), n))
        except aiohttp.ClientError as e:  # the server was answering: a failure, not a request that never arrived
            raise RuntimeError(f"stream broke after {marks[-1][1]} tokens: {e}") from e
    return marks


def _ids(rng: np.random.Generator, n: int) -> list[int]:
    return rng.integers(10, 1000, size=n).tolist()


async def measure_prefill(s, url: str, rng, lengths, repeats: int) -> list[dict]:
    rows = []
    for L in lengths:
        ts = []
        for _ in range(repeats):
            marks = await _stream(s, url, _ids(rng, L), 1)
            ts.append(marks[1][0] - marks[0][0])
            await asyncio.sleep(0.05)
        rows.append({"kind": "prefill", "prefill": [L], "batch": 0, "kv_sum": 0, "kv_max": 0, "seconds": min(ts)})
        print(f"prefill L={L:5d}: {min(ts) * 1e3:8.2f} ms (min of {[round(t * 1e3, 1) for t in ts]})", flush=True)
    return rows


def _slope(marks: list[tuple[float, int]], skip: int) -> float | None:
    pts = [(t, n) for t, n in marks[1:] if n >= skip]
    if len(pts) < 3:
        return None
    t = np.array([p[0] for p in pts])
    n = np.array([p[1] for p in pts], float)
    return float(np.polyfit(n, t, 1)[0])


async def measure_decode(s, url: str, rng, grid: dict, out: int) -> list[dict]:
    rows = []
    for C, batches in grid.items():
        for B in batches:
            res = await asyncio.gather(*(_stream(s, url, _ids(rng, C), out) for _ in range(B)))
            slopes = [x for x in (_slope(m, DECODE_SKIP) for m in res) if x]
            it = statistics.median(slopes)
            kv = C + (DECODE_SKIP + out) / 2.0  # mean KV per request over the window
            rows.append({"kind": "decode", "prefill": [], "batch": B, "kv_sum": B * kv, "kv_max": kv, "seconds": it})
            print(f"decode B={B:3d} C={C:5d}: {it * 1e3:8.2f} ms/iteration", flush=True)
            await asyncio.sleep(0.1)
    return rows


async def measure_busy_prefill(s, url: str, rng, lengths, repeats: int) -> None:
    """Prefills sent one at a time while a long request decodes: in the server log each prefill batch then has
    a running request and busy iterations around it (replay.step_log keeps only those)."""
    keeper = asyncio.ensure_future(_stream(s, url, _ids(rng, 16), 4000))
    await asyncio.sleep(0.5)
    try:
        for L in lengths:
            for _ in range(repeats):
                await _stream(s, url, _ids(rng, L), 1)
                await asyncio.sleep(0.15)
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
    print(f"busy prefills sent: {len(lengths)} lengths x {repeats}", flush=True)


async def co_runner_load(s, url: str, seed: int, streams: int = CO_RUN_STREAMS, kind: str = "mixed") -> int:
    """Keep a second server busy until cancelled: ``streams`` closed-loop clients, each sending one request
    after another: ``mixed`` prompts of 16-1024 random tokens and 32 output tokens; ``prefill`` prompts of
    1536-3072 tokens and one output token (what a prefill-pool member runs). Returns the requests completed."""
    rng = np.random.default_rng(seed + 1000)
    done = 0
    lo, hi, out = (16, 1025, 32) if kind == "mixed" else (1536, 3073, 1)

    async def client() -> None:
        nonlocal done
        while True:
            await _stream(s, url, _ids(rng, int(rng.integers(lo, hi))), out)
            done += 1

    tasks = [asyncio.ensure_future(client()) for _ in range(streams)]
    try:
        await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return done


async def measure(
    url: str, quick: bool, seed: int, busy_prefill: bool = False, co_url: str | None = None, co_kind: str = "mixed"
) -> list[dict]:
    """The grid on ``url``; with ``co_url``, while :func:`co_runner_load` (``co_kind``) keeps that server busy."""
    rng = np.random.default_rng(seed)
    grid = DECODE_GRID
    lengths = PREFILL_L
    if quick:
        grid = {C: bs[::2] for C, bs in list(grid.items())[::2]}
        lengths = PREFILL_L[::2]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        await _stream(s, url, _ids(rng, 64), 8)  # warm-up
        co = asyncio.ensure_future(co_runner_load(s, co_url, seed, kind=co_kind)) if co_url else None
        if co is not None:
            await asyncio.sleep(2.0)  # the co-runner's loop is running before the first measured request
        try:
            rows = await measure_prefill(s, url, rng, lengths, repeats=2 if quick else 3)
            if busy_prefill:
                await measure_busy_prefill(s, url, rng, lengths, repeats=2 if quick else 3)
            rows += await measure_decode(s, url, rng, grid, DECODE_OUT)
        finally:
            if co is not None:
                co.cancel()
                await asyncio.gather(co, return_exceptions=True)
    return rows


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "prefill_tokens", "batch", "kv_sum", "kv_max", "seconds"])
        for r in rows:
            w.writerow([r["kind"], sum(r["prefill"]), r["batch"], r["kv_sum"], r["kv_max"], f"{r['seconds']:.6f}"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="an already running CPU-engine server (else one is started)")
    ap.add_argument("--quick", action="store_true", help="a third of the grid (about a minute)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--csv", default=str(ROOT / "docs/results/cpu_engine_calibration.csv"))
    ap.add_argument("--out", default=str(HARDWARE_DIR / "cpu-engine.json"))
    ap.add_argument("--fit-only", default=None, help="refit the rows stored in this profile JSON")
    ap.add_argument(
        "--step-log",
        action="store_true",
        help="decode rows from the server's own per-step log (--decode-log-interval 1; replay/step_log.py) "
        "instead of client timing; prefill rows stay client-timed (with --url, pass --server-log)",
    )
    ap.add_argument(
        "--server-log",
        default=None,
        help="with --url --step-log: that server's log file; with --source server-log: where the started "
        "server writes its log (default: a temporary file)",
    )
    ap.add_argument(
        "--source",
        choices=("client", "server-log"),
        default="client",
        help="server-log: every row (prefill and decode) from the started server's per-step log",
    )
    ap.add_argument("--from-log", default=None, help="fit the batch lines of this SGLang server log (no run)")
    ap.add_argument("--pin", type=int, default=None, help="pin the started server to this core (default: none)")
    ap.add_argument(
        "--co-runner",
        action="store_true",
        help="start two servers pinned to two cores; measure the grid on the first alone, then again while "
        "the second serves a closed loop of requests; fit the lone rows and record the co-run slowdown",
    )
    ap.add_argument(
        "--co-runner-kind",
        choices=("mixed", "prefill", "both"),
        default="mixed",
        help="what the co-runner serves: mixed (short prompts, 32 output tokens), prefill (1.5-3K-token "
        "prompts, one output token: a prefill-pool member), or both (a mixed pass, then a prefill pass that "
        "gives the profile's decode_next_to_prefill)",
    )
    ap.add_argument(
        "--co-run-logs",
        default=None,
        metavar="DIR",
        help="with --co-runner: both servers log every batch (replay/step_log.py) and their logs are copied to "
        "DIR/measured.log and DIR/co_runner.log (scripts/diag_co_run.py: the slow-down per KV size)",
    )
    args = ap.parse_args()
    co_run = prefix_fit = None
    if args.fit_only:
        old = json.loads(Path(args.fit_only).read_text())
        rows, load, co_run, prefix_fit = old["rows"], None, old.get("co_run"), old.get("prefix_fit")
    elif args.from_log:
        rows, load = log_rows(args.from_log, 0), None
    elif args.co_runner:
        rows, load, co_run = _run_co_run(args)
    else:
        rows, load = _run_measurement(args)
    fit = fit_rows(rows)
    errs = row_errors(fit, rows)
    src = "SGLang's per-step log (replay/step_log.py)" if args.from_log or args.source == "server-log" else "client"
    src += "; decode rows from the step log" if args.step_log else ""
    note = f"scripts/calibrate_cpu_engine.py, rows from the {src}; 1-min load average at the end: {load}"
    body = profile_body(fit, rows, note=note, co_run=co_run, prefix_fit=prefix_fit)
    Path(args.out).write_text(json.dumps(body, indent=1) + "\n")
    print(json.dumps({"fit": fit, "in_sample_median_rel_err": float(np.median(errs)), "rows": len(rows)}, indent=1))
    print(f"wrote {args.out}")
    return 0


def _run_measurement(args) -> tuple[list[dict], float]:
    from sglang_cascade.testing.server_fixture import ServerProcess, pin_process_group

    server = None
    url, log_path = args.url, args.server_log
    from_log = args.source == "server-log"
    if from_log and url is not None:
        raise SystemExit("--source server-log starts its own server (its log must have SGLANG_LOG_MS): drop --url")
    if url is None:
        extra = list(STEP_LOG_SERVER_ARGS) if args.step_log or from_log else []
        server = ServerProcess(["--threads", "1", *extra], env=STEP_LOG_ENV if from_log else None, log_path=log_path)
        server = server.start().wait_ready()
        url, log_path = server.base_url, server.log_path
        if args.pin is not None:
            pin_process_group(server.pid, {args.pin})
        print(f"server ready after {server.ready_after_s:.1f} s at {url}", flush=True)
    try:
        offset = os.path.getsize(log_path) if (args.step_log or from_log) and log_path else 0
        rows = asyncio.run(measure(url.rstrip("/"), args.quick, args.seed, busy_prefill=from_log))
    finally:
        if server is not None:
            server.stop()
    if from_log:
        rows = log_rows(log_path, offset)
    elif args.step_log:
        rows = [r for r in rows if r["kind"] != "decode"] + step_log_rows(log_path, offset)
    write_csv(rows, args.csv)
    return rows, os.getloadavg()[0]


def _run_co_run(args) -> tuple[list[dict], float, dict]:
    """--co-runner: two servers, each pinned to its own core (as scripts/eval_fidelity.py runs them); the grid
    on the first while the second is idle, then while it serves :func:`co_runner_load`."""
    from sglang_cascade.testing.server_fixture import ServerProcess, pin_process_group

    if args.url or args.step_log or args.source != "client":
        raise SystemExit("--co-runner starts both servers and times on the client: drop --url/--step-log/--source")
    ncpu = os.cpu_count() or 1
    if ncpu < 2:
        raise SystemExit("--co-runner needs two cores")
    core = args.pin if args.pin is not None else 0
    extra, env = ([*STEP_LOG_SERVER_ARGS], STEP_LOG_ENV) if args.co_run_logs else ([], None)
    servers = [ServerProcess(["--threads", "1", *extra], env=env) for _ in range(2)]
    try:
        for s in servers:
            s.start()
        for s, c in zip(servers, (core, (core + 1) % ncpu)):
            s.wait_ready()
            pin_process_group(s.pid, {c})
        url, co_url = (s.base_url.rstrip("/") for s in servers)
        print(f"servers ready: measured {url} (core {core}), co-runner {co_url}", flush=True)
        lone = asyncio.run(measure(url, args.quick, args.seed))
        first = "mixed" if args.co_runner_kind == "both" else args.co_runner_kind
        print(f"co-run pass: {CO_RUN_STREAMS} closed-loop {first} clients on {co_url}", flush=True)
        co = asyncio.run(measure(url, args.quick, args.seed, co_url=co_url, co_kind=first))
        pre = None
        if args.co_runner_kind == "both":
            print(f"co-run pass: {CO_RUN_STREAMS} closed-loop prefill clients on {co_url}", flush=True)
            pre = asyncio.run(measure(url, args.quick, args.seed, co_url=co_url, co_kind="prefill"))
    finally:
        for s in servers:
            s.stop()
        if args.co_run_logs:  # scripts/diag_co_run.py reads them
            os.makedirs(args.co_run_logs, exist_ok=True)
            for s, name in zip(servers, ("measured", "co_runner"), strict=True):
                if s.log_path and os.path.exists(s.log_path):  # a server that never started has none
                    shutil.copyfile(s.log_path, os.path.join(args.co_run_logs, name + ".log"))
    write_csv(lone, args.csv)
    write_csv(co, str(Path(args.csv).with_suffix("")) + "_co_run.csv")
    info = co_run_ratios(lone, co)
    if pre is not None:  # the profile's decode_next_to_prefill (hardware_fit.co_run_slowdowns)
        write_csv(pre, str(Path(args.csv).with_suffix("")) + "_co_run_prefill.csv")
        info["next_to_prefill"] = co_run_ratios(lone, pre)
    print(json.dumps({"co_run": info}), flush=True)
    return lone, os.getloadavg()[0], info


def log_rows(path: str, offset: int) -> list[dict]:
    """Every calibration row of a server log's batch lines after ``offset`` (replay.step_log.step_rows); a
    clear error when there are none."""
    from sglang_cascade.replay.step_log import step_rows

    with open(path, errors="replace") as f:
        f.seek(offset)
        rows = step_rows(f, chunk=CHUNK)
    if not rows:
        raise SystemExit(
            f"{path}: no usable batch lines (the server needs --decode-log-interval 1 and SGLANG_LOG_MS=1 / "
            "SGLANG_LOG_FORWARD_ITERS=1, and batches back to back)"
        )
    print(f"{path}: {len(rows)} rows from the server's step log", flush=True)
    return rows


def step_log_rows(log_path: str | None, offset: int, kv_bucket: int = 256) -> list[dict]:
    """Server-side decode rows: the median step per (batch, KV bucket) of the log written since ``offset``."""
    from sglang_cascade.replay.step_log import decode_rows

    if not log_path:
        raise SystemExit("--step-log needs the server's log (--server-log with --url)")
    with open(log_path, errors="replace") as f:
        f.seek(offset)
        steps = decode_rows(f)
    groups: dict[tuple[int, int], list[dict]] = {}
    for r in steps:
        groups.setdefault((r["batch"], int(r["kv_sum"]) // kv_bucket), []).append(r)
    rows = []
    for (b, _), g in sorted(groups.items()):
        kv = statistics.median(r["kv_sum"] for r in g)
        sec = statistics.median(r["seconds"] for r in g)
        rows.append({"kind": "decode", "prefill": [], "batch": b, "kv_sum": kv, "kv_max": kv / b, "seconds": sec})
    print(f"step log: {len(steps)} decode steps -> {len(rows)} rows", flush=True)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
