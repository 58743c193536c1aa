"""The simulator runs the router's hold queue (``cascade:pool_hold``, RouterPolicy.release / release_at): a held
request waits in the router, its TTFT counting from its arrival, and is sent to a pool member when that member's
outstanding prefill reaches its first token; a short pool prompt then overtakes long ones that arrived first."""

from __future__ import annotations

from sglang_cascade.core.traces import TraceRequest
from sglang_cascade.sim import SimConfig, simulate

POOL = "cascade:counts=1,prefill_pool=2,refine=0,balance=0"
# two pool members; four 60K-token prompts, then a 9K-token one (every prompt >= 8192 tokens goes to the pool)
REQS = [TraceRequest(f"big{k}", 0.01 * k, 60_000, 20) for k in range(4)] + [TraceRequest("small", 0.05, 9_000, 20)]


def _run(hold: int):
    cfg = SimConfig(model="llama-3.1-8b", gpu="h100", instances=3, router=f"{POOL},pool_hold={hold}")
    res = simulate(REQS, cfg)
    assert len(res.requests) == len(REQS) and all(r.output_len == r.target for r in res.requests)
    return {r.rid: r for r in res.requests}


def test_a_short_pool_prompt_overtakes_long_ones_held_before_it():
    held, sent = _run(1), _run(0)
    ttft = {
        k: {rid: r.first_token_time - r.arrival for rid, r in d.items()} for k, d in (("held", held), ("sent", sent))
    }
    big = ttft["held"]["big0"]  # one 60K prefill alone (sent at once, the member's next prompt shares its last chunk)
    # sent at once, "small" queues behind two long prefills on its member; held, it goes first when one ends
    assert ttft["sent"]["small"] > 1.9 * big, ttft
    assert big < ttft["held"]["small"] < 1.3 * big, ttft
    assert held["small"].first_token_time < min(held["big2"].first_token_time, held["big3"].first_token_time)
    assert all(ttft["held"][f"big{k}"] >= 0.99 * big for k in range(4))  # held time counts: TTFT from arrival
    assert all(r.migrations == 1 and r.instance == 0 for r in held.values())  # prefilled in the pool, decoded on 0
