"""The replay a plan check scores its candidates on: recent arrivals with their lengths, and the cluster's
in-flight requests as its warm start.

The router records arrivals (:class:`ArrivalRecorder`); when a check fires it only *copies* that state into a
:class:`ReplaySource` (plain lists, no random draws, no extension), and the checker - on its thread, in its
child process, or inline in the simulator - turns it into the job's arrivals and warm start with
:func:`build_replay` (the output lengths drawn for unfinished requests, the window repeated to cover
``check_span_s``). So the work that grows with the replay never runs on the request path, and every checker
builds the replay with this one function.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


def thin(rows: Sequence, frac: float) -> list:
    """Every row whose index crosses a multiple of ``1/frac`` (all of them for ``frac >= 1``): ``frac`` of
    the rows, evenly spread, deterministic."""
    if frac >= 1:
        return list(rows)
    return [r for i, r in enumerate(rows) if math.floor((i + 1) * frac) > math.floor(i * frac)]


def thin_arrivals(arrivals: Sequence[tuple[float, int, int]], frac: float) -> list[tuple[float, int, int]]:
    """``thin``ned arrivals, times from the first kept: the same time span and length mix at ``frac`` of the
    rate (deterministic, so every candidate replays the same requests)."""
    if frac >= 1:
        return list(arrivals)
    out = thin(arrivals, frac)
    t0 = out[0][0] if out else 0.0
    return [(t - t0, p, o) for t, p, o in out]


def extend_arrivals(arrivals: Sequence[tuple[float, int, int]], span: float) -> list[tuple[float, int, int]]:
    """``arrivals`` repeated back to back (each copy shifted by the window's span plus one mean gap) until
    they cover ``span`` seconds: the recent past as the forecast of a longer future."""
    out = list(arrivals)
    if len(out) < 2 or span <= 0:
        return out
    w = out[-1][0] - out[0][0]
    if w <= 0:
        return out
    period = w + w / (len(out) - 1)
    k = 1
    while out[-1][0] < span and k < 1000:
        more = [(t + k * period, p, o) for t, p, o in arrivals if t + k * period <= span]
        if not more:  # every later copy is empty too (was: up to 1,000 empty passes over the window, ~90 ms
            break  # per check on the request path when the last copy ended short of ``span``)
        out += more
        k += 1
    return out


def synthetic_count(rate: float, interval_s: float, lo: int, hi: int) -> int:
    """How many synthetic arrivals a start-up replay has: one check interval of them at ``rate`` (the plan stands that
    long before the timer re-checks it), within ``lo`` .. ``hi`` (min_replay .. replay_requests). At 11 req/s (8B
    Mooncake x 8) a fixed 2,000 spanned 3 minutes of a queue growing past the knee and ranked a pool of 4 before 5,
    whose 40 s runs attain the SLOs for 0.82 / 0.94 of the requests (docs/results/pool_check_probes.txt)."""
    return min(hi, max(lo, math.ceil(rate * interval_s)))


def synthetic_arrivals(
    sample: Sequence[tuple[int, int]], rate: float, n: int, seed: int = 0
) -> list[tuple[float, int, int]]:
    """A Poisson replay of ``n`` requests drawn from a length sample (used before anything was observed)."""
    if not sample or rate <= 0 or n <= 0:
        return []
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sample), size=n)
    gaps = rng.exponential(1.0 / rate, size=n)
    t = np.cumsum(gaps) - gaps[0]
    return [(float(t[i]), int(sample[j][0]), int(sample[j][1])) for i, j in enumerate(idx)]


class ArrivalRecorder:
    """Recent arrivals with their lengths: the arrival time and prompt at routing, the output length when
    the request finishes; ``source`` copies them for a check (:class:`ReplaySource`)."""

    def __init__(self, keep: int):
        self.open: dict[str, tuple[float, int]] = {}
        self.done: deque = deque(maxlen=max(1, keep))
        self.recent: deque = deque(maxlen=max(1, keep))  # (arrival, rid, prompt), finished or not
        self.outputs: dict[str, int] = {}  # rid -> output length, for the finished ones still in ``recent``

    def arrived(self, rid: str, now: float, prompt: int) -> None:
        if len(self.open) > 4 * self.done.maxlen:  # requests that never finished (aborted): forget the oldest
            self.open.pop(next(iter(self.open)))
        if len(self.recent) == self.recent.maxlen:
            self.outputs.pop(self.recent[0][1], None)
        self.recent.append((now, rid, prompt))
        self.open[rid] = (now, prompt)

    def finished(self, rid: str, output: int) -> None:
        got = self.open.pop(rid, None)
        if got is not None:
            self.done.append((got[0], got[1], max(1, int(output))))
            self.outputs[rid] = max(1, int(output))

    def source(self, seed: int, span_s: float, open_replay: bool, warm: bool, running=(), sent=()) -> ReplaySource:
        """A copy of what a check's replay is built from (:func:`build_replay`), plus the router's in-flight
        rows (``ReplaySource.running`` / ``sent``): list and dict copies only."""
        if open_replay:
            return ReplaySource(
                seed, span_s, True, warm, list(self.recent), dict(self.outputs), [], list(running), list(sent)
            )
        return ReplaySource(seed, span_s, False, warm, [], {}, list(self.done), list(running), list(sent))


def _from_first(rows: list[tuple[float, int, int]]) -> list[tuple[float, int, int]]:
    """Arrival rows with times counted from the first one."""
    t0 = rows[0][0] if rows else 0.0
    return [(t - t0, p, o) for t, p, o in rows]


def sorted_outputs(sample: Sequence[tuple[int, int]]) -> np.ndarray:
    """The output lengths of a (prompt, output) sample, sorted (``draw_output``'s table)."""
    return np.sort(np.array([o for _, o in sample], dtype=np.int64)) if sample else np.zeros(0, np.int64)


def draw_output(sorted_outputs: np.ndarray, generated: int, rng) -> int:
    """A total output length for a request that has generated ``generated`` tokens and not finished: one of
    the sample's lengths above it (uniformly), or ``2 x generated`` (+1) when the sample has none."""
    i = int(np.searchsorted(sorted_outputs, generated, side="right"))
    if i >= len(sorted_outputs):
        return max(1, 2 * int(generated) + 1)
    return int(sorted_outputs[rng.integers(i, len(sorted_outputs))])


@dataclass
class ReplaySource:
    """The router's recorded state when a check fired, copied as it is (``CascadeRouter._replay_source``):
    plain lists, so taking it costs a copy and nothing that grows with the replay; :func:`build_replay` makes
    the job's arrivals and warm start from it on the checker's side."""

    seed: int
    span_s: float  # PlanCheckConfig.check_span_s: the replay covers at least this many seconds
    open_replay: bool  # PlanCheckConfig.check_open: every recent arrival (else the finished ones only)
    warm: bool  # the in-flight requests as the replay's start (PlanCheckConfig.check_warm, not at init)
    recent: list[tuple[float, str, int]] = field(default_factory=list)  # (arrival, rid, prompt), oldest first
    outputs: dict[str, int] = field(default_factory=dict)  # rid -> output length, the finished ones of ``recent``
    done: list[tuple[float, int, int]] = field(default_factory=list)  # finished (arrival, prompt, output)
    # (slot, rid, prompt, generated, kv_tokens) per running request of the last rebalance call; slot = its
    # instance's position in the plan in force's order, -1 for an instance outside the plan
    running: list[tuple[int, str, int, int, int]] = field(default_factory=list)
    # (slot, rid, prompt) per request this router sent and has not seen finish (it may be running too)
    sent: list[tuple[int, str, int]] = field(default_factory=list)
    synthetic_rate: float = 0.0  # > 0: too few finished arrivals: a synthetic replay at this rate instead ...
    synthetic_n: int = 0  # ... of this many requests


def build_replay(src: ReplaySource, sample: Sequence[tuple[int, int]]) -> tuple[list, list]:
    """The job's ``(arrivals, inflight)`` from a :class:`ReplaySource`; ``sample`` (the recent (prompt, output)
    lengths) gives the output lengths drawn for the unfinished requests. Deterministic in ``src.seed``."""
    if src.synthetic_rate > 0:
        arrivals = synthetic_arrivals(sample, src.synthetic_rate, src.synthetic_n, src.seed)
    elif not src.open_replay:
        arrivals = _from_first(sorted(src.done))
    else:
        generated = {rid: g for _, rid, _, g, _ in src.running}
        rng = np.random.default_rng(src.seed)
        outs = sorted_outputs(sample)
        rows = []
        for t, rid, p in src.recent:
            o = src.outputs.get(rid)
            if o is None:
                o = draw_output(outs, generated.get(rid, 0), rng)
            rows.append((t, p, o))
        arrivals = _from_first(rows)
    arrivals = extend_arrivals(arrivals, src.span_s)
    if not src.warm:
        return arrivals, []
    # the running requests (prompt, generated, KV) where they run, then the others this router sent and has
    # not seen finish as queued where it sent them; output lengths drawn above what they generated
    rng = np.random.default_rng(src.seed + 1)
    outs = sorted_outputs(sample)
    inflight, seen = [], set()
    for slot, rid, p, g, kv in src.running:
        if slot >= 0:
            seen.add(rid)
            inflight.append((slot, p, g, max(draw_output(outs, g, rng), g + 1), kv))
    for slot, rid, p in src.sent:
        if rid not in seen:
            inflight.append((slot, p, 0, draw_output(outs, 0, rng), 0))
    return arrivals, inflight
