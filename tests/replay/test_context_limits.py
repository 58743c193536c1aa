"""SGLang 0.5.23's input-length abort: a prompt of >= context - 6 tokens is not rejected but aborted after a
1-token stand-in prefill (scheduler ``validate_input_length``), which a client counting tokens took for a fast
success (the Mooncake fidelity slice: 14 of 120 prompts clipped to 4,095 tokens "ran" in ~15 ms). The slices
are clipped below that limit, and the replay client reports an aborted request as failed."""

from __future__ import annotations

import asyncio

from sglang_cascade.core.request_limits import max_input_tokens, max_req_len, max_total_tokens
from sglang_cascade.core.traces import TraceRequest
from sglang_cascade.replay.client import ReplayConfig, replay_trace
from sglang_cascade.replay.lengths import clip_to_context
from sglang_cascade.router.local import serve_app
from sglang_cascade.testing.fake_worker import FakeWorker, FakeWorkerConfig


def test_clip_keeps_prompts_below_sglangs_input_limit_and_outputs_within_max_req_len():
    assert (max_input_tokens(4096), max_total_tokens(4096)) == (4089, 4094)
    assert max_req_len(4096, 1000) == 999 and max_input_tokens(4096, 1000) == 993  # a pool smaller than the context
    tr = [TraceRequest("a", 0.0, 5000, 3), TraceRequest("b", 0.0, 4089, 9), TraceRequest("c", 0.0, 100, 50)]
    got, changed = clip_to_context(tr, 4096)
    assert [(r.prompt_len, r.output_len) for r in got] == [(4089, 3), (4089, 5), (100, 50)] and changed == 2


def test_replay_reports_an_input_length_abort_as_a_failure():
    async def run():
        served = await serve_app(FakeWorker(FakeWorkerConfig(time_scale=0.0, context_length=300)).app)
        try:
            # one output token, as the old clip left such prompts: a token count alone looks like success
            trace = [TraceRequest("long", 0.0, 294, 1), TraceRequest("ok", 0.0, 293, 4)]
            prompts = [[10 + i % 50 for i in range(r.prompt_len)] for r in trace]
            return await replay_trace(trace, prompts, ReplayConfig(served.url))
        finally:
            await served.stop()

    long, ok = asyncio.run(run())
    assert not long.ok and "aborted by the server" in long.error and "exceeds the maximum allowed length" in long.error
    assert ok.ok and ok.output_len == 4
