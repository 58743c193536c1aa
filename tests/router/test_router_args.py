"""Router flag parsing: sglang_router.launch_router's flags are accepted, unknown ones rejected clearly."""

from __future__ import annotations

import json

import pytest

from sglang_cascade.router.args import parse_args
from sglang_cascade.router.cli import main_argv
from sglang_cascade.router.policy_options import PolicyOptions, load_plan


def test_accepts_sglang_router_core_flags():
    a = parse_args(
        [
            "--host",
            "127.0.0.1",
            "--port",
            "31000",
            "--worker-urls",
            "http://w1:8000",
            "http://w2:8000/",
            "--policy",
            "cache_aware",
            "--cache-threshold",
            "0.5",
            "--balance-abs-threshold",
            "32",
            "--balance-rel-threshold",
            "1.2",
            "--prometheus-host",
            "127.0.0.1",
            "--prometheus-port",
            "29001",
            "--request-timeout-secs",
            "60",
            "--max-concurrent-requests",
            "64",
            "--queue-size",
            "8",
            "--queue-timeout-secs",
            "5",
            "--retry-max-retries",
            "3",
            "--retry-initial-backoff-ms",
            "10",
            "--retry-max-backoff-ms",
            "100",
            "--retry-backoff-multiplier",
            "2",
            "--retry-jitter-factor",
            "0.1",
            "--cb-failure-threshold",
            "4",
            "--cb-success-threshold",
            "2",
            "--cb-timeout-duration-secs",
            "9",
            "--cb-window-duration-secs",
            "30",
            "--health-failure-threshold",
            "2",
            "--health-success-threshold",
            "1",
            "--health-check-timeout-secs",
            "2",
            "--health-check-interval-secs",
            "3",
            "--health-check-endpoint",
            "/health_generate",
            "--log-level",
            "warn",
            "--model-path",
            "m",
            "--tokenizer-path",
            "t",
            "--backend",
            "sglang",
            "--request-id-headers",
            "x-request-id",
            "--max-payload-size",
            "1024",
            "--eviction-interval-secs",
            "30",
            "--max-tree-size",
            "1000",
            "--log-dir",
            "/tmp/x",
            "--token-count",
            "estimate",
        ]
    )
    assert a.worker_urls == ["http://w1:8000", "http://w2:8000"]
    assert a.policy == "cache_aware" and a.cache_threshold == 0.5 and a.balance_abs_threshold == 32
    assert a.max_concurrent_requests == 64 and a.queue_size == 8 and a.max_retries == 3
    assert a.cb_failure_threshold == 4 and a.health_check_endpoint == "/health_generate"
    assert a.log_level == "warning" and a.prometheus_port == 29001


def test_defaults_match_sglang_router():
    a = parse_args([])
    assert (a.port, a.policy, a.cache_threshold, a.balance_abs_threshold, a.balance_rel_threshold) == (
        30000,
        "cache_aware",
        0.3,
        64,
        1.5,
    )
    assert (a.queue_size, a.max_concurrent_requests, a.retry_max_retries, a.cb_failure_threshold) == (100, -1, 5, 10)
    assert parse_args(["--disable-retries"]).max_retries == 1


def test_cascade_options():
    a = parse_args(
        [
            "--policy",
            "cascade:bounds=512,counts=1/1",
            "--refine-interval",
            "2",
            "--migration-mode",
            "recompute",
            "--replica-bind",
            "tcp://127.0.0.1:5555",
            "--replica-peers",
            "tcp://127.0.0.1:5556",
            "--policy-option",
            "slo_tpot=0.05",
        ]
    )
    assert a.policy.startswith("cascade") and a.refine_interval == 2.0
    assert a.replica_peers == ["tcp://127.0.0.1:5556"] and a.policy_options == {"slo_tpot": 0.05}


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        (["--pd-disaggregation"], "does not support (PD disaggregation)"),
        (["--service-discovery"], "Kubernetes discovery"),
        (["--policy", "manual"], "--policy manual"),
        (["--policy", "nonsense"], "choose one of"),
        (["--worker-urls", "w1:8000"], "must start with http://"),
        (["--max-concurrent-requests", "0"], "-1 (off) or >= 1"),
        (["--backend", "openai"], "OpenAI backend mode"),
        (["--token-count", "tokenizer"], "needs --tokenizer-path"),
        (["--max-migrations", "-1"], "--max-migrations must be >= 0"),
    ],
)
def test_rejects_with_clear_message(argv, needle, capsys):
    assert main_argv(argv) == 2
    err = capsys.readouterr().err
    assert needle in err, err


