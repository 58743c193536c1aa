"""SGLang's own per-step log lines -> iteration times (calibration from the server side, not the client).

Start the server with ``--decode-log-interval 1`` (every decode batch logs) and, for prefill times, the
environment ``SGLANG_LOG_MS=1`` (millisecond timestamps); ``SGLANG_LOG_FORWARD_ITERS=1`` adds the forward
iteration ``[k]`` to each line, which this parser uses when present. The lines come from
``sglang/srt/managers/scheduler_components/metrics_reporter.py`` (SGLang 0.5.23)::

    [2026-12-04 04:20:01.123] Prefill batch, #new-seq: 1, #new-token: 128, #cached-token: 0, token usage: 0.01,
        #running-req: 0, #queue-req: 0, #pending-token: 0, cpu graph: False, input throughput (token/s): 35.63
    [2026-12-04 04:20:01.140] Decode batch, #running-req: 1, #token: 139, token usage: 0.01, cpu graph: False,
        gen throughput (token/s): 6.24, #queue-req: 0

Both are written while the batch's result is processed, and SGLang's overlap scheduler processes a batch
after launching the next forward (CPU engine included; the forward itself is synchronous there). So the time
between the lines of two consecutive batches a, b is the scheduler loop that ran the batch c after b. A decode
line's throughput is the tokens generated since the previous decode line over the time since it: with
interval 1 and a, b both decode, ``#running-req(b) / throughput(b)`` is that loop; otherwise the timestamp gap
is used when both timestamps have milliseconds. A prefill c counts only if it had running requests (else the
engine may have idled before it) and no cached prefix.

:func:`step_rows` returns rows in :mod:`sglang_cascade.core.hardware_fit`'s format (``kind``, ``prefill``,
``batch``, ``kv_sum``, ``kv_max``, ``seconds``). ``#token`` stands in for the batch's KV: the pool's tokens
neither free nor evictable (``pool_stats_observer._get_token_info``: capacity - available - evictable), so a
finished request's cached tokens are not in it, but a cached prefix a running request holds is; with random
prompts (no shared prefixes) it is the running requests' KV.
"""

from __future__ import annotations

import bisect
import gzip
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

# what a server needs for these lines: every decode batch logs (default: every 40th), millisecond timestamps,
# the forward iteration in each line
STEP_LOG_SERVER_ARGS = ("--decode-log-interval", "1")
STEP_LOG_ENV = {"SGLANG_LOG_MS": "1", "SGLANG_LOG_FORWARD_ITERS": "1"}

_LINE = re.compile(
    r"^\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,6})?)[^\]]*\]\s+"
    r"(?P<kind>Prefill|Decode) batch(?: \[(?P<iter>\d+)\])?, (?P<body>.*)$"
)
_FIELD = re.compile(r"(#?[A-Za-z][\w\- ()/]*?): ([-\w.]+)")


class StepLogError(ValueError):
    """A batch log line that does not have the fields this parser needs."""


@dataclass(frozen=True)
class StepLine:
    """One ``Prefill batch`` / ``Decode batch`` log line."""

    time: float  # POSIX seconds of the timestamp (local clock; only differences are used)
    has_ms: bool  # the timestamp has a fractional part (SGLANG_LOG_MS=1)
    kind: str  # "prefill" | "decode"
    forward_iter: int | None  # SGLANG_LOG_FORWARD_ITERS=1
    running: int  # #running-req
    queued: int  # #queue-req
    new_seqs: int = 0  # prefill: #new-seq
    new_tokens: int = 0  # prefill: #new-token (not cached)
    cached_tokens: int = 0  # prefill: #cached-token
    kv_tokens: int = 0  # decode: #token
    throughput: float = 0.0  # prefill: input, decode: gen (token/s)


