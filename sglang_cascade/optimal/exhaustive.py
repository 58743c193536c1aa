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

from .problem import Iteration, Problem, Schedule, retime


@dataclass(slots=True)
class ExhaustiveResult:
    objective: float  # seconds
    schedule: Schedule
    nodes: int


def _options(
    kv: int, generated: int, prompt: int, output: int, token_budget: int, preemption: bool
) -> list[tuple[bool, int, bool]]:
    """(preempt, tokens, is_decode) choices for one request in one iteration."""
    if generated >= output:
        return [(False, 0, False)]
    length = prompt + generated
    opts = [(False, 0, False)]
    if generated >= 1 and kv == length - 1:
        opts.append((False, 1, True))
    elif kv < length:
        opts += [(False, n, False) for n in range(1, min(length - kv, token_budget) + 1)]
    if preemption and kv > 0:
        opts += [(True, n, False) for n in range(min(length, token_budget) + 1)]
    return opts


def solve_exhaustive(problem: Problem, objective: str = "makespan", max_nodes: int = 5_000_000) -> ExhaustiveResult:
    """The optimum of ``problem`` by depth-first search (raises when it needs more than ``max_nodes``)."""
    search = _Search(problem, objective, max_nodes)
    search.dfs(tuple((0, 0) for _ in problem.requests), 0, 0, [])
    if search.best_path is None:
        raise RuntimeError("no feasible schedule")
    tm = problem.time_model
    reqs = problem.requests
    its = []
    for start, dur, combo in search.best_path:
        prefill = [(reqs[i].rid, n) for i, (_, n, d) in enumerate(combo) if n and not d]
        decode = [reqs[i].rid for i, (_, n, d) in enumerate(combo) if d]
        preempted = [reqs[i].rid for i, (p, _, _) in enumerate(combo) if p]
        its.append(Iteration(tm.to_seconds(start), tm.to_seconds(dur), prefill, decode, preempted))
    value = tm.to_seconds(search.best_value)
    if objective != "makespan":
        value = (value - sum(r.arrival for r in reqs)) / len(reqs)
    return ExhaustiveResult(value, retime(problem, its), search.nodes)  # retime: completion times in seconds


class _Search:
    """Branch and bound over iteration decisions. A state is ``((kv, generated), ...)`` per request; a node
    is (state, end of the last iteration, completion sum), all times in integer units."""

    def __init__(self, problem: Problem, objective: str, max_nodes: int):
        self.problem = problem
        self.reqs = problem.requests
        self.makespan = objective == "makespan"
        self.max_nodes = max_nodes
        tm = problem.time_model
        self.arrival_units = [int(math.ceil(r.arrival / tm.unit_s - 1e-9)) for r in self.reqs]
        self.min_units = tm.time_int(1, 1)
        self.best_value: float = math.inf
        self.best_path: list | None = None
        self.seen: dict[tuple, list[tuple[int, int]]] = {}
        self.nodes = 0

    def lower_bound(self, end: int, csum: int, state: tuple) -> int:
        """Every unfinished request still needs one iteration per missing output token."""
        rem = [
            max(end, self.arrival_units[i]) + (r.output - state[i][1]) * self.min_units
            for i, r in enumerate(self.reqs)
            if state[i][1] < r.output
        ]
        return max([end] + rem) if self.makespan else csum + sum(rem)

    def dominated(self, state: tuple, end: int, csum: int) -> bool:
        """Pareto dominance on (end, completion sum) among nodes with the same state; records the node."""
        lst = self.seen.get(state)
        if lst is None:
            self.seen[state] = [(end, csum)]
            return False
        for e, c in lst:
            if e <= end and (self.makespan or c <= csum):
                return True
        lst[:] = [(e, c) for e, c in lst if not (end <= e and (self.makespan or csum <= c))]
        lst.append((end, csum))
        return False

    def dfs(self, state: tuple, end: int, csum: int, path: list) -> None:
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise RuntimeError(f"exhaustive search exceeded {self.max_nodes} nodes: instance too large")
        if all(state[i][1] >= r.output for i, r in enumerate(self.reqs)):
            value = end if self.makespan else csum
            if value < self.best_value:
                self.best_value, self.best_path = value, list(path)
            return
        if self.lower_bound(end, csum, state) >= self.best_value or self.dominated(state, end, csum):
            return
        per = [
            _options(kv, g, r.prompt, r.output, self.problem.token_budget, self.problem.preemption)
            for (kv, g), r in zip(state, self.reqs)
        ]
        for combo in itertools.product(*per):
            step = self.step(state, end, combo)
            if step is None:
                continue
            new_state, start, dur, finished = step
            new_end = start + dur
            path.append((start, dur, combo))
            self.dfs(new_state, new_end, csum + new_end * finished, path)
            path.pop()

    def step(self, state: tuple, end: int, combo: tuple) -> tuple[tuple, int, int, int] | None:
        """Apply one iteration's decisions: (new state, start, duration, requests it finishes), or None when
        it computes nothing, exceeds the token budget or the KV capacity."""
        tokens = sum(n for _, n, _ in combo)
        if tokens == 0 or sum(n for _, n, d in combo if not d) > self.problem.token_budget:
            return None
        new, start, kv_read, held, finished = [], end, 0, 0, 0
        for i, ((preempt, n, _), (kv, g)) in enumerate(zip(combo, state)):
            r = self.reqs[i]
            if preempt:
                kv = 0
            if n:
                start = max(start, self.arrival_units[i])
                kv += n
                kv_read += kv
            fin_before = g >= r.output
            if n and kv == r.prompt + g:
                g += 1
                finished += g == r.output
            if not fin_before:
                held += kv
            new.append((kv, g))
        if held > self.problem.kv_capacity:
            return None
        dur = self.problem.time_model.time_int(tokens, kv_read, sum(1 for _, n, _ in combo if n))
        return tuple(new), start, dur, finished
