"""PluginConfig is declared once: its fields generate the --cascade-* flags, their dests and the namespace reader."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest

from sglang_cascade.plugin.config import PLUGIN_DESTS, PluginConfig, add_arguments, config_from_namespace


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch_server")
    add_arguments(p)
    return p


def test_every_field_has_its_flag_and_the_defaults_agree():
    p = _parser()
    flags = {a.dest: a for a in p._actions if a.dest != "help"}
    assert tuple(flags) == PLUGIN_DESTS and len(PLUGIN_DESTS) == len(dataclasses.fields(PluginConfig))
    assert "--cascade-finish-scan-every" in flags["cascade_finish_scan_every"].option_strings
    assert flags["cascade_aligned_decode"].choices == [0, 1] and flags["cascade_aligned_decode"].default == 1
    ns = p.parse_args(["--scheduler-plugin", "sglang"])
    assert config_from_namespace(ns) == PluginConfig("sglang")  # flag defaults = field defaults
    assert config_from_namespace(p.parse_args([])) is None  # no plugin: stock SGLang


def test_command_line_becomes_a_typed_config():
    ns = _parser().parse_args(
        [
            "--scheduler-plugin",
            "cascade",
            "--cascade-options",
            "pipelining=0,aligned=1",
            "--cascade-instance-id",
            "3",
            "--cascade-aligned-decode",
            "0",
            "--cascade-keep-held-state",
            "0",
            "--cascade-host-kv-tokens",
            "4096",
            "--cascade-publish-addr",
            "tcp://127.0.0.1:5601",
            "--cascade-publish-interval",
            "0.1",
            "--cascade-stats-file",
            "/tmp/s.json",
            "--cascade-log-interval",
            "5",
            "--cascade-finish-scan-every",
            "0",
            "--cascade-fail-every",
            "7",
            "--cascade-cost-model",
            "llama-3-8b:h100:2",
        ]
    )
    cfg = config_from_namespace(ns)
    assert cfg == PluginConfig(
        "cascade",
        options={"pipelining": 0, "aligned": 1},
        instance_id=3,
        cost_model="llama-3-8b:h100:2",
        aligned_decode=False,
        keep_held_state=False,
        host_kv_tokens=4096,
        publish_addr="tcp://127.0.0.1:5601",
        publish_interval=0.1,
        stats_file="/tmp/s.json",
        log_interval=5,
        finish_scan_every=1,
        fail_every=7,
    )
    assert cfg.aligned_decode is False and cfg.finish_scan_every == 1  # 0 means every result, as before
    assert PluginConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "argv",
    [
        ["--scheduler-plugin", "cascade", "--cascade-options", "bogus=1"],
        ["--cascade-options", "bogus=1", "--scheduler-plugin", "cascade"],  # either order
        ["--scheduler-plugin", "sglang:bogus=1"],
    ],
)
def test_unknown_option_is_a_usage_error_at_parse_time(argv, capsys):
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "launch_server: error:" in err and "bogus" in err


def test_malformed_options_and_bad_values_fail_at_parse_time(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--scheduler-plugin", "sglang", "--cascade-options", "page_size"])
    assert "item 'page_size' is not key=value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parser().parse_args(["--scheduler-plugin", "sglang", "--cascade-options", "page_size=big"])
    assert "option 'page_size' takes an integer" in capsys.readouterr().err
    ok = _parser().parse_args(["--scheduler-plugin", "sglang", "--cascade-options", "page_size=16"])
    assert config_from_namespace(ok).options == {"page_size": 16}


def test_config_module_imports_no_sglang():
    code = (
        "import sys, argparse; import sglang_cascade.plugin.config as c; c.add_arguments(argparse.ArgumentParser());"
        "bad = [m for m in sys.modules if m == 'sglang' or m.startswith('sglang.')]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sglang_launcher_stops_on_an_unknown_option_before_any_server_starts():
    pytest.importorskip("sglang.srt.server_args")
    code = (
        "from sglang.srt.plugins import load_plugins; load_plugins();"
        "from sglang.srt.server_args import prepare_server_args;"
        "prepare_server_args(['--model-path', 'dummy', '--scheduler-plugin', 'cascade',"
        " '--cascade-options', 'pipelining=0,bogus=1'])"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "error: argument --cascade-options" in r.stderr and "bogus" in r.stderr
