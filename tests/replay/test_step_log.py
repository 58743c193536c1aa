"""replay.step_log: SGLang's per-step batch log lines -> iteration times (scripts/calibrate_cpu_engine.py
--source server-log). The lines below were copied from a CPU-engine server (tiny model, --threads 1,
--decode-log-interval 1, SGLANG_LOG_MS=1, SGLANG_LOG_FORWARD_ITERS=1) while one request decoded and prefills
of 8 and 128 tokens arrived (2026-12-04)."""

from __future__ import annotations

import re

import pytest

from sglang_cascade.core.hardware_fit import fit_rows, predict
from sglang_cascade.replay.step_log import (
    StepLogError,
    decode_rows,
    parse_line,
    parse_lines,
    step_rows,
    summarize,
)

LOG = """\
[2026-12-04 04:09:59.150] Decode batch [66], #running-req: 1, #token: 55, token usage: 0.00, cpu graph: False, gen throughput (token/s): 87.32, #queue-req: 0
[2026-12-04 04:09:59.152] INFO:     127.0.0.1:50914 - "POST /generate HTTP/1.1" 200 OK
[2026-12-04 04:09:59.163] Decode batch [67], #running-req: 1, #token: 56, token usage: 0.00, cpu graph: False, gen throughput (token/s): 77.98, #queue-req: 0
[2026-12-04 04:09:59.181] Decode batch [68], #running-req: 1, #token: 64, token usage: 0.00, cpu graph: False, gen throughput (token/s): 54.86, #queue-req: 0
[2026-12-04 04:09:59.195] Prefill batch [69], #new-seq: 1, #new-token: 8, #cached-token: 0, token usage: 0.00, #running-req: 1, #queue-req: 0, #pending-token: 0, cpu graph: False, input throughput (token/s): 15.63
[2026-12-04 04:09:59.207] Decode batch [70], #running-req: 1, #token: 58, token usage: 0.00, cpu graph: False, gen throughput (token/s): 39.84, #queue-req: 0
[2026-12-04 04:09:59.219] Decode batch [71], #running-req: 1, #token: 59, token usage: 0.00, cpu graph: False, gen throughput (token/s): 81.56, #queue-req: 0
[2026-12-04 04:09:59.552] Decode batch [98], #running-req: 1, #token: 85, token usage: 0.01, cpu graph: False, gen throughput (token/s): 82.79, #queue-req: 0
[2026-12-04 04:09:59.598] Decode batch [99], #running-req: 1, #token: 213, token usage: 0.01, cpu graph: False, gen throughput (token/s): 21.87, #queue-req: 0
[2026-12-04 04:09:59.611] Prefill batch [100], #new-seq: 1, #new-token: 128, #cached-token: 0, token usage: 0.01, #running-req: 1, #queue-req: 0, #pending-token: 0, cpu graph: False, input throughput (token/s): 585.05
[2026-12-04 04:09:59.625] Decode batch [101], #running-req: 1, #token: 87, token usage: 0.01, cpu graph: False, gen throughput (token/s): 37.14, #queue-req: 0
[2026-12-04 04:09:59.638] Decode batch [102], #running-req: 1, #token: 88, token usage: 0.01, cpu graph: False, gen throughput (token/s): 72.82, #queue-req: 0
""".splitlines()


def test_parse_fields():
    d = parse_line(LOG[0])
    assert (d.kind, d.forward_iter, d.running, d.kv_tokens, d.throughput, d.has_ms) == (
        "decode",
        66,
        1,
        55,
        87.32,
        True,
    )
    p = parse_line(LOG[4])
    assert (p.kind, p.forward_iter, p.new_seqs, p.new_tokens, p.cached_tokens, p.running) == ("prefill", 69, 1, 8, 0, 1)
    assert p.time - d.time == pytest.approx(0.045, abs=1e-6)
    assert parse_line(LOG[1]) is None  # an access-log line
    assert len(parse_lines(LOG)) == 11
    # the default log format (seconds, no iteration numbers) parses too
    plain = re.sub(r"\.\d{3}\]", "]", LOG[0]).replace(" [66]", "")
    q = parse_line(plain)
    assert (q.has_ms, q.forward_iter, q.throughput) == (False, None, 87.32)


