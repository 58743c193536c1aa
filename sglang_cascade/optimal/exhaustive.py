"""Brute-force optimum for tiny instances (2-4 requests, a few tokens): validates the CP-SAT model.

Depth-first search over every iteration decision (for each request: nothing, a prefill chunk of any size
within the budget, its decode token, and, with preemption, a preemption optionally followed by a new
chunk), with the same semantics and the same integer linear time model as the CP-SAT model, but written
independently of it. Branch and bound with Pareto dominance on (state -> earliest end, completion sum).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from .problem import Iteration, Problem, Schedule


@dataclass(slots=True)
class ExhaustiveResult:
    objective: float  # seconds
    schedule: Schedule
    nodes: int


def _options(kv: int, g: int, P: int, O: int, B: int, preemption: bool) -> list[tuple[bool, int, bool]]:
    """(preempt, tokens, is_decode) choices for one request in one iteration."""
    if g >= O:
        return [(False, 0, False)]
    L = P + g
    opts = [(False, 0, False)]
    if g >= 1 and kv == L - 1:
        opts.append((False, 1, True))
    elif kv < L:
        opts += [(False, n, False) for n in range(1, min(L - kv, B) + 1)]
    if preemption and kv > 0:
        opts += [(True, n, False) for n in range(0, min(L, B) + 1)]
    return opts


def solve_exhaustive(problem: Problem, objective: str = "makespan", max_nodes: int = 5_000_000) -> ExhaustiveResult:
    tm = problem.time_model
    reqs = problem.requests
    N = len(reqs)
    B, C = problem.token_budget, problem.kv_capacity
    arr = [int(math.ceil(r.arrival / tm.unit_s - 1e-9)) for r in reqs]
    tmin = tm.time_int(1, 1)
    best = [math.inf, None]
    seen: dict[tuple, list[tuple[int, int]]] = {}
    nodes = [0]

    def lower_bound(end: int, csum: int, state: tuple) -> int:
        rem = []
        for i, r in enumerate(reqs):
            kv, g = state[i]
            if g < r.output:
                rem.append(max(end, arr[i]) + (r.output - g) * tmin)
        if objective == "makespan":
            return max([end] + rem)
        return csum + sum(rem)

    def dominated(state: tuple, end: int, csum: int) -> bool:
        key = state
        lst = seen.get(key)
        if lst is None:
            seen[key] = [(end, csum)]
            return False
        for e, c in lst:
            if e <= end and (objective == "makespan" or c <= csum):
                return True
        lst[:] = [(e, c) for e, c in lst if not (end <= e and (objective == "makespan" or csum <= c))]
        lst.append((end, csum))
        return False

    def dfs(state: tuple, end: int, csum: int, path: list) -> None:
        nodes[0] += 1
        if nodes[0] > max_nodes:
            raise RuntimeError(f"exhaustive search exceeded {max_nodes} nodes: instance too large")
        if all(state[i][1] >= r.output for i, r in enumerate(reqs)):
            val = end if objective == "makespan" else csum
            if val < best[0]:
                best[0] = val
                best[1] = list(path)
            return
        if lower_bound(end, csum, state) >= best[0]:
            return
        if dominated(state, end, csum):
            return
        per = [_options(state[i][0], state[i][1], r.prompt, r.output, B, problem.preemption)
               for i, r in enumerate(reqs)]
        for combo in itertools.product(*per):
            tokens = sum(n for _, n, _ in combo)
            if tokens == 0:
                continue
            if sum(n for _, n, d in combo if not d) > B:
                continue
            new = []
            kv_read = 0
            start = end
            gens = []
            held = 0
            for i, (pre, n, d) in enumerate(combo):
                kv, g = state[i]
                if pre:
                    kv = 0
                if n:
                    start = max(start, arr[i])
                    kv += n
                    kv_read += kv
                fin_before = g >= reqs[i].output
                if n and kv == reqs[i].prompt + g:
                    g += 1
                    gens.append(i)
                if not fin_before:
                    held += kv
                new.append((kv, g))
            if held > C:
                continue
            dur = tm.time_int(tokens, kv_read, sum(1 for _, n, _ in combo if n))
            new_end = start + dur
            new_csum = csum + sum(new_end for i in gens if new[i][1] == reqs[i].output)
            path.append((start, dur, combo))
            dfs(tuple(new), new_end, new_csum, path)
            path.pop()

    dfs(tuple((0, 0) for _ in reqs), 0, 0, [])
    if best[1] is None:
        raise RuntimeError("no feasible schedule")
    its = []
    for start, dur, combo in best[1]:
        prefill = [(reqs[i].rid, n) for i, (_, n, d) in enumerate(combo) if n and not d]
        decode = [reqs[i].rid for i, (_, n, d) in enumerate(combo) if d]
        pre = [reqs[i].rid for i, (p, _, _) in enumerate(combo) if p]
        its.append(Iteration(tm.to_seconds(start), tm.to_seconds(dur), prefill, decode, pre))
    val = tm.to_seconds(best[0])
    if objective != "makespan":
        val = (val - sum(r.arrival for r in reqs)) / N
    from .problem import retime  # completion times as seconds
    sched = retime(problem, its)
    return ExhaustiveResult(val, sched, nodes[0])
