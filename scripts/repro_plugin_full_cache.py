"""Admission with a full radix cache on a ``--scheduler-plugin cascade`` CPU-engine server (the plugin fix of
commit 0ddbf3d): fill the cache with 31 finished 500-token prompts, start a 300-token decode, then send two
300+200-token requests one after another and print their time to first token. Before the fix the plugin
counted the evictable cache as used KV and the first new request waited for the running decode to end
(4.68 s measured); after it, 0.123 s. The server is stopped (process group) even on failure.

    PYTHONPATH=. python scripts/repro_plugin_full_cache.py
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from sglang_cascade.testing.server_fixture import ServerProcess


async def ttft(http, url: str, prompt_len: int, new: int, seed: int) -> float | None:
    ids = [(seed * 31 + k * 7) % 900 + 5 for k in range(prompt_len)]
    body = {
        "input_ids": ids,
        "stream": True,
        "sampling_params": {"max_new_tokens": new, "temperature": 0, "ignore_eos": True},
    }
    t0, first = time.perf_counter(), None
    async with http.post(url + "/generate", json=body) as r:
        async for line in r.content:
            if line.startswith(b"data: {") and first is None:
                first = time.perf_counter() - t0
    return first


async def main(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for i in range(31):  # ~15,500 tokens of finished prompts stay in the 16,384-token pool as cache
            await ttft(http, url, 500, 1, 1000 + i)
        long = asyncio.ensure_future(ttft(http, url, 100, 300, 1))
        await asyncio.sleep(0.5)
        out = []
        for i in range(2):
            out.append(await ttft(http, url, 300, 200, 2000 + i))
            await asyncio.sleep(0.1)
        await long
        print("TTFT (s) of requests arriving beside a running decode, cache full:", [round(x, 3) for x in out])


if __name__ == "__main__":
    args = ["--threads", "1", "--scheduler-plugin", "cascade", "--cascade-cost-model", "tiny-llama:cpu-engine"]
    server = ServerProcess(args).start().wait_ready()
    try:
        asyncio.run(main(server.base_url))
    finally:
        server.stop()
