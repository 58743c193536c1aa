"""Every policy factory reads its options through core.options: keys = config field names, typed by annotation."""

from __future__ import annotations

import pytest

from sglang_cascade.core import CostModel
from sglang_cascade.policies import registry
from sglang_cascade.policies.cascade import CascadeRouterConfig
from sglang_cascade.policies.registry import PolicyContext, make_instance_scheduler, make_router
from sglang_cascade.sim.cli_simulate import _opts

CM = CostModel.for_names("llama-3-8b", "h100")
CTX = PolicyContext(cost_model=CM, num_instances=4, seed=3)

ROUTERS = ["round_robin", "random", "power_of_two", "least_load", "llumnix", "bucket", "cascade"]


@pytest.mark.parametrize("name", ROUTERS)
def test_every_router_rejects_an_unknown_key_naming_the_valid_ones(name):
    with pytest.raises(ValueError, match=rf"unknown option\(s\) \['bogus'\] for router '{name}'; valid: \["):
        make_router(f"{name}:bogus=1", CTX)


def test_sglang_scheduler_rejects_an_unknown_key():
    with pytest.raises(ValueError, match=r"for scheduler 'sglang'; valid: \[.*'page_size'"):
        make_instance_scheduler("sglang:bogus=1", CTX)


def test_baseline_options_are_typed_by_their_fields():
    assert make_router("round_robin:start=2", CTX).next == 2
    assert make_router("least_load:count_dispatched=0", CTX).cfg.count_dispatched is False
    ll = make_router("llumnix:migrate_out_threshold=2,request_migration_policy=LR", CTX)
    assert ll.cfg.migrate_out_threshold == 2.0 and isinstance(ll.cfg.migrate_out_threshold, float)
    assert ll.cfg.request_migration_policy == "LR"
    s = make_instance_scheduler("sglang:page_size=16,schedule_conservativeness=2", CTX)
    assert s.cfg.page_size == 16 and s.cfg.schedule_conservativeness == 2.0
    with pytest.raises(ValueError, match="option 'page_size' takes an integer"):
        make_instance_scheduler("sglang:page_size=1.5", CTX)


def test_bucket_options_are_typed_and_checked():
    b = make_router("bucket:bucket_adjust_interval_secs=2,l_max=1000", CTX)
    assert b.cfg.bucket_adjust_interval_secs == 2.0 and b.cfg.l_max == 1000
    assert b.boundary[0] == (0, 249)  # l_max split among the 4 instances
    with pytest.raises(ValueError, match="option 'l_max' takes an integer"):
        make_router("bucket:l_max=big", CTX)


def test_cascade_router_options_reach_its_parts_by_name():
    r = make_router("cascade:migration=0,mode=recompute,slo_tpot=0.05,min_pressure=0.5,batch_top=0", CTX, burst_z=2)
    assert isinstance(r.cfg, CascadeRouterConfig)
    assert r.cfg.migration is False and r.cfg.batch_top is False and r.cfg.burst_z == 2.0
    assert r.planner.cfg.mode == "recompute"  # MigrationConfig.mode
    assert r.bal_cfg.slo_tpot == 0.05 and r.bal_cfg.min_pressure == 0.5  # BalanceConfig
    assert r.qoe.slo_tpot == 0.05 and r.qoe.batch_top is False and r.qoe.burst_z == 2.0  # QoEConfig
    assert r.bal_cfg.patience == 2  # not a router option: the part's own default
    # the router's defaults differ from the balancer's own (0.3 / 1.5): the router's win
    d = make_router("cascade", CTX)
    assert (d.bal_cfg.min_pressure, d.bal_cfg.imbalance_ratio) == (0.15, 1.25)
    with pytest.raises(ValueError, match="option 'migration' takes 0/1"):
        make_router("cascade:migration=maybe", CTX)
    with pytest.raises(ValueError, match="migration mode must be"):
        make_router("cascade:mode=teleport", CTX)


def test_keyword_options_override_the_name_and_names_need_key_value():
    assert make_router("round_robin:start=1", CTX, start=3).next == 3
    with pytest.raises(ValueError, match="item 'start' is not key=value"):
        make_router("round_robin:start", CTX)
    assert not hasattr(registry, "parse_variant")


def test_kv_capacity_is_a_typed_context_field():
    small = make_instance_scheduler("sglang", PolicyContext(cost_model=CM, kv_capacity=1000))
    assert small.max_req_len == 999  # min(context - 1, pool - 1)
    default = make_instance_scheduler("sglang", PolicyContext(cost_model=CM))
    assert default.max_req_len == min(CM.model.max_context - 1, CM.kv_capacity_tokens() - 1)


def test_simulator_option_flags_parse_as_options():
    assert _opts(["migration=0", "slo_tpot=0.05"], "--router-opt") == {"migration": 0, "slo_tpot": 0.05}
    assert _opts([], "--router-opt") == {}
    with pytest.raises(ValueError, match="--router-opt: item 'migration' is not key=value"):
        _opts(["migration"], "--router-opt")


def test_compare_checks_every_policy_option_before_the_first_run(tmp_path, capsys):
    from sglang_cascade.cli import main

    argv = [
        "compare",
        "--trace",
        "azure_conv",
        "--max-requests",
        "20",
        "--instances",
        "2",
        "--routers",
        "round_robin,cascade",
        "--router-opt",
        "migration=0",
        "--out-dir",
        str(tmp_path),
    ]
    assert main(argv) == 2  # round_robin has no 'migration' option: nothing runs
    assert "unknown option(s) ['migration'] for router 'round_robin'" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()
    assert (
        main(
            argv[:7]
            + [
                "--routers",
                "cascade",
                "--router-opt",
                "migration=0",
                "--scheduler-opt",
                "page_size=x",
                "--out-dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "option 'page_size' takes an integer" in capsys.readouterr().err
