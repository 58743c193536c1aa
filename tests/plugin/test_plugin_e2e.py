"""End to end: real ``sglang.launch_server`` on the CPU engine (tiny model), with and without the plugin.

Three servers, started once for the module (in parallel): stock SGLang; ``--scheduler-plugin
plugin_probe`` (parks / resumes / splits decode batches on purpose, parks through host memory within
``--cascade-host-kv-tokens 4096``, and its policy is made to raise on every 5th call);
``--scheduler-plugin cascade``. Greedy outputs of all three must be token-identical.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import tempfile
import threading
import time

import pytest

pytest.importorskip("sglang")
zmq = pytest.importorskip("zmq")

from sglang_cascade.testing.server_fixture import ServerProcess, free_port, missing_requirements  # noqa: E402

pytestmark = pytest.mark.e2e

N_REQ = 8


def prompts() -> list[dict]:
    return [
        {
            "text": f"Request number {i}: the quick brown fox " * (1 + i % 3),
            "sampling_params": {"max_new_tokens": 12 + i, "temperature": 0, "ignore_eos": True},
        }
        for i in range(N_REQ)
    ]


def run_concurrently(server: ServerProcess) -> list[list[int]]:
    with cf.ThreadPoolExecutor(N_REQ) as ex:
        outs = list(ex.map(lambda p: server.generate(p, timeout=300), prompts()))
    return [o["output_ids"] for o in outs]


def read_stats(path: str) -> dict:
    with open(path) as f:
        return json.load(f)["counters"]


def wait_stats(path: str, pred, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        c = read_stats(path)
        if pred(c) or time.monotonic() > deadline:
            return c
        time.sleep(0.2)


@pytest.fixture(scope="module")
def servers():
    missing = missing_requirements()
    if missing:
        pytest.skip(f"CPU engine needs {', '.join(missing)}")
    tmp = tempfile.mkdtemp(prefix="plugin_e2e_")
    probe_stats, casc_stats = os.path.join(tmp, "probe.json"), os.path.join(tmp, "cascade.json")
    pub_addr = f"tcp://127.0.0.1:{free_port()}"
    stock = ServerProcess([])
    probe = ServerProcess(
        [
            "--scheduler-plugin",
            "plugin_probe",
            "--cascade-host-kv-tokens",
            "4096",
            "--cascade-stats-file",
            probe_stats,
            "--cascade-publish-addr",
            pub_addr,
            "--cascade-publish-interval",
            "0.1",
            "--cascade-fail-every",
            "5",
            "--cascade-instance-id",
            "3",
        ]
    )
    casc = ServerProcess(["--scheduler-plugin", "cascade", "--cascade-stats-file", casc_stats])
    all_ = [stock, probe, casc]
    try:
        for s in all_:
            s.start()
        for s in all_:
            s.wait_ready()
        yield {
            "stock": stock,
            "probe": probe,
            "cascade": casc,
            "probe_stats": probe_stats,
            "cascade_stats": casc_stats,
            "pub_addr": pub_addr,
        }
    finally:
        for s in all_:
            s.stop()


@pytest.fixture(scope="module")
def stock_outputs(servers):
    return run_concurrently(servers["stock"])


def test_probe_plugin_token_identical_and_acts_as_decided(servers, stock_outputs):
    path = servers["probe_stats"]
    before = read_stats(path)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(servers["pub_addr"])
    msgs, stop = [], threading.Event()

    def listen():
        from sglang_cascade.core.messages import decode_load

        while not stop.is_set():
            if sub.poll(100):
                _topic, payload = sub.recv_multipart()
                msgs.append(decode_load(payload))

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    time.sleep(0.5)  # PUB/SUB: let the subscription reach the publisher
    outs = run_concurrently(servers["probe"])
    after = wait_stats(path, lambda c: c["finished"] - before["finished"] >= N_REQ)
    stop.set()
    t.join(timeout=5)
    sub.close(linger=0)

    assert outs == stock_outputs  # scheduling changed when, never what
    d = {k: after[k] - before[k] for k in after}
    # every request was admitted once (host parks are not re-admitted); steps where the injected error
    # made SGLang decide count their admissions as admitted_stock
    assert d["finished"] == N_REQ and d["admitted"] >= 1 and d["admitted"] + d["admitted_stock"] >= N_REQ
    assert d["parked"] >= 1 and after["resumed"] + after["forced_resumes"] == after["parked"]  # all came back
    # parks went through host memory (KV copied out and back, no recompute) within --cascade-host-kv-tokens
    assert d["parked_host"] >= 1 and d["resumed_host"] >= 1 and d["host_copy_failures"] == 0
    assert after["host_kv_tokens_peak"] <= 4096
    assert d["decode_splits"] >= 1 and d["held_back"] >= d["decode_splits"]
    # the probe names held groups: splits were decided by the lookup on SGLang's req_pool_indices_cpu
    assert d["slot_splits"] >= 1
    # no penalties in this batch: held-back requests were kept as a filtered copy (not rebuilt), and the
    # outputs above are still token-identical
    assert d["copy_splits"] >= 1
    assert d["policy_errors"] >= 1 and d["fallback_steps"] >= d["policy_errors"]  # injected, survived
    assert servers["probe"].is_healthy()
    # the same counters travel in the published load messages, with the instance's identity
    assert msgs, "no load message received"
    last = msgs[-1]
    assert last.iid == 3 and last.policy == "plugin_probe" and last.kv_capacity > 1
    assert last.counters["parked"] >= 1 and max(m.seq for m in msgs) > min(m.seq for m in msgs)


def test_server_survives_injected_errors_and_keeps_serving(servers, stock_outputs):
    before = read_stats(servers["probe_stats"])
    outs = run_concurrently(servers["probe"])  # errors keep being injected every 5th policy call
    after = wait_stats(servers["probe_stats"], lambda c: c["finished"] - before["finished"] >= N_REQ)
    assert outs == stock_outputs
    assert after["policy_errors"] > before["policy_errors"]


def test_cascade_plugin_serves_concurrent_requests_token_identical(servers, stock_outputs):
    path = servers["cascade_stats"]
    before = read_stats(path)
    outs = run_concurrently(servers["cascade"])
    after = wait_stats(path, lambda c: c["finished"] - before["finished"] >= N_REQ)
    assert outs == stock_outputs
    assert after["finished"] - before["finished"] == N_REQ and after["plans"] > before["plans"]
    assert after["policy_errors"] == 0
    # membership changes (arrivals, admissions, prefills joining, finishes) were applied to the views
    # incrementally; full rebuilds only where SGLang's lists disagreed in size (e.g. a chunked prefill)
    d = {k: after[k] - before[k] for k in after}
    print("cascade counters:", {k: v for k, v in d.items() if v})
    assert d["view_updates"] >= 1 and d["view_updates"] >= d["view_rebuilds"]
    # finished requests were found from the pool rows SGLang freed while processing the result, not by
    # scanning every result batch (scans: unknown rows, and the periodic check)
    assert d["finished_by_row"] >= 1 and d["finish_scans"] < d["plans"]
