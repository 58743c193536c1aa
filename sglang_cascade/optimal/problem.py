"""The single-instance scheduling problem and its schedules (shared by solver, brute force and checker).

Semantics (the simulator's, see docs/CONTRACTS.md and docs/optimal.md):
- a request of prompt ``P`` and output ``O`` has length ``L = P + g`` after ``g`` generated tokens and
  ``kv`` materialised KV tokens; an iteration computes ``n`` of its tokens: a prefill chunk (``kv < L``)
  or one decode token (``kv == L - 1``, ``g >= 1``); when ``kv`` reaches ``L`` a token is generated, so the
  iteration that completes a prefill produces the first output token; the request finishes when
  ``g == O`` and frees its KV at the end of that iteration;
- preemption (recompute) drops a request's KV at the start of an iteration; it must prefill its whole
  current length again (which also generates its next token);
- per iteration: prefill tokens <= ``token_budget``; KV held by unfinished requests <= ``kv_capacity``;
  no request computes in an iteration that starts before its arrival; iterations run back to back or
  wait idle for arrivals.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from ..core.traces import TraceRequest
from .linearize import LinearTimeModel


@dataclass(slots=True, frozen=True)
class Req:
    rid: str
    arrival: float
    prompt: int
    output: int


@dataclass(slots=True)
class Problem:
    requests: list[Req]
    token_budget: int  # prefill tokens per iteration (chunked-prefill size)
    kv_capacity: int  # GPU KV tokens
    time_model: LinearTimeModel
    preemption: bool = False

    def __post_init__(self) -> None:
        if not self.requests:
            raise ValueError("empty request set")
        if self.token_budget < 1:
            raise ValueError(f"token budget must be >= 1, got {self.token_budget}")
        seen = set()
        for r in self.requests:
            if r.prompt < 1 or r.output < 1:
                raise ValueError(f"request {r.rid}: prompt and output lengths must be >= 1")
            if r.rid in seen:
                raise ValueError(f"duplicate request id {r.rid!r}")
            seen.add(r.rid)
            if r.prompt + r.output - 1 > self.kv_capacity:
                raise ValueError(
                    f"request {r.rid} needs {r.prompt + r.output - 1} KV tokens, more than the "
                    f"capacity {self.kv_capacity}: no schedule exists"
                )

    def by_id(self) -> dict[str, Req]:
        return {r.rid: r for r in self.requests}


def scale_requests(reqs: Sequence[TraceRequest], length_scale: float = 1.0) -> list[Req]:
    """Trace requests as problem requests; ``length_scale`` divides prompt and output lengths (rounded up,
    at least 1) to make instances tractable."""
    if length_scale <= 0:
        raise ValueError("length_scale must be > 0")
    return [
        Req(
            r.rid,
            float(r.arrival),
            max(1, math.ceil(r.prompt_len / length_scale)),
            max(1, math.ceil(r.output_len / length_scale)),
        )
        for r in reqs
    ]


def scaled_trace(reqs: Sequence[TraceRequest], length_scale: float = 1.0) -> list[TraceRequest]:
    """The same scaling as trace requests (to feed the simulator the identical instance)."""
    return [TraceRequest(q.rid, q.arrival, q.prompt, q.output) for q in scale_requests(reqs, length_scale)]


@dataclass(slots=True)
class Iteration:
    """One iteration; field names match the simulator's ``IterationRecord`` so one checker reads both."""

    start: float
    duration: float
    prefill: list[tuple[str, int]] = field(default_factory=list)
    decode: list[str] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    parked: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Schedule:
    iterations: list[Iteration]
    finish: dict[str, float] = field(default_factory=dict)  # rid -> completion time (s)
    work: list[tuple[int, int, int]] = field(default_factory=list)  # per iteration (tokens, kv_read, requests)

    def makespan(self) -> float:
        return max((it.start + it.duration for it in self.iterations), default=0.0)

    def mean_e2e(self, problem: Problem) -> float:
        arr = {r.rid: r.arrival for r in problem.requests}
        return sum(self.finish[r] - arr[r] for r in arr) / len(arr)

    def objective(self, problem: Problem, objective: str) -> float:
        return self.makespan() if objective == "makespan" else self.mean_e2e(problem)

    def to_json(self) -> str:
        return json.dumps({"iterations": [asdict(it) for it in self.iterations], "finish": self.finish})


