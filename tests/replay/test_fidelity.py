"""Simulator fidelity (replay/fidelity.py, scripts/eval_fidelity.py): the comparison arithmetic, and a small
real run (one CPU-engine server, stock and plugin) whose simulated metrics must stay within an error bound."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_cascade.core.traces import TraceRequest
from sglang_cascade.replay import fidelity as fid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _m(e2e, thr, pre=0):
    return {"e2e_mean": e2e, "throughput_tok_s": thr, "ttft_mean": e2e / 4, "preemptions": pre}


def test_rel_err_and_compare():
    assert fid.rel_err(2.0, 2.2) == pytest.approx(0.1)
    assert fid.rel_err(0.0, 0.0) == 0.0 and fid.rel_err(0.0, 1.0) == 1.0
    assert fid.rel_err(None, 1.0) is None
    rows = fid.compare({"a": _m(1.0, 100)}, {"a": _m(1.5, 100)}, ("e2e_mean", "throughput_tok_s"))
    assert [(r["metric"], r["rel_err"]) for r in rows] == [("e2e_mean", 0.5), ("throughput_tok_s", 0.0)]


def test_ranking_within_each_trace_with_ties():
    real = {"t1/x": _m(1.0, 100), "t1/y": _m(2.0, 101), "t2/x": _m(5.0, 50), "t2/y": _m(1.0, 50)}
    same = {"t1/x": _m(1.1, 99), "t1/y": _m(2.5, 100), "t2/x": _m(4.0, 51), "t2/y": _m(1.2, 49)}
    s = fid.summary(fid.compare(real, same), real, same)
    assert s["ranking_agrees"] and s["configs"] == 4
    flipped = dict(same, **{"t2/y": _m(6.0, 50)})  # t2: y slower than x in the simulator, faster for real
    s = fid.summary(fid.compare(real, flipped), real, flipped)
    assert s["ranking"] == {"e2e_mean": False, "throughput_tok_s": True} and not s["ranking_agrees"]
    # configurations of different traces are never compared: t1/x (1.0) vs t2/y (1.0 real, 6.0 sim) is fine
    assert fid.ranking_agrees(
        {"a": real["t1/x"], "b": real["t1/y"]}, {"a": same["t1/x"], "b": same["t1/y"]}, "e2e_mean"
    )


def test_ranking_beyond_noise_uses_a_repeated_real_run():
    real = {"t/x": _m(1.00, 100), "t/y": _m(1.10, 90), "t/z": _m(3.0, 50)}
    sim = {"t/x": _m(1.20, 95), "t/y": _m(1.05, 92), "t/z": _m(2.5, 55)}  # x/y flipped on mean E2E
    assert not fid.summary(fid.compare(real, sim), real, sim)["ranking_agrees"]
    noisy = {"t/x": _m(1.15, 88), "t/y": _m(1.02, 99)}  # the second run orders x and y the other way round
    s = fid.summary(fid.compare(real, sim), real, sim, repeat=noisy)
    assert s["ranking_agrees_beyond_noise"] and s["repeated_configs"] == 2
    assert s["repeat_spread"]["e2e_mean"] == pytest.approx(statistics.median([0.15 / 1.075, 0.08 / 1.06]))
    steady = {"t/x": _m(1.01, 101), "t/y": _m(1.12, 89)}  # the two runs agree: the flip is the simulator's
    s = fid.summary(fid.compare(real, sim), real, sim, repeat=steady)
    assert s["ranking_beyond_noise"] == {"e2e_mean": False, "throughput_tok_s": True}
    # z is not repeated: its pairs are judged on the one run (the simulator orders them right)
    assert fid.ranking_agrees(real, {**sim, "t/x": _m(0.9, 101)}, "e2e_mean", repeat=steady)
    wrong_z = {**sim, "t/z": _m(0.5, 55)}
    assert not fid.ranking_agrees(real, {**wrong_z, "t/x": _m(0.9, 101)}, "e2e_mean", repeat=steady)


def test_ranking_among_configurations_offered_the_same_traffic():
    # one server at rate r (a, b) and two servers at 2r (c): the simulator orders a/b and c the other way
    real = {"t/a": _m(1.0, 50), "t/b": _m(1.2, 50), "t/c": _m(1.1, 100)}
    sim = {"t/a": _m(1.3, 50), "t/b": _m(1.5, 50), "t/c": _m(1.0, 100)}
    s = fid.summary(fid.compare(real, sim), real, sim, traffic={"t/a": 1, "t/b": 1, "t/c": 2})
    assert s["ranking"]["e2e_mean"] is False  # a < c for real, c < a simulated
    assert s["ranking_same_traffic"] == {"e2e_mean": True, "throughput_tok_s": True}
    flipped = {**sim, "t/b": _m(1.2, 50)}  # b before a: wrong within the same traffic
    s = fid.summary(fid.compare(real, flipped), real, flipped, traffic={"t/a": 1, "t/b": 1, "t/c": 2})
    assert s["ranking_same_traffic"]["e2e_mean"] is False


def test_small_counts_stay_out_of_the_error_summary():
    real, sim = {"a": _m(1.0, 100, pre=1)}, {"a": _m(1.0, 100, pre=3)}
    s = fid.summary(fid.compare(real, sim), real, sim)
    assert "preemptions" not in s["per_metric_mean_err"] and s["max_metric_mean_err"] == 0.0
    real, sim = {"a": _m(1.0, 100, pre=10)}, {"a": _m(1.0, 100, pre=15)}
    s = fid.summary(fid.compare(real, sim), real, sim)
    assert s["per_metric_mean_err"]["preemptions"] == pytest.approx(0.5)


def test_rate_for_load_scales_with_service_time():
    short = [TraceRequest(str(i), 0.0, 32, 8) for i in range(10)]
    long = [TraceRequest(str(i), 0.0, 512, 64) for i in range(10)]
    r_short, r_long = fid.rate_for_load(short, 1.0), fid.rate_for_load(long, 1.0)
    assert r_short > 3 * r_long > 0
    assert fid.rate_for_load(short, 2.0) == pytest.approx(2 * r_short)
    assert 1.0 / r_short == pytest.approx(fid.isolated_service_s(short[0]))


def test_eval_script_trace_slices():
    ev = _eval_script()
    args = ev.parse_args(["--quick", "--trace", "azure_code"])
    one, two = ev.make_trace(args, "azure_code", 1.0), ev.make_trace(args, "azure_code", 2.0)
    assert len(one) == len(two) == 30
    assert all(r.prompt_len + r.output_len <= ev.CONTEXT for r in one)
    # two servers: the same requests at twice the rate
    assert [r.prompt_len for r in one] == [r.prompt_len for r in two]
    assert two[-1].arrival == pytest.approx(one[-1].arrival / 2)


@pytest.mark.skipif(importlib.util.find_spec("sglang") is None, reason="sglang not installed")
def test_real_single_server_within_error_bound(tmp_path):
    """One stock server and one plugin server, 25 requests of azure_conv at half load, on a profile of this
    machine measured first (`--calibrate --quick`: the shipped profile is another VM's, 2-3x off on a faster
    one, docs/fidelity.md). Bounds: throughput within 20% and median relative error over all metrics under 80%.
    They are loose on purpose: on a shared 2-core machine the contention probe of one run varied from x0.72 to
    x1.64 between two configurations minutes apart; the full evaluation reports the real error."""
    cmd = [sys.executable, os.path.join(ROOT, "scripts/eval_fidelity.py"), "--single-only", "--trace", "azure_conv"]
    cmd += ["--calibrate", "--quick"]
    cmd += ["--requests", "25", "--load", "0.5", "--json", "--out", str(tmp_path / "fid")]
    cmd += ["--log-dir", str(tmp_path / "logs")]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summ = json.loads(out.stdout.strip().splitlines()[-1])
    assert summ["configs"] == 2
    rows = list(csv.DictReader((tmp_path / "fid.csv").read_text().splitlines()))
    assert len(rows) == 2 * len(fid.METRICS)
    thr = {r["config"]: float(r["rel_err"]) for r in rows if r["metric"] == "throughput_tok_s"}
    assert set(thr) == {"azure_conv/sglang", "azure_conv/plugin_cascade"}
    assert max(thr.values()) < 0.2, thr
    assert summ["median_rel_err"] < 0.8, summ
    assert "probe x" in (tmp_path / "fid.md").read_text()
    prof = json.loads((tmp_path / "fid.profile.json").read_text())  # the run's own calibration, kept
    assert prof["name"] == "cpu-engine" and len(prof["rows"]) >= 10 and "co_run" not in prof


def test_resim_of_the_quiet_quick_run_within_error_bound(tmp_path):
    """The simulator side of the quiet quick run (docs/results/fidelity_quick_quiet.csv: 20 real
    configurations, 2026-12-04 03:02-03:09 UTC, probes x0.74-x1.04) re-run from its CSV: the issue's median
    target (<= 10%) and a per-metric bound at the current worst metric's level (tpot_p99 20.3%, docs/fidelity.md).
    A change to the simulator that makes it predict real SGLang worse fails here."""
    cmd = [sys.executable, os.path.join(ROOT, "scripts/eval_fidelity.py"), "--quick", "--json"]
    cmd += ["--resim", os.path.join(ROOT, "docs/results/fidelity_quick_quiet.csv"), "--out", str(tmp_path / "re")]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summ = json.loads(out.stdout.strip().splitlines()[-1])
    assert summ["configs"] == 20
    assert summ["median_rel_err"] <= 0.10, summ
    assert summ["max_metric_mean_err"] <= 0.21, summ
    rows = list(csv.DictReader((tmp_path / "re.csv").read_text().splitlines()))
    real = fid.read_real_csv(os.path.join(ROOT, "docs/results/fidelity_quick_quiet.csv"))
    assert {r["config"]: float(r["real"]) for r in rows if r["metric"] == "e2e_mean"} == pytest.approx(
        {k: m["e2e_mean"] for k, m in real.items()}
    )


def test_resim_rejects_a_file_that_is_not_a_fidelity_csv(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a fidelity CSV"):
        fid.read_real_csv(str(bad))
    cmd = [sys.executable, os.path.join(ROOT, "scripts/eval_fidelity.py"), "--quick", "--resim", str(bad)]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "not a fidelity CSV" in out.stderr


def _eval_script():
    spec = importlib.util.spec_from_file_location("eval_fidelity", os.path.join(ROOT, "scripts/eval_fidelity.py"))
    ev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ev)
    return ev


FULL_REAL = os.path.join(ROOT, "docs/results/fidelity_full.real.json")  # the quiet full run (docs/fidelity.md)


def test_resim_of_the_quiet_full_run_within_error_bound():
    """The simulator against the committed real side of the quiet full run (120 requests x 4 traces x 5
    configurations, no servers): the issue's bounds (median relative error <= 10%) over everything, and
    no metric's mean error above 20% on the stock-engine configurations (one server, and two behind each
    router). The plugin configuration is reported, not bounded here: docs/fidelity.md says why."""
    ev = _eval_script()
    args = ev.parse_args(["--resim", FULL_REAL])
    real, sim = ev.resim_all(args, ev.configs(args))
    assert len(real) == len(sim) == 20
    for key, m in sim.items():  # the same offered rate and the same requests as the real run
        assert m["offered_rate"] == real[key]["offered_rate"] and m["completed"] == real[key]["completed"] == 120
    summ = fid.summary(fid.compare(real, sim), real, sim)
    assert summ["configs"] == 20 and summ["median_rel_err"] <= 0.10, summ
    stock = [k for k in real if not k.endswith("/plugin_cascade")]
    assert len(stock) == 16
    r, s = {k: real[k] for k in stock}, {k: sim[k] for k in stock}
    part = fid.summary(fid.compare(r, s), r, s)
    assert part["median_rel_err"] <= 0.10 and part["max_metric_mean_err"] <= 0.20, part
    assert part["per_metric_mean_err"]["throughput_tok_s"] <= 0.02, part


FULL2_REAL = os.path.join(ROOT, "docs/results/fidelity_full2.real.json")  # quiet full run after the plugin fix
FULL2_CSV = os.path.join(ROOT, "docs/results/fidelity_full2.csv")


def test_resim_replays_the_recorded_offered_rate_exactly():
    """A resim stretches the slice to the recorded offered rate (len / last arrival) exactly, so it simulates
    the very arrivals the real run sent (it once matched a different rate definition and drifted by a few %)."""
    ev = _eval_script()
    args = ev.parse_args(["--resim", FULL2_REAL])
    real = json.loads(Path(FULL2_REAL).read_text())
    by_name = {c.name: c for c in ev.configs(args)}
    for key in ("azure_conv/sglang", "sharegpt/rr2", "arxiv/cascade2"):
        t, c = key.rsplit("/", 1)
        tr = ev.make_trace(args, t, by_name[c].rate_scale, real[key]["offered_rate"])
        assert len(tr) / tr[-1].arrival == pytest.approx(real[key]["offered_rate"], rel=1e-12)
        # the rate the real run computed from the load gives the same arrivals
        live = ev.make_trace(args, t, by_name[c].rate_scale)
        assert [r.arrival for r in tr] == pytest.approx([r.arrival for r in live], rel=1e-9)


def test_resim_of_the_quiet_full_run_after_the_plugin_fix_meets_the_bounds():
    """The issue's error bounds over all 20 configurations, the plugin included, on the quiet full run made
    after the plugin fix (median <= 10%, every metric's mean error <= 20%, throughput within 2%); the
    ranking on throughput agrees; on mean E2E, with the earlier quiet run as a repeat of the 16 stock
    configurations, only pairs with the (unrepeated) plugin configuration may disagree."""
    ev = _eval_script()
    args = ev.parse_args(["--resim", FULL2_REAL])
    real, sim = ev.resim_all(args, ev.configs(args))
    summ = fid.summary(fid.compare(real, sim), real, sim)
    assert summ["configs"] == 20 and summ["median_rel_err"] <= 0.10, summ
    assert summ["max_metric_mean_err"] <= 0.20 and summ["per_metric_mean_err"]["throughput_tok_s"] <= 0.02, summ
    assert summ["ranking"]["throughput_tok_s"], summ
    repeat = {k: m for k, m in json.loads(Path(FULL_REAL).read_text()).items() if not k.endswith("/plugin_cascade")}
    stock = [k for k in real if not k.endswith("/plugin_cascade")]
    for key in ("e2e_mean", "throughput_tok_s"):
        for t in ("azure_conv", "azure_code", "sharegpt", "arxiv"):
            g = [k for k in stock if k.startswith(t + "/")]
            assert fid.ranking_agrees({k: real[k] for k in g}, {k: sim[k] for k in g}, key, repeat=repeat), (key, t)
    # the committed table is this resim (same arrivals, same simulator)
    with open(FULL2_CSV) as f:
        table = {(r["config"], r["metric"]): float(r["sim"]) for r in csv.DictReader(f)}
    for key in ("azure_code/plugin_cascade", "sharegpt/cascade2"):
        assert sim[key]["e2e_mean"] == pytest.approx(table[(key, "e2e_mean")], rel=0.02)


MOONCAKE4 = os.path.join(ROOT, "docs/results/fidelity_mooncake4")  # the long-context slice, quiet machine
FULL6 = os.path.join(ROOT, "docs/results/fidelity_full6")  # four traces on the current code (with a repeat)


def _resim_on_its_calibration(run: str, argv: list[str]):
    """``eval_fidelity.py --resim run.real.json`` with the profile that run calibrated (as the script picks it,
    ``use_profile``, which drops the cost-model tables earlier tests built from the shipped profile): (real, sim,
    traffic). ``use_profile`` sets the environment variable itself, so it is put back by hand, then the tables
    are dropped again: later tests see the shipped profile."""
    from sglang_cascade.core.costmodel import clear_caches
    from sglang_cascade.core.hardware import HARDWARE_DIR_ENV

    ev = _eval_script()
    before = os.environ.get(HARDWARE_DIR_ENV)
    ev.use_profile(run + ".profile.json")
    try:
        args = ev.parse_args([*argv, "--resim", run + ".real.json"])
        cfgs = ev.configs(args)
        real, sim = ev.resim_all(args, cfgs)
    finally:
        if before is None:
            os.environ.pop(HARDWARE_DIR_ENV, None)
        else:
            os.environ[HARDWARE_DIR_ENV] = before
        clear_caches()
    by_name = {c.name: c for c in cfgs}
    traffic = {k: by_name[k.rsplit("/", 1)[1]].instances for k in real}  # as the script groups them
    return real, sim, traffic


def _table_sim(run: str) -> dict:
    with open(run + ".csv") as f:
        return {(r["config"], r["metric"]): float(r["sim"]) for r in csv.DictReader(f)}


def test_resim_of_the_quiet_long_context_run_meets_the_median_bound():
    """The Mooncake slice (prompts up to 4K tokens on the tiny model) against its committed real side with the
    profile calibrated in that run (docs/fidelity.md): median error <= 10%, throughput within 2%, mean E2E and
    TTFT within 20%, and the configurations that serve the same traffic (one server: stock vs plugin; two:
    round_robin vs least_load vs cascade) ranked as reality ranks them on mean E2E and throughput. TPOT is the
    part left open (its p99 is a race of 2-token requests with a prefill; its mean the co-run slow-down)."""
    real, sim, traffic = _resim_on_its_calibration(MOONCAKE4, ["--trace", "mooncake", "--load", "0.7"])
    assert len(real) == len(sim) == 5
    summ = fid.summary(fid.compare(real, sim), real, sim, None, traffic)
    assert summ["median_rel_err"] <= 0.10, summ
    err = summ["per_metric_mean_err"]
    assert err["throughput_tok_s"] <= 0.02 and err["e2e_mean"] <= 0.20 and err["ttft_mean"] <= 0.20, err
    assert summ["ranking_same_traffic"] == {"e2e_mean": True, "throughput_tok_s": True}, summ
    table = _table_sim(MOONCAKE4)  # the committed table is this resim (its CSV has 6 digits)
    for key in ("mooncake/sglang", "mooncake/cascade2"):
        assert sim[key]["e2e_mean"] == pytest.approx(table[(key, "e2e_mean")], rel=1e-5)


def test_resim_of_the_current_full_run_meets_every_target_with_its_repeat():
    """The four traces x five configurations on the current code (fidelity_full6), re-simulated on their own
    calibration: median <= 10%, every metric's mean error <= 20%, throughput within 2%, and, with the second
    real run of 16 configurations as the noise reference, every trace's configurations (and every same-traffic
    set) ranked as reality ranks them on mean E2E and throughput; the raw ranking misses on mean E2E only where
    round_robin and least_load are closer than the real runs' own spread."""
    real, sim, traffic = _resim_on_its_calibration(FULL6, [])
    assert len(real) == len(sim) == 20
    repeat = json.loads(Path(FULL6 + "_repeat.real.json").read_text())
    summ = fid.summary(fid.compare(real, sim), real, sim, repeat, traffic)
    assert summ["median_rel_err"] <= 0.10 and summ["max_metric_mean_err"] <= 0.20, summ
    assert summ["per_metric_mean_err"]["throughput_tok_s"] <= 0.02, summ
    assert summ["ranking_agrees_beyond_noise"], summ
    assert summ["ranking_same_traffic_beyond_noise"] == {"e2e_mean": True, "throughput_tok_s": True}, summ
    assert summ["ranking"]["throughput_tok_s"], summ
    table = _table_sim(FULL6)
    for key in ("azure_code/plugin_cascade", "sharegpt/cascade2", "arxiv/ll2"):
        assert sim[key]["e2e_mean"] == pytest.approx(table[(key, "e2e_mean")], rel=1e-5)


