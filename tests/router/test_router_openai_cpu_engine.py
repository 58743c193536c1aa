"""/v1/completions and /v1/chat/completions through the router over two real SGLang CPU-engine servers with
``--policy cascade`` and a bound that moves every request mid-stream: the migrated answers carry exactly the
text, finish reason and usage of the SGLang server's own OpenAI endpoint for the same greedy request, and the
official ``openai`` client parses every response and stream."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from sglang_cascade.router.args import RouterArgs
from sglang_cascade.router.local import start_router
from sglang_cascade.testing.server_fixture import server_fixture

pytestmark = [pytest.mark.e2e, pytest.mark.sglang]
openai = pytest.importorskip("openai")

BOUND = 20  # cascade stage bound: lengths < 20 on server 0, the rest on server 1
PROMPT = "The cat is"
MESSAGES = [{"role": "user", "content": "The cat is"}]


cpu_servers = server_fixture(n=2)  # shared with any module asking for the same servers; stopped at session end


async def _migrations(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    m = re.search(r'sglang_cascade_router_migrations_total\{[^}]*reason="stage"\} ([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0


async def _answer(client, chat: bool, stream: bool, **kw) -> dict:
    """text, finish_reason, matched_stop and usage of one request (the client parses every event)."""
    api = client.chat.completions if chat else client.completions
    args = {"model": "default", "temperature": 0, **kw}
    args["messages" if chat else "prompt"] = MESSAGES if chat else PROMPT
    if not stream:
        r = await api.create(**args)
        c = r.choices[0]
        return {
            "text": c.message.content if chat else c.text,
            "finish": c.finish_reason,
            "matched": getattr(c, "matched_stop", None),
            "usage": r.usage.model_dump(),
            "object": r.object,
        }
    out = {"text": "", "finish": None, "matched": None, "usage": None, "roles": []}
    async for ev in await api.create(stream=True, stream_options={"include_usage": True}, **args):
        assert ev.object == ("chat.completion.chunk" if chat else "text_completion")
        if ev.usage is not None and not ev.choices:
            out["usage"] = ev.usage.model_dump()
        for c in ev.choices:
            out["text"] += (c.delta.content or "") if chat else c.text
            if chat and c.delta.role:
                out["roles"].append(c.delta.role)
            if c.finish_reason:
                out["finish"], out["matched"] = c.finish_reason, getattr(c, "matched_stop", None)
    return out


def _stop_across(text17: str, full: str) -> str:
    """A stop string made of the last characters before the nominal migration point and the next ones."""
    b = len(text17)
    stop = full[b - 2 : b + 3]
    assert len(stop) == 5 and full.find(stop) == b - 2, (text17, full)
    return stop


async def _check_all(http, urls: list[str], router_url: str) -> None:
    ref = openai.AsyncOpenAI(base_url=urls[0] + "/v1", api_key="x", max_retries=0)
    via = openai.AsyncOpenAI(base_url=router_url + "/v1", api_key="x", max_retries=0)
    cases = [(chat, stream, {"max_tokens": 24}) for chat in (False, True) for stream in (False, True)]
    cases.append((True, False, {"max_completion_tokens": 22}))
    # a stop string inside the destination's text, and one around the point where the bound is crossed
    full = (await _answer(ref, False, False, max_tokens=40))["text"]
    text17 = (await _answer(ref, False, False, max_tokens=BOUND - 3))["text"]  # the prompt is 3 tokens
    cases.append((False, True, {"max_tokens": 40, "stop": [full[len(text17) + 4 : len(text17) + 9]]}))
    cases.append((False, False, {"max_tokens": 40, "stop": _stop_across(text17, full)}))
    cases.append(
        (False, True, {"max_tokens": 40, "stop": [_stop_across(text17, full)], "extra_body": {"no_stop_trim": True}})
    )
    for chat, stream, kw in cases:
        before = await _migrations(http, router_url)
        want = await _answer(ref, chat, stream, **kw)
        got = await _answer(via, chat, stream, **kw)
        assert got == want, (chat, stream, kw)
        if kw.get("stop") is None:
            assert want["finish"] == "length" and await _migrations(http, router_url) == before + 1, (chat, stream)
        else:
            assert want["finish"] == "stop" and want["matched"] is not None
    await ref.close()
    await via.close()


async def _check_proxied(http, urls: list[str], router_url: str) -> None:
    """Requests the router cannot migrate (n > 1, logprobs) reach a worker's OpenAI endpoint unchanged."""
    via = openai.AsyncOpenAI(base_url=router_url + "/v1", api_key="x", max_retries=0)
    before = await _migrations(http, router_url)
    r = await via.completions.create(model="default", prompt=PROMPT, max_tokens=24, temperature=0, n=2)
    assert len(r.choices) == 2 and r.choices[0].text == r.choices[1].text and r.usage.completion_tokens == 48
    r = await via.completions.create(model="default", prompt=PROMPT, max_tokens=24, temperature=0, logprobs=2)
    assert len(r.choices[0].logprobs.token_logprobs) == 24
    r = await via.chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=24, temperature=0, logprobs=True, top_logprobs=2
    )
    assert len(r.choices[0].logprobs.content) == 24
    assert await _migrations(http, router_url) == before  # proxied: never moved
    await via.close()


async def _check_raw_stream(http, router_url: str) -> None:
    """The chat stream's wire format: the role first, ``[DONE]`` last."""
    body = {"model": "default", "messages": MESSAGES, "max_tokens": 24, "temperature": 0, "stream": True}
    async with http.post(router_url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        raw = (await r.read()).decode()
    events = [e for e in raw.split("\n\n") if e]
    assert events[-1] == "data: [DONE]" and '"role":"assistant"' in events[0]
    assert '"finish_reason":"length"' in events[-2]


def test_openai_endpoints_migrate_and_match_sglang(cpu_servers):
    urls = [s.base_url for s in cpu_servers]

    async def go():
        args = RouterArgs(
            host="127.0.0.1",
            port=0,
            worker_urls=urls,
            policy=f"cascade:bounds={BOUND},counts=1/1",
            disable_health_check=True,
            load_poll_interval_secs=0,
        )
        router, served = await start_router(args)
        try:
            async with aiohttp.ClientSession() as http:
                await _check_all(http, urls, served.url)
                await _check_proxied(http, urls, served.url)
                await _check_raw_stream(http, served.url)
        finally:
            await served.stop()

    asyncio.run(asyncio.wait_for(go(), 600))