OBJECTIVES = ("makespan", "mean_e2e")


def retime(problem: Problem, iterations: Sequence, integer: bool = True) -> Schedule:
    """Re-cost a schedule's iterations under the problem's linear time model (start each iteration as early
    as its predecessor's end and its requests' arrivals allow), replaying the state to get the KV read and
    the completion times. Used to compare heuristic schedules with the optimum like with like."""
    tm = problem.time_model
    reqs = problem.by_id()
    kv = dict.fromkeys(reqs, 0)
    gen = dict.fromkeys(reqs, 0)
    out: list[Iteration] = []
    finish: dict[str, float] = {}
    work: list[tuple[int, int, int]] = []
    end = 0.0
    for it in iterations:
        for rid in it.preempted:
            kv[rid] = 0
        tokens = 0
        kv_read = 0
        touched: list[str] = []
        for rid, n in it.prefill:
            kv[rid] += n
            tokens += n
            kv_read += kv[rid]
            touched.append(rid)
        for rid in it.decode:
            kv[rid] += 1
            tokens += 1
            kv_read += kv[rid]
            touched.append(rid)
        if tokens == 0:
            continue
        start = max([end] + [reqs[r].arrival for r in touched])
        nreq = len(it.prefill) + len(it.decode)
        dur = tm.to_seconds(tm.time_int(tokens, kv_read, nreq)) if integer else tm.time(tokens, kv_read, nreq)
        end = start + dur
        for rid in touched:
            if kv[rid] == reqs[rid].prompt + gen[rid]:
                gen[rid] += 1
                if gen[rid] == reqs[rid].output:
                    finish[rid] = end
        out.append(Iteration(start, dur, list(it.prefill), list(it.decode), list(it.preempted)))
        work.append((tokens, kv_read, nreq))
    return Schedule(out, finish, work)


def greedy_schedule(problem: Problem) -> Schedule:
    """FCFS, prefill first (chunked to the budget), every running request decodes each iteration, and a
    request is admitted only when its whole final KV (prompt + output - 1) fits next to the others' final
    KV: never needs preemption, so it is always feasible. The solver's first hint and horizon source."""
    tm = problem.time_model
    reqs = sorted(problem.requests, key=lambda r: (r.arrival, r.rid))
    kv = {r.rid: 0 for r in reqs}
    gen = {r.rid: 0 for r in reqs}
    admitted: list[Req] = []
    pending = list(reqs)
    iters: list[Iteration] = []
    finish: dict[str, float] = {}
    now = 0.0
    reserved = 0
    while len(finish) < len(reqs):
        while (
            pending
            and pending[0].arrival <= now
            and reserved + pending[0].prompt + pending[0].output - 1 <= problem.kv_capacity
        ):
            r = pending.pop(0)
            admitted.append(r)
            reserved += r.prompt + r.output - 1
        active = [r for r in admitted if r.rid not in finish]
        if not active:
            now = max(now, pending[0].arrival)
            continue
        budget = problem.token_budget
        prefill: list[tuple[str, int]] = []
        decode: list[str] = []
        for r in active:
            L = r.prompt + gen[r.rid]
            if kv[r.rid] < L - 1 or gen[r.rid] == 0:
                n = min(budget, L - kv[r.rid])
                if n > 0:
                    prefill.append((r.rid, n))
                    budget -= n
            else:
                decode.append(r.rid)
        if not prefill and not decode:
            raise RuntimeError("greedy schedule stalled (token budget 0?)")
        tokens = sum(n for _, n in prefill) + len(decode)
        kv_read = 0
        touched = []
        for rid, n in prefill:
            kv[rid] += n
            kv_read += kv[rid]
            touched.append(rid)
        for rid in decode:
            kv[rid] += 1
            kv_read += kv[rid]
            touched.append(rid)
        dur = tm.to_seconds(tm.time_int(tokens, kv_read, len(touched)))
        iters.append(Iteration(now, dur, prefill, decode))
        now += dur
        byid = problem.by_id()
        for rid in touched:
            r = byid[rid]
            if kv[rid] == r.prompt + gen[rid]:
                gen[rid] += 1
                if gen[rid] == r.output:
                    finish[rid] = now
                    reserved -= r.prompt + r.output - 1
    return Schedule(iters, finish)
