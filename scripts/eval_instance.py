"""Evaluate the ``cascade`` instance scheduler against the ``sglang`` baseline in the simulator.

Tables (markdown to stdout and ``--out``; one CSV row per run to ``--csv``):

1. Load sweep, 1 and 8 instances, azure_conv / azure_code / sharegpt: throughput (output tok/s), p99 TPOT,
   mean / p99 E2E, mean TTFT, retractions, cascade's predictor accuracy.
2. Throughput at equal p99 TPOT: per scheduler the highest throughput among the swept loads whose p99
   TPOT stays within ``--slo-tpot``, and the ratio cascade / sglang.
3. Ablation on one instance (full H100 KV, and a memory-constrained KV pool ``--small-kv`` where
   reservation, pipelining and the CPU pool matter): each mechanism alone on top of a plain base, and
   all together (learned and oracle predictor).
4. 8 instances with the cascade router (when its module exists) x {sglang, cascade} schedulers.

    python scripts/eval_instance.py --quick            # a few minutes on 2 cores
    python scripts/eval_instance.py                    # larger traces, more loads
"""

from __future__ import annotations

import argparse
import csv
import importlib
import os
import time

from sglang_cascade.core.traces import load_trace
from sglang_cascade.sim import SimConfig
from sglang_cascade.sim.cluster import build
from sglang_cascade.sim.metrics import compute_metrics

# per-instance request rates (req/s) around each trace's saturation point on llama-3-8b / H100 (simulated)
BASE_RATE = {"azure_conv": 12.0, "azure_code": 10.0, "sharegpt": 5.0, "arxiv": 1.0}
BASE = "cascade:reserve=0,pipelining=0,aligned=0,offload=0,holdfirst=0"
ABLATION = [
    ("base (all off)", BASE),
    ("+reserve", "cascade:reserve=1,pipelining=0,aligned=0,offload=0,holdfirst=0"),
    ("+reserve+owner loans", "cascade:reserve=1,pipelining=1,aligned=0,offload=0,holdfirst=0"),
    ("+reserve+owner loans+pool profile", "cascade:reserve=1,pipelining=2,aligned=0,offload=0,holdfirst=0"),
    ("+holdfirst", "cascade:reserve=0,pipelining=0,aligned=0,offload=0,holdfirst=1"),
    ("+aligned", "cascade:reserve=0,pipelining=0,aligned=1,offload=0,holdfirst=0"),
    ("+offload", "cascade:reserve=0,pipelining=0,aligned=0,offload=1,holdfirst=0"),
    ("cascade default (greedy+holdfirst+aligned+offload)", "cascade"),
    ("all incl. reserve+pipelining (owner loans + pool profile)", "cascade:reserve=1"),
    ("all incl. reserve, owner loans only", "cascade:reserve=1,pipelining=1"),
    ("all incl. reserve+pipelining, oracle predictor", "cascade:reserve=1,predictor=oracle"),
    ("all incl. reserve+pipelining, overadmit", "cascade:reserve=1,overadmit=1"),
]
SCHEDULERS = ("sglang", "cascade", "cascade:reserve=1")


