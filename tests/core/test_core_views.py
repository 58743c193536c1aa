from __future__ import annotations

import pytest

from sglang_cascade.core import ClusterView, InstanceView, IterationPlan, PrefillChunk, RequestView, get_gpu, get_model
from sglang_cascade.core.options import split_name


def test_request_view_lengths():
    r = RequestView("a", 0.0, prompt_len=100, output_len=7, kv_tokens=60, predicted_output_len=20)
    assert r.length == 107
    assert r.tokens_to_prefill == 47
    assert r.predicted_remaining == 13


def test_instance_view_load_counts_outstanding_work():
    w = RequestView("w", 0.0, prompt_len=50, kv_tokens=10, predicted_output_len=30)
    r = RequestView("r", 0.0, prompt_len=20, output_len=5, kv_tokens=25, predicted_output_len=8)
    inst = InstanceView(iid=3, kv_capacity=1000, waiting=[w], running=[r])
    assert inst.recount_kv_used() == 35
    load = inst.load(now=2.5)
    assert (load.iid, load.num_waiting, load.num_running, load.kv_used) == (3, 1, 1, 35)
    assert load.outstanding_tokens == 40 + 30 + 3
    assert load.published_at == 2.5 and load.kv_utilization == pytest.approx(0.035)
    cluster = ClusterView([InstanceView(0, 10).load(1.0), load], now=4.0)
    assert cluster.staleness(1) == pytest.approx(1.5)


def test_iteration_plan_totals():
    a = RequestView("a", 0.0, 10)
    plan = IterationPlan(prefill=[PrefillChunk(a, 6)])
    assert not plan.empty and plan.num_prefill_tokens == 6
    assert IterationPlan().empty


def test_specs_and_variant_parsing():
    m = get_model("llama-3-8b")
    # 2 (K,V) * 32 layers * 8 kv heads * 128 dims * 2 bytes
    assert m.kv_bytes_per_token() == 131072
    assert get_model("llama-3.1-8b").max_context == 131072
    assert get_gpu("H100").name == "h100"
    with pytest.raises(ValueError, match="unknown model"):
        get_model("gpt-5")
    assert split_name("cascade:pipelining=0,beta=0.5,mode=x") == (
        "cascade",
        {"pipelining": 0, "beta": 0.5, "mode": "x"},
    )
