"""Optimal single-instance schedule as a CP-SAT model over discrete iterations.

Iterations ``j = 0..H-1`` (``H`` the horizon); iteration start times ``S_j`` are integer variables (time
unit from the linear time model). Per request ``i`` and iteration ``j``:

- ``n[i,j]``   tokens of ``i`` computed in ``j`` (prefill chunk or the one decode token)
- ``kv[i,j]``  KV tokens after ``j``;   ``kv = base + n`` with ``base = kv[i,j-1]`` (or 0 if preempted
               at the start of ``j``: ``pr[i,j]``, only with preemption) and ``kv <= P_i + g[i,j-1]``
- ``gen[i,j]`` a token is generated (``kv`` reached the length), ``g[i,j] = g[i,j-1] + gen``;
               ``g[i,H-1] = O_i`` (everyone finishes); ``fin[i,j]`` <=> ``g[i,j] = O_i``
- ``dec[i,j]`` the token is a decode (state ``kv = L - 1``, ``g >= 1``); prefill tokens
               ``sum n - sum dec <= token_budget``
- ``w[i,j]``   ``n >= 1``; ``w -> e[i,j]`` (``e`` monotone, ``e -> S_j >= arrival_i``)
- KV capacity: ``sum_i held[i,j] <= C`` with ``held >= kv - M * fin[i,j-1]`` (finished requests free KV)
- iteration time ``t_j = A u_j + B T_j + Hk hinge_j + Cc R_j + Dc W_j`` (linear model, ``u_j`` used,
  prefix of used iterations, ``T_j = sum n``, ``R_j = sum kv * w``, ``W_j = sum w``), ``S_{j+1} >= S_j + t_j``
- objectives: makespan ``S_{H-1} + t_{H-1}``; or mean E2E via completions ``C_i >= S_j + t_j`` whenever
  ``i`` was unfinished before ``j``.

Size: about 10 integer/boolean variables and 20 constraints per (request, iteration) pair, i.e. it grows
as ``O(N * H)`` with ``H`` roughly the number of iterations a good schedule needs (see docs/optimal.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from .feasibility import check_problem_schedule
from .problem import OBJECTIVES, Iteration, Problem, Schedule, greedy_schedule, retime


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
        return {"optimal": self.optimal, "objective": self.objective, "bound": self.bound,
                "solve_s": round(self.solve_s, 3), "requests": len(self.schedule.finish),
                "status": self.status, "horizon": self.horizon, "horizon_proven": self.horizon_proven,
                "source": self.source, "num_vars": self.num_vars, "num_constraints": self.num_constraints}


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
    """Builds the CP-SAT model for ``problem`` with ``horizon`` iterations."""

    def __init__(self, problem: Problem, horizon: int, objective: str = "makespan"):
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
        self.p = problem
        self.H = horizon
        self.objective = objective
        self.m = cp_model.CpModel()
        self._build()

    def _build(self) -> None:
        p, H, m = self.p, self.H, self.m
        tm = p.time_model
        A, Bc, Hc, Cc, Dc = tm.int_coefs()
        N = len(p.requests)
        B = p.token_budget
        C = p.kv_capacity
        arr_u = [int(math.ceil(r.arrival / tm.unit_s - 1e-9)) for r in p.requests]
        max_tok = B + N
        max_R = C + N
        t_max = A + Bc * max_tok + Hc * max(0, max_tok - tm.knee) + Cc * max_R + Dc * N
        self.t_horizon = max(arr_u) + H * t_max + 1
        self.S = [m.NewIntVar(0, self.t_horizon, f"S{j}") for j in range(H)]
        self.t = [m.NewIntVar(0, t_max, f"t{j}") for j in range(H)]
        self.u = [m.NewBoolVar(f"u{j}") for j in range(H)]
        self.n, self.kv, self.g, self.gen, self.dec, self.w, self.e, self.fin, self.pr = ({} for _ in range(9))
        self.held: list[list] = [[] for _ in range(H)]
        R_terms: list[list] = [[] for _ in range(H)]
        T_terms: list[list] = [[] for _ in range(H)]
        W_terms: list[list] = [[] for _ in range(H)]
        D_terms: list[list] = [[] for _ in range(H)]
        for i, r in enumerate(p.requests):
            P, O = r.prompt, r.output
            Lmax = P + O - 1
            nmax = min(Lmax, max(B, 1))
            prev_kv = None
            prev_g = None
            prev_fin = None
            prev_e = None
            for j in range(H):
                n = m.NewIntVar(0, nmax, f"n{i}_{j}")
                kv = m.NewIntVar(0, Lmax, f"kv{i}_{j}")
                g = m.NewIntVar(0, min(O, j + 1), f"g{i}_{j}")
                gen = m.NewBoolVar(f"gen{i}_{j}")
                dec = m.NewBoolVar(f"dec{i}_{j}")
                w = m.NewBoolVar(f"w{i}_{j}")
                e = m.NewBoolVar(f"e{i}_{j}")
                fin = m.NewBoolVar(f"fin{i}_{j}")
                gprev = prev_g if prev_g is not None else 0
                # base KV at the start of the iteration (after an optional preemption)
                if prev_kv is None:
                    base = 0
                elif p.preemption:
                    pr = m.NewBoolVar(f"pr{i}_{j}")
                    self.pr[i, j] = pr
                    base = m.NewIntVar(0, Lmax, f"base{i}_{j}")
                    m.Add(base == 0).OnlyEnforceIf(pr)
                    m.Add(base == prev_kv).OnlyEnforceIf(pr.Not())
                    m.AddImplication(pr, prev_fin.Not())
                    m.Add(prev_kv >= 1).OnlyEnforceIf(pr)
                else:
                    base = prev_kv
                m.Add(kv == base + n)
                m.Add(kv <= P + gprev)
                # token generation when KV reaches the current length
                m.Add(kv - gprev == P).OnlyEnforceIf(gen)
                m.AddImplication(gen, w)
                m.Add(g == gprev + gen)
                m.Add(g == O).OnlyEnforceIf(fin)
                m.Add(g <= O - 1).OnlyEnforceIf(fin.Not())
                # n >= 1 <=> w
                m.Add(n >= 1).OnlyEnforceIf(w)
                m.Add(n == 0).OnlyEnforceIf(w.Not())
                # decode: exactly one token from state kv = L - 1 of a running request
                m.AddImplication(dec, w)
                m.Add(n == 1).OnlyEnforceIf(dec)
                m.Add(base == P + gprev - 1).OnlyEnforceIf(dec)
                if j == 0:
                    m.Add(dec == 0)
                else:
                    m.Add(prev_g >= 1).OnlyEnforceIf(dec)
                # arrivals
                m.AddImplication(w, e)
                m.Add(self.S[j] >= arr_u[i]).OnlyEnforceIf(e)
                if prev_e is not None:
                    m.AddImplication(prev_e, e)
                # finished requests do nothing and hold nothing
                held = m.NewIntVar(0, Lmax, f"held{i}_{j}")
                if prev_fin is not None:
                    m.Add(gen + prev_fin <= e)  # cut: generating iterations are "alive" ones
                    m.AddImplication(prev_fin, fin)
                    m.AddImplication(prev_fin, w.Not())
                    m.Add(held >= kv - Lmax * prev_fin)
                else:
                    m.Add(held >= kv)
                # KV read of the iteration (kv after, for requests that compute)
                Rij = m.NewIntVar(0, Lmax, f"R{i}_{j}")
                m.Add(Rij >= kv - Lmax * (1 - w))
                m.AddImplication(w, self.u[j])
                R_terms[j].append(Rij)
                T_terms[j].append(n)
                W_terms[j].append(w)
                D_terms[j].append(dec)
                self.held[j].append(held)
                self.n[i, j], self.kv[i, j], self.g[i, j], self.gen[i, j] = n, kv, g, gen
                self.dec[i, j], self.w[i, j], self.e[i, j] = dec, w, e
                self.fin[i, j] = fin
                prev_kv, prev_g, prev_fin, prev_e = kv, g, fin, e
            m.Add(prev_g == O)
            # aggregated cuts (valid with or without preemption): every generated token k (0-based) is
            # produced by an iteration reading kv = P + k; a request computes in at least its own minimum
            # number of iterations; it computes at least P + O - 1 tokens (exactly, without preemption)
            row = range(H)
            m.Add(sum(R_terms[j][i] for j in row) >= O * P + O * (O - 1) // 2)
            m.Add(sum(W_terms[j][i] for j in row) >= math.ceil(P / max(B, 1)) + O - 1)
            if p.preemption:
                m.Add(sum(T_terms[j][i] for j in row) >= P + O - 1)
            else:
                m.Add(sum(T_terms[j][i] for j in row) == P + O - 1)
        self.T = []
        for j in range(H):
            T = sum(T_terms[j])
            self.T.append(T)
            m.Add(T - sum(D_terms[j]) <= B)
            m.Add(sum(self.held[j]) <= C)
            m.Add(T >= 1).OnlyEnforceIf(self.u[j])
            hinge = 0
            if Hc > 0 and tm.knee < max_tok:
                hv = m.NewIntVar(0, max_tok, f"hinge{j}")
                m.Add(hv >= T - tm.knee)
                hinge = hv
            m.Add(self.t[j] == A * self.u[j] + Bc * T + Hc * hinge + Cc * sum(R_terms[j]) + Dc * sum(W_terms[j]))
            if j + 1 < H:
                m.Add(self.S[j + 1] >= self.S[j] + self.t[j])
                m.AddImplication(self.u[j + 1], self.u[j])
        self.end = [self.S[j] + self.t[j] for j in range(H)]
        if self.objective == "makespan":
            self.obj = m.NewIntVar(0, self.t_horizon + t_max, "makespan")
            m.Add(self.obj >= self.end[H - 1])
            tmin = _min_iteration_units(p)
            m.Add(self.obj >= tmin * sum(self.u))
            for i, r in enumerate(p.requests):  # same cut as for completions (see below)
                alive = [self.e[i, 0]] + [self.e[i, j] - self.fin[i, j - 1] for j in range(1, H)]
                m.Add(self.obj >= arr_u[i] + tmin * sum(alive))
        else:
            self.C = []
            tmin = _min_iteration_units(p)
            for i, r in enumerate(p.requests):
                own = (math.ceil(r.prompt / B) + r.output - 1) * tmin  # its own minimum iterations
                Ci = m.NewIntVar(arr_u[i] + own, self.t_horizon + t_max, f"C{i}")
                m.Add(Ci >= self.end[0])
                for j in range(1, H):
                    m.Add(Ci >= self.end[j]).OnlyEnforceIf(self.fin[i, j - 1].Not())
                # cut: every iteration after its arrival and before it finishes is used, lasts >= t_min
                # and lies in [arrival, C_i]
                alive = [self.e[i, 0]] + [self.e[i, j] - self.fin[i, j - 1] for j in range(1, H)]
                m.Add(Ci >= arr_u[i] + tmin * sum(alive))
                self.C.append(Ci)
            self.obj = m.NewIntVar(0, N * (self.t_horizon + t_max), "sum_completion")
            m.Add(self.obj == sum(self.C))
        m.Minimize(self.obj)

    # --- hints -------------------------------------------------------------------------------------------
    def add_hint(self, sched: Schedule, complete_s: float = 5.0) -> bool:
        """Hint the solver with a feasible schedule (ignored if it needs more than H iterations). The
        schedule's decisions are fixed in a copy of the model, which is solved to get a value for every
        variable (a complete hint the solver accepts as its first solution)."""
        its = sched.iterations
        if len(its) > self.H:
            return False
        fixed = self.m.Clone()
        self._hint_decisions(sched, fixed)
        s = cp_model.CpSolver()
        s.parameters.max_time_in_seconds = complete_s
        s.parameters.num_workers = 1
        if s.Solve(fixed) in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            self.m.ClearHints()
            for k in range(len(self.m.Proto().variables)):
                v = self.m.GetIntVarFromProtoIndex(k)
                self.m.AddHint(v, s.Value(fixed.GetIntVarFromProtoIndex(k)))
            return True
        self.m.ClearHints()
        self._hint_decisions(sched, self.m)
        return False

    def _hint_decisions(self, sched: Schedule, model: cp_model.CpModel) -> None:
        """Fix (on a clone) or hint (on the model) the schedule's per-iteration decisions."""
        fix = model is not self.m
        its = sched.iterations

        def put(var, val):
            if fix:
                model.Add(model.GetIntVarFromProtoIndex(var.Index()) == val)
            else:
                model.AddHint(var, val)
        p = self.p
        idx = {r.rid: i for i, r in enumerate(p.requests)}
        N = len(p.requests)
        kv = [0] * N
        g = [0] * N
        for j in range(self.H):
            it = its[j] if j < len(its) else None
            n = [0] * N
            dec = [0] * N
            pre = [0] * N
            if it is not None:
                for rid in it.preempted:
                    pre[idx[rid]] = 1
                for rid, c in it.prefill:
                    n[idx[rid]] += c
                for rid in it.decode:
                    n[idx[rid]] += 1
                    dec[idx[rid]] = 1
            for i, r in enumerate(p.requests):
                if pre[i]:
                    kv[i] = 0
                kv[i] += n[i]
                gen = int(n[i] > 0 and kv[i] == r.prompt + g[i])
                g[i] += gen
                put(self.n[i, j], n[i])
                put(self.dec[i, j], dec[i])
                if (i, j) in self.pr:
                    put(self.pr[i, j], pre[i])
                if not fix:
                    self.m.AddHint(self.kv[i, j], kv[i])
                    self.m.AddHint(self.g[i, j], g[i])
                    self.m.AddHint(self.gen[i, j], gen)
                    self.m.AddHint(self.w[i, j], int(n[i] > 0))
                    self.m.AddHint(self.fin[i, j], int(g[i] == r.output))
            put(self.u[j], int(it is not None))

    # --- extraction --------------------------------------------------------------------------------------
    def extract(self, solver: cp_model.CpSolver) -> Schedule:
        p = self.p
        tm = p.time_model
        its: list[Iteration] = []
        for j in range(self.H):
            if not solver.Value(self.u[j]):
                continue
            prefill, decode, pre = [], [], []
            for i, r in enumerate(p.requests):
                if (i, j) in self.pr and solver.Value(self.pr[i, j]):
                    pre.append(r.rid)
                n = solver.Value(self.n[i, j])
                if n == 0:
                    continue
                if solver.Value(self.dec[i, j]):
                    decode.append(r.rid)
                else:
                    prefill.append((r.rid, n))
            if not prefill and not decode:
                continue
            its.append(Iteration(tm.to_seconds(solver.Value(self.S[j])), tm.to_seconds(solver.Value(self.t[j])),
                                 prefill, decode, pre))
        # exact re-costing: the model only lower-bounds R and the hinge, and a non-optimal solution may leave
        # slack between iterations; retiming starts each iteration as early as allowed (never later)
        return retime(p, its)

    def size(self) -> tuple[int, int]:
        proto = self.m.Proto()
        return len(proto.variables), len(proto.constraints)


