"""`sglang-cascade replay` against a fake SGLang worker on loopback: every request streams exactly its
output length, the JSON carries the metrics `simulate` writes, clipping and errors are reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from sglang_cascade.testing.server_fixture import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def fake_worker_url():
    port = free_port()
    cmd = [sys.executable, "-m", "sglang_cascade.testing.fake_worker", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--time-scale", "0.02"], env=ENV, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if urllib.request.urlopen(url + "/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("fake worker did not start")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def _replay(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sglang_cascade", "replay", "--quiet", *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=180, cwd=ROOT)


def test_replay_streams_every_request_and_writes_simulate_metrics(fake_worker_url, tmp_path):
    out = tmp_path / "r.json"
    res = _replay(
        "--trace", "sharegpt", "--num-requests", "12", "--rate", "20", "--max-output", "40",
        "--url", fake_worker_url, "--save-requests", "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    m = json.loads(out.read_text())
    assert m["requests"] == 12 and m["completed"] == 12 and m["failed"] == 0
    for key in ("ttft_mean", "tpot_mean", "e2e_mean", "e2e_p50", "e2e_p99", "throughput_tok_s"):
        assert key in m, (key, sorted(m))
    assert 0 < m["ttft_mean"] <= m["e2e_mean"] <= m["e2e_p99"]
    for r in m["per_request"]:
        assert r["output_len"] == r["target_output"] <= 40
        assert r["scheduled"] <= r["arrival"] + 1e-6 and r["arrival"] < r["first_token_time"] <= r["finish_time"]


def test_replay_clips_to_the_context_length(fake_worker_url, tmp_path):
    out = tmp_path / "c.json"
    res = _replay(
        "--trace", "arxiv", "--num-requests", "6", "--rate", "50", "--max-output", "8",
        "--context-length", "300", "--url", fake_worker_url, "--save-requests", "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    m = json.loads(out.read_text())
    assert m["context_length"] == 300 and m["clipped"] >= 1 and "clipped to the context length 300" in res.stderr
    assert all(r["prompt_len"] + r["target_output"] <= 300 for r in m["per_request"])
    assert m["completed"] == 6


def test_replay_unreachable_server_is_a_one_line_error():
    res = _replay("--trace", "sharegpt", "--num-requests", "2", "--url", f"http://127.0.0.1:{free_port()}")
    assert res.returncode == 1
    assert "sglang-cascade replay: error: cannot reach" in res.stderr
