"""SGLang's --schedule-policy orders (policies/sglang_order.py) in the `sglang` and `cascade` schedulers, checked
against SGLang's own SchedulePolicy functions where SGLang is installed."""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.traces import TraceRequest
from sglang_cascade.core.views import InstanceView, Phase, RequestView
from sglang_cascade.policies import sglang_order as so
from sglang_cascade.policies.admission import WaitQueues
from sglang_cascade.policies.registry import PolicyContext, make_instance_scheduler
from sglang_cascade.sim.cluster import simulate
from sglang_cascade.sim.config import SimConfig


def _req(rid: str, prompt: int, arrival: float = 0.0, output: int = 0) -> RequestView:
    return RequestView(rid=rid, arrival=arrival, prompt_len=prompt, output_len=output, instance=0)


def test_shortest_prefill_first_sorts_by_work_and_keeps_queue_order_on_ties():
    q = [_req("a", 900), _req("b", 40), _req("c", 900), _req("d", 40, output=5), _req("e", 45)]
    assert [r.rid for r in so.ordered(so.SPF, q)] == ["b", "d", "e", "a", "c"]  # d: 45 tokens to recompute
    assert so.ordered(so.FCFS, q) is q and so.ordered(so.LPM, q) is q  # no copy of a long queue


def test_hrrn_puts_the_request_that_waited_longest_for_its_size_first():
    q = [_req("big", 8000), _req("small", 100), _req("new", 50)]
    queued_at = {"big": 0, "small": 0, "new": 1000}
    # waited 1000 tokens: small 1000/100 = 10, big 1000/8000 = 0.125, new 0
    assert [r.rid for r in so.ordered(so.HRRN, q, 1000, queued_at)] == ["small", "big", "new"]
    long_q = [_req(f"r{i:03d}", 1000 - i) for i in range(so.WAITING_QUEUE_PREFIX_MATCH_MAX + 1)]
    assert so.ordered(so.HRRN, long_q, 10, {}) == long_q  # above 128 waiting: not sorted (SGLang's fallback)


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="schedule_policy"):
        so.check_policy("lof")
    with pytest.raises(ValueError, match="schedule_policy"):
        make_instance_scheduler("sglang:schedule_policy=random", PolicyContext(cost_model=_cm()))


def test_chunk_limit_reserves_room_for_shorter_waiting_requests():
    chunked = _req("long", 5000)
    chunked.kv_tokens = 1100  # 3900 left
    order = [_req("s1", 300), _req("s2", 200), _req("big", 4000)]
    # 300 + 200 reserved (the 4000-token one is not shorter than what is left): 4096 - 500
    assert so.chunk_limit(chunked, order, 4096, 1) == 3596
    assert so.chunk_limit(chunked, order, 4096, 64) == (4096 - 320 - 256) // 64 * 64
    assert so.chunk_limit(chunked, [_req("x", 3900)], 4096, 1) is None  # nothing shorter is waiting
    assert so.chunk_limit(chunked, order, 100, 64) is None  # budget < 2 pages


def _sglang_req(rid: str, prompt: int, entry: float, prefix: int = 0, output: int = 0):
    return SimpleNamespace(
        rid=rid,
        origin_input_ids=[0] * prompt,
        output_ids=[0] * output,
        num_matched_prefix_tokens=0,
        prefix_len=prefix,
        full_untruncated_fill_ids=[0] * (prompt + output),
        time_stats=SimpleNamespace(wait_queue_entry_time=entry),
        arrival_processed_tokens=0,
    )


