"""Client-side helper for SGLang-style server-sent-event streams (tests, examples, load scripts)."""

from __future__ import annotations

import json


async def collect_sse(http, url: str, body: dict, timeout_s: float = 120.0) -> list[dict]:
    """POST ``body`` to ``url`` with an aiohttp session and return the decoded ``data:`` events, in order,
    without the final ``[DONE]``. Fails with the server's reply when the status is not 200."""
    import aiohttp

    chunks: list[dict] = []
    async with http.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            line = line.strip()
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                chunks.append(json.loads(line[6:]))
    return chunks
