"""Issue 17: the router against hostile input and faulty workers. Each test reproduces one reported failure
(self-loops, orphaned requests, client errors counted as worker failures, 500s, calls without deadlines, cut
streams, malformed worker URLs, slow breaker recovery, over-long prompts)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp
import pytest
from aiohttp import web
from test_router_e2e import _args, run, stream

from sglang_cascade.router import server as router_server
from sglang_cascade.router.health import HealthConfig, check_once
from sglang_cascade.router.local import LocalCluster, serve_app, start_router
from sglang_cascade.router.migration import RecomputeMigrator
from sglang_cascade.router.worker_urls import normalize_worker_url
from sglang_cascade.router.workers import BreakerConfig, WorkerPool
from sglang_cascade.testing.fake_worker import FakeWorkerConfig, expected_tokens

BAD_URLS = [
    "http://a b:1",
    "http://[::1",
    "http://h:-1",
    "http://h:70000",
    "http://h\x01x:1",
    "http://h:1/\x7f",
    "http://" + "a" * 100_000 + ":1",
    "ftp://h:1",
    "h:1",
    "http://:1",
    "http://user:pw@h:1",
    "http://h:1?x=1",
    "http://h:1#f",
    "http://h:port",
    "http://-bad-.com:1",
    "http://h:0",
    "javascript:alert(1)",
    "",
]


async def _post(http, url, **kw):
    async with http.post(url, **kw) as r:
        return r.status, await r.text()


class _Cluster:
    """A fake cluster + router, stopped on exit."""

    def __init__(self, n=2, cfg=None, **kw):
        self.n, self.cfg, self.kw = n, cfg, kw

    async def __aenter__(self):
        self.c = await LocalCluster.start(self.n, self.cfg)
        self.r, self.s = await start_router(_args(self.c.urls, **self.kw))
        self.http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc):
        await self.http.close()
        await self.s.stop()
        await self.c.stop()


def _app(handler) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def test_router_refuses_itself_under_every_alias_and_through_a_proxy():
    async def go():
        async with _Cluster() as k:
            port, u = k.s.port, k.s.url
            for host in ("localhost", "127.0.0.1", "[::1]", "0.0.0.0", socket.gethostname(), "LOCALHOST"):
                st, txt = await _post(k.http, u + "/add_worker", params={"url": f"http://{host}:{port}"})
                assert st == 400 and "this router" in txt, (host, st, txt)
                st, txt = await _post(k.http, u + "/workers", json={"url": f"http://{host}:{port}/"})
                assert st == 400 and "this router" in txt, (host, st, txt)
            async with k.http.get(u + "/get_server_info") as r:  # the identity it is recognised by
                assert (await r.json())["cascade_router"]["id"] == k.r.router_id

            async def proxy(request):  # another address that reaches the same router
                async with k.http.get(u + request.path_qs, headers=request.headers) as r:
                    return web.Response(status=r.status, body=await r.read(), headers=r.headers)

            p = await serve_app(_app(proxy))
            try:
                st, txt = await _post(k.http, u + "/add_worker", params={"url": p.url})
                assert st == 400 and "answers as this router" in txt, txt
            finally:
                await p.stop()
            assert [w.url for w in k.r.pool.workers] == k.c.urls
            st, _ = await _post(k.http, u + "/abort_request", json={"rid": "nope"})
            assert st == 200

    run(go())


def test_client_hangup_aborts_the_worker_request_and_frees_the_slot():
    async def go():
        async with _Cluster(1, FakeWorkerConfig(time_scale=1.0), max_concurrent_requests=2) as k:
            eng = k.c.workers[0].engine
            for stream_ in (False, True):
                body = {"input_ids": [1, 2], "stream": stream_, "sampling_params": {"max_new_tokens": 100_000}}
                for _ in range(2):
                    with pytest.raises(asyncio.TimeoutError):
                        await _post(k.http, k.s.url + "/generate", json=body, timeout=aiohttp.ClientTimeout(total=0.3))
                for _ in range(60):
                    if k.r.admission.active == 0 and not eng.reqs:
                        break
                    await asyncio.sleep(0.05)
                assert k.r.admission.active == 0 and not eng.reqs, (stream_, k.r.admission.active, eng.reqs)
            st, _ = await _post(
                k.http, k.s.url + "/generate", json={"input_ids": [1], "sampling_params": {"max_new_tokens": 2}}
            )
            assert st == 200

    run(go())


def test_malformed_bodies_are_rejected_at_the_router_and_never_count_against_workers():
    async def go():
        async with _Cluster(3, cb_failure_threshold=1) as k:
            for i in range(12):
                st, txt = await _post(
                    k.http,
                    k.s.url + "/generate",
                    json={"text": f"w{i}", "stream": bool(i % 2), "sampling_params": [{"max_new_tokens": 2}]},
                )
                assert st == 400 and "sampling_params" in txt, (st, txt)
            assert sum(w.requests_seen for w in k.c.workers) == 0
            assert all(w.breaker.state == "closed" and w.failures_total == 0 for w in k.r.pool.workers)
            st, _ = await _post(
                k.http, k.s.url + "/generate", json={"text": "w1", "sampling_params": {"max_new_tokens": 2}}
            )
            assert st == 200

    run(go())


def test_a_workers_4xx_is_passed_back_without_retry_or_breaker_failure():
    hits = []

    async def picky(request):  # rejects every generate like SGLang rejects a bad request
        hits.append(request.path)
        return web.json_response({"error": {"message": "bad request"}}, status=400)

    async def go():
        ws = [await serve_app(_app(picky)) for _ in range(2)]
        r, s = await start_router(_args([w.url for w in ws], cb_failure_threshold=1))
        try:
            async with aiohttp.ClientSession() as http:
                for i in range(6):
                    st, txt = await _post(
                        http,
                        s.url + "/generate",
                        json={"input_ids": [1, i], "stream": bool(i % 2), "sampling_params": {"max_new_tokens": 2}},
                    )
                    assert st == 400 and "bad request" in txt
            assert hits.count("/generate") == 6  # no retry on the other worker
            assert all(w.breaker.state == "closed" and w.failures_total == 0 for w in r.pool.workers)
        finally:
            await s.stop()
            for w in ws:
                await w.stop()

    run(go())


@pytest.mark.parametrize(
    "body,status,fragment",
    [
        ({"input_ids": [1, 2], "sampling_params": {"max_new_tokens": None}}, 200, None),
        ({"input_ids": [1, 2], "stream": True, "sampling_params": {"max_new_tokens": None}}, 200, None),
        ({"input_ids": [1, 2], "sampling_params": {"n": "abc"}}, 400, "sampling_params.n"),
        ({"input_ids": [1, 2], "sampling_params": {"n": 1.5}}, 400, "sampling_params.n"),
        ({"input_ids": [1, 2], "sampling_params": {"min_new_tokens": "x", "max_new_tokens": 9}}, 400, "min_new_tokens"),
        ({"input_ids": [1, 2], "sampling_params": {"min_new_tokens": 10, "max_new_tokens": 9}}, 400, "must not exceed"),
        ({"input_ids": [1, 2], "sampling_params": {"temperature": "hot"}}, 400, "temperature"),
    ],
)
def test_sampling_params_400_not_500_and_null_max_new_tokens_is_the_default(body, status, fragment):
    """``max_new_tokens: null`` is SGLang's "until the context is full" (here a 100-token context)."""

    async def go():
        async with _Cluster(1, cfg=FakeWorkerConfig(context_length=100)) as k:
            if body.get("stream"):
                st, chunks = await stream(k.http, k.s.url + "/generate", body)
                assert st == 200 and len(chunks[-1]["output_ids"]) == 98
                return
            st, txt = await _post(k.http, k.s.url + "/generate", json=body)
            assert st == status, txt
            if fragment:
                assert fragment in txt
            else:
                assert len(json.loads(txt)["output_ids"]) == 98

    run(go())