def test_same_order_and_chunk_cap_as_sglang():
    """SGLang 0.5.23's own sort and chunk cap on the same queue give what sglang_order gives."""
    sp = pytest.importorskip("sglang.srt.managers.schedule_policy")
    lens = [700, 30, 4000, 30, 120, 2500, 64]
    real = [_sglang_req(f"r{i}", n, float(i)) for i, n in enumerate(lens)]
    ours = [_req(f"r{i}", n, float(i)) for i, n in enumerate(lens)]
    sp.SchedulePolicy._sort_by_shortest_prefill(real, set())
    assert [r.rid for r in real] == [r.rid for r in so.ordered(so.SPF, ours)]

    fake_policy = SimpleNamespace(
        policy=sp.CacheAwarePolicy.SHORTEST_PREFILL_FIRST,
        _shortest_prefill_work=sp.SchedulePolicy._shortest_prefill_work,
    )
    chunked_real = _sglang_req("c", 6000, 0.0, prefix=2000)
    chunked = _req("c", 6000)
    chunked.kv_tokens = 2000
    for budget, page in [(4096, 1), (4096, 16), (2048, 64), (512, 1), (64, 64)]:
        want = sp.SchedulePolicy.shortest_prefill_chunk_limit(fake_policy, chunked_real, real, budget, page)
        assert so.chunk_limit(chunked, so.ordered(so.SPF, ours), budget, page) == want, (budget, page)

    processed = 5000
    entered = {"r0": 0, "r1": 4990, "r2": 100, "r3": 5000, "r4": 3000, "r5": 0, "r6": 4000}
    real_h = [_sglang_req(f"r{i}", n, float(i)) for i, n in enumerate(lens)]
    for r in real_h:
        r.arrival_processed_tokens = entered[r.rid]
    sp.SchedulePolicy._sort_by_hrrn(real_h, set(), processed)
    assert [r.rid for r in real_h] == [r.rid for r in so.ordered(so.HRRN, ours, processed, entered)]


def _cm():
    return CostModel.for_names("llama-3-8b", "h100")


def _view(waiting: list[RequestView], chunk: int = 4096) -> InstanceView:
    v = InstanceView(iid=0, kv_capacity=200_000, max_prefill_tokens=chunk, max_running=64)
    for r in waiting:
        r.phase = Phase.WAITING
        v.waiting.append(r)
    return v


@pytest.mark.parametrize("policy", ["fcfs", "shortest-prefill-first"])
def test_sglang_scheduler_admits_in_the_engines_order(policy):
    sched = make_instance_scheduler("sglang", PolicyContext(cost_model=_cm(), schedule_policy=policy))
    v = _view([_req("long", 6000, 0.0), _req("short", 100, 0.1)])
    plan = sched.schedule(v, now=1.0)
    got = [(c.req.rid, c.tokens) for c in plan.prefill]
    if policy == "fcfs":  # the long prompt takes the whole chunk; the short one waits a forward
        assert got == [("long", 4096)]
    else:
        assert got == [("short", 100), ("long", 3996)]


def test_sglang_scheduler_caps_the_chunked_request_for_shorter_arrivals():
    """shortest-prefill-first: the in-progress chunk shrinks so that a shorter arrival prefills beside it;
    FCFS gives the chunk everything and the arrival becomes the next chunked request."""
    got = {}
    for policy in ("fcfs", "shortest-prefill-first"):
        sched = make_instance_scheduler(f"sglang:schedule_policy={policy}", PolicyContext(cost_model=_cm()))
        long = _req("long", 8000, 0.0)
        v = _view([long])
        first = sched.schedule(v, now=0.0)
        assert [(c.req.rid, c.tokens) for c in first.prefill] == [("long", 4096)]
        long.kv_tokens = 4096  # the driver applied the chunk; 3904 left
        v.kv_used = 4096
        v.waiting.append(_req("short", 500, 0.5))
        second = sched.schedule(v, now=0.6)
        got[policy] = [(c.req.rid, c.tokens) for c in second.prefill]
    assert got["fcfs"] == [("long", 3904), ("short", 192)]
    assert got["shortest-prefill-first"] == [("long", 3596), ("short", 500)]


def _burst() -> list[TraceRequest]:
    # one long prompt ahead of many short ones, repeatedly: FCFS makes the short ones wait behind it
    out = []
    for k in range(6):
        t = 2.0 * k
        out.append(TraceRequest(f"L{k}", t, 16000, 8))
        out += [TraceRequest(f"s{k}_{i}", t + 0.001 * (i + 1), 200, 8) for i in range(10)]
    return out