def test_resim_rejects_a_run_of_other_arguments(tmp_path):
    ev = _eval_script()
    real = json.loads(Path(FULL_REAL).read_text())
    one = {"azure_conv/sglang": real["azure_conv/sglang"]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(one))
    args = ev.parse_args(["--quick", "--resim", str(path)])  # 30 requests, the run had 120
    with pytest.raises(SystemExit, match="has 120 requests, this slice 30"):
        ev.resim_all(args, ev.configs(args))
    path.write_text(json.dumps({"azure_conv/nope": real["azure_conv/sglang"]}))
    args = ev.parse_args(["--resim", str(path)])
    with pytest.raises(SystemExit, match="nope is not a configuration"):
        ev.resim_all(args, ev.configs(args))


def test_mixed_chunk_runs_servers_and_simulator_on_the_same_engine(tmp_path):
    """--mixed-chunk: every configuration's servers get SGLang's --enable-mixed-chunk and the simulator models
    it (SimConfig.mixed_chunk from the configuration's server arguments); a recorded run says which engine it
    had, and a resim of it on the other engine is refused."""
    ev = _eval_script()
    on, off = ev.parse_args(["--mixed-chunk"]), ev.parse_args([])
    for c in ev.configs(on):
        assert (
            fid.MIXED_CHUNK_ARG in c.server_args
            and fid.sim_config(c, "tiny-llama", "cpu-engine", 2, 0.1, 0.5).mixed_chunk
        )
    for c in ev.configs(off):
        assert fid.MIXED_CHUNK_ARG not in c.server_args
        assert not fid.sim_config(c, "tiny-llama", "cpu-engine", 2, 0.1, 0.5).mixed_chunk
    plugin = next(c for c in ev.configs(on) if c.name == "plugin_cascade")
    assert plugin.server_args[: len(ev.PLUGIN_ARGS)] == ev.PLUGIN_ARGS
    real = json.loads(Path(FULL_REAL).read_text())
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"azure_conv/sglang": {**real["azure_conv/sglang"], "mixed_chunk": True}}))
    args = ev.parse_args(["--resim", str(path)])
    with pytest.raises(SystemExit, match="ran with --enable-mixed-chunk; add --mixed-chunk"):
        ev.resim_all(args, ev.configs(args))
    args = ev.parse_args(["--resim", str(path), "--mixed-chunk"])
    r, sim = ev.resim_all(args, ev.configs(args))
    path.write_text(json.dumps({"azure_conv/sglang": real["azure_conv/sglang"]}))
    args_off = ev.parse_args(["--resim", str(path)])
    _, sim_off = ev.resim_all(args_off, ev.configs(args_off))
    # the same requests on the other engine: the stock server's decode rides its prefill forwards
    assert sim["azure_conv/sglang"]["e2e_mean"] != pytest.approx(sim_off["azure_conv/sglang"]["e2e_mean"], rel=1e-6)


