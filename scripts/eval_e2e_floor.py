#!/usr/bin/env python3
"""How low any router's mean / p99 E2E can go in each cell of the issue-14 grid: the contention-free floor.

    python scripts/eval_e2e_floor.py [--store docs/results/cascade_eval_grid6.jsonl] [--out docs/results/e2e_floor]

A request's *floor* is its E2E alone on an idle instance (the simulator's cost model: its prefill in
``max_prefill_tokens`` chunks, then one batch-1 decode step per further output token), with every prompt block an
earlier request carried already in the radix cache (a perfect, never-evicting cache shared by all instances;
Mooncake's ``hash_ids``, 512-token blocks; the length-table traces share nothing). Batching, queueing and cache
misses only add to it, so no router, baseline or cascade, gets a cell's mean or p99 below the floor of the same
requests. ``floor / best baseline`` is therefore the lowest ratio any router can reach in that cell: where it is
above 0.7, issue 14's "mean E2E <= 0.7x the best baseline" cannot be met there.

Reads the grid's run rows (rates, seeds, the best baseline and cascade per cell) from ``--store``; regenerates each
cell's requests exactly as the grid did (scripts/eval_cascade.py ``requests_for``). Writes ``<out>.md`` and ``.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_cascade as ev

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.specs import get_model
from sglang_cascade.policies.prefix_affinity import PrefixTrees
from sglang_cascade.sim import SimConfig
from sglang_cascade.sim.prefix_cache import prompt_blocks


def decode_seconds(cm: CostModel, prompt: int, out: int, memo: dict) -> float:
    """Batch-1 decode steps for output tokens 2..``out`` (the first comes with the prefill)."""
    key = (prompt, out)
    if key not in memo:
        memo[key] = sum(cm.iteration_time(0, 0.0, 1, kv, kv) for kv in range(prompt + 1, prompt + out))
    return memo[key]


def floors(reqs, cm: CostModel, chunk: int, block: int, memo: dict) -> np.ndarray:
    """Each request's contention-free E2E (seconds), in arrival order with a shared perfect prefix cache (one
    ``PrefixTrees`` tree, the router's leading-run scan, large enough never to evict)."""
    blocks = [list(prompt_blocks(r.hash_ids, r.prompt_len, block)) if r.hash_ids else [] for r in reqs]
    seen = PrefixTrees(1, sum(len(b) for b in blocks) + 1)
    out = np.empty(len(reqs))
    for i, (r, hashes) in enumerate(zip(reqs, blocks)):
        cached = max(0, min(seen.matched(0, hashes) * block, r.prompt_len - 1))
        seen.insert(0, hashes)
        out[i] = cm.isolated_prefill_time(r.prompt_len, chunk, cached) + decode_seconds(
            cm, r.prompt_len, r.output_len, memo
        )
    return out


def cells(store: Path) -> dict:
    """(model, trace, N, load) -> {"rate": r, "seeds": [...], router: ([means], [p99s])} from the grid's run rows."""
    grid: dict = defaultdict(lambda: {"seeds": set(), "runs": defaultdict(lambda: ([], []))})
    for line in store.read_text().splitlines():
        d = json.loads(line) if line.strip() else {}
        if d.get("kind") != "run":
            continue
        c = grid[(d["model"], d["trace"], d["instances"], d["load"])]
        c["rate"] = d["rate"]
        c["seeds"].add(d["seed"])
        c["runs"][d["router"]][0].append(d["e2e_mean"])
        c["runs"][d["router"]][1].append(d["e2e_p99"])
    return grid


