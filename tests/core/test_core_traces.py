from __future__ import annotations

import json

import numpy as np
import pytest

from sglang_cascade.core.traces import BUILTIN, TraceError, detect_format, load_trace, trace_rate


def test_builtin_azure_conv_keeps_real_times_and_lengths():
    reqs = load_trace("azure_conv")
    assert len(reqs) == 19366
    assert reqs[0].arrival == 0.0
    arr = np.array([r.arrival for r in reqs])
    assert np.all(np.diff(arr) >= 0)
    # The trace spans about one hour.
    assert 3000 < arr[-1] < 3700
    assert all(r.prompt_len >= 1 and r.output_len >= 1 for r in reqs)


def test_rate_and_rate_scale_rescale_arrivals():
    base = load_trace("azure_code", num_requests=500)
    fast = load_trace("azure_code", num_requests=500, rate_scale=2.0)
    assert fast[-1].arrival == pytest.approx(base[-1].arrival / 2.0)
    fixed = load_trace("azure_code", num_requests=500, rate=7.0)
    assert trace_rate(fixed) == pytest.approx(7.0)
    # lengths are untouched by time scaling
    assert [r.prompt_len for r in base] == [r.prompt_len for r in fast]


@pytest.mark.parametrize("name", ["sharegpt", "arxiv"])
def test_length_tables_are_sampled_with_poisson_arrivals(name):
    a = load_trace(name, num_requests=4000, rate=10.0, seed=3)
    b = load_trace(name, num_requests=4000, rate=10.0, seed=3)
    c = load_trace(name, num_requests=4000, rate=10.0, seed=4)
    assert [(r.arrival, r.prompt_len) for r in a] == [(r.arrival, r.prompt_len) for r in b]
    assert [r.prompt_len for r in a] != [r.prompt_len for r in c]
    gaps = np.diff([r.arrival for r in a])
    assert np.mean(gaps) == pytest.approx(0.1, rel=0.1)
    # exponential gaps: coefficient of variation near 1
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, rel=0.15)


def test_gamma_arrivals_have_requested_burstiness():
    reqs = load_trace("sharegpt", num_requests=5000, rate=5.0, arrival_process="gamma", burstiness_cv=3.0)
    gaps = np.diff([r.arrival for r in reqs])
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(3.0, rel=0.2)


def test_duration_and_max_context_filters():
    reqs = load_trace("azure_conv", duration=60.0)
    assert reqs and max(r.arrival for r in reqs) <= 60.0
    short = load_trace("azure_conv", num_requests=2000, max_context=1024)
    assert all(r.prompt_len + r.output_len <= 1024 for r in short)


def test_mooncake_and_generic_formats(tmp_path):
    mc = tmp_path / "mc.jsonl"
    mc.write_text(
        "\n".join(
            json.dumps({"timestamp": t, "input_length": 10 + t, "output_length": 5, "hash_ids": [1, 2]})
            for t in (0, 1000, 3000)
        )
    )
    reqs = load_trace(str(mc))
    assert [r.arrival for r in reqs] == [0.0, 1.0, 3.0]
    assert reqs[2].prompt_len == 3010 and reqs[0].hash_ids == [1, 2]
    gen = tmp_path / "g.csv"
    gen.write_text("arrival,prompt_len,output_len\n0.5,10,3\n0.1,20,4\n")
    reqs = load_trace(str(gen))
    assert [(r.arrival, r.prompt_len) for r in reqs] == [(0.0, 20), (0.4, 10)]
    gl = tmp_path / "g.jsonl"
    gl.write_text('{"prompt_len": 5, "output_len": 2}\n{"prompt_len": 7, "output_len": 9}\n')
    reqs = load_trace(str(gl), num_requests=10, rate=2.0)
    assert len(reqs) == 10 and {r.prompt_len for r in reqs} <= {5, 7}


def test_format_detection_and_clear_errors(tmp_path):
    assert detect_format("TIMESTAMP,ContextTokens,GeneratedTokens\n") == "azure"
    assert detect_format("num_prefill_tokens,num_decode_tokens,pd_ratio\n") == "lengths"
    assert detect_format("arrived_at,num_prefill_tokens,num_decode_tokens\n") == "vidur"
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(TraceError, match="unrecognized trace columns"):
        load_trace(str(bad))
    broken = tmp_path / "broken.csv"
    broken.write_text("prompt_len,output_len\n10,x\n")
    with pytest.raises(TraceError, match="row 2"):
        load_trace(str(broken))
    with pytest.raises(TraceError, match="not found"):
        load_trace(str(tmp_path / "missing.csv"))
    assert set(BUILTIN) == {"azure_conv", "azure_code", "sharegpt", "arxiv", "mooncake"}


def test_builtin_mooncake_is_the_long_context_trace():
    reqs = load_trace("mooncake")
    assert len(reqs) == 3993
    prompts = sorted(r.prompt_len for r in reqs)
    assert prompts[-1] == 191378 and 15000 < sum(prompts) / len(prompts) < 15700
    assert reqs[0].arrival == 0.0 and 1000 < reqs[-1].arrival < 1050  # seconds, from the ms timestamps
    assert all(r.hash_ids for r in reqs[:100])  # prefix block hashes kept (cache_aware routing)