def test_plan_file_to_cascade_options(tmp_path):
    p = tmp_path / "plan.json"
    p.write_text(
        json.dumps(
            {
                "stages": [
                    {"lo": 0, "hi": 512, "instances": 2},
                    {"lo": 512, "hi": 4096, "instances": 1},
                    {"lo": 4096, "hi": None, "instances": 1},
                ]
            }
        )
    )
    assert load_plan(str(p)) == {"bounds": "512/4096", "counts": "2/1/1"}
    bad = tmp_path / "bad.json"
    bad.write_text('{"stages": 3}')
    with pytest.raises(ValueError, match="stages"):
        load_plan(str(bad))


def test_option_assembly_flags_name_and_policy_option_precedence():
    """sglang_router's cache_aware flags become the policy's options of the same names; options on the name and
    --policy-option override them; other policies get none of them."""
    a = parse_args(
        [
            "--policy",
            "cache_aware:balance_abs_threshold=8",
            "--cache-threshold",
            "0.5",
            "--max-tree-size",
            "4096",
            "--policy-option",
            "balance_rel_threshold=2",
        ]
    )
    opts = PolicyOptions(a).for_workers(3)
    assert opts == {
        "cache_threshold": 0.5,
        "balance_abs_threshold": 8,
        "balance_rel_threshold": 2,
        "max_tree_size": 4096,
    }
    assert PolicyOptions(parse_args(["--policy", "least_load", "--cache-threshold", "0.5"])).for_workers(2) == {}


def test_option_assembly_cascade_plan_mode_and_max_migrations(tmp_path):
    from sglang_cascade.core import CostModel
    from sglang_cascade.policies.registry import PolicyContext, make_router

    p = tmp_path / "plan.json"
    p.write_text(json.dumps([{"lo": 0, "hi": 512, "instances": 2}, {"lo": 512, "hi": None, "instances": 1}]))
    po = PolicyOptions(parse_args(["--policy", "cascade:bounds=99", "--cascade-plan", str(p)]))
    assert po.for_workers(3) == {"bounds": "512", "counts": "2/1", "mode": "recompute"}  # the plan wins
    assert po.for_workers(4) == {"bounds": 99, "mode": "recompute"}  # plan for 3 workers: the policy plans
    # the policy's own mode is the mechanism the router runs (a kv_transfer plan is never made as a recompute)
    assert po.migration_mode() == "recompute"
    po = PolicyOptions(parse_args(["--policy", "cascade:mode=kv_transfer"]))
    assert po.migration_mode() == "kv_transfer" and po.for_workers(2)["mode"] == "kv_transfer"
    po = PolicyOptions(
        parse_args(["--policy", "cascade", "--policy-option", "mode=auto", "--migration-mode", "kv_transfer"])
    )
    assert po.migration_mode() == "auto" and po.for_workers(2)["mode"] == "auto"
    po = PolicyOptions(parse_args(["--policy", "least_load", "--migration-mode", "kv_transfer"]))
    assert po.migration_mode() == "kv_transfer"
    pol = make_router("round_robin", PolicyContext(CostModel.for_names("llama-3-8b", "h100"), 2))
    assert PolicyOptions(parse_args([])).configure(pol).max_migrations == 8  # no flag: the policy's own
    assert PolicyOptions(parse_args(["--max-migrations", "3"])).configure(pol).max_migrations == 3
