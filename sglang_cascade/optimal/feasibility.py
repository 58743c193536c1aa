"""Feasibility checker shared by the solver's schedules and the simulator's ``IterationRecord`` s.

:func:`check_schedule` replays a list of iterations (anything with ``start, duration, prefill=[(rid,
tokens)], decode=[rid], preempted=[rid]`` and optionally ``parked``/``resumed``) against the problem's
requests and limits and returns every violation found (empty list = feasible):

- ``budget``      prefill tokens in an iteration exceed the token budget
- ``capacity``    GPU KV held by unfinished requests (after the iteration's allocations) exceeds capacity
- ``order``       a prefill chunk goes past the request's length, or a decode of a request whose prefill
                  is not complete (prefill before decode), or work on a finished / unknown request
- ``decode``      more than one token for a request in one iteration (decoded twice, or prefilled and
                  decoded in the same iteration)
- ``arrival``     a request computes in an iteration that starts before its arrival
- ``overlap``     an iteration starts before the previous one ended
- ``duration``    iteration duration differs from the time model (the simulator's
                  ``CostModel.iteration_time`` call, with ``prefill_causal`` for multi-chunk prefill,
                  within ``rel_tol``, plus at most the host transfer time
                  of parked/resumed KV; or the linear model exactly) -- skipped when no model is given
- ``preemption``  a preemption when preemption is not allowed, or of a finished request
- ``parked``      work on a parked request (its KV is in host memory)
- ``unfinished``  a request did not produce its full output
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..core.costmodel import CostModel, prefill_attn_work
from .linearize import LinearTimeModel
from .problem import Req


@dataclass(slots=True, frozen=True)
class Violation:
    kind: str
    iteration: int
    rid: str | None
    detail: str

    def __str__(self) -> str:
        who = f" request {self.rid}" if self.rid else ""
        return f"[{self.kind}] iteration {self.iteration}{who}: {self.detail}"


class InfeasibleSchedule(ValueError):
    def __init__(self, violations: list[Violation]):
        self.violations = violations
        head = "; ".join(str(v) for v in violations[:5])
        more = f" (+{len(violations) - 5} more)" if len(violations) > 5 else ""
        super().__init__(f"{len(violations)} violation(s): {head}{more}")


def check_schedule(
    requests: Sequence[Req],
    iterations: Iterable,
    *,
    token_budget: int | None,
    kv_capacity: int | None,
    preemption: bool = True,
    cost_model: CostModel | None = None,
    linear_model: LinearTimeModel | None = None,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
    time_tol: float = 1e-9,
) -> list[Violation]:
    """Return the violations of ``iterations`` (see module doc). ``token_budget``/``kv_capacity`` None skip
    those checks; ``cost_model`` checks durations against ``CostModel.batch_time`` (plus host transfer time
    for parked/resumed KV), ``linear_model`` against the linear model's integer time (solver schedules)."""
    replay = _Replay({r.rid: r for r in requests}, time_tol)
    out = replay.out
    prev_end = None
    for k, it in enumerate(iterations):
        start, dur = float(it.start), float(it.duration)
        out += _overlap(k, start, prev_end, time_tol)
        prev_end = start + dur
        replay.preempt(k, getattr(it, "preempted", ()) or (), preemption)
        moved = replay.park_and_resume(k, getattr(it, "parked", ()) or (), getattr(it, "resumed", ()) or ())
        work = _Work(start)
        replay.prefill(k, it.prefill, work)
        replay.decode(k, it.decode, work)
        if token_budget is not None:
            out += _budget(k, work, token_budget)
        if kv_capacity is not None:
            out += _capacity(k, replay.held(), kv_capacity)
        if work.chunks or work.decode_kv:
            if cost_model is not None:
                out += _cost_model_duration(k, dur, work, moved, cost_model, rel_tol, abs_tol)
            if linear_model is not None:
                out += _linear_duration(k, dur, work, linear_model, rel_tol, abs_tol)
        replay.generate(work)
    return out + replay.unfinished()


@dataclass(slots=True)
class _Work:
    """What one iteration computes: prefill chunks ``(tokens, kv_before)``, the decodes' KV before their
    token, and the requests it touched (in order; ``seen`` as a set)."""

    start: float
    chunks: list[tuple[int, int]] = field(default_factory=list)
    decode_kv: list[int] = field(default_factory=list)
    touched: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    @property
    def prefill_tokens(self) -> int:
        return sum(n for n, _ in self.chunks)


