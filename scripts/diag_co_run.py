"""How much does a second busy CPU-engine server slow a server's decode iterations? From two servers' own step
logs (SGLang's batch lines with ``--decode-log-interval 1``, ``SGLANG_LOG_MS=1``; replay/step_log.py) written at
the same time on one host (issue 15, docs/fidelity.md "The co-run slow-down").

    python scripts/diag_co_run.py --profile docs/results/fidelity_mooncake4.profile.json \
        docs/results/fidelity_mooncake4_logs/server_stock0.log.gz docs/results/fidelity_mooncake4_logs/server_stock1.log.gz

Each decode iteration of either log is timed over the profile's prediction for its batch; an iteration is *lone*
when the other server logged no batch line within ``--max-gap`` of it (idle: servers run with --sleep-on-idle),
*co-run* when the other's busy spans (its batch lines closer than ``--max-gap``) cover all of it. Per
KV bucket: the median ratio of each and co-run / lone, the slow-down the profile's ``co_run_slowdown`` stands for.
"""

from __future__ import annotations

import argparse
import bisect
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import eval_fidelity as ev  # noqa: E402

from sglang_cascade.core.hardware import hardware_profile  # noqa: E402
from sglang_cascade.core.hardware_fit import predict  # noqa: E402
from sglang_cascade.replay.step_log import busy_spans, read_log_lines, step_rows  # noqa: E402

KV_EDGES = (0, 1000, 3000, 6000, 10**9)


def covered(a: float, b: float, spans: list[tuple[float, float]]) -> float:
    """The fraction of [a, b] that ``spans`` (sorted, disjoint: busy_spans) cover (step_log.overlaps' search)."""
    j = max(0, bisect.bisect_right(spans, (a, float("inf"))) - 1)  # the last span starting at or before a
    got = 0.0
    while j < len(spans) and spans[j][0] < b:
        got += max(0.0, min(b, spans[j][1]) - max(a, spans[j][0]))
        j += 1
    return got / (b - a)


def decode_ratios(mine: list[dict], spans: list[tuple[float, float]], coef: dict) -> list[tuple[float, float, float]]:
    """(fraction the other server's busy ``spans`` cover, KV tokens, measured / predicted) per decode iteration of
    ``mine``."""
    out = []
    for r in mine:
        if r["kind"] == "decode" and r["seconds"] > 0:
            a, b = r["t_end"] - r["seconds"], r["t_end"]
            out.append((covered(a, b, spans), r["kv_sum"], r["seconds"] / predict(coef, r, ev.MODEL)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log_a")
    ap.add_argument("log_b")
    ap.add_argument("--profile", required=True, help="the cpu-engine profile the iterations are timed against")
    ap.add_argument(
        "--max-gap",
        type=float,
        default=1.0,
        help="the other server counts busy between two of its batch lines at most this far apart (seconds; "
        "replay.step_log.busy_spans: every batch line, a long prefill's included)",
    )
    a = ap.parse_args()
    ev.use_profile(a.profile)
    prof = hardware_profile(ev.GPU)
    chunk = int(prof.get("chunked_prefill_size", 0)) or None
    lines = [read_log_lines(p) for p in (a.log_a, a.log_b)]
    rows = [step_rows(x, chunk=chunk, times=True) for x in lines]
    spans = [busy_spans(x, max_gap=a.max_gap) for x in lines]
    ratios = decode_ratios(rows[0], spans[1], prof["fit"]) + decode_ratios(rows[1], spans[0], prof["fit"])
    print(f"profile co_run_slowdown: {prof.get('co_run_slowdown')}")
    print("| KV tokens | lone iterations | lone / profile | co-run iterations | co-run / profile | co-run / lone |")
    print("|---|---|---|---|---|---|")
    for lo, hi in zip(KV_EDGES, KV_EDGES[1:], strict=False):
        lone = [x for f, kv, x in ratios if lo <= kv < hi and f < 0.01]
        co = [x for f, kv, x in ratios if lo <= kv < hi and f > 0.99]
        if lone and co:
            ml, mc = statistics.median(lone), statistics.median(co)
            print(
                f"| {lo}-{hi if hi < 10**9 else ''} | {len(lone)} | {ml:.3f} | {len(co)} | {mc:.3f} | {mc / ml:.3f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
