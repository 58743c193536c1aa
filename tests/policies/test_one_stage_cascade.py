"""A one-stage cascade dispatches exactly as least_load (issue 14: never worse than pooled): the same
simulated metrics on every shipped trace and on the long-context Mooncake trace."""

from __future__ import annotations

import pytest

from sglang_cascade.core.traces import load_trace
from sglang_cascade.sim import SimConfig, simulate

TRACES = ["azure_conv", "azure_code", "sharegpt", "arxiv", "mooncake"]


def _requests(name: str):
    if name == "mooncake":  # the built-in long-context trace
        return load_trace("mooncake")[:300]
    if name in ("sharegpt", "arxiv"):
        return load_trace(name, num_requests=300, rate=20.0, seed=0)
    return load_trace(name)[:300]


@pytest.mark.parametrize("trace", TRACES)
def test_one_stage_cascade_makes_least_loads_decisions(trace):
    reqs = _requests(trace)
    runs = {}
    # (prefix affinity off: Mooncake's requests carry block hashes, which it would act on; the others carry none)
    one_stage = "cascade:counts=4,affinity=0" if trace == "mooncake" else "cascade:counts=4"
    for router in ("least_load", one_stage):
        cfg = SimConfig(model="llama-3-8b", gpu="h100", instances=4, router=router, scheduler="sglang")
        res = simulate(reqs, cfg)
        placed = sorted((r.rid, r.instance, r.finish_time) for r in res.requests)
        runs[router] = (res.metrics["e2e_mean"], res.metrics["e2e_p99"], res.metrics["ttft_mean"], placed)
    assert runs["least_load"] == runs[one_stage]


def test_pooled_pressure_dispatch_is_the_pickers_and_an_unknown_one_is_refused():
    """``pooled_dispatch=pressure`` (opt-in) sends a one-stage cascade's requests by the in-stage picker's
    cost-model pressure: other placements than least_load's, every request served."""
    reqs = _requests("mooncake")
    placed = {}
    for router in ("cascade:counts=4,affinity=0", "cascade:counts=4,affinity=0,pooled_dispatch=pressure"):
        res = simulate(reqs, SimConfig(model="llama-3-8b", gpu="h100", instances=4, router=router, scheduler="sglang"))
        assert len(res.requests) == len(reqs)
        placed[router] = {r.rid: r.instance for r in res.requests}
    differ = sum(
        placed["cascade:counts=4,affinity=0"][k] != v
        for k, v in placed["cascade:counts=4,affinity=0,pooled_dispatch=pressure"].items()
    )
    assert differ > len(reqs) // 10
    with pytest.raises(ValueError, match="pooled_dispatch"):
        simulate(reqs[:5], SimConfig(instances=2, router="cascade:pooled_dispatch=random"))
