"""scripts/eval_pool_slo_misses.py: each request is counted once, in its prompt class and output bucket."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import eval_pool_slo_misses as ps


def test_miss_counts_partition_the_requests():
    c = ps.misses(8, 1.0, "cascade", [0])
    total = c[("long", "n")] + c[("short", "n")]
    assert total >= 990  # the grid's requests (1,000 asked; seed 0's slice holds 999)
    for cls in ("long", "short"):
        assert (
            0 <= c[(cls, "ttft")] + c[(cls, "tpot")] <= c[(cls, "n")]
        )  # a TPOT miss is counted only without a TTFT miss
    buckets = ps.OUT_EDGES[:-1]
    assert sum(c[("out", lo, "n")] for lo in buckets) == c[("long", "n")]  # every long request has >= 2 tokens
    assert sum(c[("out", lo, "tpot")] for lo in buckets) == c[("long", "tpot")]


def test_the_prefix_hit_rate_is_summed_over_the_seeds():
    c = ps.misses(8, 1.0, "cache_aware", [0, 1])
    assert c["prompt_tokens"] > 0 and 0.0 < c["hit_tokens"] / c["prompt_tokens"] < 1.0  # Mooncake shares prefixes
    one = ps.misses(8, 1.0, "cache_aware", [0])
    assert c["prompt_tokens"] > one["prompt_tokens"] and c["hit_tokens"] >= one["hit_tokens"]
