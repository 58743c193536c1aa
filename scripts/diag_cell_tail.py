#!/usr/bin/env python3
"""Who makes a cell's p99 E2E? One evaluation-grid cell (``eval_cascade.sim_config`` / ``requests_for``, as
``run_one``) simulated for each given router; prints E2E mean / p99, the requests at or above the p99 (how many were moved
between instances, their median prompt and output, their mean time per output token) and the cascade router's plan
decisions (its log lines: start-up and drift checks with the candidates' replay scores).

    python scripts/diag_cell_tail.py --trace arxiv --model llama-3.1-8b --instances 16 --rate 123.0177514945687 \\
        --requests 4920 --seed 0 cascade cascade:check_staging=0 least_load
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import eval_cascade as ev
import numpy as np
from cell_at_commit import add_cell_args

from sglang_cascade.core.specs import get_model
from sglang_cascade.sim import simulate


def tail_report(router: str, a: argparse.Namespace) -> str:
    cfg = ev.sim_config(a.model, a.instances, router, a.seed)
    reqs = ev.requests_for(a.trace, a.requests, a.rate, a.seed, get_model(cfg.model).max_context)
    done = simulate(reqs, cfg).requests
    e2e = [r.finish_time - r.arrival for r in done]
    mean, p99 = statistics.fmean(e2e), float(np.percentile(e2e, 99))  # as the simulator's metrics
    tail = [r for r, e in zip(done, e2e) if e >= p99]
    cut = len(tail)
    tpot = statistics.fmean((r.finish_time - r.first_token_time) / max(1, r.output_len - 1) for r in tail)
    return (
        f"{router}: E2E mean / p99 {mean:.2f} / {p99:.2f} s; slowest {cut}: {sum(r.migrations > 0 for r in tail)} moved, "
        f"median prompt {statistics.median(r.prompt_len for r in tail):.0f} / output "
        f"{statistics.median(r.output_len for r in tail):.0f} tokens, {1000 * tpot:.1f} ms per output token; all "
        f"{len(done)}: {sum(r.migrations > 0 for r in done)} moved"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("routers", nargs="+")
    add_cell_args(ap)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="  %(message)s", stream=sys.stdout)
    logging.getLogger("sglang_cascade.cascade").setLevel(logging.INFO)  # the plan decisions' log lines
    for router in a.routers:
        print(tail_report(router, a), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
