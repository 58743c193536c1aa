"""The simulator's prefix cache against a real SGLang server, for a prompt admitted while another prompt sharing its
prefix is still being prefilled in chunks (sim/prefix_cache.py: each chunk's blocks join the cache, as SGLang's
``cache_unfinished_req`` inserts them).

One CPU-engine server with ``--chunked-prefill-size 512``; A = a 1,696-token document + 64 tokens of its own (chunks
of 512, 512, 512, 224), B = the same document + 64 other tokens, sent together. B waits while A's full chunks take
the whole budget, joins A's last chunk, and reuses the 1,536 document tokens A's first three chunks computed, not
the 160 in A's last chunk: SGLang's ``cached_tokens`` for B and the simulator's hit for B must both be 1,536 (the two
are sent at once, so the server may receive B first: then A is the one that reuses 1,536).
"""

from __future__ import annotations

import concurrent.futures as cf

import pytest

pytest.importorskip("sglang")

from sglang_cascade.core.traces import TraceRequest
from sglang_cascade.sim import SimConfig, simulate
from sglang_cascade.testing.server_fixture import ServerProcess, missing_requirements

pytestmark = pytest.mark.e2e

BLOCK, CHUNK = 32, 512
DOC_BLOCKS, TAIL = 53, 64  # a 1,696-token document


def _ids(seed: int, n: int) -> list[int]:
    return [(seed * 7919 + 31 * i) % 1000 + 3 for i in range(n)]


def test_a_prompt_joining_the_last_chunk_reuses_the_chunks_done_on_sglang_and_in_the_simulator():
    missing = missing_requirements()
    if missing:
        pytest.skip(f"CPU engine needs {', '.join(missing)}")
    doc = _ids(1, DOC_BLOCKS * BLOCK)
    a, b = doc + _ids(2, TAIL), doc + _ids(3, TAIL)
    server = ServerProcess(["--chunked-prefill-size", str(CHUNK), "--max-prefill-tokens", str(CHUNK)]).start()
    try:
        server.wait_ready()

        def send(ids):
            params = {"max_new_tokens": 2, "temperature": 0, "ignore_eos": True}
            return server.generate({"input_ids": ids, "sampling_params": params}, timeout=120)["meta_info"]

        with cf.ThreadPoolExecutor(2) as ex:
            fa = ex.submit(send, a)
            fb = ex.submit(send, b)
            real_a, real_b = fa.result()["cached_tokens"], fb.result()["cached_tokens"]
    finally:
        server.stop()
    chunks_done = (len(a) // CHUNK) * CHUNK  # 1,536: A's full chunks
    assert sorted([real_a, real_b]) == [0, chunks_done]  # whichever the server received first computes it all

    hashes = list(range(DOC_BLOCKS))
    trace = [
        TraceRequest("a", 0.0, len(a), 2, hash_ids=hashes + [100, 101]),
        TraceRequest("b", 0.0, len(b), 2, hash_ids=hashes + [200, 201]),
    ]
    cfg = SimConfig(
        model="tiny-llama", gpu="cpu-engine", instances=1, router="round_robin", scheduler="sglang",
        prefix_cache_block=BLOCK, max_prefill_tokens=CHUNK,
    )  # fmt: skip
    res = simulate(trace, cfg)
    hit = {r.rid: r.extra.get("prefix_hit", 0) for r in res.requests}
    assert hit == {"a": 0, "b": chunks_done}
