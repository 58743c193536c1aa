"""A recompute move with SGLang's result lag (SimConfig.result_lag, the cpu-engine profile's default): the live
router sees the token that crosses a request's bound only after the source's next forward, so the re-sent
request reaches its destination then, not at the boundary where the token was computed. Before this rule the
destination could finish a moved request before its first token was stamped (finish < first token)."""

from sglang_cascade.core.traces import TraceRequest
from sglang_cascade.sim.cluster import simulate
from sglang_cascade.sim.config import SimConfig

ROUTER = "cascade:bounds=3000,counts=1/1,mode=recompute"


def _trace() -> list[TraceRequest]:
    # growers start below the 3,000-token bound and cross it while long prompts keep arriving on their stage:
    # the forward after a crossing is often a long prefill, and the far stage is idle
    growers = [TraceRequest(f"g{i}", 1.7 * i, 2900, 160) for i in range(4)]
    prompts = [TraceRequest(f"p{i}", 0.35 + 0.7 * i, 2500, 2) for i in range(10)]
    return sorted(growers + prompts, key=lambda r: r.arrival)


def _run(lag: bool):
    cfg = SimConfig(
        model="tiny-llama",
        gpu="cpu-engine",
        instances=2,
        router=ROUTER,
        scheduler="sglang",
        max_new_tokens_from_trace=True,
        record_schedule=True,
        result_lag=lag,
    )
    return simulate(_trace(), cfg)


def _moves(res):
    """Per moved request: (end of its last iteration on the source, end of the source's next iteration or
    None, start of its re-prefill on the destination)."""
    out = {}
    for src, sched in enumerate(res.schedules):
        for k, it in enumerate(sched):
            for rid in it.decode + [p[0] for p in it.prefill]:
                later = [x for x in sched[k + 1 :] if rid in x.decode or any(p[0] == rid for p in x.prefill)]
                if later:
                    continue  # not its last iteration here
                dst = 1 - src
                again = [x for x in res.schedules[dst] if any(p[0] == rid for p in x.prefill) and x.start >= it.start]
                if not again:
                    continue  # it finished here
                nxt = sched[k + 1] if k + 1 < len(sched) else None
                gap_free = nxt is not None and abs(nxt.start - (it.start + it.duration)) < 1e-9
                out[rid] = (it.start + it.duration, nxt.start + nxt.duration if gap_free else None, again[0].start)
    return out


def test_moved_requests_reach_the_destination_after_the_source_s_next_forward():
    res = _run(lag=True)
    moves = _moves(res)
    assert len(moves) >= 3, moves  # the shorts crossed the bound and moved
    checked = 0
    for rid, (last_end, next_end, dst_start) in moves.items():
        assert dst_start >= last_end - 1e-9
        if next_end is not None:  # the source ran another forward right away: the token was seen at its end
            assert dst_start >= next_end - 1e-9, (rid, last_end, next_end, dst_start)
            checked += 1
    assert checked >= 1
    for r in res.requests:
        assert r.first_token_time <= r.finish_time, r.rid


def test_without_the_lag_a_move_is_re_sent_at_the_boundary():
    res = _run(lag=False)
    moves = _moves(res)
    assert moves
    assert any(next_end is not None and dst_start < next_end for _, next_end, dst_start in moves.values())
