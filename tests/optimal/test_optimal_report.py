"""Analysis report rendering (synthetic rows; the full `analyze` run lives in docs/results)."""

from __future__ import annotations

import csv
import pathlib

from sglang_cascade.optimal.report import load_rows, preemption_table, scheduler_table, write_report


def _row(trace, f, opt, opt_pre, sg, proven=True):
    r = {
        "trace": trace,
        "set": 0,
        "kv_frac": f,
        "kv_capacity": 10,
        "requests": 4,
        "mean_prompt": 20.0,
        "mean_output": 3.0,
        "lin_fit_max_err": 0.05,
        "lin_fit_mean_err": 0.02,
    }
    for obj in ("makespan", "mean_e2e"):
        r[f"opt_{obj}"], r[f"opt_pre_{obj}"] = opt, opt_pre
        r[f"opt_{obj}_bound"], r[f"opt_pre_{obj}_bound"] = opt, opt_pre
        r[f"opt_{obj}_optimal"] = r[f"opt_pre_{obj}_optimal"] = proven
        r[f"opt_{obj}_solve_s"] = r[f"opt_pre_{obj}_solve_s"] = 1.0
        for name, v in (("sglang", sg), ("reserve", opt)):
            r[f"{name}|{obj}"] = v
    for name in ("sglang", "reserve"):
        r.update(
            {
                f"{name}|preemptions": 1,
                f"{name}|violations": 0,
                f"{name}|lin_err_max": 0.05,
                f"{name}|lin_err_mean": 0.02,
            }
        )
    return r


def test_report_tables_and_files(tmp_path):
    rows = [_row("a", 0.3, 1.0, 0.6, 1.2), _row("a", 1.0, 1.0, 1.0, 1.1)]
    st = {d["scheduler"]: d for d in scheduler_table(rows, ["sglang", "reserve"])}
    assert abs(st["sglang"]["makespan_gap_mean"] - ((1.2 / 0.6 - 1) + (1.1 - 1)) / 2) < 1e-9
    pt = {d["kv_frac"]: d for d in preemption_table(rows, ["sglang", "reserve"])}
    assert abs(pt[0.3]["makespan_cut_max"] - 0.4) < 1e-9 and pt[1.0]["makespan_cut_max"] == 0
    meta = {
        "trace": "a",
        "model": "m",
        "gpu": "g",
        "sets": 1,
        "requests": 4,
        "seed": 0,
        "length_scale": 1,
        "rate_scale": 1,
        "token_budget": 8,
        "kv_fracs": "0.3,1.0",
        "time_limit": 1,
        "out": str(tmp_path),
        "schedulers": "sglang,reserve",
    }
    text = pathlib.Path(write_report(rows, ["sglang", "reserve"], meta, str(tmp_path))).read_text()
    assert "**confirmed**" in text and "+40.0%" in text
    assert (tmp_path / "gap.png").stat().st_size > 1000 and (tmp_path / "preemption.png").exists()
    # round trip through results.csv
    with open(tmp_path / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=sorted(rows[0]))
        w.writeheader()
        w.writerows(rows)
    back = load_rows(str(tmp_path / "results.csv"))
    assert back[0]["opt_pre_makespan"] == 0.6 and back[0]["opt_makespan_optimal"] is True
