"""``/get_loads`` shows the plan check's CPU budget governor (``plan_budget``) with ``cascade:plan_check=1``:
the budget, what was spent, when the next check may run; also for the default cascade, whose auto prefill pool's
sizes are checked (``pool_check``); null without a plan checker."""

from __future__ import annotations

import aiohttp
from test_router_e2e import _args, run

from sglang_cascade.router.local import LocalCluster, start_router
from sglang_cascade.testing.fake_worker import FakeWorkerConfig


async def _loads(url) -> dict:
    async with aiohttp.ClientSession() as http, http.get(url + "/get_loads") as resp:
        assert resp.status == 200
        return await resp.json()


def test_get_loads_shows_the_check_budget():
    async def go():
        c = await LocalCluster.start(2, FakeWorkerConfig(time_scale=0.0))
        try:
            r, s = await start_router(_args(c.urls, policy="cascade:pool_check=0"))
            try:
                assert (await _loads(s.url))["plan_budget"] is None
            finally:
                await s.stop()
            r, s = await start_router(_args(c.urls, policy="cascade"))
            try:
                got = await _loads(s.url)
                assert got["plan_budget"]["checks_charged"] == 0 and got["plan_checker"]["jobs"] == 0, got
            finally:
                await s.stop()
            r, s = await start_router(_args(c.urls, policy="cascade:plan_check=1,check_cpu_budget=0.5"))
            try:
                b = (await _loads(s.url))["plan_budget"]
                assert b["cpu_budget_core_s_per_min"] == 0.5 and b["spent_core_s"] == 0.0, b
                assert b["next_check_in_s"] == 0.0 and b["checks_charged"] == 0 and b["deferred_drift"] == 0
            finally:
                await s.stop()
        finally:
            await c.stop()

    run(go())
