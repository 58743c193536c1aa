"""The simulator makes no move the live router refuses: a continuation (prompt + generated) past SGLang's
input limit (context - 7, ``core.request_limits``) would be aborted by the destination (router/session.py)."""

from __future__ import annotations

import sglang_cascade.sim.cluster as cluster
from sglang_cascade.core.request_limits import max_input_tokens
from sglang_cascade.core.traces import TraceRequest
from sglang_cascade.sim import SimConfig


def _migrations(prompt: int, bound: int, limit: int | None = None) -> tuple[int, int]:
    trace = [TraceRequest("r0", 0.0, prompt, 6)]
    cfg = SimConfig(
        model="tiny-llama",
        gpu="cpu-engine",
        instances=2,
        router="cascade",
        router_options={"bounds": str(bound), "counts": "1/1", "mode": "recompute"},
        max_new_tokens_from_trace=True,
    )
    sim = cluster.build(cfg, trace)
    assert sim.input_limit == max_input_tokens(4096) == 4089  # tiny-llama: 4,096-token context
    if limit is not None:
        sim.input_limit = limit
    sim.run(trace)
    assert len(sim.finished) == 1
    return sim.migrations, sim.finished[0].migrations


def test_a_move_past_the_input_limit_is_not_made():
    assert _migrations(900, 904) == (1, 1)  # inside the limit: moves near its bound
    assert _migrations(900, 904, limit=899) == (0, 0)  # its continuation would pass the limit: it stays
