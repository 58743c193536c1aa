"""Fuzz the router's endpoints with generated requests (seeded): wrong types, nulls, sizes, encodings, methods,
headers and worker URLs. Every answer must be < 500 with a reason on 4xx, the router must still serve
afterwards with exact tokens, and open sockets / memory must not grow. Worker URLs only ever name 127.0.0.1
(or are invalid), so nothing leaves the machine."""

from __future__ import annotations

import asyncio
import os
import random
import urllib.parse

import aiohttp
from test_router_e2e import _args, run

from sglang_cascade.router.local import LocalCluster, start_router
from sglang_cascade.testing.fake_worker import expected_tokens

CASES = 500
SEED = 17
PATHS = [
    "/generate",
    "/v1/completions",
    "/v1/chat/completions",
    "/workers",
    "/add_worker",
    "/remove_worker",
    "/abort_request",
    "/flush_cache",
    "/get_server_info",
    "/v1/models",
    "/workers/x",
    "/health",
    "/nope",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
FIELDS = [
    "text",
    "input_ids",
    "sampling_params",
    "stream",
    "rid",
    "prompt",
    "messages",
    "max_tokens",
    "n",
    "temperature",
    "url",
    "return_logprob",
    "abort_all",
]
SP_FIELDS = [
    "max_new_tokens",
    "min_new_tokens",
    "n",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "frequency_penalty",
]


def _value(rng: random.Random, depth: int = 0):
    kinds = ["none", "bool", "int", "bigint", "neg", "float", "str", "longstr", "unicode", "list", "dict"]
    k = rng.choice(kinds if depth < 3 else kinds[:9])
    if k == "list":
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if k == "dict":
        return {rng.choice(SP_FIELDS + FIELDS): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    return {
        "none": None,
        "bool": rng.random() < 0.5,
        "int": rng.randint(0, 40),
        "bigint": 10 ** rng.randint(10, 40),
        "neg": -rng.randint(1, 9),
        "float": rng.choice([0.5, 1e308, -0.0, 3.0]),
        "str": rng.choice(["", "w1 w2", "x", "null", "NaN", "-1"]),
        "longstr": "w" * rng.randint(1000, 50_000),
        "unicode": rng.choice(["\u0000", "\ud7ff\ue000", "💥" * 10, "\\u0000"]),
    }[k]


def _worker_url(rng: random.Random, port: int) -> str:
    base = rng.choice(
        [
            f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{rng.randint(1, 65535)}",
            "http://[::1",
            "http://a b:1",
            "ftp://127.0.0.1:1",
            "http://127.0.0.1:-1",
            "http://" + "a" * 300 + ":1",
            "http://127.0.0.1:99999",
            f"http://localhost:{port}",
            "http://127.0.0.1:1\x00",
        ]
    )
    if rng.random() < 0.3:
        base += rng.choice(["/", "//x", "?q", "#f", "/\x7f", "/%zz", " "])
    return base


def _body(rng: random.Random, port: int) -> bytes | dict:
    r = rng.random()
    if r < 0.1:  # encodings and non-JSON
        return rng.choice(
            [
                b"",
                b"{",
                b"\xff\xfe\x00",
                b"[]",
                b"null",
                b"1e999999",
                b'{"text": "\xff"}',
                b"{" * 10_000 + b"}" * 10_000,
                b'{"a":' * 500,
            ]
        )
    body = {rng.choice(FIELDS): _value(rng) for _ in range(rng.randint(0, 5))}
    if rng.random() < 0.5:
        body["sampling_params"] = {rng.choice(SP_FIELDS): _value(rng) for _ in range(rng.randint(0, 3))}
    if rng.random() < 0.5:
        body.setdefault(rng.choice(["input_ids", "text"]), rng.choice([[1, 2, 3], "w1 w2"]))
    if "url" in body or rng.random() < 0.2:
        body["url"] = _worker_url(rng, port) if rng.random() < 0.8 else _value(rng)
    body.setdefault("sampling_params", {}).setdefault("max_new_tokens", 2) if isinstance(
        body.get("sampling_params"), dict
    ) else None
    return body


def _case(rng: random.Random, port: int) -> tuple[str, str, dict, bytes | dict]:
    path = rng.choice(PATHS)
    if path in ("/add_worker", "/remove_worker") or (path == "/workers/x" and rng.random() < 0.5):
        url = _worker_url(rng, port)
        path = (
            path.replace("/x", "/" + urllib.parse.quote(url, safe=""))
            if "/x" in path
            else path + "?url=" + urllib.parse.quote(url, safe="")
        )
    method = "POST" if rng.random() < 0.7 else rng.choice(METHODS)
    headers = rng.choice(
        [
            {},
            {"Content-Type": "text/plain"},
            {"Content-Type": "application/json; charset=latin-1"},
            {"X-Big": "h" * 6000},
            {"Accept-Encoding": "br"},
            {"Transfer-Encoding": "chunked"},
        ]
    )
    return method, path, headers, _body(rng, port)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def _one(http, base: str, case) -> tuple[int, str]:
    method, path, headers, body = case
    kw = {"data": body} if isinstance(body, bytes) else {"json": body}
    try:
        async with http.request(
            method, base + path, headers=headers, timeout=aiohttp.ClientTimeout(total=20), **kw
        ) as r:
            return r.status, await r.text(errors="replace")
    except aiohttp.ClientResponseError as e:  # the server's 400 to a smuggling attempt, then it closed
        return e.status, str(e.message)


def test_fuzzed_requests_get_4xx_with_a_reason_and_leave_no_leak():
    async def go():
        c = await LocalCluster.start(2)
        r, s = await start_router(_args(c.urls, max_concurrent_requests=64))
        rng = random.Random(SEED)
        try:
            async with aiohttp.ClientSession() as http:
                cases = [_case(rng, s.port) for _ in range(CASES)]
                await asyncio.gather(*(_one(http, s.url, x) for x in cases[:50]))  # warm-up
                fds0, rss0 = _fds(), _rss_mb()
                for case in cases:
                    st, txt = await _one(http, s.url, case)
                    assert st < 500, (case[:2], str(case[3])[:200], st, txt[:300])
                    if st >= 400 and case[0] != "HEAD":
                        assert txt.strip(), (case[:2], st)
                    for w in list(r.pool.workers):  # a fuzzed add that was valid: take it out again
                        if w.url not in c.urls:
                            r.pool.remove(w.url)
                assert [w.url for w in r.pool.workers] == c.urls
                async with http.post(
                    s.url + "/generate", json={"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 7}}
                ) as resp:
                    assert resp.status == 200 and (await resp.json())["output_ids"] == expected_tokens([5, 6], 7)
                await asyncio.sleep(0.2)
                assert _fds() <= fds0 + 8, (fds0, _fds())
                assert _rss_mb() < rss0 * 1.25 + 20, (rss0, _rss_mb())
                assert r.admission.active == 0 and not r.sessions
                assert all(w.breaker.state == "closed" and w.in_flight == 0 for w in r.pool.workers)
        finally:
            await s.stop()
            await c.stop()

    run(go())
