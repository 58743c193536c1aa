"""policies/cache_aware.py: sglang_router's cache_aware over prefix-block hashes, built from the registry
with config_from_options, run by the simulator on a trace's hash_ids and by the HTTP router on text hashes."""

from __future__ import annotations

import json

import pytest

from sglang_cascade.cli import main
from sglang_cascade.core import CostModel
from sglang_cascade.core.traces import load_trace
from sglang_cascade.core.views import ClusterView, InstanceLoad, RequestView
from sglang_cascade.policies.cache_aware import CacheAwarePolicy
from sglang_cascade.policies.registry import PolicyContext, make_router
from sglang_cascade.router.prefix import block_hashes
from sglang_cascade.sim import SimConfig, simulate

CM = CostModel.for_names("llama-3-8b", "h100")


def _req(hashes) -> RequestView:
    return RequestView("r", 0.0, 10, block_hashes=tuple(hashes))


def test_prefix_affinity_smallest_tree_and_balance():
    pol = make_router("cache_aware", PolicyContext(CM, 3), cache_threshold="0.5", balance_abs_threshold=4)
    assert isinstance(pol, CacheAwarePolicy) and pol.cfg.cache_threshold == 0.5
    loads = [InstanceLoad(i) for i in range(3)]
    cv = ClusterView(loads)
    doc = list(range(20))
    first = pol.route(_req(doc + [101]), cv, 0)
    assert pol.route(_req(doc + [102]), cv, 0) == first  # shared prefix -> same instance
    assert pol.route(_req(range(500, 520)), cv, 0) != first  # no match -> the smallest tree
    assert pol.route(_req(doc[:5] + list(range(900, 907))), cv, 0) != first  # 5/12 matched <= 0.5
    loads[first].num_running = 20  # imbalance beyond both thresholds -> least loaded, prefix ignored
    assert pol.route(_req(doc + [103]), cv, 0) != first


def test_without_hashes_routes_least_loaded_and_options_are_checked():
    pol = make_router("cache_aware", PolicyContext(CM, 3))
    loads = [InstanceLoad(0, num_running=3), InstanceLoad(1, num_waiting=1), InstanceLoad(2, num_running=2)]
    assert pol.route(_req(()), ClusterView(loads), 0) == 1
    loads[1].healthy = False
    assert pol.route(_req(()), ClusterView(loads), 0) == 2
    with pytest.raises(ValueError, match="unknown option.*block_chars"):
        make_router("cache_aware:block_chars=8", PolicyContext(CM, 3))
    with pytest.raises(ValueError, match="cache_threshold"):
        make_router("cache_aware", PolicyContext(CM, 3), cache_threshold="high")


def test_router_text_hashes_chain_blocks():
    a, b = block_hashes("x" * 100 + "tail one"), block_hashes("x" * 100 + "tail two")
    assert len(a) == (108 // 32) and a[:3] == b[:3]  # 32-character blocks, equal prefixes -> equal hashes
    assert block_hashes("y" + "x" * 99)[1:] != a[1:3]  # chained: a differing first block changes them all
    assert block_hashes(None) == block_hashes("short") == ()
    ids = list(range(100))  # token ids: 32 per block, and they take precedence over the text
    x, y = block_hashes("ignored", ids), block_hashes(None, ids[:64] + [7] * 36)
    assert len(x) == 3 and x[:2] == y[:2] and x[2] != y[2] and block_hashes(None, ids[:31]) == ()


def _mooncake(path, sessions=4, per=6):
    """Requests of ``sessions`` conversations; each shares its 8-block prefix and adds one block of its own."""
    rows = []
    for k in range(sessions * per):
        s = k % sessions
        rows.append(
            {
                "timestamp": 200 * k,
                "input_length": 9 * 512,
                "output_length": 8,
                "hash_ids": [1000 * s + j for j in range(8)] + [10**6 + k],
            }
        )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_simulator_runs_cache_aware_on_trace_hash_ids(tmp_path):
    trace = load_trace(_mooncake(tmp_path / "mc.jsonl"), "mooncake")
    assert all(len(t.hash_ids) == 9 for t in trace)
    res = simulate(trace, SimConfig(instances=3, router="cache_aware", router_options={"block_size": 512}))
    assert res.metrics["completed"] == 24
    where: dict[int, set[int]] = {}
    for r in res.requests:
        where.setdefault(int(r.rid[1:]) % 4, set()).add(r.instance)
    assert all(len(v) == 1 for v in where.values()), where  # each conversation stays on one instance
    assert len(set().union(*where.values())) == 3  # new conversations go to the emptiest tree
    rr = simulate(trace, SimConfig(instances=3, router="round_robin"))
    assert any(len({r.instance for r in rr.requests if int(r.rid[1:]) % 4 == s}) > 1 for s in range(4))
    out = tmp_path / "m.json"
    rc = main(
        [
            "simulate",
            "--trace",
            str(tmp_path / "mc.jsonl"),
            "--format",
            "mooncake",
            "--instances",
            "3",
            "--router",
            "cache_aware",
            "--router-opt",
            "cache_threshold=0.5",
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and json.loads(out.read_text())["completed"] == 24