def run(
    trace: str,
    rate_per_inst: float,
    n: int,
    instances: int,
    scheduler: str,
    router: str = "round_robin",
    kv_capacity: int | None = None,
    host: int = 0,
    seed: int = 0,
    mixed_chunk: bool = False,
) -> dict:
    tr = load_trace(trace, num_requests=n, rate=rate_per_inst * instances, seed=seed)
    cfg = SimConfig(
        instances=instances,
        scheduler=scheduler,
        router=router,
        kv_capacity=kv_capacity,
        host_kv_tokens=host,
        seed=seed,
        mixed_chunk=mixed_chunk,
    )
    t0 = time.perf_counter()
    sim = build(cfg, tr)
    sim.run(tr)
    wall = time.perf_counter() - t0
    m = compute_metrics(sim, cfg, wall)
    row = {
        "trace": trace,
        "instances": instances,
        "rate": rate_per_inst * instances,
        "scheduler": scheduler,
        "router": router,
        "kv_capacity": kv_capacity or sim.insts[0].view.kv_capacity,
        "host_kv": host,
        "requests": n,
        "completed": m["completed"],
        "throughput": m["throughput_tok_s"],
        "tpot_p99": m["tpot_p99"],
        "e2e_mean": m["e2e_mean"],
        "e2e_p99": m["e2e_p99"],
        "ttft_mean": m["ttft_mean"],
        "retractions": m["preemptions"],
        "wall_s": wall,
    }
    agg: dict[str, float] = {}
    for inst in sim.insts:
        f = getattr(inst.sched, "metrics", None)
        if f is None:
            continue
        for k, v in f().items():
            agg.setdefault(k, []).append(v)  # type: ignore[arg-type]
    if agg:
        n_pred = sum(agg.get("pred_n", [0]))
        w = [x / max(1, n_pred) for x in agg.get("pred_n", [])]
        for k in ("pred_bucket_hit", "pred_mae", "pred_under_rate"):
            row[k] = sum(a * b for a, b in zip(w, agg.get(k, [])))
        for k in ("admitted_on_loan", "admitted_pooled", "borrower_evictions", "extensions", "parked", "max_running"):
            row[k] = sum(agg.get(k, [0])) if k != "max_running" else max(agg.get(k, [0]))
    return row


def fmt(x, d=2):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{d}f}"
    return str(x)


