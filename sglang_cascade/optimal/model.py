"""Optimal single-instance schedule as a CP-SAT model over discrete iterations.

Iterations ``j = 0..H-1`` (``H`` the horizon); iteration start times ``S_j`` (``start``) are integer
variables (time unit from the linear time model). Per request ``i`` (prompt ``P``, output ``O``) and
iteration ``j``, with the :class:`ScheduleModel` attribute holding each variable in parentheses:

- ``n[i,j]``   (``tokens``) tokens of ``i`` computed in ``j`` (prefill chunk or the one decode token)
- ``kv[i,j]``  (``kv``) KV tokens after ``j``;   ``kv = base + n`` with ``base = kv[i,j-1]`` (or 0 if
               preempted at the start of ``j``: ``pr[i,j]`` (``preempted``), only with preemption) and
               ``kv <= P + g[i,j-1]``
- ``gen[i,j]`` (``generates``) a token is generated (``kv`` reached the length), ``g[i,j] = g[i,j-1] +
               gen`` (``generated``); ``g[i,H-1] = O`` (everyone finishes); ``fin[i,j]`` (``finished``)
               <=> ``g[i,j] = O``
- ``dec[i,j]`` (``decodes``) the token is a decode (state ``kv = L - 1``, ``g >= 1``); prefill tokens
               ``sum n - sum dec <= token_budget``
- ``w[i,j]``   (``computes``) ``n >= 1``; ``w -> e[i,j]`` (``arrived``: monotone, ``e -> S_j >= arrival_i``)
- KV capacity: ``sum_i held[i,j] <= kv_capacity`` with ``held >= kv - M * fin[i,j-1]`` (finished requests
  free KV)
- iteration time ``t_j`` (``duration``) ``= per_iteration * u_j + per_token * T_j + per_token_above_knee *
  hinge_j + per_kv_read * R_j + per_request * W_j`` (the linear model's integer coefficients; ``u_j``
  (``used``) the used iterations form a prefix, ``T_j = sum n`` (``iteration_tokens``), ``R_j = sum kv * w``
  (``kv_read``), ``W_j = sum w``), ``S_{j+1} >= S_j + t_j``
- objectives: makespan ``S_{H-1} + t_{H-1}``; or mean E2E via completions ``C_i >= S_j + t_j``
  (``completion``) whenever ``i`` was unfinished before ``j``.

Size: about 10 integer/boolean variables and 20 constraints per (request, iteration) pair, i.e. it grows
as ``O(N * H)`` with ``H`` roughly the number of iterations a good schedule needs (see docs/optimal.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from .feasibility import check_problem_schedule
from .problem import OBJECTIVES, Iteration, Problem, Req, Schedule, greedy_schedule, retime


@dataclass(slots=True)
class SolveResult:
    optimal: bool
    objective: float  # seconds (makespan or mean E2E) of the returned schedule, linear time model
    bound: float  # solver's proven lower bound on the objective, seconds
    solve_s: float
    schedule: Schedule
    status: str
    horizon: int
    horizon_proven: bool  # True when H provably contains an optimal schedule (optimality is global)
    source: str  # "cp-sat" or "hint" (solver found nothing better than the greedy start)
    num_vars: int = 0
    num_constraints: int = 0
    stats: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "optimal": self.optimal,
            "objective": self.objective,
            "bound": self.bound,
            "solve_s": round(self.solve_s, 3),
            "requests": len(self.schedule.finish),
            "status": self.status,
            "horizon": self.horizon,
            "horizon_proven": self.horizon_proven,
            "source": self.source,
            "num_vars": self.num_vars,
            "num_constraints": self.num_constraints,
        }


def _min_iteration_units(problem: Problem) -> int:
    return max(1, problem.time_model.time_int(1, 1))


def horizon_bound(problem: Problem, objective: str, upper: Schedule) -> int:
    """An iteration count that provably holds an optimal schedule, from a feasible schedule ``upper``.

    Every non-empty iteration lasts at least ``t_min``. Makespan: an optimal schedule ends by the upper
    bound's makespan, so it has at most ``UB / t_min`` iterations. Mean E2E: the last request ``k`` to
    finish does so by ``a_k + (UB_sum - sum_{j != k} LB_j)`` where ``LB_j`` is request ``j``'s own minimum
    number of iterations times ``t_min``; iterations are disjoint, so at most that over ``t_min``.
    """
    tm = problem.time_model
    tmin = tm.to_seconds(_min_iteration_units(problem))
    # without preemption every iteration computes >= 1 of the sum(P + O - 1) tokens
    tokens = sum(r.prompt + r.output - 1 for r in problem.requests) if not problem.preemption else None
    by_time = _time_horizon(problem, objective, upper, tmin)
    return by_time if tokens is None else min(tokens, by_time)


def _time_horizon(problem: Problem, objective: str, upper: Schedule, tmin: float) -> int:
    if objective == "makespan":
        return int(math.floor(upper.makespan() / tmin + 1e-9))
    lbs = {r.rid: (math.ceil(r.prompt / problem.token_budget) + r.output - 1) * tmin for r in problem.requests}
    ub_sum = sum(upper.finish[r.rid] - r.arrival for r in problem.requests)
    total_lb = sum(lbs.values())
    last = max(r.arrival + ub_sum - (total_lb - lbs[r.rid]) for r in problem.requests)
    return int(math.floor(last / tmin + 1e-9))


class ScheduleModel:
    """Builds the CP-SAT model for ``problem`` with ``horizon`` iterations.

    Decision variables, per (request index ``i``, iteration ``j``) in dicts keyed ``(i, j)``: ``tokens``
    (``n``), ``kv``, ``generated`` (``g``), ``generates`` (``gen``), ``decodes`` (``dec``), ``computes``
    (``w``), ``arrived`` (``e``), ``finished`` (``fin``), ``held``, ``kv_read`` (``R``) and, with preemption,
    ``preempted`` (``pr``); per iteration ``j`` in lists: ``start`` (``S``), ``duration`` (``t``), ``used``
    (``u``), ``iteration_tokens`` (``T``), ``end``. The build steps below create variables and constraints
    in a fixed order, so the same problem always gives the same CP-SAT model.
    """

    def __init__(self, problem: Problem, horizon: int, objective: str = "makespan"):
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
        self.problem = problem
        self.horizon = horizon
        self.objective = objective
        self.model = cp_model.CpModel()
        self.coefs = problem.time_model.int_coefs()
        self.num_requests = len(problem.requests)
        self.arrival_units = [int(math.ceil(r.arrival / problem.time_model.unit_s - 1e-9)) for r in problem.requests]
        self.tokens, self.kv, self.generated, self.generates, self.decodes = {}, {}, {}, {}, {}
        self.computes, self.arrived, self.finished, self.preempted, self.held, self.kv_read = ({} for _ in range(6))
        self._build()

    def _build(self) -> None:
        self._add_iteration_vars()
        for i, request in enumerate(self.problem.requests):
            for j in range(self.horizon):
                self._add_request_iteration(i, request, j)
            self._add_request_cuts(i, request)
        self._add_iteration_constraints()
        if self.objective == "makespan":
            self._add_makespan_objective()
        else:
            self._add_mean_e2e_objective()
        self.model.Minimize(self.objective_var)

    # --- build steps -------------------------------------------------------------------------------------
    def _add_iteration_vars(self) -> None:
        """Bounds on one iteration's tokens, KV read and duration; start, duration and used per iteration."""
        k, tm, m = self.coefs, self.problem.time_model, self.model
        num = self.num_requests
        self.max_iteration_tokens = self.problem.token_budget + num
        max_kv_read = self.problem.kv_capacity + num
        self.max_duration = (
            k.per_iteration
            + k.per_token * self.max_iteration_tokens
            + k.per_token_above_knee * max(0, self.max_iteration_tokens - tm.knee)
            + k.per_kv_read * max_kv_read
            + k.per_request * num
        )
        self.time_horizon = max(self.arrival_units) + self.horizon * self.max_duration + 1
        self.start = [m.NewIntVar(0, self.time_horizon, f"S{j}") for j in range(self.horizon)]
        self.duration = [m.NewIntVar(0, self.max_duration, f"t{j}") for j in range(self.horizon)]
        self.used = [m.NewBoolVar(f"u{j}") for j in range(self.horizon)]

    def _add_request_iteration(self, i: int, request: Req, j: int) -> None:
        """Request ``i``'s variables in iteration ``j`` and the constraints tying them to iteration ``j - 1``."""
        max_kv = request.prompt + request.output - 1
        m = self.model
        self.tokens[i, j] = m.NewIntVar(0, min(max_kv, max(self.problem.token_budget, 1)), f"n{i}_{j}")
        self.kv[i, j] = m.NewIntVar(0, max_kv, f"kv{i}_{j}")
        self.generated[i, j] = m.NewIntVar(0, min(request.output, j + 1), f"g{i}_{j}")
        self.generates[i, j] = m.NewBoolVar(f"gen{i}_{j}")
        self.decodes[i, j] = m.NewBoolVar(f"dec{i}_{j}")
        self.computes[i, j] = m.NewBoolVar(f"w{i}_{j}")
        self.arrived[i, j] = m.NewBoolVar(f"e{i}_{j}")
        self.finished[i, j] = m.NewBoolVar(f"fin{i}_{j}")
        base = self._kv_base(i, j, max_kv)
        self._add_token_rules(i, request, j, base)
        self._add_arrival_rules(i, j)
        self._add_held_kv(i, j, max_kv)
        self._add_kv_read(i, j, max_kv)

    def _kv_base(self, i: int, j: int, max_kv: int):
        """KV of request ``i`` at the start of iteration ``j``: the previous iteration's, or 0 if preempted."""
        if j == 0:
            return 0
        prev_kv = self.kv[i, j - 1]
        if not self.problem.preemption:
            return prev_kv
        m = self.model
        preempted = self.preempted[i, j] = m.NewBoolVar(f"pr{i}_{j}")
        base = m.NewIntVar(0, max_kv, f"base{i}_{j}")
        m.Add(base == 0).OnlyEnforceIf(preempted)
        m.Add(base == prev_kv).OnlyEnforceIf(preempted.Not())
        m.AddImplication(preempted, self.finished[i, j - 1].Not())
        m.Add(prev_kv >= 1).OnlyEnforceIf(preempted)
        return base

    def _add_token_rules(self, i: int, request: Req, j: int, base) -> None:
        """Tokens computed, KV, generation and finishing, computing, and the decode state."""
        m = self.model
        tokens, kv, generates, finished = self.tokens[i, j], self.kv[i, j], self.generates[i, j], self.finished[i, j]
        computes, decodes = self.computes[i, j], self.decodes[i, j]
        prompt, output = request.prompt, request.output
        prev_generated = self.generated[i, j - 1] if j > 0 else 0
        m.Add(kv == base + tokens)
        m.Add(kv <= prompt + prev_generated)
        # token generation when KV reaches the current length
        m.Add(kv - prev_generated == prompt).OnlyEnforceIf(generates)
        m.AddImplication(generates, computes)
        m.Add(self.generated[i, j] == prev_generated + generates)
        m.Add(self.generated[i, j] == output).OnlyEnforceIf(finished)
        m.Add(self.generated[i, j] <= output - 1).OnlyEnforceIf(finished.Not())
        # tokens >= 1 <=> computes
        m.Add(tokens >= 1).OnlyEnforceIf(computes)
        m.Add(tokens == 0).OnlyEnforceIf(computes.Not())
        # decode: exactly one token from state kv = L - 1 of a running request
        m.AddImplication(decodes, computes)
        m.Add(tokens == 1).OnlyEnforceIf(decodes)
        m.Add(base == prompt + prev_generated - 1).OnlyEnforceIf(decodes)
        if j == 0:
            m.Add(decodes == 0)
        else:
            m.Add(prev_generated >= 1).OnlyEnforceIf(decodes)

    def _add_arrival_rules(self, i: int, j: int) -> None:
        """A request computes only in iterations starting after its arrival (``arrived`` is monotone)."""
        m = self.model
        m.AddImplication(self.computes[i, j], self.arrived[i, j])
        m.Add(self.start[j] >= self.arrival_units[i]).OnlyEnforceIf(self.arrived[i, j])
        if j > 0:
            m.AddImplication(self.arrived[i, j - 1], self.arrived[i, j])

    def _add_held_kv(self, i: int, j: int, max_kv: int) -> None:
        """KV counted toward capacity; finished requests do nothing and hold nothing."""
        m = self.model
        held = self.held[i, j] = m.NewIntVar(0, max_kv, f"held{i}_{j}")
        kv = self.kv[i, j]
        if j == 0:
            m.Add(held >= kv)
            return
        prev_finished = self.finished[i, j - 1]
        m.Add(self.generates[i, j] + prev_finished <= self.arrived[i, j])  # cut: generating iterations are "alive" ones
        m.AddImplication(prev_finished, self.finished[i, j])
        m.AddImplication(prev_finished, self.computes[i, j].Not())
        m.Add(held >= kv - max_kv * prev_finished)

    def _add_kv_read(self, i: int, j: int, max_kv: int) -> None:
        """KV read of the iteration (KV after it, for requests that compute); computing uses the iteration."""
        m = self.model
        kv_read = self.kv_read[i, j] = m.NewIntVar(0, max_kv, f"R{i}_{j}")
        m.Add(kv_read >= self.kv[i, j] - max_kv * (1 - self.computes[i, j]))
        m.AddImplication(self.computes[i, j], self.used[j])

    def _add_request_cuts(self, i: int, request: Req) -> None:
        """Everyone finishes, plus aggregated cuts (valid with or without preemption): every generated token
        k (0-based) is produced by an iteration reading kv = P + k; a request computes in at least its own
        minimum number of iterations; it computes at least P + O - 1 tokens (exactly, without preemption)."""
        m, prompt, output = self.model, request.prompt, request.output
        m.Add(self.generated[i, self.horizon - 1] == output)
        row = range(self.horizon)
        m.Add(sum(self.kv_read[i, j] for j in row) >= output * prompt + output * (output - 1) // 2)
        m.Add(
            sum(self.computes[i, j] for j in row) >= math.ceil(prompt / max(self.problem.token_budget, 1)) + output - 1
        )
        if self.problem.preemption:
            m.Add(sum(self.tokens[i, j] for j in row) >= prompt + output - 1)
        else:
            m.Add(sum(self.tokens[i, j] for j in row) == prompt + output - 1)

    def _column(self, variables: dict, j: int) -> list:
        return [variables[i, j] for i in range(self.num_requests)]

    def _add_iteration_constraints(self) -> None:
        """Per iteration: token budget (decode tokens not counted), KV capacity, used iterations compute and
        form a prefix, the linear iteration time, and iterations run one after the other."""
        k, knee, m = self.coefs, self.problem.time_model.knee, self.model
        self.iteration_tokens = []
        for j in range(self.horizon):
            tokens = sum(self._column(self.tokens, j))
            self.iteration_tokens.append(tokens)
            m.Add(tokens - sum(self._column(self.decodes, j)) <= self.problem.token_budget)
            m.Add(sum(self._column(self.held, j)) <= self.problem.kv_capacity)
            m.Add(tokens >= 1).OnlyEnforceIf(self.used[j])
            hinge = 0
            if k.per_token_above_knee > 0 and knee < self.max_iteration_tokens:
                hinge = m.NewIntVar(0, self.max_iteration_tokens, f"hinge{j}")
                m.Add(hinge >= tokens - knee)
            m.Add(
                self.duration[j]
                == k.per_iteration * self.used[j]
                + k.per_token * tokens
                + k.per_token_above_knee * hinge
                + k.per_kv_read * sum(self._column(self.kv_read, j))
                + k.per_request * sum(self._column(self.computes, j))
            )
            if j + 1 < self.horizon:
                m.Add(self.start[j + 1] >= self.start[j] + self.duration[j])
                m.AddImplication(self.used[j + 1], self.used[j])
        self.end = [self.start[j] + self.duration[j] for j in range(self.horizon)]

    def _alive_iterations(self, i: int) -> list:
        """Per iteration, 1 when request ``i`` has arrived and is not finished before it (linear terms)."""
        return [self.arrived[i, 0]] + [self.arrived[i, j] - self.finished[i, j - 1] for j in range(1, self.horizon)]

    def _add_makespan_objective(self) -> None:
        """Makespan: the last iteration's end, with the alive-iteration cut per request (see below)."""
        m = self.model
        self.objective_var = m.NewIntVar(0, self.time_horizon + self.max_duration, "makespan")
        m.Add(self.objective_var >= self.end[self.horizon - 1])
        min_units = _min_iteration_units(self.problem)
        m.Add(self.objective_var >= min_units * sum(self.used))
        for i in range(self.num_requests):
            m.Add(self.objective_var >= self.arrival_units[i] + min_units * sum(self._alive_iterations(i)))

    def _add_mean_e2e_objective(self) -> None:
        """Sum of completion times: ``completion[i] >= end of j`` whenever ``i`` was unfinished before ``j``."""
        m = self.model
        self.completion = []
        min_units = _min_iteration_units(self.problem)
        for i, request in enumerate(self.problem.requests):
            own = (math.ceil(request.prompt / self.problem.token_budget) + request.output - 1) * min_units
            completion = m.NewIntVar(self.arrival_units[i] + own, self.time_horizon + self.max_duration, f"C{i}")
            m.Add(completion >= self.end[0])
            for j in range(1, self.horizon):
                m.Add(completion >= self.end[j]).OnlyEnforceIf(self.finished[i, j - 1].Not())
            # cut: every iteration after its arrival and before it finishes is used, lasts >= t_min
            # and lies in [arrival, completion]
            m.Add(completion >= self.arrival_units[i] + min_units * sum(self._alive_iterations(i)))
            self.completion.append(completion)
        self.objective_var = m.NewIntVar(
            0, self.num_requests * (self.time_horizon + self.max_duration), "sum_completion"
        )
        m.Add(self.objective_var == sum(self.completion))

    # --- hints -------------------------------------------------------------------------------------------
    def add_hint(self, sched: Schedule, complete_s: float = 5.0) -> bool:
        """Hint the solver with a feasible schedule (ignored if it needs more than ``horizon`` iterations).
        The schedule's decisions are fixed in a copy of the model, which is solved to get a value for every
        variable (a complete hint the solver accepts as its first solution)."""
        if len(sched.iterations) > self.horizon:
            return False
        fixed = self.model.Clone()
        self._hint_decisions(sched, fixed)
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = complete_s
        solver.parameters.num_workers = 1
        if solver.Solve(fixed) in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            self.model.ClearHints()
            for index in range(len(self.model.Proto().variables)):
                var = self.model.GetIntVarFromProtoIndex(index)
                self.model.AddHint(var, solver.Value(fixed.GetIntVarFromProtoIndex(index)))
            return True
        self.model.ClearHints()
        self._hint_decisions(sched, self.model)
        return False

    def _hint_decisions(self, sched: Schedule, model: cp_model.CpModel) -> None:
        """Fix (on a clone) or hint (on the model) the schedule's per-iteration decisions."""
        fix = model is not self.model

        def put(var, value):
            if fix:
                model.Add(model.GetIntVarFromProtoIndex(var.Index()) == value)
            else:
                model.AddHint(var, value)

        requests = self.problem.requests
        kv = [0] * len(requests)
        generated = [0] * len(requests)
        for j in range(self.horizon):
            it = sched.iterations[j] if j < len(sched.iterations) else None
            tokens, decodes, preempted = self._iteration_decisions(it)
            for i, request in enumerate(requests):
                if preempted[i]:
                    kv[i] = 0
                kv[i] += tokens[i]
                generates = int(tokens[i] > 0 and kv[i] == request.prompt + generated[i])
                generated[i] += generates
                put(self.tokens[i, j], tokens[i])
                put(self.decodes[i, j], decodes[i])
                if (i, j) in self.preempted:
                    put(self.preempted[i, j], preempted[i])
                if not fix:
                    self.model.AddHint(self.kv[i, j], kv[i])
                    self.model.AddHint(self.generated[i, j], generated[i])
                    self.model.AddHint(self.generates[i, j], generates)
                    self.model.AddHint(self.computes[i, j], int(tokens[i] > 0))
                    self.model.AddHint(self.finished[i, j], int(generated[i] == request.output))
            put(self.used[j], int(it is not None))

    def _iteration_decisions(self, it: Iteration | None) -> tuple[list[int], list[int], list[int]]:
        """Per request index: tokens computed, decodes (0/1) and preempted (0/1) in iteration ``it``."""
        index = {r.rid: i for i, r in enumerate(self.problem.requests)}
        tokens, decodes, preempted = ([0] * self.num_requests for _ in range(3))
        if it is not None:
            for rid in it.preempted:
                preempted[index[rid]] = 1
            for rid, chunk in it.prefill:
                tokens[index[rid]] += chunk
            for rid in it.decode:
                tokens[index[rid]] += 1
                decodes[index[rid]] = 1
        return tokens, decodes, preempted

    # --- extraction --------------------------------------------------------------------------------------
    def extract(self, solver: cp_model.CpSolver) -> Schedule:
        tm = self.problem.time_model
        its: list[Iteration] = []
        for j in range(self.horizon):
            if not solver.Value(self.used[j]):
                continue
            prefill, decode, preempted = [], [], []
            for i, request in enumerate(self.problem.requests):
                if (i, j) in self.preempted and solver.Value(self.preempted[i, j]):
                    preempted.append(request.rid)
                tokens = solver.Value(self.tokens[i, j])
                if tokens == 0:
                    continue
                if solver.Value(self.decodes[i, j]):
                    decode.append(request.rid)
                else:
                    prefill.append((request.rid, tokens))
            if not prefill and not decode:
                continue
            its.append(
                Iteration(
                    tm.to_seconds(solver.Value(self.start[j])),
                    tm.to_seconds(solver.Value(self.duration[j])),
                    prefill,
                    decode,
                    preempted,
                )
            )
        # exact re-costing: the model only lower-bounds R and the hinge, and a non-optimal solution may leave
        # slack between iterations; retiming starts each iteration as early as allowed (never later)
        return retime(self.problem, its)

    def size(self) -> tuple[int, int]:
        proto = self.model.Proto()
        return len(proto.variables), len(proto.constraints)


def solve(
    problem: Problem,
    objective: str = "makespan",
    time_limit_s: float = 60.0,
    horizon: int | None = None,
    max_horizon: int = 400,
    workers: int = 2,
    hint: Schedule | None = None,
    seed: int = 0,
    log: bool = False,
) -> SolveResult:
    """Minimise ``objective`` for ``problem``; returns the best schedule found and the proven bound.

    ``horizon`` overrides the iteration count; by default it is the provable bound from a greedy feasible
    schedule (:func:`horizon_bound`), capped at ``max_horizon`` (then ``horizon_proven`` is False and
    "optimal" means optimal among schedules of at most ``horizon`` iterations).
    """
    t0 = time.perf_counter()
    greedy = greedy_schedule(problem)
    start_sched = _starting_schedule(problem, objective, greedy, hint)
    proven_horizon = horizon_bound(problem, objective, start_sched)
    if horizon is None:
        horizon = max(min(proven_horizon, max_horizon), len(start_sched.iterations))
    sm = ScheduleModel(problem, horizon, objective)
    sm.add_hint(start_sched, complete_s=min(5.0, 0.25 * time_limit_s))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.01, time_limit_s - (time.perf_counter() - t0))
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = seed
    solver.parameters.log_search_progress = log
    status = solver.Solve(sm.model)
    solve_s = time.perf_counter() - t0
    if status == cp_model.INFEASIBLE:
        raise RuntimeError(f"no schedule within {horizon} iterations (horizon too small?)")
    found = status in (cp_model.OPTIMAL, cp_model.FEASIBLE)
    # no solution within the time limit: fall back to the (always feasible) starting schedule
    sched = sm.extract(solver) if found else start_sched
    obj = sched.objective(problem, objective)
    raw_bound = solver.BestObjectiveBound()
    bound = _units_to_objective(problem, objective, raw_bound) if found or raw_bound > 0 else 0.0
    # re-costing with the exact integer model can only differ by rounding; keep the bound <= objective
    bound = min(bound, obj)
    horizon_proven = horizon >= proven_horizon
    num_vars, num_constraints = sm.size()
    return SolveResult(
        optimal=status == cp_model.OPTIMAL and horizon_proven,
        objective=obj,
        bound=bound,
        solve_s=solve_s,
        schedule=sched,
        status=solver.StatusName(status),
        horizon=horizon,
        horizon_proven=horizon_proven,
        source="cp-sat" if found else "hint",
        num_vars=num_vars,
        num_constraints=num_constraints,
        stats={
            "branches": solver.NumBranches(),
            "conflicts": solver.NumConflicts(),
            "greedy_objective": greedy.objective(problem, objective),
        },
    )


def _starting_schedule(problem: Problem, objective: str, greedy: Schedule, hint: Schedule | None) -> Schedule:
    """The solver's first schedule: ``hint`` when it is feasible and no worse than the greedy one."""
    if (
        hint is not None
        and not check_problem_schedule(problem, hint, linear=False)
        and hint.objective(problem, objective) <= greedy.objective(problem, objective)
    ):
        return hint
    return greedy


def _units_to_objective(problem: Problem, objective: str, units: float) -> float:
    """A CP-SAT objective value (integer time units; a completion sum for mean E2E) in seconds."""
    seconds = problem.time_model.to_seconds(units)
    if objective == "makespan":
        return seconds
    return (seconds - sum(r.arrival for r in problem.requests)) / len(problem.requests)
