#!/usr/bin/env python3
"""One Mooncake cell at a given rate, several cascade variants: the plan checks each made (their log lines: the
candidates' replay scores and the choice) and the run's SLO attainment and E2E, as the evaluation grid runs them
(``eval_cascade.run_one``: 40 s of arrivals, length-scaled TTFT SLO with ``--slo-ttft-scale``). Used to see
why a checked pool size differs from the one that meets the SLOs (docs/results/cascade_eval.md, pool10).

    python scripts/probe_pool_check.py --model llama-3.1-8b --instances 16 --rate 28 --seed 0 \\
        --routers cascade cascade:prefill_pool=10 cascade:prefill_pool=11
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_cascade as ev


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "plan check" in record.getMessage():
            self.lines.append(record.getMessage())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.1-8b", help="name@tp, as the grid's --models")
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--rate", type=float, required=True, help="req/s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--duration", type=float, default=40.0, help="seconds of arrivals (>= 500 requests)")
    ap.add_argument("--slo-ttft-scale", type=float, default=3.0)
    ap.add_argument("--routers", nargs="+", default=["cascade"])
    a = ap.parse_args(argv)
    log = logging.getLogger("sglang_cascade.cascade")
    log.setLevel(logging.INFO)
    extra = {"slo_ttft_scale": a.slo_ttft_scale} if a.slo_ttft_scale > 0 else {}
    n_req = ev.n_requests(a.rate, a.duration, 500)
    print(f"{a.model} mooncake N={a.instances} rate={a.rate:g} seed={a.seed} requests={n_req}")
    for router in a.routers:
        h = _Lines()
        log.addHandler(h)
        try:
            row = ev.run_one("mooncake", a.model, a.instances, router, a.rate, n_req, a.seed, extra)
        finally:
            log.removeHandler(h)
        for line in h.lines:
            print("  " + line)
        print(
            f"{router}: SLO attainment {row['slo_attainment']:.3f}, E2E mean / p99 {row['e2e_mean']:.2f} / "
            f"{row['e2e_p99']:.2f} s, TTFT mean {row['ttft_mean']:.2f} s, migrations {row['migrations']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
