"""The router over two real SGLang servers on the CPU engine: a request migrated mid-stream (abort on the
source, recompute on the destination) yields exactly the tokens of an uninterrupted greedy run."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from sglang_cascade.router.args import RouterArgs
from sglang_cascade.router.local import start_router
from sglang_cascade.testing.sse import collect_sse

pytestmark = [pytest.mark.e2e, pytest.mark.sglang]


@pytest.fixture(scope="module")
def cpu_servers():
    pytest.importorskip("sglang")
    from sglang_cascade.testing.server_fixture import missing_requirements, start_servers

    missing = missing_requirements()
    if missing:
        pytest.skip(f"CPU engine needs {', '.join(missing)}")
    servers = start_servers(2)
    try:
        yield servers
    finally:
        for s in servers:
            s.stop()


def test_migration_on_real_sglang_matches_uninterrupted_run(cpu_servers):
    urls = [s.base_url for s in cpu_servers]

    async def go():
        async with aiohttp.ClientSession() as http:
            sp = {"max_new_tokens": 24, "temperature": 0.0, "ignore_eos": True}
            ids_prompt = [11, 42, 7, 99, 5, 64, 23, 8]
            # reference: one uninterrupted run on one server
            async with http.post(urls[0] + "/generate", json={"input_ids": ids_prompt, "sampling_params": sp}) as r:
                ref_ids = (await r.json())["output_ids"]
            async with http.post(
                urls[0] + "/generate", json={"text": "The quick brown fox", "sampling_params": sp}
            ) as r:
                ref_text = await r.json()
            assert len(ref_ids) == 24
            # two stages: lengths < 20 on server 0, longer on server 1 -> every request moves once mid-stream
            args = RouterArgs(
                host="127.0.0.1",
                port=0,
                worker_urls=urls,
                policy="cascade:bounds=20,counts=1/1",
                disable_health_check=True,
                load_poll_interval_secs=0,
            )
            router, served = await start_router(args)
            try:
                chunks = await collect_sse(
                    http, served.url + "/generate", {"input_ids": ids_prompt, "stream": True, "sampling_params": sp}
                )
                last = chunks[-1]
                assert last["meta_info"]["cascade"]["migrations"] == 1
                assert last["meta_info"]["cascade"]["path"] == urls
                assert last["output_ids"] == ref_ids
                prev = []
                for ch in chunks:  # continuous: every chunk extends the previous
                    assert ch["output_ids"][: len(prev)] == prev
                    prev = ch["output_ids"]
                # text prompt: the router learns the exact prompt ids from the worker, then migrates
                async with http.post(
                    served.url + "/generate", json={"text": "The quick brown fox", "sampling_params": sp}
                ) as r:
                    d = await r.json()
                assert d["meta_info"]["cascade"]["migrations"] == 1
                assert d["output_ids"] == ref_text["output_ids"]
                assert d["meta_info"]["prompt_tokens"] == ref_text["meta_info"]["prompt_tokens"]
                assert d["meta_info"]["completion_tokens"] == 24
            finally:
                await served.stop()

    asyncio.run(asyncio.wait_for(go(), 300))
