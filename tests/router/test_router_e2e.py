"""The router end to end over in-process fake workers: endpoints, live cascade migration with exact token
continuity, worker failure mid-stream, live membership, health checks, backpressure, replicas, bench_serving."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.parse

import aiohttp
import pytest

from sglang_cascade.router.args import RouterArgs
from sglang_cascade.router.local import LocalCluster, serve_app, start_router
from sglang_cascade.router.migration import RecomputeMigrator
from sglang_cascade.testing import fake_worker_tokenizer as ftok
from sglang_cascade.testing.fake_worker import FakeWorker, FakeWorkerConfig, expected_tokens
from sglang_cascade.testing.server_fixture import free_port

CASCADE3 = "cascade:bounds=40/80,counts=1/1/1"


def _args(urls, **kw) -> RouterArgs:
    base = dict(
        host="127.0.0.1",
        port=0,
        worker_urls=list(urls),
        policy="round_robin",
        disable_health_check=True,
        load_poll_interval_secs=0,
        retry_initial_backoff_ms=1,
        refine_interval=0.05,
    )
    base.update(kw)
    return RouterArgs(**base)


async def stream(http, url, body, timeout=30):
    """POST a streaming request; returns (status, chunks). Checks the stream is one continuous sequence."""
    chunks = []
    async with http.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
        if r.status != 200:
            return r.status, [await r.text()]
        done = False
        async for line in r.content:
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            if line == b"data: [DONE]":
                done = True
                continue
            chunks.append(json.loads(line[6:]))
    assert done, "stream did not end with [DONE]"
    prev = []
    for ch in chunks:  # each chunk extends the previous one: no gap, duplicate or rewrite
        ids = ch["output_ids"]
        assert ids[: len(prev)] == prev and len(ids) > len(prev) or "error" in ch or ch["meta_info"]["finish_reason"]
        assert ch["meta_info"]["completion_tokens"] == len(ids)
        prev = ids
    return 200, chunks


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 90))  # nothing may hang


def test_endpoints_and_malformed_requests():
    async def go():
        c = await LocalCluster.start(2)
        r, s = await start_router(_args(c.urls))
        u = s.url
        try:
            async with aiohttp.ClientSession() as http:
                for path in (
                    "/v1/models",
                    "/get_model_info",
                    "/model_info",
                    "/get_server_info",
                    "/server_info",
                    "/health",
                    "/health_generate",
                    "/get_loads",
                    "/workers",
                    "/list_workers",
                ):
                    async with http.get(u + path) as resp:
                        assert resp.status == 200, path
                async with http.get(u + "/v1/models") as resp:
                    assert (await resp.json())["data"][0]["id"] == "llama-3-8b"
                async with http.get(u + "/list_workers") as resp:
                    assert (await resp.json())["urls"] == c.urls
                async with http.post(u + "/flush_cache") as resp:
                    assert resp.status == 200
                # /generate non-streaming, text prompt
                async with http.post(
                    u + "/generate", json={"text": "w3 w4", "sampling_params": {"max_new_tokens": 5}}
                ) as resp:
                    d = await resp.json()
                assert d["output_ids"] == expected_tokens([3, 4], 5) and d["text"] == ftok.decode(d["output_ids"])
                assert "prompt_token_ids" not in d  # the router asked for them, the client did not
                # OpenAI endpoints pass through
                async with http.post(u + "/v1/completions", json={"prompt": "w1", "max_tokens": 4}) as resp:
                    assert (await resp.json())["usage"]["completion_tokens"] == 4
                st, chunks = await _sse(
                    http,
                    u + "/v1/chat/completions",
                    {"messages": [{"role": "user", "content": "w1 w2"}], "max_tokens": 4, "stream": True},
                )
                assert st == 200 and "".join(x["choices"][0]["delta"]["content"] for x in chunks) == ftok.decode(
                    expected_tokens([1, 2], 4)
                )
                # malformed -> 4xx with a reason
                bad = [
                    (b"{not json", "not valid JSON"),
                    (b"[1,2]", "JSON object"),
                    (b"{}", "either 'text' or 'input_ids'"),
                    (json.dumps({"text": "a", "input_ids": [1]}).encode(), "not both"),
                    (json.dumps({"input_ids": [1, -2]}).encode(), "non-negative"),
                    (json.dumps({"text": "a", "sampling_params": {"max_new_tokens": "x"}}).encode(), "max_new_tokens"),
                    (json.dumps({"text": 5}).encode(), "'text' must be"),
                ]
                for body, reason in bad:
                    async with http.post(u + "/generate", data=body) as resp:
                        assert resp.status == 400 and reason in (await resp.text()), (body, await resp.text())
                async with http.post(u + "/v1/chat/completions", json={"messages": []}) as resp:
                    assert resp.status == 400 and "messages" in await resp.text()
                async with http.post(u + "/v1/completions", json={"max_tokens": 3}) as resp:
                    assert resp.status == 400 and "prompt" in await resp.text()
                async with http.get(u + "/metrics") as resp:
                    text = await resp.text()
                assert 'sglang_cascade_router_requests_total{endpoint="generate",status="400"} 7.0' in text
        finally:
            await s.stop()
            await c.stop()

    run(go())


async def _sse(http, url, body):
    out = []
    async with http.post(url, json=body) as r:
        async for line in r.content:
            line = line.strip()
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                out.append(json.loads(line[6:]))
        return r.status, out


def test_concurrent_streams_migrate_across_three_stages_with_exact_tokens():
    """48 concurrent clients through the real cascade policy (3 stages, bounds 40/80): every request that
    crosses a bound moves live, and every client gets exactly the unmigrated token sequence."""

    async def go():
        c = await LocalCluster.start(3, FakeWorkerConfig(time_scale=0.02))
        r, s = await start_router(_args(c.urls, policy=CASCADE3))
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

                async def client(i):
                    prompt = [i % 50 + 1] * (5 + i % 60)  # prompts 5..64: enter stage 0 or 1
                    n = 20 + (i * 7) % 90
                    stream_it = i % 4 != 0
                    body = {
                        "input_ids": prompt,
                        "stream": stream_it,
                        "sampling_params": {"max_new_tokens": n, "temperature": 0},
                    }
                    as_text = i % 5 == 1  # text prompt: placed on an estimate, exact ids learnt from the worker
                    if as_text:
                        body["text"] = " ".join(f"w{x}" for x in body.pop("input_ids"))
                    if stream_it:
                        st, chunks = await stream(http, s.url + "/generate", body)
                        last = chunks[-1]
                    else:
                        async with http.post(s.url + "/generate", json=body) as resp:
                            st, last = resp.status, await resp.json()
                    assert st == 200
                    assert last["output_ids"] == expected_tokens(prompt, n), i
                    assert last["meta_info"]["prompt_tokens"] == len(prompt)
                    assert last["meta_info"]["finish_reason"]["type"] == "length"
                    total = len(prompt) + n
                    crossed = sum(1 for b in (40, 80) if len(prompt) < b <= total - 1)
                    got = last["meta_info"].get("cascade", {}).get("migrations", 0)
                    if as_text:
                        assert last["text"] == ftok.decode(last["output_ids"]) and "prompt_token_ids" not in last
                    else:
                        assert got == crossed, (i, len(prompt), n, got, crossed)
                    return got

                moves = await asyncio.gather(*(client(i) for i in range(48)))
                assert sum(moves) >= 30 and max(moves) == 2
            async with aiohttp.ClientSession() as http, http.get(s.url + "/metrics") as resp:
                text = await resp.text()
            assert (
                f'sglang_cascade_router_migrations_total{{fallback="",mode="recompute",reason="stage"}} {float(sum(moves))}'
                in text
            )
            # sources were aborted: nothing is left running on any worker
            await asyncio.sleep(0.2)
            assert all(not w.engine.reqs for w in c.workers)
            assert all(w.in_flight == 0 and w.in_flight_tokens == 0 for w in r.pool.workers)  # exact accounting
        finally:
            await s.stop()
            await c.stop()

    run(go())


def test_worker_killed_mid_stream_resumes_elsewhere():
    async def go():
        c = await LocalCluster.start(3, FakeWorkerConfig(time_scale=0.3))
        r, s = await start_router(_args(c.urls, cb_failure_threshold=1, cb_timeout_duration_secs=60))
        try:
            async with aiohttp.ClientSession() as http:

                async def client(i):
                    prompt = [i + 1, 2, 3]
                    st, chunks = await stream(
                        http,
                        s.url + "/generate",
                        {"input_ids": prompt, "stream": True, "sampling_params": {"max_new_tokens": 300}},
                    )
                    assert st == 200 and chunks[-1]["output_ids"] == expected_tokens(prompt, 300)
                    return chunks[-1]["meta_info"].get("cascade", {}).get("resumes", 0)

                tasks = [asyncio.ensure_future(client(i)) for i in range(9)]
                await asyncio.sleep(0.3)
                await c.kill(0)  # worker 0 dies with 3 requests mid-stream
                resumes = await asyncio.gather(*tasks)
                assert sum(resumes) == 3
                assert r.pool.workers[0].breaker.state == "open"
                # new requests avoid the dead worker
                for i in range(4):
                    st, chunks = await stream(
                        http,
                        s.url + "/generate",
                        {"input_ids": [9, i], "stream": True, "sampling_params": {"max_new_tokens": 3}},
                    )
                    assert st == 200 and "cascade" not in chunks[-1]["meta_info"]
        finally:
            await s.stop()
            await c.stop()

    run(go())


def test_unresumable_failure_ends_with_error_event_and_all_dead_gives_503():
    async def go():
        c = await LocalCluster.start(1, FakeWorkerConfig(time_scale=0.3))
        r, s = await start_router(_args(c.urls, retry_max_retries=2))
        try:
            async with aiohttp.ClientSession() as http:
                task = asyncio.ensure_future(
                    stream(
                        http,
                        s.url + "/generate",
                        {"input_ids": [1, 2], "stream": True, "sampling_params": {"max_new_tokens": 500}},
                    )
                )
                await asyncio.sleep(0.3)
                await c.kill(0)  # the only worker: nowhere to resume
                st, chunks = await asyncio.wait_for(task, 10)
                assert st == 200 and "error" in chunks[-1] and "failed mid-stream" in chunks[-1]["error"]["message"]
                async with http.post(
                    s.url + "/generate",
                    json={"input_ids": [1], "sampling_params": {"max_new_tokens": 2}},
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as resp:
                    assert resp.status in (502, 503) and "worker" in await resp.text()
        finally:
            await s.stop()
            await c.stop()

    run(go())


def test_workers_added_and_removed_live():
    async def go():
        c = await LocalCluster.start(2, FakeWorkerConfig(time_scale=0.3))
        r, s = await start_router(_args(c.urls))
        try:
            async with aiohttp.ClientSession() as http:
                slow = asyncio.ensure_future(
                    stream(
                        http,
                        s.url + "/generate",
                        {"input_ids": [4, 4], "stream": True, "sampling_params": {"max_new_tokens": 300}},
                    )
                )
                await asyncio.sleep(0.1)
                new = await c.add(FakeWorkerConfig(time_scale=0.0))
                async with http.post(s.url + "/workers", json={"url": new}) as resp:
                    assert resp.status == 200
                async with http.post(s.url + "/workers", json={"url": new}) as resp:
                    assert resp.status == 409
                for i in range(6):
                    async with http.post(
                        s.url + "/generate", json={"input_ids": [i], "sampling_params": {"max_new_tokens": 2}}
                    ) as resp:
                        assert resp.status == 200
                assert c.workers[2].requests_seen == 2  # round robin over three
                # remove a worker that serves the in-flight stream (legacy API) and one via REST
                busy = next(w.url for w in r.pool.workers if w.in_flight)
                async with http.post(s.url + "/remove_worker", params={"url": busy}) as resp:
                    assert resp.status == 200
                async with http.delete(s.url + "/workers/" + urllib.parse.quote(new, safe="")) as resp:
                    assert resp.status == 200
                async with http.delete(s.url + "/workers/" + urllib.parse.quote(new, safe="")) as resp:
                    assert resp.status == 404
                async with http.get(s.url + "/list_workers") as resp:
                    left = (await resp.json())["urls"]
                assert len(left) == 1 and busy not in left
                seen = c.workers[2].requests_seen
                for i in range(3):
                    async with http.post(
                        s.url + "/generate", json={"input_ids": [i], "sampling_params": {"max_new_tokens": 2}}
                    ) as resp:
                        assert resp.status == 200
                assert c.workers[2].requests_seen == seen
                st, chunks = await slow  # the in-flight request on the removed worker finishes there
                assert st == 200 and chunks[-1]["output_ids"] == expected_tokens([4, 4], 300)
        finally:
            await s.stop()
            await c.stop()

    run(go())


def test_health_checks_remove_and_readd_a_worker():
    async def go():
        c = await LocalCluster.start(2)
        r, s = await start_router(
            _args(
                c.urls,
                disable_health_check=False,
                health_check_interval_secs=0.05,
                health_check_timeout_secs=0.5,
                health_failure_threshold=2,
                health_success_threshold=2,
            )
        )
        port = c.served[0].port
        try:
            await asyncio.sleep(0.2)
            await c.kill(0)
            for _ in range(100):
                await asyncio.sleep(0.05)
                if not r.pool.workers[0].healthy:
                    break
            assert not r.pool.workers[0].healthy
            async with aiohttp.ClientSession() as http:
                for i in range(4):  # all go to the healthy one, no failure
                    async with http.post(
                        s.url + "/generate", json={"input_ids": [i], "sampling_params": {"max_new_tokens": 2}}
                    ) as resp:
                        assert resp.status == 200
                assert r.pool.workers[0].failures_total == 0
            back = await serve_app(FakeWorker(FakeWorkerConfig(time_scale=0.0)).app, port)
            c.served.append(back)
            for _ in range(100):
                await asyncio.sleep(0.05)
                if r.pool.workers[0].healthy:
                    break
            assert r.pool.workers[0].healthy
        finally:
            await s.stop()
            await c.stop()

    run(go())


def test_backpressure_429_and_queue_timeout_503_never_hang():
    async def go():
        c = await LocalCluster.start(1, FakeWorkerConfig(time_scale=1.0))
        r, s = await start_router(_args(c.urls, max_concurrent_requests=2, queue_size=2, queue_timeout_secs=0.3))
        try:
            async with aiohttp.ClientSession() as http:

                async def one():
                    async with http.post(
                        s.url + "/generate",
                        json={"input_ids": [1], "sampling_params": {"max_new_tokens": 60}},
                        timeout=aiohttp.ClientTimeout(total=20),
                    ) as resp:
                        return resp.status, await resp.text()

                res = await asyncio.gather(*(one() for _ in range(8)))
                codes = sorted(x[0] for x in res)
                assert codes.count(200) == 2 and codes.count(429) == 4 and codes.count(503) == 2, codes
                assert any("--queue-size" in t for c_, t in res if c_ == 429)
                assert r.admission.active == 0 and not r.admission.waiters
        finally:
            await s.stop()
            await c.stop()

    run(go())


def test_two_replicas_share_load_and_survive_each_other():
    async def go():
        c = await LocalCluster.start(2, FakeWorkerConfig(time_scale=0.3))
        pa, pb = free_port(), free_port()
        ea, eb = f"tcp://127.0.0.1:{pa}", f"tcp://127.0.0.1:{pb}"
        ra, sa = await start_router(
            _args(
                c.urls,
                policy=CASCADE3.replace("counts=1/1/1", "counts=1/1").replace("bounds=40/80", "bounds=40"),
                replica_id="a",
                replica_bind=ea,
                replica_peers=[eb],
            )
        )
        rb, sb = await start_router(
            _args(c.urls, policy="least_load", replica_id="b", replica_bind=eb, replica_peers=[ea])
        )
        try:
            async with aiohttp.ClientSession() as http:
                tasks = [
                    asyncio.ensure_future(
                        stream(
                            http,
                            sa.url + "/generate",
                            {"input_ids": [i, 1], "stream": True, "sampling_params": {"max_new_tokens": 30}},
                        )
                    )
                    for i in range(4)
                ]
                for _ in range(60):
                    await asyncio.sleep(0.05)
                    shares = [w.peers.get("a", (0, 0, 0))[0] for w in rb.pool.workers]
                    if sum(shares) == 4:
                        break
                assert sum(shares) == 4  # replica b sees replica a's 4 in-flight requests
                assert rb.replicas.peer_ranges["a"][1][0].hi == 40  # and a's stage ranges
                load_b = rb.pool.cluster_view(asyncio.get_running_loop().time()).loads
                assert sum(x.num_running for x in load_b) >= 4
                # replica a goes away: b keeps serving (no single point of failure)
                await sa.stop()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                st, chunks = await stream(
                    http,
                    sb.url + "/generate",
                    {"input_ids": [3, 3], "stream": True, "sampling_params": {"max_new_tokens": 5}},
                )
                assert st == 200 and chunks[-1]["output_ids"] == expected_tokens([3, 3], 5)
        finally:
            await sb.stop()
            await c.stop()

    run(go())


def test_cache_aware_keeps_shared_prefixes_together():
    async def go():
        c = await LocalCluster.start(3)
        r, s = await start_router(_args(c.urls, policy="cache_aware"))
        try:
            async with aiohttp.ClientSession() as http:
                prefix = " ".join(f"w{i}" for i in range(100))
                for i in range(6):
                    async with http.post(
                        s.url + "/generate", json={"text": prefix + f" w{i}", "sampling_params": {"max_new_tokens": 1}}
                    ) as resp:
                        assert resp.status == 200
            seen = sorted(w.requests_seen for w in c.workers)
            assert seen == [0, 0, 6]
        finally:
            await s.stop()
            await c.stop()

    run(go())


@pytest.mark.e2e
@pytest.mark.sglang
def test_bench_serving_runs_against_the_router(tmp_path):
    """`python -m sglang.bench_serving --backend sglang` unmodified (it finds the tokenizer via /model_info)."""
    pytest.importorskip("sglang")

    async def go():
        tok = ftok.save_tokenizer_dir(str(tmp_path / "tok"))
        data = ftok.save_sharegpt_json(str(tmp_path / "sg.json"), n=50)
        c = await LocalCluster.start(2, FakeWorkerConfig(time_scale=0.01, tokenizer_path=tok))
        r, s = await start_router(
            _args(c.urls, policy=CASCADE3.replace("counts=1/1/1", "counts=1/1").replace("bounds=40/80", "bounds=60"))
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sglang.bench_serving",
                "--backend",
                "sglang",
                "--host",
                "127.0.0.1",
                "--port",
                str(s.port),
                "--dataset-name",
                "random",
                "--dataset-path",
                data,
                "--num-prompts",
                "20",
                "--random-input-len",
                "48",
                "--random-output-len",
                "32",
                "--random-range-ratio",
                "1.0",
                "--output-file",
                str(tmp_path / "bench.jsonl"),  # (its default writes into the working directory)
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 240)
            text = out.decode(errors="replace")
            assert proc.returncode == 0, text[-3000:]
            assert "Successful requests:                     20" in text, text[-3000:]
            assert sum(w.requests_seen for w in c.workers) >= 20 + 20  # every request crossed the 60 bound
        finally:
            await s.stop()
            await c.stop()

    asyncio.run(go())


def test_workers_join_once_up_and_requests_never_hang_meanwhile():
    async def go():
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        r, s = await start_router(
            _args([url], disable_health_check=False, health_check_interval_secs=60, health_check_timeout_secs=0.5)
        )
        served = None
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(s.url + "/workers") as resp:
                    assert (await resp.json())["workers"][0]["starting"] is True
                async with http.post(
                    s.url + "/generate",
                    json={"input_ids": [1], "sampling_params": {"max_new_tokens": 2}},
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as resp:
                    assert resp.status == 503 and "no healthy worker" in await resp.text()
                served = await serve_app(FakeWorker(FakeWorkerConfig(time_scale=0.0)).app, port)
                for _ in range(60):  # unhealthy/starting workers are re-checked every second
                    await asyncio.sleep(0.1)
                    if r.pool.workers[0].healthy:
                        break
                assert r.pool.workers[0].healthy and not r.pool.workers[0].starting
                async with http.post(
                    s.url + "/generate", json={"input_ids": [1], "sampling_params": {"max_new_tokens": 2}}
                ) as resp:
                    assert resp.status == 200
        finally:
            await s.stop()
            if served is not None:
                await served.stop()

    run(go())


class _CopyFirstMigrator(RecomputeMigrator):
    """A move that first copies for 50 ms while the source keeps streaming (a KV transfer's bulk stage)."""

    def start(self, http, st, src, dst, rid):
        return asyncio.ensure_future(asyncio.sleep(0.05))


def test_a_move_completes_when_its_copy_ends_not_at_the_sources_next_token():
    """The source decodes slowly (a busy SGLang prefilling other prompts decodes nothing meanwhile): once the
    move's copy has ended the request moves at once, without waiting for one more token from the source."""

    async def go():
        c = LocalCluster()
        await c.add(FakeWorkerConfig(time_scale=400.0))  # stage 0: every iteration takes seconds
        await c.add(FakeWorkerConfig(time_scale=0.0))
        r, s = await start_router(_args(c.urls, policy="cascade:bounds=40,counts=1/1"))
        r.migrator = _CopyFirstMigrator()
        try:
            prompt = list(range(1, 40))  # 39 tokens: stage 0; its first token reaches the bound (40)
            body = {"input_ids": prompt, "stream": True, "sampling_params": {"max_new_tokens": 6, "temperature": 0}}
            async with aiohttp.ClientSession() as http:
                st, chunks = await stream(http, s.url + "/generate", body)
            assert st == 200 and chunks[-1]["output_ids"] == expected_tokens(prompt, 6)
            cas = chunks[-1]["meta_info"]["cascade"]
            assert cas["path"] == c.urls and cas["migrations"] == 1
            assert cas["moves"][0]["at"] == 1  # right after the token that crossed the bound: no second one
        finally:
            await s.stop()
            await c.stop()

    run(go())


def test_a_move_whose_continuation_sglang_would_abort_is_not_made():
    """A recompute (or KV) move re-sends prompt + generated tokens: past SGLang's input limit (context - 7 on
    a 300-token context: 293) the destination aborts it (validate_input_length), and the request would end
    with an abort. The router keeps such a request on its source (moves inside the limit: the tests above)."""

    async def go():
        c = await LocalCluster.start(2, FakeWorkerConfig(time_scale=0.0, context_length=300))
        r, s = await start_router(_args(c.urls, policy="cascade:bounds=295,counts=1/1"))
        try:
            async with aiohttp.ClientSession() as http:
                near = [7] * 290  # stage 0; crosses the bound at 295 tokens, past the limit once it would move
                body = {"input_ids": near, "stream": True, "sampling_params": {"max_new_tokens": 8}}
                st, chunks = await stream(http, s.url + "/generate", body)
                last = chunks[-1]
                assert st == 200 and last["meta_info"]["finish_reason"]["type"] == "length", last["meta_info"]
                assert last["output_ids"] == expected_tokens(near, 8)
                assert last["meta_info"].get("cascade", {}).get("migrations", 0) == 0
        finally:
            await s.stop()
            await c.stop()

    run(go())