def parse_line(line: str) -> StepLine | None:
    """The batch record of one log line; None for any other line. Raises StepLogError when a batch line
    lacks a needed field."""
    m = _LINE.match(line.strip())
    if m is None:
        return None
    f = dict(_FIELD.findall(m["body"]))
    ts = m["ts"]
    kind = m["kind"].lower()
    try:
        common = {
            "time": datetime.fromisoformat(ts).timestamp(),
            "has_ms": "." in ts,
            "kind": kind,
            "forward_iter": int(m["iter"]) if m["iter"] else None,
            "running": int(f["#running-req"]),
            "queued": int(f["#queue-req"]),
        }
        if kind == "prefill":
            return StepLine(
                **common,
                new_seqs=int(f["#new-seq"]),
                new_tokens=int(f["#new-token"]),
                cached_tokens=int(f["#cached-token"]),
                throughput=float(f["input throughput (token/s)"]),
            )
        return StepLine(**common, kv_tokens=int(f["#token"]), throughput=float(f["gen throughput (token/s)"]))
    except KeyError as e:
        raise StepLogError(f"{kind} batch line without {e.args[0]!r}: {line.strip()[:200]}") from None


def read_log_lines(path: str) -> list[str]:
    """The lines of a server log, plain or gzipped (``.gz``: the committed copies under docs/results)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", errors="replace") as f:
        return f.read().splitlines()


def parse_lines(lines: Iterable[StepLine | str]) -> list[StepLine]:
    """The batch lines among ``lines`` (already parsed ones are kept as they are; other log lines are skipped)."""
    return [s for s in (x if isinstance(x, StepLine) else parse_line(x) for x in lines) if s is not None]


def _follows(prev: StepLine, cur: StepLine) -> bool:
    """cur's batch is the forward right after prev's (by iteration number where the log has it; by log order
    otherwise)."""
    if cur.forward_iter is not None and prev.forward_iter is not None:
        return cur.forward_iter == prev.forward_iter + 1
    return True


def loop_seconds(a: StepLine, b: StepLine) -> float | None:
    """The scheduler loop between the lines of two consecutive batches a, b: the loop that ran the batch
    after b (the overlap scheduler processes, so logs, b after launching the next forward). A decode b right
    after a decode a: ``#running-req / gen throughput``; otherwise the millisecond timestamp gap."""
    if not _follows(a, b):
        return None
    if a.kind == b.kind == "decode":
        return b.running / b.throughput if b.throughput > 0 and b.running > 0 else None
    if a.has_ms and b.has_ms and b.time > a.time:
        return b.time - a.time
    return None


def batch_row(c: StepLine, seconds: float, chunk: int | None = None, mixed_chunk: bool = False) -> dict | None:
    """The calibration row of batch c taking ``seconds`` (None for a prefill that hit the prefix cache, or that
    filled the ``chunk``: a chunked prefill whose sequences' lengths the line does not give; and every prefill
    of a ``mixed_chunk`` server (``--enable-mixed-chunk``): its running requests decode in the same forward,
    and the line does not give their KV)."""
    if c.kind == "decode":
        if c.running <= 0:
            return None
        B = c.running
        return {
            "kind": "decode",
            "prefill": [],
            "batch": B,
            "kv_sum": float(c.kv_tokens),
            "kv_max": c.kv_tokens / B,
            "seconds": seconds,
            "source": "server_log",
        }
    if mixed_chunk or (chunk is not None and c.new_tokens >= chunk):
        return None
    if c.new_seqs <= 0 or c.new_tokens <= 0 or c.cached_tokens or c.running <= 0:
        return None  # cached prefixes priced differently; no running request: the engine may have idled
    per = c.new_tokens / c.new_seqs
    return {
        "kind": "prefill",
        "prefill": [per] * c.new_seqs,
        "batch": 0,
        "kv_sum": 0,
        "kv_max": 0,
        "seconds": seconds,
        "source": "server_log",
    }


def step_rows(
    lines: Iterable[StepLine | str],
    chunk: int | None = None,
    mixed_chunk: bool = False,
    prefill_between_decodes: bool = False,
    times: bool = False,
) -> list[dict]:
    """Calibration rows from every three consecutive batch lines a, b, c: c's batch took
    :func:`loop_seconds` (a, b). Strings are parsed; other log lines are skipped. ``mixed_chunk``: the server
    ran with ``--enable-mixed-chunk`` (no prefill rows, see :func:`batch_row`). ``prefill_between_decodes``:
    a prefill row only where a and b are decode lines (after a run of prefills the gap a -> b may be another
    prefill's loop: on a busy azure_code slice such rows timed single prefills at 2x their length's cost).
    ``times``: each row also gets ``t_end``, the time of line b (c ran in the ``seconds`` before it)."""
    steps = parse_lines(lines)
    rows = []
    for a, b, c in zip(steps, steps[1:], steps[2:]):
        if not _follows(b, c):
            continue
        if prefill_between_decodes and c.kind == "prefill" and not (a.kind == b.kind == "decode"):
            continue
        seconds = loop_seconds(a, b)
        row = batch_row(c, seconds, chunk, mixed_chunk) if seconds else None
        if row is not None:
            if times:
                row["t_end"] = b.time
            rows.append(row)
    return rows


