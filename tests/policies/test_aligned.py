"""Aligned decode batches: bucketed by KV length, starvation bound holds, estimates stay exact, cheap merges."""

from __future__ import annotations

import random

from test_instance_helpers import MiniDriver

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.views import Phase, RequestView
from sglang_cascade.policies.admission import Track, TrackState
from sglang_cascade.policies.aligned import AlignedConfig, AlignedIndex
from sglang_cascade.policies.instance import make_cascade_scheduler
from sglang_cascade.policies.registry import PolicyContext

CM = CostModel.for_names("llama-3-8b", "h100")
CTX = PolicyContext(cost_model=CM)


def _wl(n, seed, rate=100.0):
    rng = random.Random(seed)
    t = 0.0
    out = []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append((t, rng.choice([20, 300, 1500, 5000]), int(rng.lognormvariate(4.5, 1.0)) + 1))
    return out


def _instrument(s):
    seen = {"max_buckets": 0}
    orig = s.schedule

    def sched(inst, now):
        nb = sum(1 for b in s.index.buckets.values() if b.gpu or b.host)
        seen["max_buckets"] = max(seen["max_buckets"], nb)
        # incremental KV estimates (after the driver applied the last plan) must equal the truth
        for b in s.index.buckets.values():
            for t in b.gpu.values():
                assert s.index.est_kv(t) == t.req.kv_tokens, (t.req.rid, s.index.est_kv(t), t.req.kv_tokens)
        return orig(inst, now)

    s.schedule = sched
    return seen


def test_starvation_bound_holds_over_long_run_without_merging():
    s = make_cascade_scheduler(CTX, merge=0, offload=0, check=1, kv_ratio=2.0)
    seen = _instrument(s)
    res = MiniDriver(s, kv_capacity=1_000_000, max_prefill_tokens=4096).run(_wl(300, 1, rate=20.0))
    assert len(res.finished) == 300 and res.retractions == 0
    # the bound: at most B iterations between two decodes, B = number of non-empty buckets
    assert 1 < res.max_gap <= seen["max_buckets"], (res.max_gap, seen)


def test_starvation_bound_with_batch_cap():
    s = make_cascade_scheduler(CTX, merge=0, offload=0, check=1, max_batch=8)
    seen = _instrument(s)
    res = MiniDriver(s, kv_capacity=200_000, max_prefill_tokens=4096).run(_wl(120, 2, rate=400.0))
    assert len(res.finished) == 120
    # cap splits a bucket: bound grows by ceil(n_b / cap) - 1 per bucket, here <= buckets + 120 / 8
    assert res.max_gap <= seen["max_buckets"] + 120 // 8


def test_merge_follows_cost_model():
    idx = AlignedIndex(AlignedConfig(kv_base=256, kv_ratio=2.0))

    def add(rid, kv):
        r = RequestView(rid=rid, arrival=0.0, prompt_len=kv, kv_tokens=kv, phase=Phase.RUNNING)
        t = Track(req=r, seq=0, state=TrackState.GPU)
        idx.add_gpu(t, stamp=0)
        return t

    for i in range(64):
        add(f"s{i}", 300 + i)  # bucket [256, 512)
    for i in range(64):
        add(f"m{i}", 600 + i)  # neighbour [512, 1024): similar lengths -> merge is cheaper
    chosen = idx.select(CM, 0, 0.0, 1024)
    assert len(chosen) == 2
    idx2 = AlignedIndex(AlignedConfig(kv_base=256, kv_ratio=2.0))
    idx, keep = idx2, idx
    for i in range(8):
        add(f"s{i}", 300)
    for i in range(200):
        add(f"l{i}", 60_000 + i)  # far longer: merging 8 short ones costs their padding-equivalent
    # the head is the short bucket (both stamp 0; larger count first -> long bucket); force short as head
    for t in idx.buckets[idx.bucket_of(60_000)].gpu.values():
        t.stamp = 5
    idx.buckets[idx.bucket_of(60_000)].gpu_oldest = 5
    chosen = idx.select(CM, 0, 0.0, 1024)
    assert [b.idx for b in chosen] == [idx.bucket_of(300)]
    assert keep.n_gpu == 128


def test_aligned_reduces_heterogeneity_cost_on_mixed_lengths():
    """With very mixed KV lengths, aligned batches decode the same tokens in less modelled time."""
    rng = random.Random(4)
    wl = [(0.0, rng.choice([100, 30_000]), 200) for _ in range(60)]
    s_all = make_cascade_scheduler(CTX, aligned=0, offload=0)
    s_al = make_cascade_scheduler(CTX, aligned=1, offload=0)
    r_all = MiniDriver(s_all, kv_capacity=2_000_000, max_prefill_tokens=65536).run(wl)
    r_al = MiniDriver(s_al, kv_capacity=2_000_000, max_prefill_tokens=65536).run(wl)
    assert r_al.time < r_all.time
