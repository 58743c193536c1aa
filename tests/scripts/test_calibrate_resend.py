"""calibrate_cpu_engine._stream sends a request again when the server dropped the connection before
answering (a closed keep-alive connection: one calibration aborted with "Cannot write to closing transport"),
and does not when the stream broke after the server started answering."""

import asyncio
import json
import os
import sys

import aiohttp
import pytest
from aiohttp import web

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import calibrate_cpu_engine as cal  # noqa: E402


async def _serve(handler):
    app = web.Application()
    app.router.add_post("/generate", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


async def _generate_once(handler):
    """calibrate_cpu_engine._stream of a 2-token prompt, 3 tokens, against ``handler``."""
    runner, url = await _serve(handler)
    try:
        async with aiohttp.ClientSession() as s:
            return await cal._stream(s, url, [11, 12], 3)
    finally:
        await runner.cleanup()


async def _tokens(request, n):
    resp = web.StreamResponse()
    await resp.prepare(request)
    for k in range(1, n + 1):
        await resp.write(b"data: " + json.dumps({"meta_info": {"completion_tokens": k}}).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    return resp


def test_a_request_dropped_before_any_answer_is_sent_again():
    calls = []

    async def handler(request):
        calls.append(1)
        await request.read()
        if len(calls) == 1:
            request.transport.close()  # dropped before an answer
            return web.Response()
        return await _tokens(request, 3)

    marks = asyncio.run(_generate_once(handler))
    assert len(calls) == 2
    assert [n for _, n in marks] == [0, 1, 2, 3]


def test_a_stream_broken_after_the_answer_began_is_an_error_not_a_resend():
    calls = []

    async def handler(request):
        calls.append(1)
        await request.read()
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"data: " + json.dumps({"meta_info": {"completion_tokens": 1}}).encode() + b"\n\n")
        request.transport.close()
        return resp

    with pytest.raises(RuntimeError, match="stream broke after 1 tokens"):
        asyncio.run(_generate_once(handler))
    assert len(calls) == 1
