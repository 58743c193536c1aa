"""The fake SGLang worker: deterministic, resumable tokens, SGLang formats, abort, loads, cost-model timing."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.router.local import LocalCluster
from sglang_cascade.testing import fake_worker_tokenizer as ftok
from sglang_cascade.testing.fake_worker import FakeWorkerConfig, expected_tokens
from sglang_cascade.testing.sse import collect_sse


def test_tokens_are_resumable():
    prompt = [5, 9, 2, 7, 1]
    full = expected_tokens(prompt, 50)
    assert len(set(full)) > 10  # not constant
    for cut in (1, 7, 30):
        assert full[:cut] + expected_tokens(prompt + full[:cut], 50 - cut) == full


def test_generate_stream_nonstream_and_formats():
    async def go():
        c = await LocalCluster.start(1)
        url = c.urls[0]
        try:
            async with aiohttp.ClientSession() as http:
                chunks = await collect_sse(
                    http,
                    url + "/generate",
                    {"input_ids": [1, 2, 3], "stream": True, "sampling_params": {"max_new_tokens": 12}},
                )
                assert [len(ch["output_ids"]) for ch in chunks] == list(range(1, 13))  # cumulative, one per token
                last = chunks[-1]
                assert last["output_ids"] == expected_tokens([1, 2, 3], 12)
                assert last["text"] == ftok.decode(last["output_ids"])
                assert last["meta_info"]["finish_reason"] == {"type": "length", "length": 12}
                assert last["meta_info"]["prompt_tokens"] == 3 and chunks[0]["meta_info"]["finish_reason"] is None
                async with http.post(
                    url + "/generate",
                    json={
                        "text": "w1 w2 w3",
                        "return_prompt_token_ids": True,
                        "sampling_params": {"max_new_tokens": 4},
                    },
                ) as r:
                    d = await r.json()
                assert d["prompt_token_ids"] == [1, 2, 3] and d["output_ids"] == expected_tokens([1, 2, 3], 4)
                async with http.post(url + "/generate", json={"sampling_params": {}}) as r:
                    assert r.status == 400
                async with http.post(url + "/v1/completions", json={"prompt": "w4 w5", "max_tokens": 3}) as r:
                    d = await r.json()
                assert d["usage"]["completion_tokens"] == 3 and d["choices"][0]["finish_reason"] == "length"
                chunks = await collect_sse(
                    http,
                    url + "/v1/chat/completions",
                    {"messages": [{"role": "user", "content": "w4 w5"}], "max_tokens": 3, "stream": True},
                )
                assert "".join(ch["choices"][0]["delta"]["content"] for ch in chunks) == ftok.decode(
                    expected_tokens([4, 5], 3)
                )
                async with http.get(url + "/v1/loads") as r:
                    loads = (await r.json())["loads"][0]
                assert {"num_running_reqs", "num_waiting_reqs", "num_used_tokens", "max_total_num_tokens"} <= set(loads)
                async with http.post(url + "/tokenize", json={"prompt": "w7 w8"}) as r:
                    assert (await r.json())["tokens"] == [7, 8]
        finally:
            await c.stop()

    asyncio.run(go())


def test_abort_and_cost_model_timing():
    async def go():
        scale = 0.5
        c = await LocalCluster.start(1, FakeWorkerConfig(time_scale=scale))
        url = c.urls[0]
        cm = CostModel.for_names("llama-3-8b", "h100")
        try:
            async with aiohttp.ClientSession() as http:
                t0 = time.monotonic()
                async with http.post(
                    url + "/generate", json={"input_ids": [1] * 100, "sampling_params": {"max_new_tokens": 10}}
                ) as r:
                    await r.read()
                took = time.monotonic() - t0
                ideal = scale * (
                    cm.batch_time(prefill=[(100, 0)]) + sum(cm.batch_time(decode_kv=[101 + i]) for i in range(9))
                )
                assert ideal * 0.9 <= took <= ideal * 3 + 0.2, (took, ideal)

                async def long_req():
                    return await collect_sse(
                        http,
                        url + "/generate",
                        {
                            "input_ids": [1, 2],
                            "rid": "victim",
                            "stream": True,
                            "sampling_params": {"max_new_tokens": 10000},
                        },
                    )

                task = asyncio.ensure_future(long_req())
                await asyncio.sleep(0.2)
                async with http.post(url + "/abort_request", json={"rid": "victim"}) as r:
                    assert r.status == 200
                chunks = await asyncio.wait_for(task, 5)
                assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "abort"
                assert len(chunks[-1]["output_ids"]) < 10000
                assert c.workers[0].aborts == 1
        finally:
            await c.stop()

    asyncio.run(go())
