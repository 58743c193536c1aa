"""sim/prefix_cache.py: SGLang's radix cache on a simulated instance (SimConfig.prefix_cache_block), driven by a
trace's prefix-block hashes (Mooncake's hash_ids)."""

from __future__ import annotations

import pytest

from sglang_cascade.core.traces import TraceRequest, load_trace
from sglang_cascade.core.views import RequestView
from sglang_cascade.sim import SimConfig, simulate
from sglang_cascade.sim.prefix_cache import PrefixCache, prompt_blocks


def _running(prompt: int, hashes) -> RequestView:
    return RequestView("x", 0.0, prompt, block_hashes=tuple(hashes))


def test_match_takes_the_leading_cached_run_and_leaves_one_token_to_compute():
    c = PrefixCache(512)
    c.insert([1, 2, 3], 1536, free_tokens=10**6, running=[])
    assert c.match([1, 2, 9, 3], 2048) == 1024  # stops at the first unknown block
    assert c.match([1, 2, 3], 1536) == 1535  # a full hit still computes one token (SGLang does)
    assert c.match([7, 1], 1024) == 0
    assert prompt_blocks([1, 2, 3, 4], 700, 512) == [1, 2]  # a clipped prompt keeps its leading blocks


def test_eviction_is_lru_within_the_free_space_and_spares_running_requests_blocks():
    c = PrefixCache(100)
    c.insert([1, 2], 200, free_tokens=10**6, running=[])
    c.insert([3, 4], 200, free_tokens=10**6, running=[])
    c.match([1], 100)  # 1 becomes the most recent: LRU order 2, 3, 4, 1
    c.insert([5], 100, free_tokens=300, running=[])  # 3 unlocked blocks fit: 2 and 3 go
    assert list(c.blocks) == [4, 1, 5] and c.evicted == 2
    c.insert([6], 100, free_tokens=100, running=[_running(100, [4])])  # 4 is locked by a running request
    assert set(c.blocks) == {4, 6} and c.evicted == 4
    with pytest.raises(ValueError):
        PrefixCache(0)


def _trace(gap: float) -> list[TraceRequest]:
    shared = list(range(16))  # an 8K-token shared document
    return [
        TraceRequest("a", 0.0, 8192 + 300, 20, hash_ids=shared + [100]),
        TraceRequest("b", gap, 8192 + 300, 20, hash_ids=shared + [101]),
    ]


def _run(trace, block: int, **kw):
    cfg = SimConfig(
        instances=1, router="round_robin", scheduler="sglang", prefix_cache_block=block, check_invariants=True, **kw
    )
    res = simulate(trace, cfg)
    return res.metrics, {r.rid: r for r in res.requests}


def test_a_later_request_reuses_the_cached_prefix_and_prefills_only_the_rest():
    m, by = _run(_trace(gap=5.0), 512)
    m0, by0 = _run(_trace(gap=5.0), 0)
    assert m["prefix_hit_tokens"] == 8192 and m["prefix_hit_rate"] == pytest.approx(8192 / (2 * 8492))
    assert "prefix_hit_tokens" not in m0
    ttft = {k: r.first_token_time - r.arrival for k, r in by.items()}
    ttft0 = {k: r.first_token_time - r.arrival for k, r in by0.items()}
    assert ttft["a"] == pytest.approx(ttft0["a"])  # the first one finds nothing
    assert ttft["b"] < 0.3 * ttft0["b"]  # 300 new tokens attending to 8K cached ones instead of 8.5K
    assert by["b"].output_len == by0["b"].output_len == 20  # scheduling changes when, not what


def test_a_chunked_prefills_computed_chunks_are_reused_before_it_completes():
    """SGLang inserts each chunk of a chunked prefill into its radix tree (``cache_unfinished_req``): a request
    admitted while the prompt is still being prefilled reuses the chunks computed so far, not chunks still to come."""
    m, by = _run(_trace(gap=0.0), 512)  # together: a's first 8192-token chunk (the shared document) runs alone,
    assert m["prefix_hit_tokens"] == 8192  # then b is admitted beside a's last 300 tokens and finds the document
    assert by["b"].first_token_time == pytest.approx(by["a"].first_token_time)  # one forward finishes both
    doc = list(range(40))  # a 20K-token document: a prefills it in chunks of 8192, 8192 and the rest
    three = [
        TraceRequest("a", 0.0, 20480 + 300, 20, hash_ids=doc + [100]),
        TraceRequest("b", 0.0, 20480 + 300, 20, hash_ids=doc + [101]),
    ]
    m3, _ = _run(three, 512)
    assert m3["prefix_hit_tokens"] == 16384  # b joins a's last chunk: the two chunks done, not the one in flight


def test_traces_without_hashes_are_untouched():
    reqs = load_trace("sharegpt", num_requests=200, rate=20.0, seed=3)
    cfg = dict(instances=2, router="least_load", scheduler="sglang", seed=3)
    on, off = simulate(reqs, SimConfig(**cfg)).metrics, simulate(reqs, SimConfig(**cfg, prefix_cache_block=0)).metrics
    assert "prefix_hit_tokens" not in on
    assert on["e2e_mean"] == off["e2e_mean"] and on["iterations"] == off["iterations"]


def test_mooncake_reuse_keeps_the_kv_accounting_and_saves_prefill():
    reqs = load_trace("mooncake", num_requests=600, rate=3.0)
    cfg = dict(model="llama-3.1-8b", instances=4, router="cache_aware", scheduler="sglang", check_invariants=True)
    on = simulate(reqs, SimConfig(**cfg)).metrics  # check_invariants recounts KV and queued prefill every step
    off = simulate(reqs, SimConfig(**cfg, prefix_cache_block=0)).metrics
    assert on["completed"] == off["completed"] == len(reqs)
    assert 0.02 < on["prefix_hit_rate"] < 1.0
    assert on["ttft_mean"] < off["ttft_mean"]


def test_replay_prompts_share_exactly_the_blocks_their_hashes_share():
    from sglang_cascade.replay.lengths import prompt_ids

    trace = [
        TraceRequest("a", 0.0, 200, 4, hash_ids=[1, 2, 3, 4]),
        TraceRequest("b", 1.0, 180, 4, hash_ids=[1, 2, 9]),
        TraceRequest("c", 2.0, 150, 4),  # no hashes: random ids
    ]
    a, b, c = prompt_ids(trace, 1024, seed=5, block=64)
    assert [len(a), len(b), len(c)] == [200, 180, 150]
    assert a[:128] == b[:128] and a[128:180] != b[128:180]  # blocks 1, 2 shared; 3 vs 9 differ
    assert a[:64] != c[:64] and min(a + b + c) >= 10 and max(a + b + c) < 1024
    assert prompt_ids(trace, 1024, seed=5, block=64)[0] == a  # reproducible
    r0 = prompt_ids(trace, 1024, seed=5)  # block 0: every prompt random, nothing shared
    assert r0[0][:64] != r0[1][:64]
