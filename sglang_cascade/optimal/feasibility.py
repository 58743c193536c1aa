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

import inspect
from dataclasses import dataclass
from typing import Iterable, Sequence

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


def check_schedule(requests: Sequence[Req], iterations: Iterable, *, token_budget: int | None,
                   kv_capacity: int | None, preemption: bool = True, cost_model: CostModel | None = None,
                   linear_model: LinearTimeModel | None = None, rel_tol: float = 1e-6, abs_tol: float = 1e-9,
                   time_tol: float = 1e-9) -> list[Violation]:
    """Return the violations of ``iterations`` (see module doc). ``token_budget``/``kv_capacity`` None skip
    those checks; ``cost_model`` checks durations against ``CostModel.batch_time`` (plus host transfer time
    for parked/resumed KV), ``linear_model`` against the linear model's integer time (solver schedules)."""
    reqs = {r.rid: r for r in requests}
    kv = {rid: 0 for rid in reqs}
    gen = {rid: 0 for rid in reqs}
    parked: set[str] = set()
    out: list[Violation] = []
    prev_end = None
    for k, it in enumerate(iterations):
        start, dur = float(it.start), float(it.duration)
        if prev_end is not None and start < prev_end - time_tol:
            out.append(Violation("overlap", k, None, f"starts at {start:.9f} before previous end {prev_end:.9f}"))
        prev_end = start + dur
        moved = 0
        for rid in getattr(it, "preempted", ()) or ():
            if rid not in reqs:
                out.append(Violation("order", k, rid, "unknown request"))
                continue
            if not preemption:
                out.append(Violation("preemption", k, rid, "preempted but preemption is not allowed"))
            if gen[rid] >= reqs[rid].output:
                out.append(Violation("preemption", k, rid, "preempted after it finished"))
            kv[rid] = 0
            parked.discard(rid)
        for rid in getattr(it, "parked", ()) or ():
            if rid in reqs:
                parked.add(rid)
                moved += kv[rid]
        for rid in getattr(it, "resumed", ()) or ():
            if rid in reqs:
                if rid not in parked:
                    out.append(Violation("parked", k, rid, "resumed but not parked"))
                parked.discard(rid)
                moved += kv[rid]
        seen: set[str] = set()
        prefill_tokens = 0
        pf_chunks: list[tuple[int, int]] = []
        dec_kv: list[int] = []
        touched: list[str] = []
        for rid, n in it.prefill:
            n = int(n)
            if rid not in reqs:
                out.append(Violation("order", k, rid, "unknown request"))
                continue
            r = reqs[rid]
            if rid in seen:
                out.append(Violation("decode", k, rid, "computed twice in one iteration"))
            seen.add(rid)
            if n < 1:
                out.append(Violation("order", k, rid, f"empty prefill chunk ({n} tokens)"))
            if start < r.arrival - time_tol:
                out.append(Violation("arrival", k, rid, f"iteration starts {start:.6f} < arrival {r.arrival:.6f}"))
            if gen[rid] >= r.output:
                out.append(Violation("order", k, rid, "prefill of a finished request"))
            if rid in parked:
                out.append(Violation("parked", k, rid, "prefill of a parked request"))
            L = r.prompt + gen[rid]
            if kv[rid] + n > L:
                out.append(Violation("order", k, rid, f"prefill chunk {n} past the length {L} (kv {kv[rid]})"))
            pf_chunks.append((n, kv[rid]))
            prefill_tokens += n
            kv[rid] += n
            touched.append(rid)
        for rid in it.decode:
            if rid not in reqs:
                out.append(Violation("order", k, rid, "unknown request"))
                continue
            r = reqs[rid]
            if rid in seen:
                out.append(Violation("decode", k, rid, "more than one token in one iteration"))
            seen.add(rid)
            if start < r.arrival - time_tol:
                out.append(Violation("arrival", k, rid, f"iteration starts {start:.6f} < arrival {r.arrival:.6f}"))
            if rid in parked:
                out.append(Violation("parked", k, rid, "decode of a parked request"))
            if gen[rid] >= r.output:
                out.append(Violation("order", k, rid, "decode of a finished request"))
            elif gen[rid] < 1 or kv[rid] != r.prompt + gen[rid] - 1:
                out.append(Violation("order", k, rid, f"decode before its prefill completed (kv {kv[rid]}, "
                                                      f"length {r.prompt + gen[rid]})"))
            dec_kv.append(kv[rid])
            kv[rid] += 1
            touched.append(rid)
        if token_budget is not None and prefill_tokens > token_budget:
            out.append(Violation("budget", k, None, f"{prefill_tokens} prefill tokens > budget {token_budget}"))
        if kv_capacity is not None:
            held = sum(kv[rid] for rid in reqs if gen[rid] < reqs[rid].output and rid not in parked)
            if held > kv_capacity:
                out.append(Violation("capacity", k, None, f"KV {held} > capacity {kv_capacity}"))
        if cost_model is not None and (pf_chunks or dec_kv):
            # exactly the simulator's call: decode KV counted after the new token's slot
            args = (prefill_tokens, prefill_attn_work(pf_chunks), len(dec_kv), sum(dec_kv) + len(dec_kv),
                    (max(dec_kv) + 1) if dec_kv else 0)
            if len(pf_chunks) > 1 and _takes_causal(cost_model):  # causal part of each chunk separately
                want = cost_model.iteration_time(*args, prefill_causal=sum(n * n / 2.0 for n, _ in pf_chunks))
            else:
                want = cost_model.iteration_time(*args)
            # park/resume transfers may add up to their full PCIe time (the simulator overlaps part of it)
            slack = cost_model.host_to_device_time(moved) if moved else 0.0
            if not (want * (1 - rel_tol) - abs_tol <= dur <= want * (1 + rel_tol) + abs_tol + slack):
                out.append(Violation("duration", k, None, f"duration {dur:.9f} != cost model {want:.9f}"))
        if linear_model is not None and (pf_chunks or dec_kv):
            tokens = prefill_tokens + len(dec_kv)
            kv_read = sum(n + b for n, b in pf_chunks) + sum(d + 1 for d in dec_kv)
            want = linear_model.to_seconds(linear_model.time_int(tokens, kv_read, len(pf_chunks) + len(dec_kv)))
            if abs(dur - want) > max(abs_tol, rel_tol * want):
                out.append(Violation("duration", k, None, f"duration {dur:.9f} != linear model {want:.9f}"))
        for rid in touched:
            if kv[rid] == reqs[rid].prompt + gen[rid]:
                gen[rid] += 1
    for rid, r in reqs.items():
        if gen[rid] != r.output:
            out.append(Violation("unfinished", -1, rid, f"generated {gen[rid]} of {r.output} tokens"))
    return out


def _takes_causal(cm: CostModel) -> bool:
    try:
        return "prefill_causal" in inspect.signature(cm.iteration_time).parameters
    except (TypeError, ValueError):
        return False


def assert_feasible(requests: Sequence[Req], iterations: Iterable, **kw) -> None:
    v = check_schedule(requests, iterations, **kw)
    if v:
        raise InfeasibleSchedule(v)


def check_problem_schedule(problem, schedule, *, cost_model: CostModel | None = None, rel_tol: float = 1e-6,
                           linear: bool = True) -> list[Violation]:
    """Check a :class:`Schedule` against a :class:`Problem` (its budget, capacity, preemption rule and,
    with ``linear``, its linear time model)."""
    return check_schedule(problem.requests, schedule.iterations, token_budget=problem.token_budget,
                          kv_capacity=problem.kv_capacity, preemption=problem.preemption, cost_model=cost_model,
                          linear_model=problem.time_model if linear else None, rel_tol=rel_tol)