@pytest.mark.parametrize("scheduler", ["sglang", "cascade"])
def test_shortest_prefill_first_cuts_mean_ttft_in_the_simulator(scheduler):
    res = {}
    for policy in ("fcfs", "shortest-prefill-first"):
        cfg = SimConfig(
            scheduler=scheduler, schedule_policy=policy, max_prefill_tokens=2048, max_new_tokens_from_trace=True
        )
        res[policy] = simulate(_burst(), cfg)
    for r in res.values():
        assert len(r.requests) == len(_burst()) and all(x.output_len == 8 for x in r.requests)
    ttft = {p: statistics.fmean(x.first_token_time - x.arrival for x in r.requests) for p, r in res.items()}
    assert ttft["shortest-prefill-first"] < 0.6 * ttft["fcfs"]
    short = {
        p: max(x.first_token_time - x.arrival for x in r.requests if x.rid.startswith("s")) for p, r in res.items()
    }
    assert short["shortest-prefill-first"] < short["fcfs"]


def test_cascade_wait_queue_orders_new_arrivals_by_prefill_work():
    q = WaitQueues(holdfirst=True, shortest_first=True)
    for r in (_req("a", 900, 0.0), _req("b", 40, 0.1), _req("c", 40, 0.2), _req("d", 300, 0.3)):
        q.push_new(r)
    retracted = _req("x", 50, 0.0, output=10)
    q.push_retracted(retracted)  # KV holders still go first
    q.discard("c")
    assert [q.pop().rid for _ in range(len(q))] == ["x", "b", "d", "a"]
    fcfs = WaitQueues(holdfirst=True)
    for r in (_req("a", 900, 0.0), _req("b", 40, 0.1)):
        fcfs.push_new(r)
    assert [fcfs.pop().rid for _ in range(2)] == ["a", "b"]


@pytest.mark.parametrize("policy,shortest", [("fcfs", False), ("hrrn", False), ("shortest-prefill-first", True)])
def test_cascade_scheduler_follows_the_engines_policy(policy, shortest):
    sched = make_instance_scheduler("cascade", PolicyContext(cost_model=_cm(), schedule_policy=policy))
    assert sched.waitq.shortest_first is shortest
    forced = make_instance_scheduler(
        "cascade:prefill_order=fcfs", PolicyContext(cost_model=_cm(), schedule_policy=policy)
    )
    assert forced.waitq.shortest_first is False


@pytest.mark.parametrize("policy", ["fcfs", "shortest-prefill-first"])
def test_plugin_driver_reads_the_servers_schedule_policy(policy):
    from sglang_cascade.plugin.config import PluginConfig
    from sglang_cascade.plugin.driver import CascadeDriver

    sched = SimpleNamespace(
        token_to_kv_pool_allocator=SimpleNamespace(size=50_000),
        max_total_num_tokens=50_000,
        max_prefill_tokens=4096,
        max_running_requests=64,
        server_args=SimpleNamespace(schedule_policy=policy),
    )
    d = CascadeDriver.for_scheduler(sched, PluginConfig(scheduler="sglang"))
    assert d.policy.policy == policy
    d2 = CascadeDriver.for_scheduler(sched, PluginConfig(scheduler="cascade"))
    assert d2.policy.waitq.shortest_first is (policy == "shortest-prefill-first")


def test_simulate_cli_and_fidelity_configs_carry_the_policy():
    import argparse

    from sglang_cascade.replay import fidelity as fid
    from sglang_cascade.sim.cli_simulate import add_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--trace", "sharegpt", "--schedule-policy", "hrrn"])
    assert config_from_args(args, "round_robin", "sglang").schedule_policy == "hrrn"
    cfg = fid.FidelityConfig("s", server_args=["--schedule-policy", "shortest-prefill-first"])
    assert fid.sim_config(cfg, "tiny-llama", "cpu-engine", 2.0, 0.1, 0.5).schedule_policy == "shortest-prefill-first"
    assert fid.sim_config(fid.FidelityConfig("d"), "tiny-llama", "cpu-engine", 2.0, 0.1, 0.5).schedule_policy == "fcfs"
