"""KV export/import against SGLang's own allocator and radix cache (in process, no server): imported KV is
served as a radix prefix, a second stage extends it, shared prefixes are not duplicated, and the pool's
accounting (available + evictable == size) holds after every import; the wire structs round-trip."""

from __future__ import annotations

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