def busy_spans(lines: Iterable[StepLine | str], max_gap: float = 1.0, pad: float = 0.1) -> list[tuple[float, float]]:
    """When a server was running batches: its batch lines closer than ``max_gap`` seconds to the next form one span
    (from ``pad`` before its first line, which closed an iteration that started earlier, to its last line). With
    ``--sleep-on-idle`` an idle server logs nothing, so a gap is idle time; a gap shorter than ``max_gap`` is
    counted busy (conservative: an iteration next to such a gap is not taken as lone)."""
    ts = sorted(x.time for x in parse_lines(lines))
    spans: list[tuple[float, float]] = []
    for t in ts:
        if spans and t - spans[-1][1] <= max_gap:
            spans[-1] = (spans[-1][0], t)
        else:
            spans.append((t - pad, t))
    return spans


STALL_S = 5.0  # eval_fidelity flags a run whose server ran no batch this long with work in hand


def stalls(lines: Iterable[StepLine | str], min_gap: float = STALL_S) -> list[tuple[float, float]]:
    """(time of the last batch line before, seconds) of every gap of at least ``min_gap`` seconds between two batch
    lines while the server had work: the earlier line shows queued requests or running ones (``_has_work``). With work in hand an
    iteration of the CPU engine logs every few ms to about a second (a full prefill chunk), so such a gap means
    the server did not run (seen once: neither batch nor HTTP access lines for 17 s while the client sent on
    schedule, on a shared VM whose server core was presumably taken away), and the run's latencies then measure
    that, not the scheduler (docs/fidelity.md, "A silent server")."""
    steps = parse_lines(lines)
    return [(a.time, b.time - a.time) for a, b in zip(steps, steps[1:]) if _has_work(a) and b.time - a.time >= min_gap]


def _has_work(s: StepLine) -> bool:
    """Requests queued, or running with KV: a decode line of the batch in which the last request finished shows it
    still running with ``#token: 0`` (its KV freed), and the server then idles."""
    return s.queued > 0 or (s.running > 0 and (s.kind == "prefill" or s.kv_tokens > 0))


def merge_spans(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, disjoint: overlapping spans (of several servers) joined."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def overlaps(spans: list[tuple[float, float]], t0: float, t1: float) -> bool:
    """Whether [t0, t1] meets any of ``spans`` (sorted, disjoint)."""
    i = bisect.bisect_right(spans, (t1, float("inf")))  # spans starting at or before t1
    return i > 0 and spans[i - 1][1] >= t0


def decode_rows(lines: Iterable[str], min_batch: int = 1) -> list[dict]:
    """Decode rows only, each attributed to the logged batch itself (``calibrate_cpu_engine --step-log``):
    a decode line right after another decode line (other log lines do not break the run, a prefill line does)
    times ``#running-req / gen throughput``. Needs neither milliseconds nor iteration numbers; the batch and
    KV are the logged ones (strictly, the loop ran the next batch, see :func:`loop_seconds`; in a steady
    decode the two are alike). ``kv_max`` = ``kv_sum``: the log gives the sum only (not a CPU-fit term)."""
    rows, prev = [], None
    for s in parse_lines(lines):
        after_decode = prev is not None and prev.kind == "decode"
        if s.kind == "decode" and after_decode and s.running >= min_batch and s.throughput > 0:
            kv, b = s.kv_tokens, s.running
            rows.append(
                {"kind": "decode", "prefill": [], "batch": b, "kv_sum": kv, "kv_max": kv, "seconds": b / s.throughput}
            )
        prev = s
    return rows


def summarize(rows: list[dict]) -> dict[int, tuple[int, float]]:
    """Per batch size: (steps, median seconds)."""
    import statistics

    by: dict[int, list[float]] = {}
    for r in rows:
        by.setdefault(r["batch"], []).append(r["seconds"])
    return {b: (len(v), statistics.median(v)) for b, v in sorted(by.items())}
