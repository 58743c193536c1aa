#!/usr/bin/env python3
"""How well the DP's analytic stage model predicts the simulator, stage by stage, on fixed plans.

For each case: a plan (the DP's own plan at that rate, a pooled plan, a hand-made one) is simulated as a
fixed cascade (``refine=0,balance=0,spill=0``, ``record_schedule``), and every stage's predicted decode
batch, TPOT and TTFT (``stage_dp.predict_stages``) is compared with the measured ones
(``sim.stage_stats``) over the window [warm-up, last arrival - 2 s].

    python scripts/check_stage_model.py [--duration 120] [--json out.json]

Prints one row per stage and the mean absolute log-ratio error (|ln(pred/meas)|, 0.1 ~ 10%) per quantity.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_cascade as ev

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.specs import get_model
from sglang_cascade.policies.migration import MigrationPlanner
from sglang_cascade.policies.stage_dp import plan_partition, predict_stages
from sglang_cascade.policies.stage_model import QoEConfig
from sglang_cascade.policies.stages import StagePlan
from sglang_cascade.sim import SimConfig, simulate
from sglang_cascade.sim.stage_stats import stage_measurements

# the stage model before issue 14's fixes: TTFT = iteration + prefill(mean prompt) / (1 - rho), linearized
# prefill, burst head-room in the batch, no saturation ceiling
FIRST_VERSION = QoEConfig(ttft_queue=False, burst_batch=True)
# (trace, model, N, rate req/s, plan): plan "dp" = the DP's plan at that rate; else (bounds, counts)
CASES = [
    ("sharegpt", "llama-3.1-8b", 8, 30.0, "dp"),
    ("sharegpt", "llama-3.1-8b", 8, 30.0, ((), (8,))),
    ("sharegpt", "llama-3.1-8b", 8, 45.0, "dp"),
    ("azure_conv", "llama-3.1-8b", 8, 70.0, "dp"),
    ("azure_conv", "llama-3.1-8b", 8, 70.0, ((1024,), (4, 4))),
    ("mooncake", "llama-3.1-8b", 8, 2.5, ((8192,), (2, 6))),
    ("mooncake", "llama-3.1-8b", 8, 2.5, ((), (8,))),
]


def run_case(trace, model, n, rate, plan, duration, warmup):
    name, tp = ev.model_tp(model)
    cm = CostModel.for_names(name, "h100", tp)
    reqs = ev.requests_for(trace, max(300, int(rate * duration)), rate, 0, get_model(name).max_context)
    sample = [(r.prompt_len, r.output_len) for r in reqs]
    stall = MigrationPlanner(cm).stall_at_length
    if plan == "dp":
        sp = plan_partition(sample, rate, n, cm, migration_stall=stall).plan
        bounds, counts = list(sp.bounds), sp.counts()
    else:
        bounds, counts = list(plan[0]), list(plan[1])
    pred = predict_stages(sample, rate, bounds, counts, cm, QoEConfig(), migration_stall=stall)
    old = predict_stages(sample, rate, bounds, counts, cm, FIRST_VERSION, migration_stall=stall)
    opts = "refine=0,balance=0,spill=0,counts=" + "/".join(map(str, counts))
    if bounds:
        opts += ",bounds=" + "/".join(map(str, bounds))
    cfg = SimConfig(model=name, tp=tp, instances=n, router=f"cascade:{opts}", record_schedule=True)
    res = simulate(reqs, cfg)
    members = StagePlan.from_counts(bounds, counts).members
    meas = stage_measurements(res, bounds, members, (warmup, reqs[-1].arrival - 2.0))
    rows = []
    for k, (p, m, o) in enumerate(zip(pred, meas, old, strict=True)):
        rows.append(
            {
                "trace": trace,
                "rate": rate,
                "plan": f"{'/'.join(map(str, bounds)) or '-'} x {'/'.join(map(str, counts))}",
                "stage": k,
                **{f"pred_{q}": p[f] for q, f in (("batch", "decode_batch"), ("tpot", "tpot_s"), ("ttft", "ttft_s"))},
                **{f"meas_{q}": m[f] for q, f in (("batch", "decode_batch"), ("tpot", "tpot_s"), ("ttft", "ttft_s"))},
                "tokens": m["tokens"],
                "entries": m["entries"],
                "rho": p["rho"],
                **{f"old_{q}": o[f] for q, f in (("batch", "decode_batch"), ("tpot", "tpot_s"), ("ttft", "ttft_s"))},
                "old_rho": o["rho"],
            }
        )
    return rows


def errors(rows, pred: str = "pred") -> dict:
    """Mean |ln(pred / meas)| per quantity over stages with enough samples (>= 200 tokens / 20 entries);
    TTFT only where the model predicts a steady state (rho < 1: past it the queue grows with the run)."""
    out = {}
    for q, cnt, floor in (("batch", "tokens", 200), ("tpot", "tokens", 200), ("ttft", "entries", 20)):
        e = [
            abs(np.log(max(1e-6, r[f"{pred}_{q}"]) / max(1e-6, r[f"meas_{q}"])))
            for r in rows
            if r[cnt] >= floor and r[f"meas_{q}"] > 0 and (q != "ttft" or max(r["rho"], r["old_rho"]) < 1.0)
        ]
        out[q] = float(np.mean(e)) if e else float("nan")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--warmup", type=float, default=40.0)
    ap.add_argument("--cases", nargs="*", type=int, default=None, help="indices into CASES")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    rows = []
    for i, case in enumerate(CASES):
        if a.cases is None or i in a.cases:
            rows += run_case(*case, a.duration, a.warmup)
    print(
        "| trace | rate | plan | stage | batch first / now / sim | TPOT ms first / now / sim | "
        "TTFT s first / now / sim | rho |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['trace']} | {r['rate']} | {r['plan']} | {r['stage']} | {r['old_batch']:.0f} / "
            f"{r['pred_batch']:.0f} / {r['meas_batch']:.0f} | {1e3 * r['old_tpot']:.1f} / "
            f"{1e3 * r['pred_tpot']:.1f} / {1e3 * r['meas_tpot']:.1f} | {r['old_ttft']:.2f} / "
            f"{r['pred_ttft']:.2f} / {r['meas_ttft']:.2f} | {r['rho']:.2f} |"
        )
    err = {"first_version": errors(rows, "old"), "now": errors(rows)}
    print("mean |ln(pred/sim)|:", json.dumps({k: {q: round(v, 3) for q, v in e.items()} for k, e in err.items()}))
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "errors": err}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