class _Replay:
    """The requests' state (KV, generated tokens, parked) replayed iteration by iteration. Each step appends
    its violations to ``out``, in the order the checker reports them."""

    def __init__(self, reqs: dict[str, Req], time_tol: float):
        self.reqs = reqs
        self.kv = dict.fromkeys(reqs, 0)
        self.gen = dict.fromkeys(reqs, 0)
        self.parked: set[str] = set()
        self.time_tol = time_tol
        self.out: list[Violation] = []

    def _flag(self, kind: str, k: int, rid: str | None, detail: str) -> None:
        self.out.append(Violation(kind, k, rid, detail))

    def _finished(self, rid: str) -> bool:
        return self.gen[rid] >= self.reqs[rid].output

    def _unknown(self, k: int, rid: str) -> bool:
        """``order``: work on a request that is not in the problem."""
        if rid in self.reqs:
            return False
        self._flag("order", k, rid, "unknown request")
        return True

    def _twice(self, k: int, rid: str, work: _Work, detail: str) -> None:
        """``decode``: more than one token set for a request in one iteration."""
        if rid in work.seen:
            self._flag("decode", k, rid, detail)
        work.seen.add(rid)

    def _arrival(self, k: int, rid: str, start: float) -> None:
        """``arrival``: the request computes in an iteration that starts before it arrives."""
        arrival = self.reqs[rid].arrival
        if start < arrival - self.time_tol:
            self._flag("arrival", k, rid, f"iteration starts {start:.6f} < arrival {arrival:.6f}")

    def _parked_work(self, k: int, rid: str, what: str) -> None:
        """``parked``: work on a request whose KV is in host memory."""
        if rid in self.parked:
            self._flag("parked", k, rid, f"{what} of a parked request")

    def preempt(self, k: int, rids: Iterable[str], allowed: bool) -> None:
        """``preemption``: not allowed, or of a finished request; a preempted request loses its KV."""
        for rid in rids:
            if self._unknown(k, rid):
                continue
            if not allowed:
                self._flag("preemption", k, rid, "preempted but preemption is not allowed")
            if self._finished(rid):
                self._flag("preemption", k, rid, "preempted after it finished")
            self.kv[rid] = 0
            self.parked.discard(rid)

    def park_and_resume(self, k: int, parked: Iterable[str], resumed: Iterable[str]) -> int:
        """``parked``: resuming a request that is not parked. Returns the KV tokens moved to or from host."""
        moved = 0
        for rid in parked:
            if rid in self.reqs:
                self.parked.add(rid)
                moved += self.kv[rid]
        for rid in resumed:
            if rid in self.reqs:
                if rid not in self.parked:
                    self._flag("parked", k, rid, "resumed but not parked")
                self.parked.discard(rid)
                moved += self.kv[rid]
        return moved

    def prefill(self, k: int, chunks: Iterable[tuple[str, int]], work: _Work) -> None:
        """A prefill chunk: non-empty, of an arrived, unfinished, not parked request, within its length."""
        for rid, n in chunks:
            n = int(n)
            if self._unknown(k, rid):
                continue
            self._twice(k, rid, work, "computed twice in one iteration")
            if n < 1:
                self._flag("order", k, rid, f"empty prefill chunk ({n} tokens)")
            self._arrival(k, rid, work.start)
            if self._finished(rid):
                self._flag("order", k, rid, "prefill of a finished request")
            self._parked_work(k, rid, "prefill")
            length = self.reqs[rid].prompt + self.gen[rid]
            if self.kv[rid] + n > length:
                self._flag("order", k, rid, f"prefill chunk {n} past the length {length} (kv {self.kv[rid]})")
            work.chunks.append((n, self.kv[rid]))
            self.kv[rid] += n
            work.touched.append(rid)

    def decode(self, k: int, rids: Iterable[str], work: _Work) -> None:
        """A decode token: of an arrived, not parked, unfinished request whose prefill is complete."""
        for rid in rids:
            if self._unknown(k, rid):
                continue
            self._twice(k, rid, work, "more than one token in one iteration")
            self._arrival(k, rid, work.start)
            self._parked_work(k, rid, "decode")
            length = self.reqs[rid].prompt + self.gen[rid]
            if self._finished(rid):
                self._flag("order", k, rid, "decode of a finished request")
            elif self.gen[rid] < 1 or self.kv[rid] != length - 1:
                self._flag("order", k, rid, f"decode before its prefill completed (kv {self.kv[rid]}, length {length})")
            work.decode_kv.append(self.kv[rid])
            self.kv[rid] += 1
            work.touched.append(rid)

    def held(self) -> int:
        """GPU KV held by unfinished, not parked requests."""
        return sum(self.kv[rid] for rid in self.reqs if not self._finished(rid) and rid not in self.parked)

    def generate(self, work: _Work) -> None:
        """A touched request whose KV reached its length generates a token."""
        for rid in work.touched:
            if self.kv[rid] == self.reqs[rid].prompt + self.gen[rid]:
                self.gen[rid] += 1

    def unfinished(self) -> list[Violation]:
        """``unfinished``: a request did not produce its full output (reported at iteration -1)."""
        return [
            Violation("unfinished", -1, rid, f"generated {self.gen[rid]} of {r.output} tokens")
            for rid, r in self.reqs.items()
            if self.gen[rid] != r.output
        ]


