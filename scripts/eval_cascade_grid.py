#!/usr/bin/env python3
"""The issue-14 evaluation grid: cascade (and cascade with plans checked by simulation) against every
router baseline, per (model, trace, instances, load, seed), resumable.

Cells: traces (azure_conv, azure_code, sharegpt, arxiv, mooncake = long context) x models (``name@tp``)
x instances x loads (fractions of round_robin's SLO capacity, scripts/eval_cascade.py: low 0.3, medium
0.6, high 0.9, past_knee 1.2; ``--load-basis analytic``: of the analytic pooled capacity) x seeds. Every run appends one JSON line to ``<out>.jsonl`` and is skipped
when that line exists, so an interrupted grid resumes. The round_robin capacity of a (model, trace, N) is
searched once (seed 0) and cached there too. ``--rate-search-traces`` (default mooncake) also finds every
router's highest rate with >= 90% SLO attainment, once per ``--slo-ttft-scales`` entry: 0 = TTFT <= 2 s for
every request (on Mooncake 7% of 8B and 23% of 70B requests miss it even alone: their prefill takes longer),
3 = TTFT <= max(2 s, 3 x the prompt's isolated prefill time). ``cascade:plan_check=1`` runs also report the CPU
time the plan checker spent (``checker_cpu_s``: the replays the background re-plan would run). A router named
``router@policy`` runs every engine with SGLang's ``--schedule-policy policy`` (e.g.
``cache_aware@shortest-prefill-first``; such baselines count as baselines). ``--rate-iters`` sets the bisection
steps of a rate search (5: 2.2% resolution; other values are stored as rows of their own).

    python scripts/eval_cascade_grid.py --out docs/results/cascade_eval_grid     # then:
    python scripts/eval_cascade_grid.py --out docs/results/cascade_eval_grid --summarize

Targets (issue 14) checked by the summary: cascade mean and p99 E2E <= 1.00x the best baseline (per
metric, seed-averaged) in every cell; on long-context traces mean E2E <= 0.7x and highest SLO-meeting
rate >= 1.3x the best baseline's.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_cascade as ev

from sglang_cascade.planning import sim_checker

CASCADES = ["cascade", "cascade:plan_check=1"]
_CHECK_CPU = [0.0, 0]  # seconds, checks
_score = sim_checker.SimPlanChecker.score


def _timed_score(self, job):  # the plan checker's CPU time, summed per run
    t = time.process_time()
    try:
        return _score(self, job)
    finally:
        _CHECK_CPU[0] += time.process_time() - t
        _CHECK_CPU[1] += 1


sim_checker.SimPlanChecker.score = _timed_score


def _key(d: dict) -> tuple:
    return (
        d["kind"],
        d["model"],
        d["trace"],
        d["instances"],
        d.get("load"),
        d.get("seed"),
        d.get("router"),
        d.get("iters"),
    )


def is_baseline(router: str) -> bool:
    """A baseline router, also on engines with another ``--schedule-policy`` (``cache_aware@shortest-prefill-first``)."""
    return router.partition("@")[0] in ev.BASELINES


class Store:
    def __init__(self, path: str):
        self.path, self.rows = Path(path), {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    d = json.loads(line)
                    if d["kind"] in ("run", "capacity") and d["rate"] <= 0:
                        continue  # a cell whose reference capacity was 0 (see capacity): redone
                    self.rows[_key(d)] = d

    def get(self, **k):
        return self.rows.get(_key(k))

    def put(self, d: dict) -> None:
        self.rows[_key(d)] = d
        with self.path.open("a") as f:
            f.write(json.dumps(d) + "\n")


def capacity(store: Store, model: str, tr: str, n: int, duration: float, load_basis: str = "round_robin") -> float:
    """The rate the loads are fractions of: round_robin's SLO capacity (searched; the analytic one where no
    rate meets the SLOs), or with ``load_basis="analytic"`` the analytic pooled capacity (utilization 1)."""
    hit = store.get(kind="capacity", model=model, trace=tr, instances=n)
    if hit:
        return hit["rate"]
    est = ev.analytic_capacity(tr, model, n)
    if load_basis == "analytic":
        cap, basis = est, "analytic pooled capacity (--load-basis analytic)"
    else:
        cap = ev.max_rate(tr, model, n, "round_robin", est, duration, 0, {})
        basis = "round_robin SLO capacity"
    if cap <= 0:  # no rate meets the SLOs for 90% of requests (70B on Mooncake: long prefills alone
        cap, basis = est, "analytic pooled capacity"  # exceed the TTFT SLO): loads relative to utilization 1
    store.put(
        {"kind": "capacity", "model": model, "trace": tr, "instances": n, "rate": cap, "analytic": est, "basis": basis}
    )
    return cap


def run_cell(store: Store, model, tr, n, load, seed, router, rate, duration, log) -> None:
    k = dict(kind="run", model=model, trace=tr, instances=n, load=load, seed=seed, router=router)
    if store.get(**k):
        return
    _CHECK_CPU[:] = [0.0, 0]
    t = time.process_time()
    row = ev.run_one(tr, model, n, router, rate, ev.n_requests(rate, duration, 1000), seed, {})
    row.update(k, cpu_s=time.process_time() - t, checker_cpu_s=_CHECK_CPU[0], checker_jobs=_CHECK_CPU[1])
    store.put(row)
    log(
        f"{model} {tr} N={n} {load} s{seed} {router:22s} rate={rate:.2f} e2e={row['e2e_mean']:.2f}/"
        f"{row['e2e_p99']:.2f} slo={row['slo_attainment']:.3f} mig={row['migrations']} cpu={row['cpu_s']:.1f}s"
        f" check={row['checker_cpu_s']:.1f}s"
    )


def rate_kind(scale: float) -> str:
    """The store's kind of a rate-search row: ``max_rate`` (absolute TTFT SLO) or ``max_rate_x<scale>``."""
    return "max_rate" if scale <= 0 else f"max_rate_x{scale:g}"


