#!/usr/bin/env python3
"""Why does ``cascade:plan_check=1`` pick worse plans? (issue 14, fourth pass) - cell runner and diagnostics.

Runs cells of the issue-14 grid exactly as the grid does (``eval_cascade.run_one(trace, model, N, router,
rate, n_requests(rate, 40, 1000), seed, {})``, the rate = the grid's cached round_robin capacity x load) and
prints, per run, mean / p99 E2E, the checker's CPU per minute of arrivals, and every plan decision the outer
cascade router made (trigger, time, candidates' replay scores, the chosen plan).

Diagnostic modes (``--mode``, applied to every ``plan_check=1`` router of the run):

- ``normal``: the shipped checker.
- ``oracle``: every check replays the FUTURE real arrivals (the trace's requests from the check's time on,
  over the job's time span, at most 2,000), instead of the recorded past / the synthetic Poisson start-up
  replay. If the oracle wins, the replay's input misleads the check.
- ``oracle_warm``: ``oracle`` plus the job's in-flight state, when the job carries one.
- ``noise``: the start-up check's candidates are also scored on synthetic replays with seeds 1-4 and on
  the real first arrivals (printed as ``noise`` lines; the run itself is ``normal``).

    python scripts/diag_plan_check.py llama-3.1-8b 8 azure_conv:past_knee:0 cascade cascade:plan_check=1
    python scripts/diag_plan_check.py llama-3.1-8b 8 azure_conv:past_knee:0 cascade:plan_check=1 --mode oracle
    python scripts/diag_plan_check.py llama-3.1-8b 16 azure_conv:high:0,sharegpt:high:0 cascade --json out.jsonl

Cells are ``trace:load:seed`` (loads: low / medium / high / past_knee). ``--json`` appends one line per run;
``python scripts/diag_plan_check.py table FILE.jsonl ...`` prints those runs as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import eval_cascade as ev

from sglang_cascade.core.specs import get_model
from sglang_cascade.planning import sim_checker
from sglang_cascade.policies import cascade as cascade_mod
from sglang_cascade.policies import cascade_check
from sglang_cascade.policies.plan_check import resolve_replay
from sglang_cascade.policies.plan_replay import synthetic_arrivals

GRID = Path(__file__).resolve().parents[1] / "docs" / "results" / "cascade_eval_grid.jsonl"

_STATE = {"cpu": 0.0, "jobs": 0, "mode": "normal", "trace": None, "routers": [], "oracle_span": 0.0, "oracle_cap": 2000}
_score = sim_checker.SimPlanChecker.score
_init = cascade_mod.CascadeRouter.__init__
_decide = cascade_check.decide


def _future(job, trace):
    """The real arrivals from ``job.at`` on over the job's time span (or ``--oracle-span`` seconds), at most
    ``--oracle-cap``: what the replay tries to predict."""
    span = _STATE["oracle_span"] or max(job.arrivals[-1][0] if job.arrivals else 0.0, 1.0)
    fut = [r for r in trace if job.at <= r.arrival <= job.at + span][: _STATE["oracle_cap"]]
    t0 = fut[0].arrival if fut else 0.0
    return [(r.arrival - t0, r.prompt_len, r.output_len) for r in fut]


def _noise(self, job):
    """The start-up job's candidates scored on 4 more synthetic replays (seeds 1-4) and on the real first
    arrivals: how far apart candidates' scores are from the replay's own noise."""
    r = _STATE["routers"][0]
    sets = [(f"seed{k}", synthetic_arrivals(r._sample, r.rate, r.check_cfg.replay_requests, k)) for k in range(1, 5)]
    sets.append(("real", _future(job, _STATE["trace"])))
    for name, arr in sets:
        sc = _score(self, replace(job, arrivals=arr))
        _STATE["decisions"].append(f"  noise {name}: " + " ".join(f"{x.name}{x.counts}={x.score:.2f}" for x in sc))


def _timed_score(self, job):
    resolve_replay(job)  # the replay the checker would build (the router's job carries its source only)
    mode = _STATE["mode"]
    if mode == "noise" and job.trigger == "init":
        _noise(self, job)
    if mode.startswith("oracle") and _STATE["trace"] is not None:
        job = replace(job, arrivals=_future(job, _STATE["trace"]))
        if mode == "oracle" and hasattr(job, "inflight"):
            job = replace(job, inflight=[])
    t = time.process_time()
    try:
        return _score(self, job)
    finally:
        _STATE["cpu"] += time.process_time() - t
        _STATE["jobs"] += 1


def _tracked_init(self, ctx, cfg):
    _STATE["routers"].append(self)  # before __init__: the outer router is first (its init check builds replays)
    _init(self, ctx, cfg)
    self.diag_init_plan = (self.plan.counts(), list(self.plan.bounds))


def _logged_decide(job, scores, current, cfg):
    d = _decide(job, scores, current, cfg)
    cands = " ".join(f"{s.name}{s.counts}{s.bounds}={s.score:.2f}" for s in scores)
    _STATE.setdefault("decisions", []).append(
        f"{job.trigger} t={job.at:.1f}s replay={len(job.arrivals)} req over {job.arrivals[-1][0]:.1f}s "
        f"+ {len(getattr(job, 'inflight', []))} in flight: "
        f"{d.chosen}{d.counts} changed={d.changed} | {cands}"
    )
    return d


sim_checker.SimPlanChecker.score = _timed_score
cascade_check.decide = _logged_decide
cascade_mod.CascadeRouter.__init__ = _tracked_init


class _Decisions(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("cascade plan check"):
            self.lines.append(msg)


def grid_rate(model: str, trace: str, n: int, load: str) -> float:
    for line in GRID.read_text().splitlines():
        d = json.loads(line)
        if d["kind"] == "capacity" and (d["model"], d["trace"], d["instances"]) == (model, trace, n):
            return ev.LOADS[load] * d["rate"]
    raise SystemExit(f"no cached capacity for {model} {trace} N={n} in {GRID}")


def run(model: str, n: int, cell: str, router: str, mode: str, duration: float) -> dict:
    trace, load, seed = cell.split(":")
    seed = int(seed)
    rate = grid_rate(model, trace, n, load)
    requests = ev.n_requests(rate, duration, 1000)
    name, _ = ev.model_tp(model)
    _STATE.update(cpu=0.0, jobs=0, mode=mode, routers=[], decisions=[])
    _STATE["trace"] = ev.requests_for(trace, requests, rate, seed, get_model(name).max_context)
    handler = _Decisions()
    lg = logging.getLogger("sglang_cascade.cascade")
    lg.addHandler(handler)
    lg.setLevel(logging.INFO)
    t = time.process_time()
    try:
        row = ev.run_one(trace, model, n, router, rate, requests, seed, {})
    finally:
        lg.removeHandler(handler)
    outer = _STATE["routers"][0] if _STATE["routers"] else None
    minutes = max(row["trace_span_s"], 1e-9) / 60.0
    row.update(
        cell=cell,
        load=load,
        seed=seed,
        mode=mode,
        cpu_s=time.process_time() - t,
        checker_cpu_s=_STATE["cpu"],
        checker_jobs=_STATE["jobs"],
        checker_cpu_per_min=_STATE["cpu"] / minutes,
        decisions=_STATE["decisions"] or handler.lines,
        final_counts=outer.plan.counts() if outer else None,
        final_bounds=list(outer.plan.bounds) if outer else None,
        stats=dict(outer.stats) if outer else None,
        init_plan=outer.diag_init_plan if outer else None,
    )
    return row


def table(paths: list[str]) -> None:
    """``table FILE.jsonl ...``: one markdown row per cell, one column per router: mean / p99 E2E (s), and the
    checker's core-s per traffic minute for checked routers."""
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    routers = list(dict.fromkeys(r["router"] for r in rows))
    cells = list(dict.fromkeys((r["instances"], r["cell"]) for r in rows))
    print("| N | cell | " + " | ".join(routers) + " |")
    print("|---|---|" + "---|" * len(routers))
    for n, cell in cells:
        out = []
        for rt in routers:
            got = [r for r in rows if (r["instances"], r["cell"], r["router"]) == (n, cell, rt)]
            if not got:
                out.append("-")
                continue
            r = got[-1]
            txt = f"{r['e2e_mean']:.3f} / {r['e2e_p99']:.3f}"
            if r["checker_jobs"]:
                txt += f", {r['checker_cpu_per_min']:.2f}"
            out.append(txt)
        print(f"| {n} | {cell.replace(':', ' ')} | " + " | ".join(out) + " |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "table":
        table(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("instances", type=int)
    ap.add_argument("cells", help="trace:load:seed[,trace:load:seed...]")
    ap.add_argument("routers", nargs="+")
    ap.add_argument("--mode", default="normal", choices=["normal", "oracle", "oracle_warm", "noise"])
    ap.add_argument("--duration", type=float, default=40.0)
    ap.add_argument("--oracle-span", type=float, default=0.0, help="oracle: seconds of future (0: the job's span)")
    ap.add_argument("--oracle-cap", type=int, default=2000, help="oracle: at most this many future arrivals")
    ap.add_argument("--json", help="append one JSON line per run to this file")
    ap.add_argument("--quiet", action="store_true", help="no decision lines")
    a = ap.parse_args()
    _STATE.update(oracle_span=a.oracle_span, oracle_cap=a.oracle_cap)
    for cell in a.cells.split(","):
        for router in a.routers:
            row = run(a.model, a.instances, cell, router, a.mode, a.duration)
            print(
                f"{a.model} N={a.instances} {cell} {router} [{a.mode}] rate={row['rate']:.2f} "
                f"e2e={row['e2e_mean']:.3f}/{row['e2e_p99']:.3f} slo={row['slo_attainment']:.3f} "
                f"mig={row['migrations']} checks={row['checker_jobs']} "
                f"check_cpu/min={row['checker_cpu_per_min']:.2f} cpu={row['cpu_s']:.1f}s "
                f"init={row['init_plan']} final={row['final_counts']} {row['final_bounds']} stats={row['stats']}",
                flush=True,
            )
            if not a.quiet:
                for line in row["decisions"]:
                    print("   ", line, flush=True)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps(row, default=str) + "\n")


if __name__ == "__main__":
    main()
