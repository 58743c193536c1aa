#!/usr/bin/env python3
"""Does cascade's prefill pool pay on real SGLang, as the simulator says? Long and short prompts through our router
over two real CPU-engine servers, per routing policy, against the simulator on the same requests.

    python scripts/check_prefill_pool_live.py [--routers least_load cascade "cascade:counts=1,prefill_pool=1"]
        [--requests 60 --rate 0.5 --long-share 0.3] [--schedule-policy fcfs] [--out docs/results/prefill_pool_live]

The slice: ``--requests`` Poisson arrivals at ``--rate``; a ``--long-share`` of them with prompts of
``--long`` tokens (uniform), the rest ``--short``; outputs ``--output`` tokens (uniform). Two servers (SGLang 0.5.23
CPU engine, tiny model, one thread each, pinned to one core each) with ``--scheduler-plugin sglang`` (stock
scheduling, plus the plugin's KV endpoint, so a move is a KV transfer) behind ``python -m sglang_cascade.router
--policy P``; a cascade policy moves by KV transfer (``mode=kv_transfer`` is added to its name unless it names a
mode: the router then runs that mechanism, and the simulator gets the same name). With ``prefill_pool=1`` the second server prefills every prompt of >= ``prefill_min`` tokens and
the request moves to the first after its first token. The simulator runs 2 instances with the same router, scaled
by the run's measured step speed. Writes ``<out>.csv`` (per policy and metric: real, simulated, relative error)
and prints whether the simulator orders the policies as the servers did. Servers and routers are stopped by
process group at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import json
import statistics
import sys
import tempfile
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_fidelity as ef

from sglang_cascade.core.options import split_name
from sglang_cascade.core.traces import TraceRequest
from sglang_cascade.policies.sglang_order import SCHEDULE_POLICIES
from sglang_cascade.replay import fidelity as fid
from sglang_cascade.replay.cli_replay import replay_metrics
from sglang_cascade.replay.client import ReplayConfig, replay_trace
from sglang_cascade.replay.lengths import prompt_ids
from sglang_cascade.replay.step_log import parse_lines
from sglang_cascade.sim.cluster import simulate

METRICS = ("ttft_mean", "ttft_p50", "tpot_mean", "e2e_mean", "e2e_p99")
POOL = "cascade:counts=1,prefill_pool=1,prefill_min=1024"
PLUGIN = ["--scheduler-plugin", "sglang", "--cascade-cost-model", f"{ef.MODEL}:{ef.GPU}"]


def kv_mode(policy: str) -> str:
    """``policy`` with ``mode=kv_transfer`` when it is a cascade policy naming no mode (the router's default
    mechanism is recompute; the simulator's cascade plans KV transfers)."""
    base, opts = split_name(policy)
    if base != "cascade" or "mode" in opts:
        return policy
    return policy + (",mode=kv_transfer" if ":" in policy else ":mode=kv_transfer")


def pool_trace(a) -> list[TraceRequest]:
    rng = np.random.default_rng(a.seed)
    t, out = 0.0, []
    for i in range(a.requests):
        t += float(rng.exponential(1.0 / a.rate))
        lo, hi = a.long if rng.random() < a.long_share else a.short
        out.append(TraceRequest(f"r{i}", t, int(rng.integers(lo, hi + 1)), int(rng.integers(*a.output))))
    return out


NO_STAGE = " --no-kv-stage"  # a label suffix: the same policy with the router's KV staging off


def run_policy(label: str, servers: list, trace, a, log_dir: str) -> dict:
    for s in servers:
        ef.post(s.base_url + "/flush_cache")
    offsets = [ef.log_size(s) for s in servers]
    policy, extra = label.removesuffix(NO_STAGE), ["--no-kv-stage"] if label.endswith(NO_STAGE) else []
    if a.sample_path:  # the policy starts from the slice's lengths and rate, as the simulator's does
        extra += ["--cascade-length-sample", a.sample_path]
    router, url = ef.start_router(policy, [s.base_url for s in servers], f"{log_dir}/router_{policy}.log", extra)
    try:
        recs = asyncio.run(replay_trace(trace, prompt_ids(trace, ef.VOCAB, a.seed), ReplayConfig(url)))
        loads = json.loads(urllib.request.urlopen(url + "/get_loads", timeout=10).read())
    finally:
        ef.stop_group(router)
    m = replay_metrics(recs, 2.0, 0.1)
    if m["failed"]:
        raise RuntimeError(f"{policy}: {m['failed']} requests failed: {next(r.error for r in recs if not r.ok)}")
    stalls = [mv["stall_s"] for r in recs for mv in r.moves if "stall_s" in mv]
    m["moves"], m["move_stall_median_s"] = len(stalls), statistics.median(stalls) if stalls else 0.0
    m["staged_moves"] = sum(1 for r in recs for mv in r.moves if mv.get("staged"))
    m["records"] = recs
    d = loads.get("plan_decision") or {}
    m["decision"] = f"{d.get('chosen', '-')} {d.get('counts', '')} pool {d.get('pool', 0)} ({d.get('trigger', '-')})"
    m["logs"] = [ef.log_since(s, off) for s, off in zip(servers, offsets)]
    return measure_speeds(m, m["logs"])


def measure_speeds(m: dict, logs: list[str]) -> dict:
    """The run's step speeds from its servers' logs into ``m`` (what ``run_sim`` scales the simulator by)."""
    m["step_speed"], _ = fid.step_speed(logs)
    m["step_speed_prefill"], _ = fid.step_speed(logs, kind="prefill")
    if CO_RUN is not None:  # the speed of iterations the other server did not share (run_sim's ``lone``)
        m["step_speed_lone"], _ = fid.step_speed(logs, lone=True)
        m["step_speed_prefill_lone"], _ = fid.step_speed(logs, kind="prefill", lone=True)
    return m


ORDER = "fcfs"  # --schedule-policy: the servers' and the simulator's
CO_RUN: dict | None = None  # --co-run: SimConfig.co_run_slowdown for every simulated run (else the profile's: none)


def run_sim(label: str, trace, real: dict, overhead_s: float = 0.0, co_run: bool = True, lone: bool = False):
    """The simulator's result on the same requests; ``overhead_s``: SimConfig.migration_overhead_s (a KV move's
    stall beyond the copy). A ``--no-kv-stage`` label runs with SimConfig.stage_first_kv off. With ``CO_RUN``
    each iteration is costed at its own start (no fast-forward), so the co-runner's state is the current one."""
    policy = label.removesuffix(NO_STAGE)
    cfg = fid.FidelityConfig(policy, 2, policy, "sglang", 1.0)
    lone = CO_RUN is not None and co_run and lone  # the speed of the iterations the other server did not share
    speeds = [real.get(k + ("_lone" if lone else "")) for k in ("step_speed", "step_speed_prefill")]
    scale = fid.run_time_scale(*speeds) or fid.run_time_scale(real.get("step_speed"), real.get("step_speed_prefill"))
    scale = scale or 1.0
    sc = fid.sim_config(cfg, ef.MODEL, ef.GPU, 2.0, 0.1, 0.5, None, scale)
    sc = replace(
        sc, migration_overhead_s=overhead_s, stage_first_kv=not label.endswith(NO_STAGE), schedule_policy=ORDER
    )
    if CO_RUN is not None and co_run:
        sc = replace(sc, co_run_slowdown=CO_RUN, fast_forward=False)
    return simulate(trace, sc)


def compare(routers: list[str], trace, real: dict) -> tuple[list[dict], dict, float]:
    """The simulator twice per policy: a KV move costs its copy alone, or also the median stall the router measured
    for the moves of this run (the stop, the tail export / import and the destination's resume)."""
    stalls = [real[p]["move_stall_median_s"] for p in routers if real[p]["moves"]]
    overhead = statistics.median(stalls) if stalls else 0.0
    rows, sim = [], {}
    for policy in routers:
        res = run_sim(policy, trace, real[policy], overhead)
        sim[policy] = {**res.metrics, "requests": res.requests}
        copy_only = run_sim(policy, trace, real[policy]).metrics if real[policy]["moves"] else sim[policy]
        no_co = run_sim(policy, trace, real[policy], overhead, co_run=False).metrics if CO_RUN else None
        alone = run_sim(policy, trace, real[policy], overhead, lone=True).metrics if CO_RUN else None
        for k in METRICS:
            r, s = real[policy][k], sim[policy][k]
            row = {"policy": policy, "metric": k, "real": r, "sim": s, "rel_err": fid.rel_err(r, s)}
            rows.append({
                **row, "sim_copy_only": copy_only[k], "sim_no_co_run": no_co[k] if no_co else None,
                "sim_co_run_lone_speed": alone[k] if alone else None,
            })  # fmt: skip
        rows.append(
            {"policy": policy, "metric": "moves", "real": real[policy]["moves"], "sim": sim[policy]["migrations"]}
        )
    return rows, sim, overhead


def write_requests(path: str, routers: list[str], real: dict, sim: dict) -> None:
    """Per policy and request: prompt / output tokens, the router's moves and stall, real and simulated TTFT / E2E."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "policy",
                "rid",
                "prompt",
                "output",
                "moves",
                "stall_s",
                "how",
                "real_ttft",
                "sim_ttft",
                "real_e2e",
                "sim_e2e",
            ]
        )
        for policy in routers:
            by_rid = {r.rid: r for r in sim[policy]["requests"]}
            for rec in real[policy]["records"]:
                s = by_rid[rec.rid]
                stall = sum(mv.get("stall_s", 0.0) for mv in rec.moves)
                how = " ".join(
                    f"{mv.get('mode')}/{mv.get('fallback') or '-'}{'/staged' if mv.get('staged') else ''}"
                    for mv in rec.moves
                )
                w.writerow([
                    policy, rec.rid, rec.prompt_len, rec.output_len, len(rec.moves), round(stall, 4), how,
                    round(rec.first_token_time - rec.arrival, 4), round(s.first_token_time - s.arrival, 4),
                    round(rec.finish_time - rec.arrival, 4), round(s.finish_time - s.arrival, 4),
                ])  # fmt: skip


def per_token_after_first(path: str) -> list[str]:
    """From a ``<out>.requests.csv``: per policy, for requests that moved and that did not, the mean real and
    simulated seconds per output token after the first ((E2E - TTFT) / (output - 1))."""
    groups: dict = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            out = int(r["output"])
            if out < 2:
                continue
            g = groups.setdefault((r["policy"], int(r["moves"]) > 0), ([], []))
            g[0].append((float(r["real_e2e"]) - float(r["real_ttft"])) / (out - 1))
            g[1].append((float(r["sim_e2e"]) - float(r["sim_ttft"])) / (out - 1))
    return [
        f"{policy} {'moved' if moved else 'not moved'} ({len(real)} requests): s per token after the first, real "
        f"{statistics.fmean(real):.4f}, sim {statistics.fmean(sim):.4f}"
        for (policy, moved), (real, sim) in sorted(groups.items())
    ]


def report(routers: list[str], rows: list[dict], real: dict, sim: dict, overhead: float) -> None:
    """Print the comparison: per policy and metric, real against simulated; the orders of the policies."""
    print(f"KV move stall beyond the copy (median over the runs' moves, measured): {overhead:.3f} s")
    for r in rows:
        if r["metric"] == "moves":
            staged = real[r["policy"]]["staged_moves"]
            print(f"{r['policy']:50s} moves      real {r['real']:8d}  sim {r['sim']:8d}  (real staged: {staged})")
            continue
        s0, s1 = r["sim_copy_only"], r["sim_no_co_run"]
        no_co = "" if s1 is None else f"  (no co-run: sim {s1:8.3f}, err {fid.rel_err(r['real'], s1):+.1%})"
        s2 = r.get("sim_co_run_lone_speed")
        if s2 is not None:
            no_co += f"  (co-run, lone steps' speed: sim {s2:8.3f}, err {fid.rel_err(r['real'], s2):+.1%})"
        print(
            f"{r['policy']:50s} {r['metric']:10s} real {r['real']:8.3f}  sim {r['sim']:8.3f}  err {r['rel_err']:+.1%}"
            f"  (copy only: sim {s0:8.3f}, err {fid.rel_err(r['real'], s0):+.1%}){no_co}"
        )
    errs = [r["rel_err"] for r in rows if r["metric"] != "moves"]
    print(f"median relative error {statistics.median(errs):.1%} over {len(errs)} pairs")
    for k in ("ttft_mean", "tpot_mean", "e2e_mean"):
        order_real = sorted(routers, key=lambda p: real[p][k])
        order_sim = sorted(routers, key=lambda p: sim[p][k])
        same = "same" if order_real == order_sim else "differs"
        print(f"order on {k}: real {order_real}, simulated {order_sim} ({same})")


def long_prefills(log: str, long_min: int, short_max: int) -> tuple[int, int]:
    """From one server's log of a run: (prefill batches that computed a long prompt, i.e. whose new tokens exceed
    what its other sequences could hold if all were short; prefill batches served >= ``long_min`` tokens from its
    radix cache, i.e. a moved request's imported KV). On a pool's decode server the first count is the moves whose
    KV was not there when their continuation was admitted (recomputed)."""
    computed = cached = 0
    for b in parse_lines(log.splitlines() if isinstance(log, str) else log):
        if b.kind != "prefill":
            continue
        computed += b.new_tokens - short_max * (b.new_seqs - 1) >= long_min
        cached += b.cached_tokens >= long_min
    return computed, cached


def queue_stats(log: str) -> tuple[int, int, float, float]:
    """From one server's log of a run: (decode iterations, those with requests queued, the mean running batch and
    the mean KV tokens in use over the queued ones): a queue beside a small batch and a full pool is KV held by
    something other than the running requests (imported prefixes waiting for their continuations)."""
    dec = [b for b in parse_lines(log.splitlines() if isinstance(log, str) else log) if b.kind == "decode"]
    q = [b for b in dec if b.queued > 0]
    if not q:
        return len(dec), 0, 0.0, 0.0
    return len(dec), len(q), statistics.fmean(b.running for b in q), statistics.fmean(b.kv_tokens for b in q)


def census_lines(label: str, logs: list[str], long_min: int, short_max: int) -> list[str]:
    out = []
    for i, log in enumerate(logs):
        c, k = long_prefills(log, long_min, short_max)
        n, nq, run, kv = queue_stats(log)
        out.append(
            f"{label} server {i}: long prompts prefilled {c} computed / {k} from cached KV; {nq} of {n} decode "
            f"iterations with a queue (then mean batch {run:.1f}, KV in use {kv:.0f} tokens)"
        )
    return out


def logs_by_run(log_dir: str, servers: int = 2) -> list[list[str]]:
    """The servers' logs of a past run (``<log_dir>/server_stock<i>.log``, or its batch and flush lines in
    ``server_stock<i>.log.gz``), cut at the cache flush that starts each policy's run: ``[run][server]``."""
    parts = []
    for i in range(servers):
        path = Path(log_dir, f"server_stock{i}.log")
        if path.exists():
            text = path.read_text(errors="replace")
        else:  # a committed run keeps only its batch and flush lines, gzipped (docs/results/*.logs)
            text = gzip.decompress(path.with_suffix(".log.gz").read_bytes()).decode(errors="replace")
        parts.append(text.split("Cache flushed")[1:])
    return [list(run) for run in zip(*parts, strict=True)]


