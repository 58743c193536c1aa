"""Decode iteration times from SGLang's own scheduler log (``--decode-log-interval 1``).

With ``--decode-log-interval 1`` SGLang 0.5.23's scheduler (managers/scheduler_components/
metrics_reporter.py) logs every decode step::

    [...] Decode batch, #running-req: 3, #token: 412, token usage: 0.03, cpu graph: False,
          gen throughput (token/s): 71.25, #queue-req: 0

where the throughput is the tokens generated since the previous decode log over the wall time since it.
Between two consecutive decode lines with no prefill line in between, that window is exactly one decode
step of the logged batch, so its time is ``#running-req / throughput`` (the batch and the KV tokens in
use, ``#token``, are the ones of that step). :func:`decode_rows` turns a log into rows of
``core.hardware_fit`` (``kind="decode"``): server-side step times, free of the HTTP / tokenizer /
detokenizer path that client timing includes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_DECODE = re.compile(
    r"Decode batch(?: \[\d+\])?, #running-req: (\d+), #token: (\d+),.*?gen throughput \(token/s\): ([0-9.]+)"
)
_PREFILL = "Prefill batch"


def decode_rows(lines: Iterable[str], min_batch: int = 1) -> list[dict]:
    """One row per decode step that directly follows another decode step (a prefill in the window, or
    the first step after one, is skipped: its window is not one decode step)."""
    rows = []
    prev_decode = False
    for line in lines:
        if _PREFILL in line:
            prev_decode = False
            continue
        m = _DECODE.search(line)
        if m is None:
            continue
        batch, tokens, thr = int(m.group(1)), int(m.group(2)), float(m.group(3))
        if prev_decode and batch >= min_batch and thr > 0:
            rows.append(
                {
                    "kind": "decode",
                    "prefill": [],
                    "batch": batch,
                    "kv_sum": tokens,
                    "kv_max": tokens,  # the log gives the sum only; kv_max is not a term of the CPU fit
                    "seconds": batch / thr,
                }
            )
        prev_decode = True
    return rows


def summarize(rows: list[dict]) -> dict[int, tuple[int, float]]:
    """Per batch size: (steps, median seconds)."""
    import statistics

    by: dict[int, list[float]] = {}
    for r in rows:
        by.setdefault(r["batch"], []).append(r["seconds"])
    return {b: (len(v), statistics.median(v)) for b, v in sorted(by.items())}