def test_schedule_policy_runs_servers_and_simulator_with_the_same_order(tmp_path):
    """--schedule-policy: every server and the simulator get the same waiting-queue order; a recorded run says
    which it had, and a resim with another one is refused."""
    ev = _eval_script()
    spf = ev.parse_args(["--schedule-policy", "shortest-prefill-first"])
    assert ev.engine_args(spf) == [fid.SCHEDULE_POLICY_ARG, "shortest-prefill-first"]
    assert ev.engine_args(ev.parse_args([])) == []
    for c in ev.configs(spf):
        assert fid.sim_config(c, "tiny-llama", "cpu-engine", 2, 0.1, 0.5).schedule_policy == "shortest-prefill-first"
    real = json.loads(Path(FULL_REAL).read_text())
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"azure_conv/sglang": {**real["azure_conv/sglang"], "schedule_policy": "hrrn"}}))
    with pytest.raises(SystemExit, match="--schedule-policy hrrn"):
        ev.resim_all(ev.parse_args(["--resim", str(path)]), ev.configs(ev.parse_args([])))
    args = ev.parse_args(["--resim", str(path), "--schedule-policy", "hrrn"])
    _, sim = ev.resim_all(args, ev.configs(args))
    assert sim["azure_conv/sglang"]["completed"] == real["azure_conv/sglang"]["completed"]


