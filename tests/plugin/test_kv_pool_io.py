"""KV export/import against SGLang's own allocator and radix cache (in process, no server): imported KV is
served as a radix prefix, a second stage extends it, shared prefixes are not duplicated, and the pool's
accounting (available + evictable == size) holds after every import; the wire structs round-trip."""

from __future__ import annotations

import time
import types

import pytest

from sglang_cascade.core.kv_messages import KVReply, KVRequest, decode_reply, decode_request, encode

torch = pytest.importorskip("torch")
pytest.importorskip("sglang")

SIZE, LAYERS, HEADS, DIM = 100, 2, 2, 4


def _sched():
    from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.radix_cache import RadixCache

    kv = types.SimpleNamespace(
        k_buffer=[torch.zeros(SIZE + 1, HEADS, DIM) for _ in range(LAYERS)],
        v_buffer=[torch.zeros(SIZE + 1, HEADS, DIM) for _ in range(LAYERS)],
    )
    alloc = TokenToKVPoolAllocator(SIZE, torch.float32, "cpu", kv, False)
    alloc.get_kvcache = lambda: kv
    tree = RadixCache(
        CacheInitParams(disable=False, req_to_token_pool=None, token_to_kv_pool_allocator=alloc, page_size=1)
    )
    return types.SimpleNamespace(
        token_to_kv_pool_allocator=alloc, tree_cache=tree, page_size=1, max_total_num_tokens=SIZE
    )


def _frames(start: int, end: int) -> list[bytes]:
    out = []
    for layer in range(LAYERS):
        for kv in (0, 1):
            t = torch.arange(start, end, dtype=torch.float32)[:, None, None] + 1000 * layer + 100 * kv
            out.append(t.expand(end - start, HEADS, DIM).contiguous().view(torch.uint8).numpy().tobytes())
    return out


def _check_accounting(s) -> None:
    assert s.token_to_kv_pool_allocator.available_size() + s.tree_cache.evictable_size() == SIZE


def test_import_is_a_radix_prefix_and_extends_in_stages():
    from sglang_cascade.plugin import kv_pool_io as io

    s = _sched()
    toks = list(range(1, 41))
    assert io.import_kv(s, toks, 0, 19, _frames(0, 19)) == 19
    _check_accounting(s)
    assert io.import_kv(s, toks, 19, 34, _frames(19, 34)) == 34
    _check_accounting(s)
    n, idx = io._match(s.tree_cache, io.radix_key(toks[:40]))
    assert n == 34
    k0 = s.token_to_kv_pool_allocator.get_kvcache().k_buffer[1][idx]
    assert torch.equal(k0[:, 0, 0], torch.arange(34, dtype=torch.float32) + 1000)  # layer 1, K, positions 0..33
    with pytest.raises(io.KVIOError) as e:  # a stage that does not continue the cached prefix
        io.import_kv(s, [7] * 40, 10, 20, _frames(10, 20))
    assert e.value.reason == "gap"
    # a shared prefix (first 5 tokens) is matched, not duplicated
    other = toks[:5] + list(range(500, 520))
    assert io.import_kv(s, other, 0, 25, _frames(0, 25)) == 25
    _check_accounting(s)
    assert s.tree_cache.evictable_size() == 34 + 20
    with pytest.raises(io.KVIOError) as e:  # more than the pool holds
        io.import_kv(s, list(range(900, 1100)), 0, 200, _frames(0, 200))
    assert e.value.reason == "out_of_kv"
    _check_accounting(s)


def test_wire_messages_round_trip():
    req = KVRequest(op="import", start=3, end=9, token_ids=[1, 2, 3], dtype="float32", k_shape=[2, 4], layers=2)
    assert decode_request(encode(req)) == req
    rep = KVReply(ok=False, error="out_of_kv")
    assert decode_reply(encode(rep)) == rep and rep.tokens == 0


def _accounted(s) -> int:
    t = s.tree_cache
    return s.token_to_kv_pool_allocator.available_size() + t.evictable_size() + t.protected_size()


def test_a_pinned_import_survives_eviction_until_unpinned():
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams

    from sglang_cascade.plugin import kv_pool_io as io

    s = _sched()
    toks = list(range(1, 31))
    assert io.import_kv(s, toks, 0, 30, _frames(0, 30)) == 30
    lock = io.pin_prefix(s, toks, 30)
    assert s.tree_cache.protected_size() == 30 and s.tree_cache.evictable_size() == 0
    assert _accounted(s) == SIZE
    s.tree_cache.evict(EvictParams(num_tokens=SIZE))  # what SGLang's admission does when short of KV
    assert io._match(s.tree_cache, io.radix_key(toks))[0] == 30  # still there
    # an import that needs the pinned slots is refused rather than evicting them
    with pytest.raises(io.KVIOError) as e:
        io.import_kv(s, list(range(500, 580)), 0, 80, _frames(0, 80))
    assert e.value.reason == "out_of_kv"
    io.unpin(s, lock)
    assert s.tree_cache.protected_size() == 0 and s.tree_cache.evictable_size() == 30
    s.tree_cache.evict(EvictParams(num_tokens=SIZE))
    assert io._match(s.tree_cache, io.radix_key(toks))[0] == 0
    _check_accounting(s)
    with pytest.raises(io.KVIOError) as e:  # nothing to pin
        io.pin_prefix(s, toks, 30)
    assert e.value.reason == "gap"


