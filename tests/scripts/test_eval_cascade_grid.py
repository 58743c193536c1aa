"""scripts/eval_cascade_grid.py: the SLO-rate search when no rate meets the SLOs, and the per-model summary."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def grid():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    spec = importlib.util.spec_from_file_location(
        "eval_cascade_grid", os.path.join(ROOT, "scripts/eval_cascade_grid.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_round_robin_rate_is_searched_when_the_capacity_is_analytic(grid, tmp_path, monkeypatch):
    searched = []
    monkeypatch.setattr(grid.ev, "max_rate", lambda tr, model, n, router, cap, *a, **kw: searched.append(router) or 0.0)
    store = grid.Store(str(tmp_path / "g.jsonl"))
    base = {"kind": "capacity", "model": "m", "trace": "t", "rate": 4.5, "analytic": 4.5}
    store.put({**base, "instances": 8, "basis": "analytic pooled capacity"})
    store.put({**base, "instances": 16, "basis": "round_robin SLO capacity"})
    grid.rate_search(store, "m", "t", 8, "round_robin", 4.5, 40.0, print)
    grid.rate_search(store, "m", "t", 16, "round_robin", 4.5, 40.0, print)
    assert searched == ["round_robin"]  # only where the capacity is not round_robin's own SLO rate
    assert store.get(kind="max_rate", model="m", trace="t", instances=8, router="round_robin")["rate"] == 0.0
    assert store.get(kind="max_rate", model="m", trace="t", instances=16, router="round_robin")["rate"] == 4.5
    table = "\n".join(grid._rate_table(store, ["cascade"]))
    assert "no baseline meets the SLOs at any rate" in table


def test_aggregate_counts_cells_over_target(grid):
    def row(router, mean, p99):
        return {"router": router, "e2e_mean": mean, "e2e_p99": p99}

    cells = {
        ("m", "a", 8, "low"): {"least_load": [row("least_load", 1.0, 2.0)], "cascade": [row("cascade", 0.9, 2.2)]},
        ("m", "b", 8, "low"): {"least_load": [row("least_load", 2.0, 4.0)], "cascade": [row("cascade", 2.0, 4.0)]},
    }
    line = [x for x in grid._aggregate(cells, ["cascade"]) if x.startswith("| cascade")][0]
    cols = [c.strip() for c in line.strip("|").split("|")]
    assert cols[3] == "2" and cols[6:] == ["0", "1", "1"]  # p99 1.1x in one cell
    assert cols[5] == "1.000 / 1.100"


def test_a_miss_is_tagged_by_whether_every_seed_misses(grid):
    def rows(router, means, p99s):
        return [{"router": router, "seed": s, "e2e_mean": m, "e2e_p99": p} for s, (m, p) in enumerate(zip(means, p99s))]

    g = {
        "least_load": rows("least_load", [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]),
        "cascade": rows("cascade", [1.05, 0.98, 1.04], [2.1, 2.1, 2.1]),
    }
    assert grid._seed_ratios(g, "cascade", "least_load", "e2e_mean") == pytest.approx([1.05, 0.98, 1.04])
    assert not grid._worse_on_every_seed(g, "cascade", "least_load", None, 1.0)  # seed 1 meets the mean target
    assert grid._worse_on_every_seed(g, "cascade", "least_load", "least_load", 1.0)  # p99 misses on every seed
    assert grid._worse_on_every_seed(g, "cascade", None, "least_load", 1.0)
    assert (
        grid._seed_text(g, "cascade", "least_load", "least_load")
        == "per seed mean 1.050/0.980/1.040, p99 1.050/1.050/1.050"
    )


def test_rate_search_per_ttft_slo_scale_has_its_own_rows_and_table(grid, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(
        grid.ev, "max_rate", lambda tr, model, n, router, cap, dur, seed, extra, **kw: seen.append(extra) or cap * 2
    )
    store = grid.Store(str(tmp_path / "g.jsonl"))
    store.put({"kind": "capacity", "model": "m", "trace": "t", "instances": 8, "rate": 3.0, "basis": "round_robin"})
    for scale in (0.0, 3.0):
        for router in ("least_load", "cascade"):
            grid.rate_search(store, "m", "t", 8, router, 3.0, 40.0, print, scale)
    assert seen == [{}, {}, {"slo_ttft_scale": 3.0}, {"slo_ttft_scale": 3.0}]
    assert store.get(kind="max_rate_x3", model="m", trace="t", instances=8, router="cascade")["slo_ttft_scale"] == 3.0
    table = "\n".join(grid._rate_table(store, ["cascade"]))
    assert "(TTFT <= 2 s," in table and "3 x the prompt's isolated prefill" in table
    assert table.count("| m | t | 8 | least_load 6.00 | 6.00 | 1.00x |") == 2


def test_rate_table_averages_the_seeds_searched(grid, tmp_path, monkeypatch):
    monkeypatch.setattr(grid.ev, "max_rate", lambda tr, model, n, router, cap, dur, seed, extra, **kw: cap + seed)
    store = grid.Store(str(tmp_path / "g.jsonl"))
    store.put({"kind": "capacity", "model": "m", "trace": "t", "instances": 8, "rate": 3.0, "basis": "analytic"})
    for seed in (0, 1, 2):
        for router in ("least_load", "cascade"):
            grid.rate_search(store, "m", "t", 8, router, 3.0, 40.0, print, 3.0, seed)
    assert store.get(kind="max_rate_x3", model="m", trace="t", instances=8, router="cascade", seed=2)["rate"] == 5.0
    table = "\n".join(grid._rate_table(store, ["cascade"]))
    assert "mean over 3 seed(s)" in table and "| m | t | 8 | least_load 4.00 | 4.00 | 1.00x |" in table


def test_finer_rate_searches_have_their_own_rows_and_baselines_on_other_engine_orders_count(
    grid, tmp_path, monkeypatch
):
    """--rate-iters other than 5 keys its own rows (older 5-step rows are not reused); ``router@policy`` (a baseline
    on engines with another --schedule-policy) is a baseline in the rate table."""
    calls = []
    monkeypatch.setattr(
        grid.ev,
        "max_rate",
        lambda tr, model, n, router, cap, dur, seed, extra, iters=5: calls.append((router, iters)) or cap + iters,
    )
    store = grid.Store(str(tmp_path / "g.jsonl"))
    store.put({"kind": "capacity", "model": "m", "trace": "t", "instances": 8, "rate": 3.0, "basis": "analytic"})
    grid.rate_search(store, "m", "t", 8, "cascade", 3.0, 40.0, print, 3.0)
    grid.rate_search(store, "m", "t", 8, "cascade", 3.0, 40.0, print, 3.0, 0, 7)
    grid.rate_search(store, "m", "t", 8, "cache_aware@shortest-prefill-first", 3.0, 40.0, print, 3.0, 0, 7)
    assert calls == [("cascade", 5), ("cascade", 7), ("cache_aware@shortest-prefill-first", 7)]
    assert store.get(kind="max_rate_x3", model="m", trace="t", instances=8, router="cascade", iters=7)["rate"] == 10.0
    assert grid.is_baseline("cache_aware@shortest-prefill-first") and not grid.is_baseline("cascade@fcfs")


def test_a_router_searched_on_fewer_seeds_is_compared_over_the_seeds_it_shares(grid):
    seeds = {"cache_aware": {0: 4.0, 1: 6.0, 2: 6.0, 3: 2.0}, "cascade": {0: 6.0, 1: 6.0, 2: 9.0, 3: 3.0}}
    seeds["cascade:x=1"] = {0: 6.0, 1: 5.0}
    assert grid._rate_cell(seeds, "cascade", "cache_aware") == "6.00 | 1.33x"  # same seeds: plain means
    assert (
        grid._rate_cell(seeds, "cascade:x=1", "cache_aware") == "5.50 | 1.10x (2 seeds)"
    )  # vs 5.0 (seeds 0, 1), not 4.5
    assert grid._rate_cell(seeds, "llumnix", "cache_aware") == "- | -"
