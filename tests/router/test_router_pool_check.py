"""The default cascade's pool check on the live router (``pool_check``, docs/cascade.md "Pool sizes checked by
simulation"): with no length sample at start the router dispatches pooled; once enough requests have finished its
bootstrap re-plan sees long prompts making most of the work and sends a pool check to the background checker
process; the answer scores pool sizes, and the router runs the plan and pool it chose (``/get_loads``:
``plan_decision`` with its ``pool``, ``plan_info`` with the pool's members and why). Outputs stay exact. (At this
burst's rate the replays rank pooled first; a checked pool's adoption is tested with a scripted checker in
tests/policies/test_pool_check.py.)"""

from __future__ import annotations

import asyncio

import aiohttp
from test_router_e2e import _args, run

from sglang_cascade.router.local import LocalCluster, start_router
from sglang_cascade.testing.fake_worker import FakeWorkerConfig, expected_tokens


async def _loads(http, url) -> dict:
    async with http.get(url + "/get_loads") as resp:
        assert resp.status == 200
        return await resp.json()


def test_live_bootstrap_pool_check_adopts_a_checked_pool():
    policy = "cascade:prefill_min=1024,check_span_s=0,replay_requests=300,check_cpu_budget=0"

    async def one(http, url, i):
        ids = [1 + (i * 7 + j) % 900 for j in range(3000 if i % 2 == 0 else 200)]
        body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
        async with http.post(url + "/generate", json=body) as resp:
            assert resp.status == 200, await resp.text()
            got = await resp.json()
        assert got["output_ids"] == expected_tokens(ids, 8)

    async def go():
        c = await LocalCluster.start(4, FakeWorkerConfig(time_scale=0.0))
        try:
            r, s = await start_router(_args(c.urls, policy=policy))
            try:
                async with aiohttp.ClientSession() as http:
                    sem = asyncio.Semaphore(32)

                    async def limited(i):
                        async with sem:
                            await one(http, s.url, i)

                    await asyncio.gather(*(limited(i) for i in range(560)))  # > the refiner's 500 samples
                    got = None
                    for _ in range(600):  # the checker's child starts (spawn) and replays the candidates
                        got = await _loads(http, s.url)
                        d = got["plan_decision"]
                        if d and d["trigger"] == "drift" and d["scores"]:
                            break
                        await one(http, s.url, 1)  # traffic keeps the policy's calls (and its poll) going
                        await asyncio.sleep(0.05)
                    d = got["plan_decision"]
                    assert d["trigger"] == "drift" and d["scores"], d
                    assert any(x["pool"] > 0 for x in d["scores"]), d  # pool sizes were among the candidates
                    assert got["plan_checker"]["mode"] == "process" and got["plan_checker"]["jobs"] >= 1
                    info = got["plan_info"]
                    assert "prefill_pool_model" in info  # the checker's pool model reason came back with the answer
                    pool = info.get("prefill_pool", {}).get("instances", [])
                    assert len(pool) == d["pool"] and sum(d["counts"]) == 4 - d["pool"]
                    if d["pool"]:
                        assert "plan check (drift)" in info["prefill_pool_why"]
                    for i in range(8):  # still exact, whichever plan runs
                        await one(http, s.url, 1000 + i)
            finally:
                await s.stop()
        finally:
            await c.stop()

    run(go())


def _write_trace(path, n=400, rate=12.0, long_every=2):
    import json

    with open(path, "w") as f:
        for i in range(n):
            p = 3000 if i % long_every == 0 else 200
            f.write(json.dumps({"arrival": i / rate, "prompt_len": p, "output_len": 32}) + "\n")


def test_start_sample_reads_the_trace_as_the_simulator_does(tmp_path):
    import pytest

    from sglang_cascade.router.args import parse_args
    from sglang_cascade.router.placement import start_sample

    path = tmp_path / "t.jsonl"
    _write_trace(path, n=400, rate=12.0)
    a = parse_args(["--worker-urls", "http://x:1", "--policy", "cascade", "--cascade-length-sample", str(path)])
    sample, rate = start_sample(a)
    assert len(sample) == 400 and sample[0] == (3000, 32) and sample[1] == (200, 32)
    assert abs(rate - 12.0) < 1e-9
    a = parse_args(["--worker-urls", "http://x:1", "--cascade-length-sample", str(path), "--cascade-rate", "3"])
    assert start_sample(a)[1] == 3.0
    assert start_sample(parse_args(["--worker-urls", "http://x:1"])) == ([], None)
    with pytest.raises(SystemExit):
        parse_args(["--worker-urls", "http://x:1", "--cascade-rate", "0"])


def test_live_start_up_pool_check_from_a_length_sample(tmp_path):
    """With --cascade-length-sample the router's cascade checks its plan at start, as the simulator's does: the
    checker process answers, the plan and pool it chose are in force (``plan_info``), outputs exact."""
    path = tmp_path / "t.jsonl"
    _write_trace(path, n=400, rate=40.0)  # long prompts' prefill ~77% of the busy time at utilization ~0.56
    policy = "cascade:prefill_min=1024,check_span_s=0,replay_requests=300"

    async def go():
        c = await LocalCluster.start(4, FakeWorkerConfig(time_scale=0.0))
        try:
            args = _args(c.urls, policy=policy, cascade_length_sample=str(path))
            r, s = await start_router(args)
            try:
                async with aiohttp.ClientSession() as http:
                    d = None
                    for i in range(600):
                        d = (await _loads(http, s.url))["plan_decision"]
                        if d and d["trigger"] == "init" and d["scores"]:
                            break
                        ids = [5 + i % 50] * 64
                        body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 2, "temperature": 0}}
                        async with http.post(s.url + "/generate", json=body) as resp:  # the policy's calls poll
                            assert resp.status == 200
                            assert (await resp.json())["output_ids"] == expected_tokens(ids, 2)
                        await asyncio.sleep(0.05)
                    got = await _loads(http, s.url)
                    d, info = got["plan_decision"], got["plan_info"]
                    assert d["trigger"] == "init" and any(x["pool"] > 0 for x in d["scores"]), d
                    pool = info.get("prefill_pool", {}).get("instances", [])
                    assert len(pool) == d["pool"] and sum(d["counts"]) == 4 - d["pool"]
            finally:
                await s.stop()
        finally:
            await c.stop()

    run(go())