def test_resim_result_lag_option_moves_ttft_toward_the_real_runs(tmp_path):
    """--sim-result-lag 0/1 (SGLang's overlap-scheduler lag off / on; on = the cpu-engine default): on the
    quiet full run the lag brings the simulated TTFT closer to the real one on these (not on every
    configuration: single servers on sharegpt / arxiv are over-predicted by 11% / 11% with it, under-predicted
    by 9% / 9% without)."""
    ev = _eval_script()
    real = json.loads(Path(FULL_REAL).read_text())
    keys = ["azure_conv/sglang", "azure_code/sglang", "arxiv/rr2"]
    path = tmp_path / "r.json"
    path.write_text(json.dumps({k: real[k] for k in keys}))
    err = {}
    for lag in (None, "0", "1"):
        args = ev.parse_args(["--resim", str(path)] + ([] if lag is None else ["--sim-result-lag", lag]))
        r, s = ev.resim_all(args, ev.configs(args))
        err[lag] = {k: fid.rel_err(r[k]["ttft_mean"], s[k]["ttft_mean"]) for k in keys}
    assert err[None] == err["1"]
    assert all(err["1"][k] < err["0"][k] for k in keys), err
    with pytest.raises(SystemExit):
        ev.parse_args(["--sim-result-lag", "2"])