def _overlap(k: int, start: float, prev_end: float | None, time_tol: float) -> list[Violation]:
    """``overlap``: an iteration starts before the previous one ended."""
    if prev_end is not None and start < prev_end - time_tol:
        return [Violation("overlap", k, None, f"starts at {start:.9f} before previous end {prev_end:.9f}")]
    return []


def _budget(k: int, work: _Work, token_budget: int) -> list[Violation]:
    """``budget``: prefill tokens above the token budget (decode tokens are not counted)."""
    tokens = work.prefill_tokens
    if tokens > token_budget:
        return [Violation("budget", k, None, f"{tokens} prefill tokens > budget {token_budget}")]
    return []


def _capacity(k: int, held: int, kv_capacity: int) -> list[Violation]:
    """``capacity``: GPU KV held after the iteration's allocations above the capacity."""
    if held > kv_capacity:
        return [Violation("capacity", k, None, f"KV {held} > capacity {kv_capacity}")]
    return []


def _cost_model_duration(
    k: int, dur: float, work: _Work, moved: int, cost_model: CostModel, rel_tol: float, abs_tol: float
) -> list[Violation]:
    """``duration``: exactly the simulator's cost-model call (decode KV counted after the new token's slot;
    the causal part of a multi-chunk prefill costed per chunk), plus up to the full PCIe time of the
    parked/resumed KV (the simulator overlaps part of it)."""
    dec = work.decode_kv
    args = (
        work.prefill_tokens,
        prefill_attn_work(work.chunks),
        len(dec),
        sum(dec) + len(dec),
        (max(dec) + 1) if dec else 0,
    )
    if len(work.chunks) > 1:
        want = cost_model.iteration_time(*args, prefill_causal=sum(n * n / 2.0 for n, _ in work.chunks))
    else:
        want = cost_model.iteration_time(*args)
    slack = cost_model.host_to_device_time(moved) if moved else 0.0
    if not (want * (1 - rel_tol) - abs_tol <= dur <= want * (1 + rel_tol) + abs_tol + slack):
        return [Violation("duration", k, None, f"duration {dur:.9f} != cost model {want:.9f}")]
    return []


def _linear_duration(
    k: int, dur: float, work: _Work, linear_model: LinearTimeModel, rel_tol: float, abs_tol: float
) -> list[Violation]:
    """``duration``: the linear model's integer time (solver schedules)."""
    tokens = work.prefill_tokens + len(work.decode_kv)
    kv_read = sum(n + b for n, b in work.chunks) + sum(d + 1 for d in work.decode_kv)
    requests = len(work.chunks) + len(work.decode_kv)
    want = linear_model.to_seconds(linear_model.time_int(tokens, kv_read, requests))
    if abs(dur - want) > max(abs_tol, rel_tol * want):
        return [Violation("duration", k, None, f"duration {dur:.9f} != linear model {want:.9f}")]
    return []


def assert_feasible(requests: Sequence[Req], iterations: Iterable, **kw) -> None:
    v = check_schedule(requests, iterations, **kw)
    if v:
        raise InfeasibleSchedule(v)


def check_problem_schedule(
    problem, schedule, *, cost_model: CostModel | None = None, rel_tol: float = 1e-6, linear: bool = True
) -> list[Violation]:
    """Check a :class:`Schedule` against a :class:`Problem` (its budget, capacity, preemption rule and,
    with ``linear``, its linear time model)."""
    return check_schedule(
        problem.requests,
        schedule.iterations,
        token_budget=problem.token_budget,
        kv_capacity=problem.kv_capacity,
        preemption=problem.preemption,
        cost_model=cost_model,
        linear_model=problem.time_model if linear else None,
        rel_tol=rel_tol,
    )
