"""scripts/eval_grid_heldout.py: which cells miss, which baselines re-run, and the held-out verdicts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import eval_grid_heldout


@pytest.fixture
def ho():
    return eval_grid_heldout


def _rows(router, means, p99s, trace="sharegpt", load="low", seed0=0, rate=5.0):
    return [
        {
            "kind": "run", "model": "m", "trace": trace, "instances": 8, "load": load, "seed": seed0 + i,
            "router": router, "e2e_mean": m, "e2e_p99": p, "rate": rate,
        }
        for i, (m, p) in enumerate(zip(means, p99s))
    ]  # fmt: skip


def test_misses_name_the_baselines_that_set_each_missed_target(ho):
    runs = (
        _rows("least_load", [1.0, 1.0, 1.0], [3.0, 3.0, 3.0])
        + _rows("llumnix", [0.98, 0.98, 0.98], [3.3, 3.3, 3.3])
        + _rows("cascade", [1.0, 1.0, 1.0], [3.0, 3.0, 3.0])
        # a second cell the variant meets, and a long-context cell where 0.7x is the mean target
        + _rows("least_load", [2.0] * 3, [4.0] * 3, load="high")
        + _rows("cascade", [1.9] * 3, [3.9] * 3, load="high")
        + _rows("least_load", [10.0] * 3, [40.0] * 3, trace="mooncake")
        + _rows("cascade", [7.5] * 3, [30.0] * 3, trace="mooncake", rate=2.0)
    )
    misses = ho.find_misses(runs, "cascade")
    assert [(m.trace, m.load) for m in misses] == [("mooncake", "low"), ("sharegpt", "low")]
    moon, share = misses
    assert moon.limit == 0.7 and moon.best_mean == "least_load" and moon.best_p99 is None and moon.rate == 2.0
    assert moon.grid_mean_ratio == pytest.approx(0.75)
    assert share.best_mean == "llumnix" and share.best_p99 is None  # p99 met (= least_load's, the best)
    assert share.baselines() == ["least_load", "llumnix"]  # least_load always re-runs: one stage dispatches as it


def test_verdicts_separate_a_consistent_loss_from_seed_noise(ho):
    base = _rows("b", [1.0] * 6, [1.0] * 6, seed0=3)
    worse = _rows("c", [1.03, 1.02, 1.04, 1.03, 1.02, 1.03], [1.0] * 6, seed0=3)
    noisy = _rows("c", [1.08, 0.95, 1.06, 0.96, 1.05, 0.97], [1.0] * 6, seed0=3)
    better = _rows("c", [0.99, 1.01, 0.98, 1.0, 0.99, 1.0], [1.0] * 6, seed0=3)
    v = ho.judge(worse, base, "e2e_mean", 1.0)
    assert v.word == "holds" and v.seeds == 6 and 1.0 < v.lo < v.geo < v.hi
    assert ho.judge(noisy, base, "e2e_mean", 1.0).word == "noise"
    assert ho.judge(better, base, "e2e_mean", 1.0).word == "met"
    assert ho.judge(worse[:1], base, "e2e_mean", 1.0).word == "noise"  # one seed: no interval, no "holds"
    assert ho.judge(worse, _rows("b", [1.0] * 3, [1.0] * 3, seed0=20), "e2e_mean", 1.0) is None  # no shared seed
    assert ho.judge(worse, base, "e2e_mean", 1.05).word == "met"  # against a looser target


def test_run_covers_variant_and_baselines_on_every_held_out_seed_and_summary_tallies(ho, tmp_path, monkeypatch):
    calls = []

    def fake_run_one(tr, model, n, router, rate, n_req, seed, extra):
        calls.append((router, seed, rate))
        mean = {"cascade": 1.03 + 0.001 * seed, "llumnix": 1.0, "least_load": 1.03 + 0.001 * seed}[router]
        return {"e2e_mean": mean, "e2e_p99": 2.0, "slo_attainment": 1.0, "migrations": 0, "rate": rate}

    monkeypatch.setattr(ho.grid.ev, "run_one", fake_run_one)
    runs = (
        _rows("least_load", [1.0] * 3, [3.0] * 3)
        + _rows("llumnix", [0.98] * 3, [3.3] * 3)
        + _rows("cascade", [1.0] * 3, [3.0] * 3)
    )
    misses = ho.find_misses(runs, "cascade")
    out = str(tmp_path / "held")
    ho.run(misses, "cascade", [3, 4, 5], ho.grid.Store(out + ".jsonl"), 40.0)
    assert sorted(calls) == sorted((r, s, 5.0) for r in ("cascade", "least_load", "llumnix") for s in (3, 4, 5))
    ho.run(misses, "cascade", [3, 4, 5], ho.grid.Store(out + ".jsonl"), 40.0)  # resumable: nothing runs twice
    assert len(calls) == 9
    held = [d for d in ho.grid.Store(out + ".jsonl").rows.values() if d["kind"] == "run"]
    text = ho.summary(misses, "cascade", held)
    assert "1 miss beyond seed noise" in text and "(runs as least_load on every held-out seed)" in text
    assert "mean 1.020x -> **1.034x** vs llumnix on 3 held-out seeds" in text


def test_held_out_seeds_must_be_new(ho, tmp_path):
    store = ho.grid.Store(str(tmp_path / "g.jsonl"))
    for d in _rows("least_load", [1.0] * 3, [3.0] * 3) + _rows("cascade", [1.1] * 3, [3.0] * 3):
        store.put(d)
    with pytest.raises(SystemExit):
        ho.main(["--grid", str(tmp_path / "g"), "--seeds", "2", "3", "--out", str(tmp_path / "h"), "--summarize"])