def solve(problem: Problem, objective: str = "makespan", time_limit_s: float = 60.0, horizon: int | None = None,
          max_horizon: int = 400, workers: int = 2, hint: Schedule | None = None, seed: int = 0,
          log: bool = False) -> SolveResult:
    """Minimise ``objective`` for ``problem``; returns the best schedule found and the proven bound.

    ``horizon`` overrides the iteration count; by default it is the provable bound from a greedy feasible
    schedule (:func:`horizon_bound`), capped at ``max_horizon`` (then ``horizon_proven`` is False and
    "optimal" means optimal among schedules of at most ``horizon`` iterations).
    """
    t0 = time.perf_counter()
    greedy = greedy_schedule(problem)
    start_sched = greedy
    if hint is not None and not check_problem_schedule(problem, hint, linear=False):
        if hint.objective(problem, objective) <= greedy.objective(problem, objective):
            start_sched = hint
    proven_h = horizon_bound(problem, objective, start_sched)
    if horizon is None:
        H = min(proven_h, max_horizon)
        H = max(H, len(start_sched.iterations))
    else:
        H = horizon
    horizon_proven = H >= proven_h
    sm = ScheduleModel(problem, H, objective)
    sm.add_hint(start_sched, complete_s=min(5.0, 0.25 * time_limit_s))
    nv, nc = sm.size()
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.01, time_limit_s - (time.perf_counter() - t0))
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = seed
    solver.parameters.log_search_progress = log
    status = solver.Solve(sm.m)
    solve_s = time.perf_counter() - t0
    st = solver.StatusName(status)
    N = len(problem.requests)
    tm = problem.time_model
    sum_arr = sum(r.arrival for r in problem.requests)

    def to_obj(units: float) -> float:
        s = tm.to_seconds(units)
        return s if objective == "makespan" else (s - sum_arr) / N

    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        sched = sm.extract(solver)
        bound = to_obj(solver.BestObjectiveBound())
        source = "cp-sat"
    elif status == cp_model.INFEASIBLE:
        raise RuntimeError(f"no schedule within {H} iterations (horizon too small?)")
    else:  # no solution within the time limit: fall back to the (always feasible) starting schedule
        sched = start_sched
        bound = to_obj(solver.BestObjectiveBound()) if solver.BestObjectiveBound() > 0 else 0.0
        source = "hint"
    obj = sched.objective(problem, objective)
    # re-costing with the exact integer model can only differ by rounding; keep the bound <= objective
    bound = min(bound, obj)
    optimal = status == cp_model.OPTIMAL and horizon_proven
    return SolveResult(optimal=optimal, objective=obj, bound=bound, solve_s=solve_s, schedule=sched, status=st,
                       horizon=H, horizon_proven=horizon_proven, source=source, num_vars=nv, num_constraints=nc,
                       stats={"branches": solver.NumBranches(), "conflicts": solver.NumConflicts(),
                              "greedy_objective": greedy.objective(problem, objective)})