def test_workers_body_url_not_a_string_and_malformed_worker_urls_are_400():
    async def go():
        async with _Cluster(1) as k:
            for bad in (5, None, ["http://h:1"], {"u": 1}, True):
                st, txt = await _post(k.http, k.s.url + "/workers", json={"url": bad})
                assert st == 400 and "url" in txt, (bad, st, txt)
            for bad in BAD_URLS:
                st, txt = await _post(k.http, k.s.url + "/workers", json={"url": bad})
                assert st == 400, (bad[:40], st, txt)
            for bad in BAD_URLS[:3]:
                st, _ = await _post(k.http, k.s.url + "/add_worker", params={"url": bad})
                assert st == 400
            assert len(k.r.pool.workers) == 1

    run(go())


def test_normalize_worker_url_accepts_valid_ones():
    for ok in ("http://127.0.0.1:30000", "https://w-1.example.com", "http://[::1]:8000/", "http://h_1:1/prefix"):
        assert normalize_worker_url(ok) == ok.rstrip("/")
    for bad in BAD_URLS:
        with pytest.raises(ValueError):
            normalize_worker_url(bad)


def test_calls_to_a_worker_that_never_answers_have_deadlines(monkeypatch):
    monkeypatch.setattr(router_server, "CALL_TIMEOUT_S", 0.5)

    async def hang(request):
        await asyncio.sleep(3600)

    async def go():
        h = await serve_app(_app(hang))
        async with _Cluster(1) as k:
            k.r.pool.add(h.url)
            try:
                for path, body in (("/abort_request", {"rid": "nope"}), ("/flush_cache", None)):
                    t0 = time.monotonic()
                    st, txt = await _post(k.http, k.s.url + path, json=body)
                    assert time.monotonic() - t0 < 3, path
                    assert (st, path) in ((200, "/abort_request"), (502, "/flush_cache")), (path, st, txt)
                t0 = time.monotonic()
                async with k.http.get(k.s.url + "/health_generate") as r:
                    assert r.status == 200 and time.monotonic() - t0 < 3
            finally:
                await h.stop()

    run(go())