def rate_search(
    store: Store, model, tr, n, router, cap, duration, log, scale: float = 0.0, seed: int = 0, iters: int = 5
) -> None:
    k = dict(kind=rate_kind(scale), model=model, trace=tr, instances=n, router=router)
    if seed:  # (seed-0 rows carry no seed: the first grids searched seed 0 only)
        k["seed"] = seed
    if iters != 5:  # (5-step rows carry no iters: the grids before pool5 searched with 5)
        k["iters"] = iters
    if store.get(**k):
        return
    basis = (store.get(kind="capacity", model=model, trace=tr, instances=n) or {}).get("basis", "")
    if router == "round_robin" and basis.startswith("round_robin") and scale <= 0 and not seed:
        r = cap  # capacity() found round_robin's highest SLO-meeting rate already
    else:  # (an analytic capacity is no SLO-meeting rate: round_robin is searched like the others)
        extra = {"slo_ttft_scale": scale} if scale > 0 else {}
        r = ev.max_rate(tr, model, n, router, cap, duration, seed, extra, iters=iters)
    store.put({**k, "rate": r, "capacity_rate": cap, "slo_ttft_scale": scale})
    log(f"{model} {tr} N={n} s{seed} max rate @SLO>=90% (TTFT SLO scale {scale:g}): {router:22s} {r:.2f} req/s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", nargs="*", default=ev.TRACES + ["mooncake"])
    ap.add_argument("--models", nargs="*", default=["llama-3.1-8b", "llama-3.1-70b@4"])
    ap.add_argument("--instances", nargs="*", type=int, default=[8, 16])
    ap.add_argument("--loads", nargs="*", default=list(ev.LOADS), choices=list(ev.LOADS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--routers", nargs="*", default=ev.BASELINES + CASCADES)
    ap.add_argument("--duration", type=float, default=40.0, help="seconds of arrivals per run (>= 1000 requests)")
    ap.add_argument("--rate-search-traces", nargs="*", default=["mooncake"])
    ap.add_argument("--rate-seeds", nargs="*", type=int, default=[0], help="seeds of the rate searches")
    ap.add_argument(
        "--rate-iters",
        type=int,
        default=5,
        help="bisection steps of a rate search after bracketing it within 2x (5: 2.2%% resolution, 7: 0.5%%)",
    )
    ap.add_argument(
        "--slo-ttft-scales",
        nargs="*",
        type=float,
        default=[0.0, 3.0],
        help="rate searches, one per TTFT SLO: 0 = the absolute --slo-ttft (2 s) for every request; s > 0 = "
        "max(2 s, s x the prompt's isolated prefill time) (SimConfig.slo_ttft_scale)",
    )
    ap.add_argument(
        "--load-basis",
        choices=["round_robin", "analytic"],
        default="round_robin",
        help="loads are fractions of round_robin's SLO capacity (default) or of the analytic pooled capacity "
        "(utilization 1; on Mooncake the 2 s TTFT SLO puts round_robin's at 0.41x of it, 8B x 8). Use its own --out",
    )
    ap.add_argument("--out", default="docs/results/cascade_eval_grid")
    ap.add_argument("--summarize", action="store_true", help="only write <out>.md / <out>.csv from <out>.jsonl")
    a = ap.parse_args(argv)
    store = Store(a.out + ".jsonl")
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)

    if not a.summarize:
        for model in a.models:
            for n in a.instances:
                for tr in a.traces:
                    cap = capacity(store, model, tr, n, a.duration, a.load_basis)
                    for load in a.loads:
                        for seed in a.seeds:
                            for router in a.routers:
                                run_cell(store, model, tr, n, load, seed, router, ev.LOADS[load] * cap, a.duration, log)
                    if tr in a.rate_search_traces:
                        for scale in a.slo_ttft_scales:
                            for seed in a.rate_seeds:
                                for router in a.routers:
                                    rate_search(
                                        store, model, tr, n, router, cap, a.duration, log, scale, seed, a.rate_iters
                                    )
    write_outputs(store, a.out)
    return 0


def write_outputs(store: Store, out: str) -> None:
    runs = [d for d in store.rows.values() if d["kind"] == "run"]
    if runs:
        keys = sorted({k for d in runs for k in d})
        with open(out + ".csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(runs)
    Path(out + ".md").write_text(summary(store) + "\n")
    print(summary(store))


def _cells(runs: list[dict]) -> dict:
    cells: dict = {}
    for d in runs:
        cells.setdefault((d["model"], d["trace"], d["instances"], d["load"]), {}).setdefault(d["router"], []).append(d)
    return cells


def _mean(rows, key) -> float:
    return float(np.mean([r[key] for r in rows]))


def _variants(runs: list[dict]) -> list[str]:
    found = sorted({d["router"] for d in runs if d["router"].startswith("cascade")})
    return [c for c in CASCADES if c in found] + [c for c in found if c not in CASCADES]


DEFAULT = "cascade:agent_waiting_weight=0"  # the current defaults (rows named "cascade" ran the previous ones)


def _cell_ratios(g: dict, variants: list[str]):
    """Best baseline per metric (seed-averaged) and each variant's (mean, p99, mean ratio, p99 ratio)."""
    base = {r: v for r, v in g.items() if is_baseline(r)}
    bm = min(base, key=lambda r: _mean(base[r], "e2e_mean"))
    bp = min(base, key=lambda r: _mean(base[r], "e2e_p99"))
    bmv, bpv = _mean(base[bm], "e2e_mean"), _mean(base[bp], "e2e_p99")
    got = {}
    for c in variants:
        if c in g:
            cm, cp = _mean(g[c], "e2e_mean"), _mean(g[c], "e2e_p99")
            got[c] = (cm, cp, cm / bmv, cp / bpv)
    return (bm, bmv, bp, bpv), got


def summary(store: Store) -> str:
    runs = [d for d in store.rows.values() if d["kind"] == "run"]
    variants = _variants(runs)
    out = [
        "| model | trace | N | load | seeds | best baseline mean / p99 E2E (s) | "
        + " | ".join(f"{c} mean / p99 | ratio" for c in variants)
        + " | checker CPU s / traffic min |",
        "|---|---|---|---|---|---|" + "---|---|" * len(variants) + "---|",
    ]
    misses: dict = {c: [] for c in variants}
    cells = 0
    for (model, tr, n, load), g in sorted(_cells(runs).items()):
        if not any(is_baseline(r) for r in g):
            continue
        cells += 1
        (bm, bmv, bp, bpv), got = _cell_ratios(g, variants)
        cols = []
        for c in variants:
            if c not in got:
                cols += ["-", "-"]
                continue
            cm, cp, rm, rp = got[c]
            cols += [f"{cm:.2f} / {cp:.2f}", f"{rm:.2f}x / {rp:.2f}x"]
            lim = mean_target(tr)
            mean_missed, p99_missed = rm > lim, rp > 1.0
            if mean_missed or p99_missed:
                every = _worse_on_every_seed(g, c, bm if mean_missed else None, bp if p99_missed else None, lim)
                misses[c].append(
                    (
                        f"{model} {tr} N={n} {load}: mean {rm:.3f}x (target <= {lim}), p99 {rp:.3f}x "
                        f"(best {bm} / {bp}){_vs_least_load(g, c)}; {_seed_text(g, c, bm, bp)}"
                        + ("" if every else " - not on every seed"),
                        every,
                    )
                )
        chk = [r for c in variants if "plan_check=1" in c for r in g.get(c, [])]
        per_min = (
            f"{np.mean([r['checker_cpu_s'] / max(1e-9, r['trace_span_s'] / 60) for r in chk]):.2f}" if chk else "-"
        )
        seeds = min(len(v) for v in g.values())
        out.append(
            f"| {model} | {tr} | {n} | {load} | {seeds} | {bm} {bmv:.2f} / {bp} {bpv:.2f} | {' | '.join(cols)} | "
            f"{per_min} |"
        )
    out += _rate_table(store, variants)
    out += _aggregate(_cells(runs), variants)
    out += _every_router(_cells(runs), variants)
    for c in variants:
        ran = sum(1 for g in _cells(runs).values() if c in g)
        every = sum(1 for _, e in misses[c] if e)
        out += [
            "",
            f"**{c}**: {ran - len(misses[c])} of {ran} cells meet the targets; {len(misses[c])} miss, {every} of "
            f"them on every seed (the others meet the missed target on at least one seed: inside the seeds' "
            "spread); per-seed ratios are to the same baseline's run with that seed:",
            "",
        ]
        out += [f"- {m}" for m, _ in misses[c]] or ["- none"]
    return "\n".join(out)


def mean_target(trace: str) -> float:
    """The mean-E2E target against the best baseline: 0.7x on long-context traces, 1.00x elsewhere (p99: 1.00x)."""
    return 0.7 if trace in ev.LONG_CONTEXT else 1.0


def _seed_ratios(g: dict, c: str, base: str, key: str) -> list[float]:
    """The variant's metric over the baseline's, seed by seed (the seeds both ran)."""
    b = {r["seed"]: r[key] for r in g[base]}
    return [r[key] / b[r["seed"]] for r in sorted(g[c], key=lambda r: r["seed"]) if r["seed"] in b and b[r["seed"]] > 0]


def _worse_on_every_seed(g: dict, c: str, bm: str | None, bp: str | None, lim: float) -> bool:
    """A miss is consistent when every seed misses the missed target(s): the mean ratio against ``bm`` above
    ``lim``, the p99 ratio against ``bp`` above 1 (None: that target was met)."""
    worse = []
    if bm is not None:
        worse.append(all(x > lim for x in _seed_ratios(g, c, bm, "e2e_mean")))
    if bp is not None:
        worse.append(all(x > 1.0 for x in _seed_ratios(g, c, bp, "e2e_p99")))
    return any(worse)


def _seed_text(g: dict, c: str, bm: str, bp: str) -> str:
    m = "/".join(f"{x:.3f}" for x in _seed_ratios(g, c, bm, "e2e_mean"))
    p = "/".join(f"{x:.3f}" for x in _seed_ratios(g, c, bp, "e2e_p99"))
    return f"per seed mean {m}, p99 {p}"


def _vs_least_load(g: dict, c: str) -> str:
    """How a variant's cell relates to least_load's: "pooled" when it moved nothing and matched least_load's
    mean and p99 exactly (one stage dispatches as least_load does), else the ratios and migrations."""
    if "least_load" not in g:
        return ""
    rm = _mean(g[c], "e2e_mean") / _mean(g["least_load"], "e2e_mean")
    rp = _mean(g[c], "e2e_p99") / _mean(g["least_load"], "e2e_p99")
    mig = _mean(g[c], "migrations")
    if mig == 0 and abs(rm - 1) < 1e-9 and abs(rp - 1) < 1e-9:
        return ", pooled: = least_load"
    return f", vs least_load {rm:.3f}x / {rp:.3f}x, {mig:.0f} migrations"


def _aggregate(cells: dict, variants: list[str]) -> list[str]:
    """Per variant, model and N: geometric means and worst of the mean / p99 E2E ratios over the cells, and
    how many cells miss 1.00x (and 1.02x) on each."""
    out = [
        "",
        "| variant | model | N | cells | geo-mean mean / p99 | worst mean / p99 | mean > 1.00x | p99 > 1.00x |"
        " either > 1.02x |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in variants:
        for model, n in sorted({(k[0], k[2]) for k in cells}):
            r = [
                _cell_ratios(g, [c])[1][c][2:]
                for k, g in cells.items()
                if k[0] == model and k[2] == n and c in g and any(is_baseline(b) for b in g)
            ]
            if not r:
                continue
            a = np.array(r)
            geo = np.exp(np.log(a).mean(axis=0))
            out.append(
                f"| {c} | {model} | {n} | {len(r)} | {geo[0]:.3f} / {geo[1]:.3f} | {a[:, 0].max():.3f} / "
                f"{a[:, 1].max():.3f} | {int((a[:, 0] > 1.0005).sum())} | {int((a[:, 1] > 1.0005).sum())} | "
                f"{int((a > 1.02).any(axis=1).sum())} |"
            )
    return out


def _every_router(cells: dict, variants: list[str]) -> list[str]:
    """The same per-cell targets applied to every router, baselines included (each against the best of the
    baselines per metric and cell, itself among them): the worse of its two ratios per cell, how many cells it
    meets both <= 1.00x, within 1.01x, its worst. Shows how far "<= the best baseline in every cell" is from
    what any single policy reaches."""
    routers = sorted({r for g in cells.values() for r in g if is_baseline(r)}) + variants
    out = [
        "",
        "| router | cells | geo-mean of the worse ratio | both <= 1.00x | worse ratio <= 1.01x | worst |",
        "|---|---|---|---|---|---|",
    ]
    for c in routers:
        w = []
        for g in cells.values():
            if c not in g or not any(is_baseline(b) for b in g):
                continue
            (bm, bmv, bp, bpv), _ = _cell_ratios(g, [])
            w.append(max(_mean(g[c], "e2e_mean") / bmv, _mean(g[c], "e2e_p99") / bpv))
        if w:
            a = np.array(w)
            out.append(
                f"| {c} | {len(a)} | {np.exp(np.log(a).mean()):.3f} | {int((a <= 1.0005).sum())} | "
                f"{int((a <= 1.01).sum())} | {a.max():.3f} |"
            )
    return out


def _rate_table(store: Store, variants: list[str]) -> list[str]:
    kinds = sorted({d["kind"] for d in store.rows.values() if d["kind"].startswith("max_rate")})
    out = []
    for kind in kinds:
        scale = next(d.get("slo_ttft_scale", 0.0) for d in store.rows.values() if d["kind"] == kind)
        out += _rate_rows(store, variants, kind, scale)
    return out


def _rate_rows(store: Store, variants: list[str], kind: str, scale: float) -> list[str]:
    seeds: dict = {}  # cell -> router -> seed -> rate
    for d in store.rows.values():
        if d["kind"] == kind:
            cell = seeds.setdefault((d["model"], d["trace"], d["instances"]), {})
            cell.setdefault(d["router"], {})[d.get("seed", 0)] = d["rate"]
    if not seeds:
        return []
    # each router's mean over the seeds searched for it; the best baseline is the one with the highest mean over all
    # of its seeds, and a router searched on fewer seeds is compared with that baseline's mean over the same seeds
    by = {cell: {r: float(np.mean(list(v.values()))) for r, v in g.items()} for cell, g in seeds.items()}
    ks = sorted({len(v) for g in seeds.values() for v in g.values()})
    slo = "TTFT <= 2 s" if scale <= 0 else f"TTFT <= max(2 s, {scale:g} x the prompt's isolated prefill)"
    out = [
        "",
        f"Highest rate with >= 90% of requests within the SLOs ({slo}, TPOT <= 0.1 s), mean over "
        f"{'/'.join(map(str, ks))} seed(s) (a router searched on fewer seeds than the best baseline is compared with "
        "that baseline's mean over the same seeds, its seed count in brackets):",
        "",
        "| model | trace | N | best baseline max rate | " + " | ".join(f"{c} | ratio" for c in variants) + " |",
        "|---|---|---|---|" + "---|---|" * len(variants),
    ]
    for (model, tr, n), g in by.items():
        base = {k: v for k, v in g.items() if is_baseline(k)}
        if not base:
            continue
        b = max(base, key=base.get)
        if base[b] <= 0:  # e.g. 70B on Mooncake: long prefills alone exceed the TTFT SLO
            out.append(
                f"| {model} | {tr} | {n} | no baseline meets the SLOs at any rate | "
                + " | ".join(f"{g[c]:.2f} | -" if c in g else "- | -" for c in variants)
                + " |"
            )
            continue
        cells = [_rate_cell(seeds[(model, tr, n)], c, b) for c in variants]  # target on long context: >= 1.3x
        out.append(f"| {model} | {tr} | {n} | {b} {base[b]:.2f} | {' | '.join(cells)} |")
    return out


def _rate_cell(cell_seeds: dict, c: str, b: str) -> str:
    """``c``'s mean rate and its ratio to the best baseline ``b``'s; where ``c`` was searched on fewer seeds than ``b``,
    both means are over the seeds they share (the count in brackets). ``cell_seeds``: router -> seed -> rate."""
    if c not in cell_seeds:
        return "- | -"
    mine, ref = cell_seeds[c], cell_seeds[b]
    common = [sd for sd in mine if sd in ref]
    if len(mine) == len(ref) or not common:
        own, base, note = float(np.mean(list(mine.values()))), float(np.mean(list(ref.values()))), ""
    else:
        own = float(np.mean([mine[sd] for sd in common]))
        base, note = float(np.mean([ref[sd] for sd in common])), f" ({len(common)} seeds)"
    return f"{own:.2f} | {own / max(1e-9, base):.2f}x{note}"


if __name__ == "__main__":
    sys.exit(main())
