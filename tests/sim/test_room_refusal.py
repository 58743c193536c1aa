"""A KV move whose destination has no room is refused and asked again ROOM_RETRY_TOKENS later, in the simulator as
in the live router (router/session.py ``_refused``: the import answers out_of_kv before the source stops)."""

from __future__ import annotations

from sglang_cascade.core.decisions import ROOM_RETRY_TOKENS
from sglang_cascade.core.traces import TraceRequest
from sglang_cascade.policies.cascade import CascadeRouter
from sglang_cascade.sim import SimConfig, simulate


def test_a_move_to_a_full_destination_is_refused_then_asked_again_room_retry_tokens_later(monkeypatch):
    asked: list[int] = []
    migrate = CascadeRouter.migrate

    def spy(self, req, src, cluster, now):
        if req.rid == "mover":
            asked.append(req.length)
        return migrate(self, req, src, cluster, now)

    monkeypatch.setattr(CascadeRouter, "migrate", spy)
    # a 3500-token prompt decoding 500 tokens holds stage 1's one instance (a 5000-token pool); the mover crosses the
    # 2000-token bound on stage 0 meanwhile, and its 2000 tokens of KV do not fit beside it
    trace = [TraceRequest("filler", 0.0, 3500, 500), TraceRequest("mover", 2.0, 1950, 300)]
    cfg = SimConfig(
        model="tiny-llama",
        gpu="cpu-engine",
        instances=2,
        kv_capacity=5000,
        router="cascade:bounds=2000,counts=1/1,refine=0,balance=0,spill=0,mode=kv_transfer",
        scheduler="sglang",
        prefix_cache_block=0,
    )
    res = simulate(trace, cfg)
    mover = next(r for r in res.requests if r.rid == "mover")
    assert mover.output_len == 300 and mover.instance == 0 and res.metrics["migrations_aborted"] == len(asked)
    assert len(asked) >= 2 and asked[0] == 2000
    assert all(b - a >= ROOM_RETRY_TOKENS for a, b in zip(asked, asked[1:])), asked