def best(runs: dict, k: int) -> tuple[str, float]:
    """The best baseline (every router but cascade's variants) on metric ``k`` (0 mean, 1 p99)."""
    vals = {r: float(np.mean(v[k])) for r, v in runs.items() if not r.startswith("cascade")}
    name = min(vals, key=vals.get)
    return name, vals[name]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="docs/results/cascade_eval_grid6.jsonl")
    ap.add_argument("--out", default="docs/results/e2e_floor")
    ap.add_argument("--traces", nargs="*", default=None, help="only these traces (default: every trace in the store)")
    a = ap.parse_args(argv)
    rows = []
    cms: dict = {}
    for (model, tr, n, load), c in sorted(cells(Path(a.store)).items()):
        if a.traces and tr not in a.traces:
            continue
        name, tp = ev.model_tp(model)
        cfg = SimConfig(model=name, gpu="h100", tp=tp)
        cm, memo = cms.setdefault((name, tp), (CostModel.for_names(name, "h100", tp), {}))
        means, p99s = [], []
        for seed in sorted(c["seeds"]):
            reqs = ev.requests_for(
                tr, ev.n_requests(c["rate"], 40.0, 1000), c["rate"], seed, get_model(name).max_context
            )
            f = floors(reqs, cm, cfg.max_prefill_tokens, cfg.prefix_cache_block, memo)
            means.append(float(f.mean()))
            p99s.append(float(np.percentile(f, 99)))
        bm, bmv = best(c["runs"], 0)
        bp, bpv = best(c["runs"], 1)
        cas = c["runs"].get("cascade", ([np.nan], [np.nan]))
        fm, fp = float(np.mean(means)), float(np.mean(p99s))
        rows.append(
            dict(
                model=model, trace=tr, instances=n, load=load, seeds=len(c["seeds"]), floor_mean=fm, floor_p99=fp,
                best_mean_router=bm, best_mean=bmv, best_p99_router=bp, best_p99=bpv,
                cascade_mean=float(np.mean(cas[0])), cascade_p99=float(np.mean(cas[1])),
                floor_ratio_mean=fm / bmv, floor_ratio_p99=fp / bpv,
            )
        )  # fmt: skip
        r = rows[-1]
        print(
            f"{model} {tr} N={n} {load}: floor {fm:.2f}/{fp:.2f} best {bmv:.2f}/{bpv:.2f} cascade "
            f"{r['cascade_mean']:.2f}/{r['cascade_p99']:.2f} lowest reachable ratio {r['floor_ratio_mean']:.2f}x",
            flush=True,
        )
    with open(a.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    Path(a.out + ".md").write_text(report(rows, a.store))
    return 0


def report(rows: list[dict], store: str) -> str:
    out = [
        f"# The contention-free E2E floor per grid cell (`python scripts/eval_e2e_floor.py --store {store}`)",
        "",
        "floor = each request alone on an idle instance with a perfect shared prefix cache (seed-averaged mean /",
        "p99); `floor / best` is the lowest mean (p99) ratio any router can reach in the cell; `cascade / best` is",
        "what cascade reached there (the store's runs).",
        "",
        "| model | trace | N | load | floor mean / p99 (s) | best baseline mean / p99 (s) | floor / best | cascade / best |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['trace']} | {r['instances']} | {r['load']} | {r['floor_mean']:.2f} / "
            f"{r['floor_p99']:.2f} | {r['best_mean']:.2f} / {r['best_p99']:.2f} | {r['floor_ratio_mean']:.2f}x / "
            f"{r['floor_ratio_p99']:.2f}x | {r['cascade_mean'] / r['best_mean']:.2f}x / "
            f"{r['cascade_p99'] / r['best_p99']:.2f}x |"
        )
    lc = [r for r in rows if r["trace"] == "mooncake"]
    over = [r for r in lc if r["floor_ratio_mean"] > 0.7]
    out += [
        "",
        f"Long context (mooncake): in {len(over)} of {len(lc)} cells the floor alone is above 0.7x the best "
        "baseline's mean, so the 0.7x target cannot be met there by any router: "
        + ", ".join(f"{r['model']} N={r['instances']} {r['load']} ({r['floor_ratio_mean']:.2f}x)" for r in over)
        + ".",
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
