#!/usr/bin/env python3
"""Which requests miss the SLOs near the highest SLO-meeting rate, cascade (its prefill pool) against cache_aware:
Mooncake, 70B at TP 4, the length-scaled TTFT SLO of the issue-14 rate search.

    python scripts/eval_pool_slo_misses.py [--instances 8] [--loads 1.0 1.14] [--seeds 0 1 2]
        [--out docs/results/pool_slo_misses]

Each run: the grid's requests (scripts/eval_cascade.py ``requests_for``) at ``load`` x the analytic pooled
capacity; a request misses on TTFT when its TTFT > max(2 s, 3 x its isolated prefill), else on TPOT when its TPOT >
0.1 s. The prefix hit rate is the radix cache's over all prompt tokens of the seeds. Misses are counted per prompt
class (long: >= 8192 tokens, the pool's) and, for the long prompts' TPOT
misses, per output length: a pooled request moves after its first token, and the move's stall (the pool member's
next iteration boundary, up to one prefill chunk) lands in the gap before its second token, which short outputs
cannot amortize. Sums over the seeds. Writes ``<out>.md``. ``router@policy`` runs every engine with SGLang's
``--schedule-policy policy``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_cascade as ev

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.specs import get_model
from sglang_cascade.policies.cascade_config import CascadeRouterConfig
from sglang_cascade.sim import simulate
from sglang_cascade.sim.metrics import request_arrays, ttft_slos

MODEL = "llama-3.1-70b@4"
OUT_EDGES = [2, 10, 50, 1 << 30]
LONG = CascadeRouterConfig().prefill_min  # the pool's prompts


def misses(n: int, load: float, router: str, seeds) -> dict:
    name, tp = ev.model_tp(MODEL)
    cm = CostModel.for_names(name, "h100", tp)
    rate = load * ev.analytic_capacity("mooncake", MODEL, n)
    c: dict = {"rate": rate}
    for seed in seeds:
        reqs = ev.requests_for("mooncake", ev.n_requests(rate, 40.0, 1000), rate, seed, get_model(name).max_context)
        cfg = ev.sim_config(MODEL, n, router, seed, slo_ttft_scale=3.0)
        res = simulate(reqs, cfg)
        c["hit_tokens"] = c.get("hit_tokens", 0) + res.metrics.get("prefix_hit_tokens", 0)
        c["prompt_tokens"] = c.get("prompt_tokens", 0) + res.metrics["prompt_tokens"]
        a = request_arrays(res.requests)
        ttft_miss = a["ttft"] > ttft_slos(res.requests, cfg.slo_ttft, 3.0, cm, cfg.max_prefill_tokens)
        tpot_miss = ~ttft_miss & (a["tpot"] > cfg.slo_tpot)
        long = a["prompt"] >= LONG
        for cls, m in (("long", long), ("short", ~long)):
            for k, v in (("n", m), ("ttft", m & ttft_miss), ("tpot", m & tpot_miss)):
                c[(cls, k)] = c.get((cls, k), 0) + int(v.sum())
        for lo, hi in zip(OUT_EDGES, OUT_EDGES[1:]):
            m = long & (a["output"] >= lo) & (a["output"] < hi)
            c[("out", lo, "n")] = c.get(("out", lo, "n"), 0) + int(m.sum())
            c[("out", lo, "tpot")] = c.get(("out", lo, "tpot"), 0) + int((m & tpot_miss).sum())
    return c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--loads", nargs="*", type=float, default=[1.0, 1.14])
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--routers", nargs="*", default=["cascade", "cache_aware"])
    ap.add_argument("--out", default="docs/results/pool_slo_misses")
    a = ap.parse_args(argv)
    head = (
        "| router | load (rate) | attained | prefix hit rate | long: TTFT / TPOT misses | short: TTFT / TPOT misses | "
    )
    head += " | ".join(f"long, output [{lo}, {'...' if hi >= 1 << 30 else hi}): TPOT misses" for lo, hi in
                       zip(OUT_EDGES, OUT_EDGES[1:])) + " |"  # fmt: skip
    lines = [
        f"# SLO misses near the highest SLO-meeting rate (`python scripts/eval_pool_slo_misses.py`), Mooncake,"
        f" {MODEL} x {a.instances}, seeds {a.seeds} (summed)",
        "",
        head,
        "|---|---|---|---|---|---|" + "---|" * (len(OUT_EDGES) - 1),
    ]
    for load in a.loads:
        for router in a.routers:
            c = misses(a.instances, load, router, a.seeds)
            total = c[("long", "n")] + c[("short", "n")]
            missed = sum(c[(k, m)] for k in ("long", "short") for m in ("ttft", "tpot"))
            outs = " | ".join(f"{c[('out', lo, 'tpot')]} of {c[('out', lo, 'n')]}" for lo in OUT_EDGES[:-1])
            lines.append(
                f"| {router} | {load:g} ({c['rate']:.2f} req/s) | {1 - missed / total:.3f} | "
                f"{c['hit_tokens'] / max(1, c['prompt_tokens']):.3f} | "
                f"{c[('long', 'ttft')]} / {c[('long', 'tpot')]} of {c[('long', 'n')]} | "
                f"{c[('short', 'ttft')]} / {c[('short', 'tpot')]} of {c[('short', 'n')]} | {outs} |"
            )
            print(lines[-1], flush=True)
    Path(a.out + ".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
