#!/usr/bin/env python3
"""How much of a trace's prompts an unbounded prefix cache could reuse: the share of prompt blocks (``hash_ids``)
that continue a leading run of blocks some earlier prompt already had, over the whole trace and over windows.

    python scripts/trace_prefix_reuse.py [--trace mooncake] [--window 1000]

An upper bound on any radix cache's hit rate (one cache for all instances, nothing evicted); the simulator's
per-instance caches (sim/prefix_cache.py) reach less.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from sglang_cascade.core.traces import TraceRequest, load_trace
from sglang_cascade.policies.prefix_affinity import PrefixTrees


def reuse(trace: Sequence[TraceRequest]) -> float:
    """Blocks of each prompt's leading run already seen, over all prompt blocks (0 without hashes): one
    ``PrefixTrees`` tree (the router's leading-run scan) large enough never to evict."""
    total = sum(len(r.hash_ids) for r in trace)
    seen = PrefixTrees(1, total)
    hit = 0
    for r in trace:
        hit += seen.matched(0, r.hash_ids)
        seen.insert(0, r.hash_ids)
    return hit / total if total else 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default="mooncake")
    ap.add_argument("--window", type=int, default=1000, help="requests per window (the grid's runs are ~1,000)")
    a = ap.parse_args(argv)
    tr = load_trace(a.trace)
    wins = [reuse(tr[i : i + a.window]) for i in range(0, len(tr) - a.window + 1, a.window)]
    print(f"{a.trace}: {len(tr)} requests, whole trace {reuse(tr):.1%} of prompt blocks reusable")
    print(f"windows of {a.window}: " + ", ".join(f"{w:.1%}" for w in wins))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
