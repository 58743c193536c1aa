"""The KV stage endpoint (plugin/kv_stage.py) with the router's own transport: a staged request's KV is captured
from the batch that completes its prefill, before its first token is streamed (not from a chunk before that, not
when it finished or decodes already, not unless staged), the capture is what the KV endpoint would export, it is answered from the serving thread while the
scheduler thread is busy, served once, sliced to the range asked, and dropped past its TTL and its byte cap."""

from __future__ import annotations

import asyncio
import time
import types

import pytest

torch = pytest.importorskip("torch")

from sglang_cascade.plugin import kv_pool_io as io  # noqa: E402
from sglang_cascade.plugin.kv_stage import KVStage  # noqa: E402
from sglang_cascade.router.kv_transport import KVTransferError, ZmqRelayTransport  # noqa: E402

LAYERS, HEADS, DIM, SLOTS = 2, 2, 4, 64


def _sched():
    kv = types.SimpleNamespace(
        k_buffer=[torch.randn(SLOTS, HEADS, DIM) for _ in range(LAYERS)],
        v_buffer=[torch.randn(SLOTS, HEADS, DIM) for _ in range(LAYERS)],
    )
    alloc = types.SimpleNamespace(get_kvcache=lambda: kv)
    rows = torch.zeros(4, 32, dtype=torch.int32)
    rows[1, :20] = torch.randperm(SLOTS)[:20].to(torch.int32)
    return types.SimpleNamespace(
        token_to_kv_pool_allocator=alloc, req_to_token_pool=types.SimpleNamespace(req_to_token=rows), page_size=1
    )


def _req(rid: str, prompt: int, out: int = 0, done: bool = False, middle: int = 0):
    """A request as SGLang's batch holds it before the batch's result is processed (``middle``: chunks of its
    prefill in flight that are not the last)."""
    return types.SimpleNamespace(
        rid=rid,
        origin_input_ids=list(range(100, 100 + prompt)),
        output_ids=list(range(7, 7 + out)),
        req_pool_idx=1,
        finished=lambda: done,
        inflight_middle_chunks=middle,
        is_retracted=False,
    )


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_capture_serve_once_and_slice():
    s, stage, t = _sched(), KVStage(), ZmqRelayTransport(timeout_s=5)
    try:
        _run(t.stage(stage.addr, "a"))
        _run(t.stage(stage.addr, "f"))
        chunk = _req("a", 12, middle=1)  # a chunk of its prefill that is not the last
        assert stage.capture(s, types.SimpleNamespace(reqs=[chunk, _req("b", 12), _req("f", 12, done=True)])) == 0
        assert stage.captured == {} and "a" in stage.wanted and "f" not in stage.wanted  # finished: dropped
        a = _req("a", 12)  # this batch completes its prefill (its first token is not streamed yet)
        assert stage.capture(s, types.SimpleNamespace(reqs=[a])) == 1 and not stage.wanted
        a.output_ids = [7]  # what the KV endpoint exports once the first token is there: the same prompt KV
        want = io.export_req(s, a, 0, -1)
        assert want[2] == 12
        # the serving thread answers while this thread (the scheduler) holds nothing for it
        part = _run(t.export_staged(stage.addr, "a", 0, 5))
        assert (part.reply.start, part.reply.end) == (0, 5)
        assert [len(f) for f in part.frames] == [len(f) // 12 * 5 for f in want[3]]
        assert all(p == f[: len(p)] for p, f in zip(part.frames, want[3], strict=True))
        with pytest.raises(KVTransferError) as e:  # served once
            _run(t.export_staged(stage.addr, "a", 0, 12))
        assert e.value.reason == "not_staged"
        stage.wanted["a2"] = 0.0
        stage.wanted["d"] = 0.0
        decoding = _req("d", 12, out=3)  # staged, but decoding already (a mixed batch): not captured
        assert stage.capture(s, types.SimpleNamespace(reqs=[_req("a2", 12), decoding])) == 1
        full = _run(t.export_staged(stage.addr, "a2", 0, 40))  # more than captured: what there is
        assert (full.reply.start, full.reply.end, full.frames) == (0, 12, want[3])
        assert full.reply.token_ids == want[0][:12] and full.reply.layers == LAYERS
        stats = _run(t.stats(stage.addr))
        assert stats["fetched"] == 2 and stats["not_staged"] == 1 and stats["held"] == 0 and stats["bytes"] == 0
    finally:
        stage.close()


def test_ttl_and_byte_cap():
    s, stage = _sched(), KVStage(ttl_s=10.0, max_bytes=4_000)
    try:
        per = sum(
            len(f) for f in io.export_req(s, _req("x", 12), 0, -1, prefill_done=True)[3]
        )  # 12 positions x 2 layers x K, V
        assert 2 * per < 4_000 < 3 * per
        t0 = time.monotonic()
        for rid in ("x", "y", "z"):
            stage.wanted[rid] = t0
        stage.capture(s, types.SimpleNamespace(reqs=[_req(r, 12) for r in ("x", "y", "z")]))
        assert list(stage.captured) == ["y", "z"] and stage.bytes == 2 * per  # the oldest dropped
        stage.wanted["late"] = t0 + 8.0
        stage.expire(t0 + 5.0)
        assert "late" in stage.wanted and len(stage.captured) == 2  # within the TTL
        stage.expire(t0 + 12.0)
        assert "late" in stage.wanted and not stage.captured and stage.bytes == 0
        stage.expire(t0 + 19.0)
        assert not stage.wanted
    finally:
        stage.close()


def test_a_bad_message_gets_an_error_and_the_thread_lives_on():
    from sglang_cascade.core.kv_messages import KVRequest

    stage, t = KVStage(), ZmqRelayTransport(timeout_s=5)
    try:
        with pytest.raises(KVTransferError) as e:
            _run(t.call(stage.addr, KVRequest(op="import", rid="q")))
        assert e.value.reason == "op"
        _run(t.stage(stage.addr, "q"))
        assert "q" in stage.wanted and stage._thread.is_alive()
    finally:
        stage.close()
    assert not stage._thread.is_alive()