def recorded(out: str, log_dir: str) -> tuple[list[str], dict]:
    """A past run's real side, for :func:`compare` without the servers: the policies and real metrics of
    ``<out>.csv``, the move stalls of ``<out>.requests.csv`` (median over requests that moved once), the step speeds
    of the servers' logs in ``log_dir`` (:func:`logs_by_run`, one run per policy in the same order)."""
    real: dict = {}
    with open(out + ".csv", newline="") as f:
        for r in csv.DictReader(f):
            m = real.setdefault(r["policy"], {})
            m[r["metric"]] = int(r["real"]) if r["metric"] == "moves" else float(r["real"])
    stalls: dict = {}
    with open(out + ".requests.csv", newline="") as f:
        for r in csv.DictReader(f):
            m = real[r["policy"]]
            m["staged_moves"] = m.get("staged_moves", 0) + r["how"].count("/staged")
            if int(r["moves"]) == 1:
                stalls.setdefault(r["policy"], []).append(float(r["stall_s"]))
    routers = list(real)
    for policy, logs in zip(routers, logs_by_run(log_dir), strict=True):
        m = real[policy]
        m["move_stall_median_s"] = statistics.median(stalls[policy]) if policy in stalls else 0.0
        measure_speeds(m, logs)
    return routers, real