def test_endpoint_pins_by_name_releases_and_expires(monkeypatch):
    from sglang_cascade.plugin import kv_endpoint as ep
    from sglang_cascade.plugin import kv_pool_io as io

    s = _sched()
    monkeypatch.setenv(ep.PIN_TTL_ENV, "5")
    end = ep.KVEndpoint(s)
    try:
        lay = dict(dtype="float32", k_shape=[HEADS, DIM], v_shape=[HEADS, DIM], layers=LAYERS)
        toks = list(range(1, 41))
        imp = KVRequest(op="import", start=0, end=20, token_ids=toks[:20], pin="r1", **lay)
        assert end.handle(imp, _frames(0, 20))[0].end == 20
        assert s.tree_cache.protected_size() == 20
        # the tail under the same name: the longer prefix is locked, the earlier lock dropped (no double count)
        tail = KVRequest(op="import", start=20, end=35, token_ids=toks[:35], pin="r1", **lay)
        assert end.handle(tail, _frames(20, 35))[0].end == 35
        assert s.tree_cache.protected_size() == 35 and len(end.pins) == 1
        assert end.handle(KVRequest(op="stats"), [])[0].stats["pins"] == 1
        assert end.handle(KVRequest(op="release", pin="r1"), [])[0].end == 1
        assert end.handle(KVRequest(op="release", pin="r1"), [])[0].end == 0  # idempotent
        assert s.tree_cache.protected_size() == 0 and s.tree_cache.evictable_size() == 35
        assert _accounted(s) == SIZE
        # a pin nobody releases ends with its time to live
        other = list(range(200, 210))
        end.handle(KVRequest(op="import", start=0, end=10, token_ids=other, pin="r2", **lay), _frames(0, 10))
        assert s.tree_cache.protected_size() == 10
        end.expire(time.monotonic() + 4)
        assert s.tree_cache.protected_size() == 10
        end.expire(time.monotonic() + 6)
        assert s.tree_cache.protected_size() == 0 and end.counters["pins_expired"] == 1
        # the pin op locks what an unpinned import left in the cache; a prefix evicted since is a "gap"
        from sglang.srt.mem_cache.base_prefix_cache import EvictParams

        end.handle(KVRequest(op="import", start=0, end=12, token_ids=list(range(400, 412)), **lay), _frames(0, 12))
        assert s.tree_cache.protected_size() == 0
        assert end.handle(KVRequest(op="pin", pin="r3", token_ids=list(range(400, 412)), end=12), [])[0].end == 12
        assert s.tree_cache.protected_size() == 12
        end.release("r3")
        s.tree_cache.evict(EvictParams(num_tokens=SIZE))
        with pytest.raises(io.KVIOError) as e:
            end.handle(KVRequest(op="pin", pin="r4", token_ids=list(range(400, 412)), end=12), [])
        assert e.value.reason == "gap" and "r4" not in end.pins
        # an import without a pin stays unlocked cache, as before
        end.handle(KVRequest(op="import", start=0, end=10, token_ids=list(range(300, 310)), **lay), _frames(0, 10))
        assert s.tree_cache.protected_size() == 0 and not end.pins
        assert _accounted(s) == SIZE
    finally:
        end.close()


def test_a_pin_outlived_by_a_cache_reset_is_dropped_without_touching_the_new_tree():
    from sglang_cascade.plugin import kv_pool_io as io

    s = _sched()
    toks = list(range(1, 21))
    io.import_kv(s, toks, 0, 20, _frames(0, 20))
    lock = io.pin_prefix(s, toks, 20)
    s.tree_cache.reset()  # what /flush_cache does on an idle worker
    s.token_to_kv_pool_allocator.clear()
    assert io.unpin(s, lock) is False
    assert s.tree_cache.protected_size() == 0 and s.tree_cache.evictable_size() == 0
    _check_accounting(s)


def test_a_move_import_keeps_the_admission_reserve_for_its_continuation():
    """With ``max_new_left`` (a move) the import must leave SGLang's admission budget for the continuation: the running
    requests' remaining outputs (all of it with ignore_eos, else at the ratio's floor) plus its own output left."""
    from sglang_cascade.plugin import kv_pool_io as io

    def run(max_new, out, ignore_eos):
        sp = types.SimpleNamespace(max_new_tokens=max_new, ignore_eos=ignore_eos)
        return types.SimpleNamespace(sampling_params=sp, output_ids=[0] * out)

    s = _sched()
    s.running_batch = types.SimpleNamespace(reqs=[run(30, 10, True), run(50, 0, False)])
    s.new_token_ratio_tracker = types.SimpleNamespace(current=0.7, min=0.1)
    assert io.admission_reserve(s, None) == 0  # not a move: nothing kept
    assert io.admission_reserve(s, 5) == 20 + 5 + (1 + 5 + 1)  # 20 (ignore_eos) + 50 * 0.1 + the continuation's
    # 60 free: an import of 40 for a move with 5 tokens left needs 40 + 32 > 60 -> refused; without a move it fits
    s.token_to_kv_pool_allocator.alloc(SIZE - 60)
    with pytest.raises(io.KVIOError) as e:
        io.import_kv(s, list(range(1, 41)), 0, 40, _frames(0, 40), max_new_left=5)
    assert e.value.reason == "out_of_kv"
    assert io.import_kv(s, list(range(1, 41)), 0, 40, _frames(0, 40)) == 40


def test_cached_prefix_len_is_what_the_radix_cache_holds_of_a_requests_input():
    from sglang_cascade.plugin import kv_pool_io as io

    s = _sched()
    toks = list(range(1, 31))
    io.import_kv(s, toks, 0, 20, _frames(0, 20))
    req = types.SimpleNamespace(origin_input_ids=toks, extra_key=None)
    assert io.cached_prefix_len(s, req) == 20
    assert io.cached_prefix_len(s, types.SimpleNamespace(origin_input_ids=[7] + toks)) == 0
