"""The router honours what the policy declares (issue 16): ``rebalance_interval`` (also after the policy is
rebuilt for new workers), ``max_migrations`` (the policy's own, or ``--max-migrations`` set on it), and a
registered fallback policy (``least_load``) places requests when the policy raises or returns an unusable
instance, counted in the metrics."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from test_router_e2e import CASCADE3, _args, run

from sglang_cascade.core import CostModel
from sglang_cascade.core.interfaces import RouterPolicy
from sglang_cascade.core.views import RequestView
from sglang_cascade.policies.registry import PolicyContext, make_router
from sglang_cascade.router.local import LocalCluster, start_router
from sglang_cascade.router.metrics import RouterMetrics
from sglang_cascade.router.placement import Placement
from sglang_cascade.router.workers import WorkerPool
from sglang_cascade.testing.fake_worker import FakeWorkerConfig, expected_tokens

CM = CostModel.for_names("llama-3-8b", "h100")


class _Fixed(RouterPolicy):
    """Returns a fixed answer (or raises it when it is an exception); counts rebalance calls."""

    def __init__(self, answer=0, interval=None):
        self.answer, self.rebalance_interval, self.calls = answer, interval, 0

    def route(self, req, cluster, now):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def rebalance(self, cluster, running, now):
        self.calls += 1
        return []


def _placement(answer, tokens=(500, 100, 300)):
    pool = WorkerPool()
    for i, t in enumerate(tokens):
        pool.add(f"http://127.0.0.1:{9000 + i}").in_flight_tokens = t
    metrics = RouterMetrics()
    return Placement(_args([]), pool, lambda n: _Fixed(answer), metrics), pool, metrics


def _fallbacks(metrics, reason) -> float:
    return metrics.registry.get_sample_value("sglang_cascade_router_policy_fallbacks_total", {"reason": reason}) or 0


@pytest.mark.parametrize(
    "answer,reason",
    [
        (RuntimeError("policy bug"), "error"),
        (7, "invalid_instance"),
        (-1, "invalid_instance"),
        ("0", "invalid_instance"),
        (2, "invalid_instance"),
    ],
)
def test_unusable_policy_answer_falls_back_to_least_load_and_is_counted(answer, reason):
    pl, pool, metrics = _placement(answer)
    if answer == 2:
        pool.workers[2].healthy = False  # an unhealthy worker is as bad as a missing one
    req = RequestView("r", 0.0, 10)
    assert pl.route(req, 0.0) is pool.workers[1]  # least_load: the fewest tokens in flight
    assert pl.route(req, 0.0, exclude={pool.workers[1]}) is pool.workers[0 if answer == 2 else 2]
    assert _fallbacks(metrics, reason) == 2
    assert pl._fallback.name == "least_load"  # a registered policy, not ad-hoc logic


def test_a_usable_answer_is_taken_as_is_and_not_counted():
    pl, pool, metrics = _placement(0)
    assert pl.route(RequestView("r", 0.0, 10), 0.0) is pool.workers[0]  # the busiest: the policy decides
    assert _fallbacks(metrics, "error") == _fallbacks(metrics, "invalid_instance") == 0


def test_rebalance_loop_runs_at_the_policys_interval_and_follows_a_rebuilt_policy():
    built: list[_Fixed] = []

    def factory(n):
        built.append(_Fixed(0, interval=0.2 if n == 1 else 0.03))
        return built[-1]

    async def go():
        c = await LocalCluster.start(2)
        r, s = await start_router(_args(c.urls[:1], refine_interval=30.0), factory)
        try:
            await asyncio.sleep(0.7)
            first = built[-1].calls
            assert 2 <= first <= 4, first  # 0.2 s, not --refine-interval's 30 s
            r.pool.add(c.urls[1])  # the placement rebuilds the policy for 2 workers: 0.03 s
            await asyncio.sleep(0.8)
            assert len(built) == 2 and built[0].calls <= first + 1
            assert 12 <= built[1].calls <= 30, built[1].calls  # ~ (0.8 - up to 0.2 s) / 0.03
        finally:
            await s.stop()
            await c.stop()

    run(go())


def test_router_caps_moves_at_the_policys_max_migrations_and_the_flag_overrides_it():
    """A request crossing both cascade bounds moves twice; the policy's ``max_migrations = 1`` caps it at one,
    ``--max-migrations 0`` (set on the built policy) at none; the tokens stay exact either way."""

    def capped(n):
        pol = make_router(CASCADE3, PolicyContext(cost_model=CM, num_instances=n))
        pol.max_migrations = 1
        return pol

    async def moves(c, args, factory=None) -> int:
        _, s = await start_router(args, factory)
        try:
            prompt = [3] * 10
            body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": 100, "temperature": 0}}
            async with aiohttp.ClientSession() as http, http.post(s.url + "/generate", json=body) as resp:
                out = await resp.json()
            assert resp.status == 200 and out["output_ids"] == expected_tokens(prompt, 100)
            return out["meta_info"].get("cascade", {}).get("migrations", 0)
        finally:
            await s.stop()

    async def go():
        c = await LocalCluster.start(3, FakeWorkerConfig(time_scale=0.01))
        try:
            assert await moves(c, _args(c.urls, policy=CASCADE3)) == 2
            assert await moves(c, _args(c.urls), capped) == 1
            assert await moves(c, _args(c.urls, policy=CASCADE3, max_migrations=0)) == 0
        finally:
            await c.stop()

    run(go())


def test_get_loads_shows_the_cascade_plan_decision_and_the_checker_thread_is_joined():
    """``/get_loads`` carries cascade's last plan decision (why it runs the plan it runs). Only
    ``cascade:plan_check=1`` (or the default ``pool_check``, only when a check fires) starts the simulator plan
    checker (a child process and its I/O thread), stopped at shutdown; ``pool_check=0`` makes none."""
    import threading

    async def loads(url) -> dict:
        async with aiohttp.ClientSession() as http, http.get(url + "/get_loads") as resp:
            assert resp.status == 200
            return await resp.json()

    async def go():
        c = await LocalCluster.start(2, FakeWorkerConfig(time_scale=0.0))
        try:
            r, s = await start_router(_args(c.urls, policy="cascade:pool_check=0"))
            try:
                d = (await loads(s.url))["plan_decision"]
                assert d["chosen"] == "pooled" and "no length sample" in d["reason"], d
                assert r.placement._checker is None
            finally:
                await s.stop()
            before = threading.active_count()
            r, s = await start_router(_args(c.urls, policy="cascade:plan_check=1,replay_requests=200"))
            try:
                body = {"input_ids": [3] * 10, "sampling_params": {"max_new_tokens": 4, "temperature": 0}}
                async with aiohttp.ClientSession() as http, http.post(s.url + "/generate", json=body) as resp:
                    assert resp.status == 200
                got = await loads(s.url)
                assert got["plan_decision"]["chosen"] == "pooled"
                assert r.placement._checker is not None
                assert got["plan_checker"]["mode"] == "process"  # the default: a child process, not a thread
            finally:
                await s.stop()
            assert r.placement._checker is None
            for _ in range(50):
                if threading.active_count() <= before:
                    break
                await asyncio.sleep(0.1)
            assert threading.active_count() <= before  # the checker's thread was joined
        finally:
            await c.stop()

    run(go())
