"""The live router runs a policy that holds requests (``decisions.HOLD``; cascade's ``pool_hold``): ``admit`` waits
until the policy's ``release`` sends the request, woken by calls into the policy; a held request whose client left
is reported to the policy as finished; a failing ``release`` falls back to least_load; a rebuilt policy routes the
held requests again. End to end over fake workers: cascade's pool holds long prompts, every one completes with the
exact tokens, prefilled on the pool worker one at a time."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from test_router_e2e import _args, run

from sglang_cascade.core.decisions import HOLD
from sglang_cascade.core.interfaces import RouterPolicy
from sglang_cascade.core.views import RequestView
from sglang_cascade.router import placement
from sglang_cascade.router.local import LocalCluster, start_router
from sglang_cascade.router.metrics import RouterMetrics
from sglang_cascade.router.placement import Placement
from sglang_cascade.router.workers import WorkerPool
from sglang_cascade.testing.fake_worker import FakeWorkerConfig, expected_tokens


class _Holder(RouterPolicy):
    """Holds every request; ``go`` lets ``release`` send them all to ``to`` (or raise ``error``)."""

    def __init__(self, n):
        self.n, self.held, self.finished, self.go, self.to, self.error = n, [], [], False, n - 1, None
        self.per_call = None  # release at most this many per call (None: all)

    def route(self, req, cluster, now):
        self.held.append(req)
        return HOLD

    def release(self, cluster, now):
        if self.error is not None:
            raise self.error
        if not self.go:
            return []
        k = len(self.held) if self.per_call is None else self.per_call
        out, self.held = [(r, self.to) for r in self.held[:k]], self.held[k:]
        return out

    def release_at(self, now):
        return None if not self.held else now if self.go else now + 30.0

    def on_finish(self, req, now):
        self.finished.append(req.rid)


def _placement(n=2):
    pool = WorkerPool()
    for i in range(n):
        pool.add(f"http://127.0.0.1:{9100 + i}")
    built = []

    def factory(k):
        built.append(_Holder(k))
        return built[-1]

    return Placement(_args([]), pool, factory, RouterMetrics()), pool, built


async def _held(pl, *rids):
    """``admit`` each rid (the policy holds them all); the pending admits once they are held."""
    tasks = [asyncio.ensure_future(pl.admit(RequestView(rid, 0.0, 10), 0.0)) for rid in rids]
    await asyncio.sleep(0.05)
    assert pl.held == len(rids) and not any(t.done() for t in tasks)
    return tasks


async def _go(pl, built):
    """Let the policy release everything, woken by a call into it (a finish)."""
    built[-1].go = True
    pl.finish(RequestView("x", 0.0, 10), 0.1)


def test_admit_waits_for_the_release_and_a_departed_client_is_reported_finished():
    async def go():
        pl, pool, built = _placement()
        a, gone = await _held(pl, "a", "gone")
        assert pl.metrics.registry.get_sample_value("sglang_cascade_router_held_requests") == 2
        gone.cancel()  # its client left while it was held
        await asyncio.sleep(0)
        await _go(pl, built)  # any call into the policy wakes the release task
        assert await asyncio.wait_for(a, 5) is pool.workers[1]
        await asyncio.sleep(0.05)
        assert pl.held == 0 and built[-1].finished == ["x", "gone"]

    run(go())


def test_a_departed_clients_release_lets_the_next_one_go_at_once(monkeypatch):
    monkeypatch.setattr(placement, "RELEASE_POLL_S", 60.0)  # only an immediate second look can release "a" in time

    async def go():
        pl, pool, built = _placement()
        gone, a = await _held(pl, "gone", "a")
        built[-1].per_call = 1  # one per call: "gone" first, then "a"
        gone.cancel()
        await asyncio.sleep(0)
        await _go(pl, built)
        assert await asyncio.wait_for(a, 5) is pool.workers[1]

    run(go())


def test_an_aborted_held_request_fails_its_admit_and_is_reported_finished_when_released():
    async def go():
        pl, pool, built = _placement()
        a, b = await _held(pl, "a", "b")
        assert pl.abort_held("a", RuntimeError("aborted")) == 1 and pl.abort_held("zz", RuntimeError()) == 0
        with pytest.raises(RuntimeError, match="aborted"):
            await asyncio.wait_for(a, 5)
        await _go(pl, built)
        assert await asyncio.wait_for(b, 5) is pool.workers[1]
        assert pl.held == 0 and built[-1].finished == ["x", "a"]

    run(go())


def test_a_failing_release_places_the_held_requests_by_least_load():
    async def go():
        pl, pool, built = _placement()
        pool.workers[1].in_flight_tokens = 500  # least_load picks worker 0
        (a,) = await _held(pl, "a")
        built[-1].error = RuntimeError("policy bug")
        await _go(pl, built)
        assert await asyncio.wait_for(a, 5) is pool.workers[0]
        assert pl.held == 0

    run(go())


def test_a_rebuilt_policy_routes_the_held_requests_again():
    async def go():
        pl, pool, built = _placement()
        (a,) = await _held(pl, "a")
        pool.add("http://127.0.0.1:9102")  # a third worker: the next call rebuilds the policy, which holds "a" too
        assert pl.policy is built[-1] and len(built) == 2 and [r.rid for r in built[-1].held] == ["a"]
        await _go(pl, built)
        assert await asyncio.wait_for(a, 5) is pool.workers[2]

    run(go())


def test_cascade_pool_holds_long_prompts_live_and_every_one_completes_exactly():
    """Two fake workers, the second a prefill pool of one: four long prompts sent at once are prefilled there one at
    a time (each released when the previous one's first token arrives), move to the decode worker, and end with
    the unmigrated tokens; a short prompt is never held."""
    policy = "cascade:counts=1,prefill_pool=1,prefill_min=2000,refine=0,balance=0,mode=recompute"

    async def go():
        c = await LocalCluster.start(2, FakeWorkerConfig(time_scale=0.3))
        r, s = await start_router(_args(c.urls, policy=policy))
        peak = 0
        try:
            async with aiohttp.ClientSession() as http:

                async def client(i, n_prompt):
                    prompt = [i + 1] * n_prompt
                    body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": 12, "temperature": 0}}
                    async with http.post(s.url + "/generate", json=body) as resp:
                        d = await resp.json()
                    assert d["output_ids"] == expected_tokens(prompt, 12), i
                    return d["meta_info"].get("cascade", {})

                async def watch():
                    nonlocal peak
                    while True:
                        peak = max(peak, r.pool.workers[1].in_flight)
                        await asyncio.sleep(0.002)

                w = asyncio.ensure_future(watch())
                tasks = [client(i, 6000) for i in range(4)] + [client(9, 50)]
                metas = await asyncio.gather(*tasks)
                w.cancel()
                for m in metas[:4]:
                    assert m["path"] == c.urls[::-1] and m["migrations"] == 1, m  # pool worker, then the decode one
                assert metas[4].get("migrations", 0) == 0
                async with http.get(s.url + "/get_loads") as resp:
                    assert (await resp.json())["held"] == 0
                async with http.get(s.url + "/metrics") as resp:
                    assert "sglang_cascade_router_held_requests 0.0" in await resp.text()
            policy_obj = r.placement.policy
            assert policy_obj.stats["pool_prefills"] == 4 and len(policy_obj.hold) == 0
            assert peak == 1  # one prefill on the pool worker at a time
        finally:
            await s.stop()
            await c.stop()

    run(go())
