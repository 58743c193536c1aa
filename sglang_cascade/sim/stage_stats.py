"""Per-stage measurements of a simulated run of a fixed stage plan (what the stage model predicts):
time-weighted decode batch, per-token decode time (TPOT) and the TTFT of requests entering each stage.

Driver-side measurement only (no policy logic): it reads ``SimResult.schedules`` (run with
``SimConfig.record_schedule``) and the finished requests, over a time window that skips the fill-up and
drain of the run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import SimResult


def stage_measurements(
    res: SimResult, bounds: Sequence[int], members: Sequence[Sequence[int]], window: tuple[float, float]
) -> list[dict]:
    """For stage k (instances ``members[k]``, lengths ``[bounds[k-1], bounds[k])``), over iterations that
    start in ``window``: ``decode_batch`` (duration-weighted mean decode batch of its iterations with
    decode), ``tpot_s`` (mean gap between consecutive tokens of a request on the same instance, over the
    tokens produced there), ``prefill_busy`` (share of busy time in iterations that prefill) and
    ``ttft_s`` (mean TTFT of requests arriving in the window whose prompt lies in the stage's range)."""
    if res.schedules is None:
        raise ValueError("run the simulation with SimConfig(record_schedule=True)")
    lo, hi = window
    out = []
    edges = [0, *bounds, float("inf")]
    for k, ids in enumerate(members):
        num = den = pre = busy = 0.0
        gaps: list[float] = []
        for iid in ids:
            last: dict[str, float] = {}
            for it in res.schedules[iid]:
                end = it.start + it.duration
                if lo <= it.start < hi:
                    busy += it.duration
                    if it.prefill:
                        pre += it.duration
                    if it.decode:
                        num += len(it.decode) * it.duration
                        den += it.duration
                for rid in it.decode:
                    if rid in last and lo <= it.start < hi:
                        gaps.append(end - last[rid])
                    last[rid] = end
                for rid, _n in it.prefill:
                    last[rid] = end  # the first token comes with the last prefill chunk
        ttft = [
            r.first_token_time - r.arrival
            for r in res.requests
            if lo <= r.arrival < hi and edges[k] <= r.prompt_len < edges[k + 1] and r.first_token_time is not None
        ]
        out.append(
            {
                "decode_batch": num / den if den else 0.0,
                "tpot_s": float(np.mean(gaps)) if gaps else 0.0,
                "prefill_busy": pre / busy if busy else 0.0,
                "ttft_s": float(np.mean(ttft)) if ttft else 0.0,
                "tokens": len(gaps),
                "entries": len(ttft),
            }
        )
    return out