FULL3_REAL = os.path.join(ROOT, "docs/results/fidelity_full3.real.json")  # another VM, its own calibration


def test_resim_uses_the_runs_own_machine_profile(tmp_path):
    """A run made with --calibrate left OUT.profile.json (this VM's CPU engine, co-run slow-down included); a
    resim of OUT.real.json uses it, in a subprocess (the profile is process-wide), and reproduces the committed
    table; with the shipped profile (the slower VM's) the same real side is off by several times."""
    base = [sys.executable, os.path.join(ROOT, "scripts/eval_fidelity.py"), "--json", "--resim", FULL3_REAL]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("SGLANG_CASCADE_HARDWARE_DIR", None)
    own = subprocess.run([*base, "--out", str(tmp_path / "own")], env=env, capture_output=True, text=True, timeout=300)
    assert own.returncode == 0, own.stderr[-3000:]
    with open(os.path.join(ROOT, "docs/results/fidelity_full3.csv")) as f:
        table = {(r["config"], r["metric"]): float(r["sim"]) for r in csv.DictReader(f)}
    with open(tmp_path / "own.csv") as f:
        again = {(r["config"], r["metric"]): float(r["sim"]) for r in csv.DictReader(f)}
    assert again == pytest.approx(table, rel=1e-9)
    shipped = os.path.join(ROOT, "sglang_cascade/data/calibration/hardware/cpu-engine.json")
    cmd = [*base, "--profile", shipped, "--out", str(tmp_path / "shipped")]
    other = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert other.returncode == 0, other.stderr[-3000:]
    own_err = json.loads(own.stdout.strip().splitlines()[-1])["median_rel_err"]
    assert json.loads(other.stdout.strip().splitlines()[-1])["median_rel_err"] > 3 * own_err


def test_calibrate_refuses_resim_and_profile():
    ev = _eval_script()
    with pytest.raises(SystemExit):
        ev.parse_args(["--calibrate", "--resim", FULL3_REAL])
    with pytest.raises(SystemExit):
        ev.parse_args(["--calibrate", "--profile", "x.json"])


def test_config_option_selects_configurations():
    ev = _eval_script()
    assert [c.name for c in ev.configs(ev.parse_args(["--config", "rr2", "--config", "cascade2"]))] == [
        "rr2",
        "cascade2",
    ]
    assert [c.name for c in ev.configs(ev.parse_args([]))] == ["sglang", "plugin_cascade", "rr2", "ll2", "cascade2"]
    with pytest.raises(SystemExit, match="unknown"):
        ev.configs(ev.parse_args(["--config", "rr3"]))
