"""Does the chunked-prefill budget matter for cascade on long-prompt traffic? (issue 14, "long prefills")

Runs the simulator (H100, the ``sglang`` instance scheduler, 40 s of arrivals at least 1,000 requests,
the grid's round_robin SLO capacity x load from docs/results/cascade_eval_grid.jsonl) for every
(trace, load, seed, router, chunk) with ``SimConfig.max_prefill_tokens = chunk`` on every instance
(SGLang's --chunked-prefill-size), and prints / writes mean and p99 E2E, p99 TTFT and TPOT, SLO attainment.

    nice -n 10 python scripts/eval_prefill_chunk.py --traces mooncake arxiv --loads medium high \\
        --chunks 2048 4096 8192 16384 --out docs/results/prefill_chunk.csv
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _eval_cascade():
    spec = importlib.util.spec_from_file_location("eval_cascade", ROOT / "scripts/eval_cascade.py")
    ev = importlib.util.module_from_spec(spec)
    sys.modules["eval_cascade"] = ev
    spec.loader.exec_module(ev)
    return ev


def capacity(grid: Path, model: str, trace: str, n: int) -> float:
    caps = [
        d["rate"]
        for d in map(json.loads, grid.read_text().splitlines())
        if d.get("kind") == "capacity"
        and (d["model"], d["trace"], d["instances"]) == (model, trace, n)
        and d["rate"] > 0
    ]
    if not caps:
        raise SystemExit(f"no capacity for {model} {trace} x{n} in {grid}: run scripts/eval_cascade_grid.py first")
    return caps[-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", nargs="+", default=["mooncake"])
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--loads", nargs="+", default=["medium", "high"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--routers", nargs="+", default=["cascade", "least_load", "llumnix"])
    ap.add_argument("--chunks", nargs="+", type=int, default=[2048, 4096, 8192, 16384])
    ap.add_argument("--duration", type=float, default=40.0)
    ap.add_argument("--grid", default=str(ROOT / "docs/results/cascade_eval_grid.jsonl"))
    ap.add_argument("--out", default=None, help="CSV of every run")
    a = ap.parse_args(argv)
    ev = _eval_cascade()
    rows = []
    for tr in a.traces:
        cap = capacity(Path(a.grid), a.model, tr, a.instances)
        for load in a.loads:
            rate = ev.LOADS[load] * cap
            for seed in a.seeds:
                for chunk in a.chunks:
                    for router in a.routers:
                        t0 = time.process_time()
                        r = ev.run_one(
                            tr,
                            a.model,
                            a.instances,
                            router,
                            rate,
                            ev.n_requests(rate, a.duration, 1000),
                            seed,
                            {"max_prefill_tokens": chunk},
                        )
                        r.update(load=load, chunk=chunk, seed=seed, cpu_s=time.process_time() - t0)
                        rows.append(r)
                        print(
                            f"{tr:10s} {load:9s} s{seed} chunk {chunk:6d} {router:12s} mean {r['e2e_mean']:7.2f} "
                            f"p99 {r['e2e_p99']:7.2f} ttft_p99 {r['ttft_p99']:6.2f} tpot_p99 {r['tpot_p99']:.4f} "
                            f"slo {r['slo_attainment']:.3f}",
                            flush=True,
                        )
    if a.out:
        keys = [
            "trace",
            "load",
            "seed",
            "chunk",
            "router",
            "rate",
            "requests",
            "completed",
            "e2e_mean",
            "e2e_p99",
            "ttft_p99",
            "tpot_p99",
            "slo_attainment",
            "migrations",
            "preemptions",
            "cpu_s",
        ]
        with open(a.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
