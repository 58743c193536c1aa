"""replay/step_log.py: decode step times from SGLang's own scheduler log lines (format of SGLang 0.5.23's
CPU engine, copied from a server log)."""

from __future__ import annotations

import pytest

from sglang_cascade.core.hardware_fit import fit_rows, predict
from sglang_cascade.replay.step_log import decode_rows, summarize

P = (
    "[2026-12-04 03:02:58] Prefill batch, #new-seq: 1, #new-token: 15, #cached-token: 0, token usage: 0.00, "
    "#running-req: 0, #queue-req: 0, #pending-token: 0, cpu graph: False, input throughput (token/s): 9.60"
)


def D(b: int, tok: int, thr: float) -> str:
    return (
        f"[2026-12-04 03:03:03] Decode batch, #running-req: {b}, #token: {tok}, token usage: 0.01, "
        f"cpu graph: False, gen throughput (token/s): {thr:.2f}, #queue-req: 0"
    )


def test_only_windows_of_one_decode_step_count():
    lines = [P, D(1, 139, 6.24), D(1, 140, 40.00), P, D(2, 300, 10.0), D(2, 302, 80.0), "unrelated", D(3, 500, 90.0)]
    rows = decode_rows(lines)
    # the first decode after a prefill spans the prefill: skipped; "unrelated" lines do not break a run
    assert [(r["batch"], r["kv_sum"]) for r in rows] == [(1, 140), (2, 302), (3, 500)]
    assert [r["seconds"] for r in rows] == pytest.approx([1 / 40.0, 2 / 80.0, 3 / 90.0])
    assert all(r["kind"] == "decode" and r["prefill"] == [] for r in rows)
    assert summarize(rows)[2] == (1, pytest.approx(0.025))
    assert decode_rows([D(1, 10, 0.0), D(1, 11, 0.0)]) == []  # a zero throughput is no measurement


def test_rows_fit_the_cost_models_decode_terms():
    # steps of a known engine: 10 ms + 2 ms per request + 1 us per KV token, logged as SGLang does
    lines = []
    for b in (1, 2, 4, 8, 16):
        for kv in (200, 2000, 8000):
            t = 0.010 + 0.002 * b + 1e-6 * kv * b
            lines += [D(b, kv * b, b / t)] * 2
    rows = decode_rows(lines)
    coef = fit_rows(rows)
    errs = [abs(predict(coef, r) / r["seconds"] - 1) for r in rows]
    assert max(errs) < 0.05