def sweep_table(rows: list[dict]) -> list[str]:
    out = [
        "| trace | inst | rate (req/s) | scheduler | tok/s | p99 TPOT (s) | E2E mean / p99 (s) | TTFT mean (s) "
        "| retractions | pred. bucket hit / MAE / under |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pred = "-"
        if "pred_bucket_hit" in r and r["scheduler"].startswith("cascade"):
            pred = f"{r['pred_bucket_hit']:.2f} / {r['pred_mae']:.0f} / {r['pred_under_rate']:.2f}"
        out.append(
            f"| {r['trace']} | {r['instances']} | {fmt(r['rate'], 1)} | {r['scheduler']} | {r['throughput']:.0f} "
            f"| {fmt(r['tpot_p99'], 3)} | {fmt(r['e2e_mean'])} / {fmt(r['e2e_p99'])} | {fmt(r['ttft_mean'])} "
            f"| {r['retractions']} | {pred} |"
        )
    return out


def _at_bound(rows: list[dict], bound: float) -> float | None:
    """Highest throughput with p99 TPOT <= bound, interpolating linearly between adjacent swept loads."""
    pts = sorted(rows, key=lambda r: r["rate"])
    best = None
    for i, r in enumerate(pts):
        if r["tpot_p99"] <= bound + 1e-9:
            best = max(best or 0.0, r["throughput"])
            if i + 1 < len(pts) and pts[i + 1]["tpot_p99"] > bound:
                a, b = r, pts[i + 1]
                f = (bound - a["tpot_p99"]) / (b["tpot_p99"] - a["tpot_p99"])
                best = max(best, a["throughput"] + f * (b["throughput"] - a["throughput"]))
    return best


def equal_tpot_table(rows: list[dict], slo: float) -> list[str]:
    """Highest swept throughput whose p99 TPOT stays within a bound: the fixed ``slo``, and the baseline's
    own p99 TPOT at its highest swept load (\"equal latency\" at the baseline's operating point)."""
    out = [
        "| trace | inst | p99 TPOT bound (s) | sglang tok/s | cascade tok/s | ratio | cascade:reserve=1 tok/s | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["trace"], r["instances"]) for r in rows})
    for tr, n in keys:
        mine = [
            r
            for r in rows
            if r["trace"] == tr
            and r["instances"] == n
            and r["completed"] == r["requests"]
            and r["tpot_p99"] is not None
        ]
        base = [r for r in mine if r["scheduler"] == "sglang"]
        bounds = [slo]
        if base:
            bounds.append(max(base, key=lambda r: r["rate"])["tpot_p99"])
        for bound in bounds:
            best = {s: _at_bound([r for r in mine if r["scheduler"] == s], bound) for s in SCHEDULERS}
            cells = [fmt(best["sglang"], 0)]
            for s in SCHEDULERS[1:]:
                ratio = best[s] / best["sglang"] if best[s] and best["sglang"] else None
                cells += [fmt(best[s], 0), fmt(ratio)]
            out.append(f"| {tr} | {n} | {bound:.3f} | " + " | ".join(cells) + " |")
    return out


def ablation_table(rows: list[dict]) -> list[str]:
    out = [
        "| setting | variant | tok/s | p99 TPOT | E2E mean / p99 | TTFT mean | retractions | on loan / pooled "
        "| borrower evictions | extensions | parked | max running |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['setting']} | {r['variant']} | {r['throughput']:.0f} | {fmt(r['tpot_p99'], 3)} "
            f"| {fmt(r['e2e_mean'])} / {fmt(r['e2e_p99'])} | {fmt(r['ttft_mean'])} | {r['retractions']} "
            f"| {r.get('admitted_on_loan', '-')} / {r.get('admitted_pooled', '-')} | {r.get('borrower_evictions', '-')} | {r.get('extensions', '-')} "
            f"| {r.get('parked', '-')} | {r.get('max_running', '-')} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="cascade instance scheduler vs sglang (simulated)")
    ap.add_argument("--quick", action="store_true", help="small traces, few loads (a few minutes on 2 cores)")
    ap.add_argument("--traces", default="azure_conv,azure_code,sharegpt")
    ap.add_argument("--instances", default="1,8")
    ap.add_argument("--slo-tpot", type=float, default=0.1)
    ap.add_argument("--small-kv", type=int, default=48_000, help="KV tokens per instance, memory-constrained runs")
    ap.add_argument("--host-kv", type=int, default=200_000, help="host KV pool per instance for cascade runs")
    ap.add_argument(
        "--mixed-chunk",
        action="store_true",
        help="engines run with SGLang's --enable-mixed-chunk (prefill and decode in one forward, for both "
        "schedulers); default: SGLang's default, a prefill batch runs alone (SimConfig.mixed_chunk)",
    )
    ap.add_argument("--out", default="docs/results/instance_eval.md")
    ap.add_argument("--csv", default="docs/results/instance_eval.csv")
    a = ap.parse_args()
    q = a.quick
    traces = a.traces.split(",")
    insts = [int(x) for x in a.instances.split(",")]
    loads = [0.5, 1.0, 1.5] if q else [0.5, 0.75, 1.0, 1.25, 1.5, 2.0]
    n1 = 600 if q else 3000
    t_start = time.perf_counter()
    rows: list[dict] = []
    lines: list[str] = [
        "# Instance scheduler evaluation (simulated, llama-3-8b on H100)",
        "",
        f"Command: `python scripts/eval_instance.py{' --quick' if q else ''}"
        f"{' --mixed-chunk' if a.mixed_chunk else ''}`; "
        f"{n1} requests per instance per run; rates are per-instance multiples of "
        f"{ {t: BASE_RATE[t] for t in traces} } req/s. Cascade runs get a host KV pool of "
        f"{a.host_kv} tokens per instance; sglang has none (it cannot park). Engine: "
        + (
            "SGLang with --enable-mixed-chunk (a forward may run prefill chunks and decode together; both "
            "schedulers use it)."
            if a.mixed_chunk
            else "SGLang's default (a prefill batch runs alone; a plan's decode part waits for the next forward)."
        ),
        "",
    ]
    # 1. sweep
    for tr in traces:
        for n in insts:
            for f in loads:
                rate = BASE_RATE[tr] * f
                for s in SCHEDULERS:
                    r = run(
                        tr,
                        rate,
                        n1 * n if n == 1 else (n1 // 2) * n,
                        n,
                        s,
                        host=a.host_kv if s != "sglang" else 0,
                        mixed_chunk=a.mixed_chunk,
                    )
                    rows.append(r)
                    print(
                        f"[{time.perf_counter() - t_start:6.0f}s] {tr} x{n} rate={r['rate']:.1f} {s}: "
                        f"{r['throughput']:.0f} tok/s p99 TPOT {fmt(r['tpot_p99'], 3)} E2E {fmt(r['e2e_mean'])}",
                        flush=True,
                    )
    lines += ["## Load sweep", ""] + sweep_table(rows) + [""]
    lines += (
        [
            "## Throughput at equal p99 TPOT",
            "",
            f"Bounds: the fixed SLO {a.slo_tpot} s, and sglang's own p99 TPOT at its highest swept load; "
            "throughput at a bound is interpolated linearly between adjacent swept loads.",
            "",
        ]
        + equal_tpot_table(rows, a.slo_tpot)
        + [""]
    )
    # 2. ablation
    abl: list[dict] = []
    tr0 = traces[0]
    settings = [(tr0, "full KV", None, 1.5), (tr0, f"KV {a.small_kv}", a.small_kv, 0.75)]
    if "sharegpt" in traces and tr0 != "sharegpt":
        settings.append(("sharegpt", f"KV {a.small_kv}", a.small_kv, 0.75))
    for tra, setting, kv, f in settings:
        for label, v in ABLATION:
            r = run(tra, BASE_RATE[tra] * f, n1, 1, v, kv_capacity=kv, host=a.host_kv, mixed_chunk=a.mixed_chunk)
            r["setting"] = f"{tra} {setting} @{BASE_RATE[tra] * f:.1f} req/s"
            r["variant"] = label
            abl.append(r)
            print(
                f"[{time.perf_counter() - t_start:6.0f}s] ablation {tra} {setting} {label}: {r['throughput']:.0f} tok/s "
                f"E2E {fmt(r['e2e_mean'])} retr {r['retractions']}",
                flush=True,
            )
        r = run(tra, BASE_RATE[tra] * f, n1, 1, "sglang", kv_capacity=kv, mixed_chunk=a.mixed_chunk)
        r["setting"] = f"{tra} {setting} @{BASE_RATE[tra] * f:.1f} req/s"
        r["variant"] = "sglang baseline"
        abl.append(r)
    lines += ["## Ablation (1 instance)", ""] + ablation_table(abl) + [""]
    rows += abl
    # 3. with the cascade router
    try:
        importlib.import_module("sglang_cascade.policies.cascade").make_cascade_router  # noqa: B018
        have_router = True
    except (ImportError, AttributeError):
        have_router = False
    if have_router and 8 in insts:
        rr: list[dict] = []
        for router in ("round_robin", "cascade"):
            for s in SCHEDULERS:
                try:
                    r = run(
                        tr0,
                        BASE_RATE[tr0] * 1.25,
                        (n1 // 2) * 8,
                        8,
                        s,
                        router=router,
                        host=a.host_kv if s != "sglang" else 0,
                        mixed_chunk=a.mixed_chunk,
                    )
                except Exception as e:  # report, do not hide
                    print(f"router {router} x {s} failed: {e!r}")
                    continue
                r["setting"] = f"{tr0} x8 @{r['rate']:.0f} req/s, router {router}"
                r["variant"] = s
                rr.append(r)
                print(
                    f"[{time.perf_counter() - t_start:6.0f}s] router {router} + {s}: {r['throughput']:.0f} tok/s "
                    f"E2E {fmt(r['e2e_mean'])}",
                    flush=True,
                )
        lines += ["## With the cascade router (8 instances)", ""] + ablation_table(rr) + [""]
        rows += rr
    else:
        lines += ["(cascade router module not available: router combination skipped)", ""]
    lines += [f"Total wall time: {time.perf_counter() - t_start:.0f} s", ""]
    text = "\n".join(lines)
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as fh:
            fh.write(text)
    if a.csv:
        keys = sorted({k for r in rows for k in r})
        with open(a.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