def test_a_failing_continuation_ends_the_stream_with_an_error_event_and_done():
    class Broken(RecomputeMigrator):
        def continuation(self, st, dst, rid):
            raise ValueError("cannot continue")

    async def go():
        async with _Cluster(3, policy="cascade:bounds=40/80,counts=1/1/1") as k:
            k.r.migrator = Broken()
            st, chunks = await stream(
                k.http,
                k.s.url + "/generate",
                {"input_ids": [1, 2, 3], "stream": True, "sampling_params": {"max_new_tokens": 100}},
            )
            assert st == 200 and "error" in chunks[-1] and "cannot continue" in chunks[-1]["error"]["message"]
            assert chunks[-2]["output_ids"] == expected_tokens([1, 2, 3], len(chunks[-2]["output_ids"]))

    run(go())


def test_a_successful_health_check_half_opens_an_open_breaker():
    async def go():
        pool = WorkerPool(BreakerConfig(failure_threshold=1, timeout_s=3600))
        c = await LocalCluster.start(1)
        w = pool.add(c.urls[0])
        try:
            w.breaker.record(False, time.monotonic())
            assert w.breaker.state == "open" and not w.usable(time.monotonic())
            async with aiohttp.ClientSession() as http:
                assert await check_once(http, w, HealthConfig(timeout_s=2))
            assert w.breaker.state == "half_open" and w.usable(time.monotonic())
        finally:
            await c.stop()

    run(go())


def test_prompts_longer_than_the_context_are_400_at_the_router():
    async def go():
        async with _Cluster(2, FakeWorkerConfig(time_scale=0.0, context_length=50)) as k:
            for _ in range(100):
                if k.r.pool.context_length() == 50:
                    break
                await asyncio.sleep(0.02)
            for stream_ in (False, True):
                st, txt = await _post(
                    k.http,
                    k.s.url + "/generate",
                    json={"input_ids": list(range(60)), "stream": stream_, "sampling_params": {"max_new_tokens": 2}},
                )
                assert st == 400 and "context length (50 tokens)" in txt, txt
            st, txt = await _post(
                k.http, k.s.url + "/v1/completions", json={"prompt": list(range(60)), "max_tokens": 2}
            )
            assert st == 400 and "50" in txt
            assert sum(w.requests_seen for w in k.c.workers) == 0
            st, _ = await _post(
                k.http,
                k.s.url + "/generate",
                json={"input_ids": list(range(10)), "sampling_params": {"max_new_tokens": 2}},
            )
            assert st == 200

    run(go())


def test_null_max_new_tokens_stays_unbounded_across_migrations():
    """``max_new_tokens: null`` = until the context is full; a migrated request's continuations send null too,
    so the client gets exactly the unmigrated tokens (context 100, prompt 10: 90 tokens, crossing 40 and 80)."""

    async def go():
        cfg = FakeWorkerConfig(context_length=100, time_scale=0.02)
        async with _Cluster(3, cfg=cfg, policy="cascade:bounds=40/80,counts=1/1/1") as k:
            prompt = [7] * 10
            body = {"input_ids": prompt, "stream": True, "sampling_params": {"max_new_tokens": None, "temperature": 0}}
            st, chunks = await stream(k.http, k.s.url + "/generate", body)
            assert st == 200 and chunks[-1]["output_ids"] == expected_tokens(prompt, 90)
            assert chunks[-1]["meta_info"]["cascade"]["migrations"] == 2

    run(go())
