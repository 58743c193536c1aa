"""SimConfig.stage_first_kv (the live router's KV staging, plugin/kv_stage.py): a request that leaves its instance
right after its first token (a prefill-pool member's long prompt) moves as its prefill ends instead of waiting for
the member's next iteration (here: a chunk of another long prompt); not with the overlap loop's result lag (the
plugin captures the KV only after the next forward there), and not for a request that moves later."""

from __future__ import annotations

from sglang_cascade.core.traces import TraceRequest
from sglang_cascade.sim import SimConfig, simulate

POOL = "cascade:counts=1,prefill_pool=1,pool_hold=0"  # b sent at once: it queues behind a on the member
# "b" arrives while "a" is being prefilled: the pool member's iteration after a's last chunk is a chunk of b's
REQS = [TraceRequest("a", 0.0, 12000, 40), TraceRequest("b", 0.01, 30000, 40)]


def _run(stage: bool, router: str = POOL, reqs=REQS, lag: bool | None = None):
    cfg = SimConfig(model="llama-3.1-8b", gpu="h100", instances=2, router=router, stage_first_kv=stage, result_lag=lag)
    res = simulate(reqs, cfg)
    return res.metrics, {r.rid: r for r in res.requests}


def test_a_staged_move_does_not_wait_for_the_next_chunk():
    m1, staged = _run(True)
    m0, unstaged = _run(False)
    assert m1["staged_moves"] == 2 and "staged_moves" not in m0
    assert m1["migrations"] == m0["migrations"] == 2
    for r in (staged["a"], unstaged["a"]):
        assert r.instance == 0 and r.output_len == 40  # decoded on the decode side
    gap = {k: d["a"].finish_time - d["a"].first_token_time for k, d in (("staged", staged), ("unstaged", unstaged))}
    assert gap["unstaged"] - gap["staged"] > 0.1, gap  # b's chunk (8B, H100: a few tenths of a second) saved
    assert staged["a"].first_token_time == unstaged["a"].first_token_time  # the prefill itself is unchanged


def test_no_staged_move_under_result_lag_or_for_a_later_move():
    m_lag, lagged = _run(True, lag=True)
    m_off, off = _run(False, lag=True)
    assert "staged_moves" not in m_lag and m_lag["migrations"] == 2
    assert lagged["a"].finish_time == off["a"].finish_time
    later = [TraceRequest("s", 0.0, 100, 300)]  # moves at its stage bound (length 200), not at its first token
    m, done = _run(True, router="cascade:bounds=200,counts=1/1,refine=0,balance=0", reqs=later)
    assert m["migrations"] == 1 and "staged_moves" not in m and done["s"].instance == 1


def test_a_moved_prompt_is_cached_where_it_lands_and_its_next_turn_is_prefilled_there():
    """A KV move's import puts the prompt in the destination's radix cache (sim: ``_land``); the conversation's next
    turn, a long prompt that extends it by a few hundred tokens, is prefilled on that decode instance
    (``pool_cached``) from its cache, no pool, no move."""
    first = list(range(1, 25))  # 24 blocks of 512 tokens
    reqs = [
        TraceRequest("t1", 0.0, 24 * 512, 20, hash_ids=first),
        TraceRequest("t2", 30.0, 25 * 512, 20, hash_ids=first + [99]),
    ]
    m, done = _run(True, reqs=reqs)
    assert done["t1"].migrations == 1 and done["t1"].instance == 0  # pooled, moved to the decode side
    assert done["t2"].migrations == 0 and done["t2"].instance == 0  # prefilled where its first turn decoded
    assert m["prefix_hit_tokens"] >= 24 * 512 - 512  # instance 0 holds t1's blocks only from the import
    m_off, off = _run(True, router=POOL + ",pool_cached=0", reqs=reqs)
    assert off["t2"].migrations == 1 and m_off["migrations"] == 2 and m["migrations"] == 1  # pooled, moved again
