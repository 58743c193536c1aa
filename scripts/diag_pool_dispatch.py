"""How cascade's prefill pool spreads work, per instance: one simulated run of Mooncake on 70B at TP 4 per router.

    python scripts/diag_pool_dispatch.py [--instances 16] [--load 1.3] [--seed 0] ROUTER [ROUTER ...]

e.g. ``cascade`` against ``cascade:pool_move_room=0,pool_work_weight=0`` (the pool's dispatch before the sixteenth
session). The requests are the grid's (scripts/eval_cascade.py ``requests_for``) at ``load`` x the analytic pooled
capacity, the length-scaled TTFT SLO of the issue-14 rate search. Prints per router the SLO attainment, the prefix
cache's hit rate, the moves made / refused for KV, and per instance the requests it finished, its decode iterations'
mean batch and median step, and the prompt tokens it prefilled: what decides whether the pool's members or the
decode side run out first, and whether the decode side is balanced. Recording the schedule times every decode step with the cost model
(``SimConfig.exact_steps``) instead of the fast-forward's affine fit, so attainment can differ from the grid's run of
the same requests by a few thousandths.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_cascade as ev

from sglang_cascade.core.specs import get_model
from sglang_cascade.sim import simulate

MODEL = "llama-3.1-70b@4"


def run(n: int, load: float, seed: int, router: str) -> list[str]:
    rate = load * ev.analytic_capacity("mooncake", MODEL, n)
    name, _ = ev.model_tp(MODEL)
    reqs = ev.requests_for("mooncake", ev.n_requests(rate, 40.0, 1000), rate, seed, get_model(name).max_context)
    cfg = dataclasses.replace(ev.sim_config(MODEL, n, router, seed, slo_ttft_scale=3.0), record_schedule=True)
    res = simulate(reqs, cfg)
    m = res.metrics
    lines = [
        f"{router} x {n} at {rate:.2f} req/s (load {load:g}), seed {seed}: attained {m['slo_attainment']:.3f}, "
        f"prefix hit rate {m['prefix_hit_rate']:.3f}, moves {m['migrations']} made / {m['migrations_aborted']} "
        f"refused, TPOT p90 {m['tpot_p90']:.3f} s"
    ]
    done = m["completed_per_instance"]
    for iid, recs in enumerate(res.schedules or []):
        if not recs:
            continue
        dur = np.array([r.duration for r in recs])
        prefill = np.array([bool(r.prefill) for r in recs])
        batch = np.array([len(r.decode) for r in recs])
        tokens = sum(t for r in recs for _, t in r.prefill)
        dec = ~prefill
        step = f"{np.median(dur[dec]) * 1e3:.1f} ms" if dec.any() else "-"
        lines.append(
            f"  instance {iid:2d}: finished {done[iid]:4d}, decode iterations {int(dec.sum()):5d} (mean batch "
            f"{batch[dec].mean() if dec.any() else 0:5.1f}, median step {step}), prefill iterations "
            f"{int(prefill.sum()):4d} ({dur[prefill].sum():6.1f} s, {tokens} tokens)"
        )
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("routers", nargs="+")
    ap.add_argument("--instances", type=int, default=16)
    ap.add_argument("--load", type=float, default=1.3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for router in a.routers:
        print("\n".join(run(a.instances, a.load, a.seed, router)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
