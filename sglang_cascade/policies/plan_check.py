"""Stage plans checked by simulation: the DP proposes, a :class:`PlanChecker` disposes.

The analytic stage model (stage_model.py) is fast but wrong by 1.1-2.2x on decode batches
(docs/results/cascade_eval.md), so its best plan may be worse than no partition at all. The cascade router
therefore asks a checker to *score* a few candidate plans - the DP's best few partitions, the pooled
(one-stage) plan and the plan in force - on a replay of recent arrivals, and adopts the best one with
hysteresis (:func:`decide`). Policies stay engine-free: the checker is injected through
``PolicyContext.plan_checker`` by the driver (the simulator's implementation lives in
``sglang_cascade/planning/``; the HTTP router wraps it in a background thread).

Checker protocol (asynchronous by design, so one code path serves the simulator and the live router):
``submit(job)`` hands over a job (a synchronous checker scores it at once), ``results()`` returns the
jobs scored since the last call with their scores, ``close()`` stops any worker.

Every decision is kept as a :class:`PlanDecision` (``CascadeRouter.last_decision``) with ``to_json()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

from .plan_candidates import CURRENT, POOLED, Candidate, CandidateSpec, build_candidates
from .plan_replay import ReplaySource, build_replay


@dataclass
class PlanCheckConfig:
    plan_check: bool = False  # 1: score candidates with the injected checker; 0: adopt the DP plan unchecked
    check_top_k: int = 3  # DP partitions scored besides the pooled and the current plan
    check_max_stages: int = 6  # DP candidates: the best plan per stage count 2..this
    hysteresis: float = 0.05  # a new plan must beat the current one's score by this fraction
    stage_gain: float = 0.03  # a staged plan must beat the pooled one's score by this fraction
    tail_weight: float = 0.2  # score = mean E2E + tail_weight x p99 E2E (seconds)
    check_slo_weight: float = 0.0  # > 0: the score x (1 + this x the replay's share of requests missing the SLOs)
    check_slo_target: float = (
        0.0  # > 0: a plan whose replay meets the SLOs (slo_ttft, slo_tpot) for at least this share
    )
    # of the requests ranks before every plan that does not (``rank_key``); the margins below compare plans of one
    # rank; 0: by score alone
    check_interval_s: float = 60.0  # re-check on this timer (and on drift)
    replay_requests: int = 2000  # arrivals replayed per check (bounds the checker's CPU time)
    min_replay: int = 200  # no timer check with fewer recorded arrivals
    check_instances: int = 0  # >0: score plans on a proportional sub-cluster of this many instances (arrivals
    # thinned to the same per-instance rate over the same time span, stage counts scaled); 0: the whole cluster
    check_open: bool = True  # replay every recent arrival, also those still in flight (output length drawn
    # from the finished lengths above what they generated); 0: finished arrivals only (before issue 14's fourth
    # pass: under load most recent arrivals are unfinished, so the replay ran at 0.3-0.4x the real rate)
    check_warm: bool = True  # start the replay from the cluster's state: the in-flight requests (prompt,
    # generated, KV) on their instances; 0: from an empty cluster
    check_span_s: float = 30.0  # >0 (30 s = the refiner's minimum re-plan interval): the replay covers at
    # least this many seconds (the recent window, or the synthetic start-up replay, repeated back to back), so
    # a plan is judged over about as long as it stays in force, not over the few seconds 2,000 arrivals last
    # on a busy cluster; 0: the window as it is
    dp_margin: bool = True  # another staged plan must beat the DP's own best by ``hysteresis`` to replace it
    # (replay scores of a few % are noise); 0: the best replay score wins
    check_cpu_budget: float = 1.0  # core-seconds of checker CPU per minute of traffic (check_budget.py): a timer /
    # drift check starts only when budget x traffic minutes covers the checks so far plus its expected cost; 0: off


@dataclass
class PlanScore:
    name: str
    bounds: list[int]
    counts: list[int]
    e2e_mean: float
    e2e_p99: float
    slo_attainment: float
    score: float  # lower is better
    predicted: float | None = None
    pool: int = 0  # Candidate.pool


@dataclass
class PlanCheckJob:
    candidates: list[Candidate]
    arrivals: list[tuple[float, int, int]]  # (arrival s from the replay start, prompt, output)
    num_instances: int
    trigger: str  # "init" | "timer" | "drift" | "bootstrap"
    at: float
    tail_weight: float = 0.2
    sub_instances: int = 0  # PlanCheckConfig.check_instances (0: replay on all num_instances)
    # the cluster's state when the job was made (PlanCheckConfig.check_warm): one (slot, prompt, generated,
    # output, kv_tokens) per in-flight request; slot = its instance's position in the plan in force's order,
    # the instance the candidate plans (laid out in that order) give the same position
    inflight: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    dp_best: str = ""  # the candidate the DP itself ranks first (PlanCheckConfig.dp_margin)
    slo_weight: float = 0.0  # PlanCheckConfig.check_slo_weight
    slo_target: float = 0.0  # PlanCheckConfig.check_slo_target
    # the router's jobs carry no candidates but what the DP needs to build them: the checker builds them
    # (``resolve_candidates``) off the request path and fills ``candidates``, ``dp_best`` and ``plan_info``
    spec: CandidateSpec | None = None
    plan_info: dict = field(default_factory=dict)  # the DP's best plan (CascadeRouter.last_plan_info)
    cost_s: float = 0.0  # the check's CPU seconds, set by the checker (measured, or modelled in simulation)
    # the router's jobs carry no arrivals either but a copy of its recorded state: the checker builds the
    # arrivals and the warm start from it (``resolve_replay``) and fills ``replay_requests`` / ``replay_rate``
    source: ReplaySource | None = None
    replay_requests: int = 0
    replay_rate: float = 0.0

    def answer(self) -> tuple:
        """What a checker filled in, to send back from another process (``take_answer``); the arrivals
        themselves stay there (their count and rate come back)."""
        return self.candidates, self.dp_best, self.plan_info, self.replay_requests, self.replay_rate

    def take_answer(self, answer: tuple) -> None:
        self.candidates, self.dp_best, self.plan_info, self.replay_requests, self.replay_rate = answer


def resolve_replay(job: PlanCheckJob) -> None:
    """A job with a ``source`` gets its arrivals and warm start
    (``build_replay``, with the spec's length sample); every job gets ``replay_requests`` / ``replay_rate``."""
    if job.source is not None and not job.arrivals:
        sample = job.spec.sample if job.spec is not None else []
        job.arrivals, job.inflight = build_replay(job.source, sample)
        job.source = None
    job.replay_requests, job.replay_rate = len(job.arrivals), _rate(job.arrivals)


def resolve_job(job: PlanCheckJob, cm) -> bool:
    """Every checker's first step: the replay (``resolve_replay``), then the candidates
    (``resolve_candidates``); True when it ran the DP."""
    resolve_replay(job)
    return resolve_candidates(job, cm)


def resolve_candidates(job: PlanCheckJob, cm) -> bool:
    """A job with a spec and no candidates gets the DP's (``build_candidates``); True when it ran the DP."""
    if job.spec is None or job.candidates:
        return False
    got = build_candidates(job.spec, cm)
    job.candidates, job.dp_best, job.plan_info = got.candidates, got.dp_best, got.plan_info
    return True


@dataclass
class PlanDecision:
    at: float
    trigger: str
    chosen: str
    bounds: list[int]
    counts: list[int]
    changed: bool
    reason: str
    replay_requests: int = 0
    replay_rate: float = 0.0
    scores: list[PlanScore] = field(default_factory=list)
    cost_s: float = 0.0  # the check's CPU seconds (PlanCheckJob.cost_s)
    next_check_at: float | None = None  # the CPU budget governor: no timer / drift check before (None: off)
    pool: int = 0  # prefill-pool instances of the chosen plan

    def to_json(self) -> dict:
        return asdict(self)

    def log_line(self) -> str:
        s = ", ".join(f"{x.name}={x.score:.3f}" for x in self.scores)
        cpu = f"; check {self.cost_s:.2f} CPU s"
        if self.next_check_at is not None:
            cpu += f", next check at t>={self.next_check_at:.1f}s"
        pool = f" + pool {self.pool}" if self.pool else ""
        return (
            f"cascade plan check ({self.trigger}, t={self.at:.1f}s): {self.chosen} {self.counts}{pool} - {self.reason} "
            f"[{s}]{cpu}"
        )


class PlanChecker(Protocol):
    def submit(self, job: PlanCheckJob) -> None: ...

    def results(self) -> list[tuple[PlanCheckJob, list[PlanScore]]]: ...

    def close(self) -> None: ...


def plan_score(
    e2e_mean: float, e2e_p99: float, tail_weight: float, slo_attainment: float = 1.0, slo_weight: float = 0.0
) -> float:
    """mean E2E + tail_weight x p99 E2E, x (1 + slo_weight x the share missing the SLOs) (lower is better)."""
    if not math.isfinite(e2e_mean):
        return float("inf")
    return (e2e_mean + tail_weight * e2e_p99) * (1.0 + slo_weight * max(0.0, 1.0 - slo_attainment))


def rank_key(s: PlanScore, slo_target: float = 0.0) -> tuple[bool, float]:
    """Lower ranks better: with ``slo_target`` > 0, plans whose replay meets the SLOs for at least that share of
    the requests first, then by score."""
    return (slo_target > 0 and s.slo_attainment < slo_target, s.score)


def _clears(a: PlanScore, b: PlanScore, margin: float, slo_target: float) -> bool:
    """Whether ``a`` replaces ``b``: a better rank, or the same rank and a score ``margin`` below ``b``'s."""
    ra, rb = rank_key(a, slo_target)[0], rank_key(b, slo_target)[0]
    return ra < rb or (ra == rb and a.score <= b.score * (1 - margin))


def decide(job: PlanCheckJob, scores: Sequence[PlanScore], current: str, cfg: PlanCheckConfig) -> PlanDecision:
    """Adopt the best ranked plan (``rank_key``: the score, after the SLO target where there is one), with two
    margins: staging must beat pooled by ``stage_gain``, and any change must beat the plan in force by
    ``hysteresis``. With ``dp_margin``, a change to a staged plan takes the DP's own best (``job.dp_best``)
    unless the best one beats it by ``hysteresis`` too. A plan of a better rank clears every margin."""
    by = {s.name: s for s in scores}
    target = job.slo_target
    resolved = job.replay_requests > 0  # by the checker (the arrivals may have stayed in its process)
    n, rate = (job.replay_requests, job.replay_rate) if resolved else (len(job.arrivals), _rate(job.arrivals))
    base = dict(at=job.at, trigger=job.trigger, replay_requests=n, replay_rate=rate)
    best = min(scores, key=lambda s: rank_key(s, target))
    pooled = by.get(POOLED)
    reason = f"{best.name} scored best ({best.score:.3f})"
    if target > 0 and best.slo_attainment >= target:
        reason += f", SLOs met for {best.slo_attainment:.3f} >= {target:g} of the replay"
    if pooled is not None and best is not pooled and not _clears(best, pooled, cfg.stage_gain, target):
        reason = (
            f"staging does not pay: best other plan {best.name} scored {best.score:.3f} vs pooled "
            f"{pooled.score:.3f} (needs < {1 - cfg.stage_gain:.2f}x)"
        )
        best = pooled
    cur = by.get(CURRENT) or by.get(current)
    if cur is not None and (best.counts, best.bounds, best.pool) == (cur.counts, cur.bounds, cur.pool):
        best = cur
    if cur is not None and best is not cur and not _clears(best, cur, cfg.hysteresis, target):
        return PlanDecision(
            chosen=CURRENT,
            bounds=cur.bounds,
            counts=cur.counts,
            pool=cur.pool,
            changed=False,
            reason=f"{reason}; kept the current plan ({cur.score:.3f}): gain inside the {cfg.hysteresis:.0%} band",
            scores=list(scores),
            **base,
        )
    # a change to a staged plan is due (the best one cleared stage_gain and the hysteresis): which staged plan.
    # Inside the replay's noise the DP's own choice stands
    dp = by.get(job.dp_best) if cfg.dp_margin else None
    other = dp is not None and dp is not pooled and best is not dp and best is not pooled and best is not cur
    if other and not _clears(best, dp, cfg.hysteresis, target):
        reason = f"{best.name} ({best.score:.3f}) within {cfg.hysteresis:.0%} of the DP's {dp.name}: {dp.name}"
        best = dp
    changed = cur is None or best is not cur
    if best is pooled and "does not pay" not in reason:
        reason = f"pooled scored best ({best.score:.3f}): staging does not pay"
    return PlanDecision(
        chosen=best.name,
        bounds=best.bounds,
        counts=best.counts,
        pool=best.pool,
        changed=changed,
        reason=reason,
        scores=list(scores),
        **base,
    )


def _rate(arrivals: Sequence[tuple[float, int, int]]) -> float:
    if len(arrivals) < 2 or arrivals[-1][0] <= arrivals[0][0]:
        return 0.0
    return (len(arrivals) - 1) / (arrivals[-1][0] - arrivals[0][0])


def proportional_counts(counts: Sequence[int], m: int) -> list[int] | None:
    """Instances per stage scaled from ``sum(counts)`` to ``m`` (largest remainder, every stage >= 1);
    None when the plan has more stages than ``m`` instances."""
    n = sum(counts)
    if m >= n:
        return list(counts)
    if len(counts) > m or n <= 0:
        return None
    out = [max(1, int(c * m / n)) for c in counts]
    rest = sorted(range(len(counts)), key=lambda i: (out[i] - counts[i] * m / n, -counts[i]))
    i = 0
    while sum(out) < m:
        out[rest[i % len(rest)]] += 1
        i += 1
    while sum(out) > m:  # the >= 1 floor overshot: take from the stage furthest above its share, never below 1
        j = max((k for k in range(len(out)) if out[k] > 1), key=lambda k: (out[k] - counts[k] * m / n, out[k]))
        out[j] -= 1
    return out
