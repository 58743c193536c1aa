"""Stage planner speed: CPU time of the table + DP for 64 instances x 64 buckets, and of the DP alone.

    python scripts/bench_stage_dp.py [--runs 5]

Targets (docs/cascade.md, "Speed"): table + DP under 0.22 s of CPU on the shared 2-core box (sharegpt, 5,000
requests, 200 req/s), the DP alone under 0.1 s (azure_conv, 4,000 requests). Best of ``--runs`` warm runs;
``time.process_time`` (CPU, so other load on the box counts less than in wall time).
"""

from __future__ import annotations

import argparse
import time

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.traces import load_trace
from sglang_cascade.policies.stage_dp import dp_partition, plan_partition
from sglang_cascade.policies.stage_model import LengthStats, QoEConfig, StageModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    cm = CostModel.for_names("llama-3-8b", "h100")

    sample = [(r.prompt_len, r.output_len) for r in load_trace("sharegpt", num_requests=5000, rate=200.0, seed=0)]
    plan_partition(sample, 200.0, 64, cm, buckets=64)  # warm the per-cost-model tables
    plan = [plan_partition(sample, 200.0, 64, cm, buckets=64, clock=time.process_time) for _ in range(args.runs)]
    best = min(r.dp_time_s for r in plan)
    print(f"table + DP, 64 instances x 64 buckets (sharegpt): best {best:.3f} s CPU of {args.runs}, target < 0.22 s")

    sample = [(r.prompt_len, r.output_len) for r in load_trace("azure_conv", num_requests=4000)]
    stats = LengthStats(sample)
    C, _ = StageModel(stats, stats.token_quantile_edges(64), 200.0, cm, QoEConfig()).segment_costs(64)
    times = []
    for _ in range(args.runs):
        t = time.process_time()
        dp_partition(C, 64)
        times.append(time.process_time() - t)
    print(
        f"DP alone, {C.shape[0] - 1} buckets x 64 instances (azure_conv): best {min(times):.3f} s CPU, target < 0.1 s"
    )


if __name__ == "__main__":
    main()
