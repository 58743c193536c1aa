"""Measured migration stalls (policies/migration_costs.py) and how the planner uses them (--migration-mode
auto): the fitted line, when it takes over from the model, and the choice it leads to."""

from __future__ import annotations

import pytest

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.decisions import MigrationMode
from sglang_cascade.core.views import InstanceLoad, RequestView
from sglang_cascade.policies.migration import MigrationConfig, MigrationPlanner
from sglang_cascade.policies.migration_costs import CostsConfig, MigrationCosts

RC, KV = MigrationMode.RECOMPUTE, MigrationMode.KV_TRANSFER


def test_line_recovers_a_measured_cost_and_waits_for_enough_moves():
    c = MigrationCosts(CostsConfig(decay=1.0, min_moves=3, min_spread=2.0))
    c.observe(RC, 100, 0.01 + 100 * 4e-4)
    c.observe(RC, 150, 0.01 + 150 * 4e-4)
    assert c.stall(RC, 1000) is None  # two moves
    c.observe(RC, 180, 0.01 + 180 * 4e-4)
    assert c.stall(RC, 1000) is None  # three moves, but 180 < 2 x 100: the slope is not measured yet
    c.observe(RC, 400, 0.01 + 400 * 4e-4)
    assert c.stall(RC, 1000) == pytest.approx(0.01 + 1000 * 4e-4, rel=1e-6)
    assert c.stall(KV, 1000) is None  # mechanisms are measured separately
    snap = c.snapshot()
    assert snap["recompute"]["moves"] == 4 and snap["recompute"]["tokens"] == [100, 400]
    # bad observations are ignored, never raised
    c.observe(RC, 0, 1.0)
    c.observe(RC, 10, float("nan"))
    assert c.snapshot()["recompute"]["moves"] == 4


def test_recent_moves_count_most_and_the_line_never_goes_negative():
    c = MigrationCosts(CostsConfig(decay=0.5, min_moves=2, min_spread=1.5))
    for n in (100, 400, 100, 400):
        c.observe(KV, n, 0.2)  # the link used to be slow
    for n in (100, 400, 100, 400, 100, 400):
        c.observe(KV, n, 0.02)  # ... now it is fast
    assert c.stall(KV, 250) == pytest.approx(0.02, rel=0.2)  # the old 0.2 s has faded
    d = MigrationCosts(CostsConfig(decay=1.0, min_moves=2))
    d.observe(RC, 100, 0.5)
    d.observe(RC, 1000, 0.1)  # noise: a longer move was faster
    assert d.stall(RC, 5000) == pytest.approx(0.3)  # flat through the mean, not negative


def _planner(measured=None):
    cm = CostModel.for_names("llama-3-8b", "h100")
    return MigrationPlanner(cm, MigrationConfig(mode="auto", link="tcp"), measured=measured)


def test_measured_stalls_replace_the_model_in_the_choice():
    req = RequestView("r", 0.0, 3000, 100, kv_tokens=3100)
    dst = InstanceLoad(1, kv_used=0, kv_capacity=100_000)
    base = _planner().estimate(req, dst)
    costs = MigrationCosts(CostsConfig(decay=1.0, min_moves=2))
    # measured: KV transfer much slower than the model says, recompute cheap -> recompute
    for n in (500, 5000):
        costs.observe(KV, n, 10 * base.kv_stall_s * n / 3100 + 1.0)
        costs.observe(RC, n, 0.001)
    est = _planner(costs).estimate(req, dst)
    assert est.mode is RC and est.kv_stall_s > base.kv_stall_s and est.recompute_stall_s == pytest.approx(0.001)
    # measured the other way round -> KV transfer
    costs = MigrationCosts(CostsConfig(decay=1.0, min_moves=2))
    for n in (500, 5000):
        costs.observe(KV, n, 1e-4)
        costs.observe(RC, n, 5.0)
    assert _planner(costs).estimate(req, dst).mode is KV
    # no room on the destination: recompute, whatever was measured
    full = InstanceLoad(1, kv_used=99_000, kv_capacity=100_000)
    assert _planner(costs).estimate(req, full).mode is RC


def test_simulator_copies_with_the_planners_link_time():
    from sglang_cascade.sim.migration import d2d_fn

    cm = CostModel.for_names("llama-3-8b", "h100")
    for link in ("", "nvlink", "tcp"):
        p = MigrationPlanner(cm, MigrationConfig(link=link or "spec"))
        f = d2d_fn(cm, link)
        for n in (1, 100, 10_000, 100_000):
            assert f(n) == p.link_time(n)
    assert d2d_fn(cm, "")(5000) == cm.device_to_device_time(5000)


def test_measured_link_drives_planner_and_simulator_copy_time():
    from sglang_cascade.sim.migration import d2d_fn

    cm = CostModel.for_names("llama-3-8b", "h100")
    c = MigrationCosts(CostsConfig(decay=1.0, min_moves=3, min_spread=2.0))
    planner = MigrationPlanner(cm, MigrationConfig(link="tcp"), measured=c)
    model_t = planner.link_time(1000)
    for nbytes in (10_000, 40_000, 200_000):  # the relay: 2 ms fixed + 1 GB/s
        c.observe_link(nbytes, 0.002 + nbytes * 1e-9)
    link = c.link()
    assert link is not None and link.fixed_s == pytest.approx(0.002) and link.s_per_byte == pytest.approx(1e-9)
    want = 0.002 + 1000 * cm.kv_bytes_per_token * 1e-9
    assert planner.link_time(1000) == pytest.approx(want) != pytest.approx(model_t)
    # the simulator times its KV copies with the same planner function, given the measured link
    assert d2d_fn(cm, link)(1000) == pytest.approx(want)
    assert MigrationPlanner(cm, MigrationConfig(link=link)).link_time(1000) == pytest.approx(want)
    c.observe_link(0, 1.0)  # ignored
    assert MigrationCosts().link() is None  # nothing measured: the configured curve
