"""What SGLang's own batch operations cost per step, next to the plugin's adapter (needs sglang; CPU).

Context for ``scripts/bench_plugin_adapter.py``, which leaves SGLang's batch work out. On a real sglang
0.5.23 ``ScheduleBatch`` of N decoding requests (CPU tensors, no model), it times:

* ``filter_batch()``: the finished-request filter SGLang runs on the running batch every step (nothing
  finished: it scans every request and returns);
* a decode split as the plugin performs it, both ways: (a) rebuild: ``filter_batch(keep_indices=...)`` on
  half the batch, then the rejoin (``batch_ops.rejoin``: a decode batch rebuilt for the held-back half,
  merged back with ``merge_batch``); (b) copy (the default where the batch has no penalties, logit bias or
  custom processors): ``batch_ops.split_off`` (the held half kept as a filtered copy), then
  ``batch_ops.merge_back``; with index lists and with the int64 numpy index arrays the plugin passes;
* one call through SGLang's ``HookRegistry`` AROUND wrapper (the plugin has 5-6 hooked calls per step);
* constructing one ``Req`` (one of SGLang's own per-request costs, next to the plugin's per-request cost).

    python scripts/bench_sglang_batch_ops.py --running 1024 --iters 200
"""

from __future__ import annotations

import argparse
import statistics
import time
from array import array
from types import SimpleNamespace

import numpy as np

VOCAB = 32000


def build(n: int, ctx: int = 2048):
    from sglang.srt import runtime_context as rc
    from sglang.srt.managers.overlap_utils import FutureMap
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
    from sglang.srt.sampling.sampling_params import SamplingParams
    from sglang.srt.server_args import ServerArgs
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    from sglang_cascade.plugin import batch_ops

    rc.publish(ServerArgs(model_path="dummy", device="cpu"), role="bench")
    reqs = []
    for i in range(n):
        sp = SamplingParams(max_new_tokens=1024, temperature=0)
        sp.normalize(None)
        sp.verify(VOCAB)
        r = Req(f"r{i}", "", array("q", range(1, 65)), sp, vocab_size=VOCAB)
        r.output_ids.extend([7] * (1 + i % 200))
        r.kv.req_pool_idx = i + 1
        r.kv.kv_committed_len = 64 + len(r.output_ids) - 1
        reqs.append(r)
    pool = ReqToTokenPool(size=n + 8, max_context_len=ctx, device="cpu", enable_memory_saver=False)
    spec = SpeculativeAlgorithm.from_string(None)
    sched = SimpleNamespace(
        device="cpu",
        req_to_token_pool=pool,
        token_to_kv_pool_allocator=None,
        tree_cache=None,
        model_config=SimpleNamespace(is_encoder_decoder=False, vocab_size=VOCAB),
        enable_overlap=False,
        spec_algorithm=spec,
        future_map=FutureMap("cpu", spec, pool, needs_cpu_seq_lens=True),
    )
    return sched, reqs, batch_ops


def req_init_us(n: int = 512) -> float:
    """Mean us to construct one SGLang ``Req`` (tokenized prompt of 64 tokens, greedy): one of SGLang's own
    per-request costs, to set the plugin's per-request cost (a view, an admission, a finish) against."""
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    ids = array("q", range(1, 65))
    t = time.perf_counter()
    for i in range(n):
        sp = SamplingParams(max_new_tokens=1024, temperature=0)
        sp.normalize(None)
        sp.verify(VOCAB)
        Req(f"q{i}", "", ids, sp, vocab_size=VOCAB)
    return (time.perf_counter() - t) / n * 1e6


def run(n: int, iters: int) -> dict:
    sched, reqs, batch_ops = build(n)
    batch = batch_ops.build_decode_batch(sched, reqs)
    t_filter = []
    for _ in range(iters):
        t = time.perf_counter()
        batch.filter_batch()
        t_filter.append(time.perf_counter() - t)
    keep = list(range(0, n, 2))
    t_split, t_rejoin = [], []
    for _ in range(iters):
        held = [batch.reqs[i] for i in range(1, len(batch.reqs), 2)]
        t = time.perf_counter()
        batch.filter_batch(keep_indices=keep)
        t_split.append(time.perf_counter() - t)
        t = time.perf_counter()
        batch = batch_ops.rejoin(sched, batch, held)
        t_rejoin.append(time.perf_counter() - t)
        assert len(batch.reqs) == n
    held_idx = list(range(1, n, 2))
    out = {}
    # the copy split with index lists, and with the int64 numpy index arrays the plugin passes
    # (PlanApplier.decode_split(with_held="indices")): SGLang indexes its CPU tensors with them directly
    for form, k, h in (("list", keep, held_idx), ("numpy", np.array(keep), np.array(held_idx))):
        t_off, t_back = [], []
        for _ in range(iters):
            t = time.perf_counter()
            held_batch = batch_ops.split_off(batch, k, h)
            t_off.append(time.perf_counter() - t)
            t = time.perf_counter()
            batch = batch_ops.merge_back(batch, held_batch)
            t_back.append(time.perf_counter() - t)
            assert len(batch.reqs) == n
        out[f"split_off_{form}_us"], out[f"merge_back_{form}_us"] = p50(t_off), p50(t_back)
    return {"running": n, "filter_us": p50(t_filter), "split_us": p50(t_split), "rejoin_us": p50(t_rejoin), **out}


def p50(xs: list[float]) -> float:
    return statistics.median(xs) * 1e6


def hook_overhead_ns(calls: int = 200_000) -> tuple[float, float]:
    """ns per call of a method, plain and wrapped by SGLang's ``HookRegistry`` (AROUND, pass-through): what
    each of the plugin's hooked scheduler calls pays before our code runs."""
    import sys
    import timeit
    import types

    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    mod = types.ModuleType("_cascade_hook_bench")

    class Target:
        def f(self, x):
            return x

    mod.Target = Target
    sys.modules[mod.__name__] = mod
    t = Target()
    plain = min(timeit.repeat(lambda: t.f(1), number=calls, repeat=5)) / calls * 1e9
    HookRegistry.register(
        f"{mod.__name__}.Target.f", lambda original, self, *a, **k: original(self, *a, **k), HookType.AROUND
    )
    HookRegistry.apply_hooks()
    hooked = min(timeit.repeat(lambda: t.f(1), number=calls, repeat=5)) / calls * 1e9
    return plain, hooked


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--running", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=200)
    args = ap.parse_args(argv)
    r = run(args.running, args.iters)
    print(f"SGLang 0.5.23 batch operations on {r['running']} decoding requests (CPU tensors, p50 of {args.iters}):")
    print(f"  filter_batch() finished-request scan (every step):   {r['filter_us']:8.1f} us")
    print(f"  filter_batch(keep_indices) keeping half (split):     {r['split_us']:8.1f} us")
    print(f"  rejoin of the held half (build + merge_batch):       {r['rejoin_us']:8.1f} us")
    for form in ("list", "numpy"):
        print(f"  copy split, {form:5} indices: split_off (both halves):  {r[f'split_off_{form}_us']:8.1f} us")
        print(f"  copy split, {form:5} indices: merge_back (filter+merge): {r[f'merge_back_{form}_us']:8.1f} us")
    print(f"SGLang Req construction (SamplingParams + Req.__init__), per request: {req_init_us():8.1f} us")
    plain, hooked = hook_overhead_ns()
    print(
        f"HookRegistry AROUND wrapper: {plain:.0f} ns plain call, {hooked:.0f} ns hooked (+{hooked - plain:.0f} ns "
        "per hooked call)"
    )


if __name__ == "__main__":
    main()