def test_bad_batch_line_is_a_clear_error():
    with pytest.raises(StepLogError, match="#running-req"):
        parse_line("[2026-12-04 04:09:59] Decode batch, #token: 55, gen throughput (token/s): 1.0, #queue-req: 0")


def test_rows_attribute_each_loop_to_the_batch_launched_in_it():
    rows = step_rows(LOG)
    # (a, b, c) consecutive: 66,67,68 | 67,68,69 | 68,69,70 | 69,70,71 | 98,99,100 | 99,100,101 | 100,101,102
    assert [(r["kind"], r["batch"], sum(r["prefill"])) for r in rows] == [
        ("decode", 1, 0),
        ("prefill", 0, 8),
        ("decode", 1, 0),
        ("decode", 1, 0),
        ("prefill", 0, 128),
        ("decode", 1, 0),
        ("decode", 1, 0),
    ]
    sec = [r["seconds"] for r in rows]
    assert sec[0] == pytest.approx(1 / 77.98)  # decode a, b: #running-req / gen throughput of b
    assert sec[1] == pytest.approx(1 / 54.86)  # the 8-token prefill ran in the loop that logged decode 68
    assert sec[2] == pytest.approx(0.014, abs=1e-6)  # b is a prefill: the millisecond timestamp gap
    assert sec[3] == pytest.approx(0.012, abs=1e-6)
    assert sec[4] == pytest.approx(1 / 21.87)  # the 128-token prefill: ~46 ms against ~12-14 ms decode steps
    assert sec[4] > 3 * max(sec[0], sec[2], sec[3], sec[5], sec[6])
    assert rows[0]["kv_sum"] == 64 and rows[0]["kv_max"] == 64


def test_rows_need_consecutive_iterations_and_millisecond_gaps():
    # drop decode 70: nothing is attributed across the hole
    rows = step_rows([x for x in LOG if "[70]" not in x])
    assert len(rows) == 5
    # without milliseconds only decode-after-decode loops are timed
    plain = [re.sub(r"\.\d{3}\]", "]", x) for x in LOG]
    assert [r["kind"] for r in step_rows(plain)] == ["decode", "prefill", "prefill"]


def test_idle_prefill_and_cached_prefill_are_skipped():
    idle = LOG[4].replace("#running-req: 1", "#running-req: 0")
    cached = LOG[9].replace("#cached-token: 0", "#cached-token: 64")
    assert step_rows(LOG[2:4] + [idle]) == []
    assert step_rows(LOG[7:9] + [cached]) == []


def test_chunked_prefill_is_skipped():
    big = LOG[9].replace("#new-token: 128", "#new-token: 4096")
    assert [r["kind"] for r in step_rows(LOG[7:9] + [big])] == ["prefill"]
    assert step_rows(LOG[7:9] + [big], chunk=4096) == []


# decode_rows (calibrate_cpu_engine --step-log): decode lines in the default log format
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


def test_stalls_are_long_silences_with_work_in_hand():
    from sglang_cascade.replay.step_log import stalls

    line = (
        "[2026-12-06 09:08:{s}] {kind} batch [{i}], #running-req: {run}, #token: 100, token usage: 0.01, "
        "cpu graph: False, gen throughput (token/s): 80.00, #queue-req: {q}"
    )
    seq = [("33.000", 8, 0), ("33.010", 8, 0), ("50.010", 8, 0), ("50.020", 0, 0), ("59.000", 1, 0), ("59.010", 0, 3)]
    seq.append(("59.999", 1, 0))  # 0.99 s after a line with 3 queued: an iteration, not a stall
    lines = [line.format(s=t, kind="Decode", i=k, run=r, q=q) for k, (t, r, q) in enumerate(seq)]
    got = stalls(lines + ["[2026-12-06 09:09:30.000] INFO: not a batch line"])
    assert [round(g, 2) for _, g in got] == [17.0]  # 8.98 s after a line with nothing running or queued: idle
    assert got[0][0] == parse_line(lines[1]).time
    assert stalls(lines, min_gap=0.5) == got + [(parse_line(lines[5]).time, pytest.approx(0.989, abs=1e-6))]
    assert not stalls(lines, min_gap=20.0)
    # the last request's final decode line (running 1, its KV already freed: #token 0), then idle: no stall
    done = [line.format(s="10.000", kind="Decode", i=1, run=1, q=0).replace("#token: 100", "#token: 0"), lines[0]]
    assert not stalls(done)