def per_class(path: str, long_min: int) -> list[str]:
    """From a ``<out>.requests.csv``: per policy, prompt class (long: >= ``long_min`` tokens) and whether the request
    moved, the mean real and simulated TTFT, seconds per output token after the first, and E2E."""
    groups: dict = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            key = (r["policy"], "long" if int(r["prompt"]) >= long_min else "short", int(r["moves"]) > 0)
            out = max(1, int(r["output"]) - 1)
            row = [float(r["real_ttft"]), float(r["sim_ttft"])]
            row += [(float(r[k + "_e2e"]) - float(r[k + "_ttft"])) / out for k in ("real", "sim")]
            groups.setdefault(key, []).append(row + [float(r["real_e2e"]), float(r["sim_e2e"])])
    lines = []
    for (policy, cls, moved), rows in sorted(groups.items()):
        m = np.mean(np.array(rows), axis=0)
        lines.append(
            f"{policy} {cls} {'moved' if moved else 'stayed'} ({len(rows)}): TTFT real {m[0]:.3f} sim {m[1]:.3f}, "
            f"s/token real {m[2]:.4f} sim {m[3]:.4f}, E2E real {m[4]:.3f} sim {m[5]:.3f}"
        )
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--routers", nargs="*", default=["least_load", "cascade", POOL])
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--rate", type=float, default=0.5, help="requests per second")
    ap.add_argument("--long-share", type=float, default=0.3)
    ap.add_argument("--long", type=int, nargs=2, default=[1536, 3072], help="long prompt tokens (min max)")
    ap.add_argument("--short", type=int, nargs=2, default=[32, 256], help="short prompt tokens (min max)")
    ap.add_argument("--output", type=int, nargs=2, default=[48, 128], help="output tokens (min max)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/results/prefill_pool_live")
    ap.add_argument("--per-token", metavar="REQUESTS_CSV", help="only print the per-request summaries of a past run")
    ap.add_argument("--logs", metavar="LOG_DIR", help="only print the servers' prefill and queue census of a past run")
    ap.add_argument(
        "--resim",
        metavar="OUT",
        help="no servers: simulate again the run recorded in OUT.csv / OUT.requests.csv, with the step speeds of its "
        "server logs (--logs LOG_DIR) and the same slice options",
    )
    ap.add_argument(
        "--no-stage-too", action="store_true", help="also run every cascade policy with the router's --no-kv-stage"
    )
    ap.add_argument(
        "--router-sample",
        action="store_true",
        help="give the routers the slice's lengths and rate at start (--cascade-length-sample), as the simulator "
        "gives its policies: a cascade policy then plans (and checks its pool) at start instead of after 500 "
        "finished requests",
    )
    ap.add_argument(
        "--schedule-policy",
        default="fcfs",
        choices=list(SCHEDULE_POLICIES),
        help="both servers' --schedule-policy (SGLang's waiting-queue order), and the simulator's",
    )
    ap.add_argument(
        "--co-run",
        type=float,
        nargs=2,
        metavar=("DECODE", "NEXT_TO_PREFILL"),
        help="simulate with these co-run slow-downs of a decode iteration next to a busy decoding / prefilling "
        "server (docs/results/cpu_engine_co_run_kind.txt: 0.029 0.177)",
    )
    a = ap.parse_args(argv)
    global CO_RUN, ORDER
    CO_RUN = None if a.co_run is None else {"decode": a.co_run[0], "decode_next_to_prefill": a.co_run[1]}
    ORDER = a.schedule_policy
    if a.resim:  # the simulator side again on a recorded run (after a simulator change)
        a.routers, real = recorded(a.resim, a.logs)
        rows, sim, overhead = compare(a.routers, pool_trace(a), real)
        report(a.routers, rows, real, sim, overhead)
        return 0
    if a.logs:
        for i, logs in enumerate(logs_by_run(a.logs)):
            print("\n".join(census_lines(f"run {i + 1}", logs, a.long[0], a.short[1])))
        return 0
    if a.per_token:
        print("\n".join(per_token_after_first(a.per_token) + per_class(a.per_token, a.long[0])))
        return 0
    a.routers = [kv_mode(p) for p in a.routers]
    if a.no_stage_too:
        a.routers += [p + NO_STAGE for p in a.routers if split_name(p)[0] == "cascade"]
    trace = pool_trace(a)
    log_dir = tempfile.mkdtemp(prefix="prefill_pool_live_")
    a.sample_path = None
    if a.router_sample:
        a.sample_path = f"{log_dir}/slice.jsonl"
        with open(a.sample_path, "w") as f:
            for r in trace:
                f.write(
                    json.dumps({"arrival": r.arrival, "prompt_len": r.prompt_len, "output_len": r.output_len}) + "\n"
                )
    extra = PLUGIN + (["--schedule-policy", ORDER] if ORDER != "fcfs" else [])
    servers = ef.start_servers(need_plugin=False, need_two=True, log_dir=log_dir, extra=extra)
    real = {}
    try:
        for policy in a.routers:
            real[policy] = run_policy(policy, [servers["stock0"], servers["stock1"]], trace, a, log_dir)
    finally:
        for s in servers.values():
            s.stop()
    rows, sim, overhead = compare(a.routers, trace, real)
    with open(a.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(
            f,
            fieldnames=[
                "policy",
                "metric",
                "real",
                "sim",
                "rel_err",
                "sim_copy_only",
                "sim_no_co_run",
                "sim_co_run_lone_speed",
            ],
        )
        w.writeheader()
        w.writerows(rows)
    report(a.routers, rows, real, sim, overhead)
    write_requests(a.out + ".requests.csv", a.routers, real, sim)
    print("\n".join(per_token_after_first(a.out + ".requests.csv") + per_class(a.out + ".requests.csv", a.long[0])))
    for policy in a.routers:
        print("\n".join(census_lines(policy, real[policy]["logs"], a.long[0], a.short[1])))
        print(f"{policy}: the router's last plan decision: {real[policy]['decision']}")
    print(f"wrote {a.out}.csv, {a.out}.requests.csv ({len(trace)} requests; logs in {log_dir})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
