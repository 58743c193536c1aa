"""SGLang's --enable-mixed-chunk in the simulator (SimConfig.mixed_chunk, PolicyContext.mixed_chunk).

SGLang 0.5.23 without the flag (its default) runs a prefill batch as a forward of its own: a scheduler that
plans prefill chunks and decode steps in one iteration (``cascade`` does) gets its decode part one forward
later, in the simulator as on a live server running the plugin. With the flag the running batch rides every
prefill forward (``Scheduler._get_new_batch_prefill_raw`` -> ``mix_with_running``), and the ``sglang``
scheduler plans that too, its prefill budget short by one token per decode row (``PrefillAdder``'s
``num_mixed_decode_tokens``).
"""

from __future__ import annotations

import pytest

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.traces import TraceRequest
from sglang_cascade.core.views import InstanceView, Phase, RequestView
from sglang_cascade.policies.registry import PolicyContext, make_instance_scheduler
from sglang_cascade.sim.cluster import simulate
from sglang_cascade.sim.config import SimConfig


def _trace() -> list[TraceRequest]:
    # long decodes with prompts arriving while they run: every arrival's prefill meets a running batch
    keepers = [TraceRequest(f"k{i}", 0.0, 64, 300) for i in range(4)]
    arrivals = [TraceRequest(f"a{i}", 0.05 + 0.08 * i, 400, 20) for i in range(12)]
    return keepers + arrivals


def _run(scheduler: str, mixed: bool):
    cfg = SimConfig(scheduler=scheduler, mixed_chunk=mixed, record_schedule=True, max_new_tokens_from_trace=True)
    return simulate(_trace(), cfg)


def _mixed_iterations(res) -> int:
    return sum(1 for it in res.schedules[0] if it.prefill and it.decode)


@pytest.mark.parametrize("scheduler", ["cascade", "sglang"])
def test_without_mixed_chunk_a_prefill_forward_runs_alone(scheduler):
    res = _run(scheduler, mixed=False)
    assert len(res.requests) == len(_trace())
    assert _mixed_iterations(res) == 0
    assert sum(1 for it in res.schedules[0] if it.prefill) >= 12  # the arrivals were prefilled...
    assert (
        sum(1 for it in res.schedules[0] if it.decode) >= 299
    )  # ... and every keeper token after its first had a decode forward


def test_cascade_plans_mixed_iterations_the_default_engine_cannot_run():
    """The cascade scheduler does plan prefill + decode together (EcoServe's split queues): on an engine with
    mixed chunks they run as one forward, and the keepers decode through the arrivals' prefills."""
    mixed, alone = _run("cascade", mixed=True), _run("cascade", mixed=False)
    assert _mixed_iterations(mixed) >= 10
    tpot = {r.rid: r for r in mixed.requests}, {r.rid: r for r in alone.requests}
    # a keeper's decode waits for every prefill forward without mixed chunks: it finishes later
    for rid in ("k0", "k3"):
        assert tpot[0][rid].finish_time < tpot[1][rid].finish_time


def test_sglang_scheduler_mixes_its_running_batch_when_the_engine_does():
    res = _run("sglang", mixed=True)
    its = res.schedules[0]
    mixed = [it for it in its if it.prefill and it.decode]
    assert len(mixed) >= 10
    # the whole running batch rides the prefill forward (mix_with_running): every keeper still decoding
    keepers = [r for r in res.requests if r.rid.startswith("k")]
    all_in = max(r.first_token_time for r in keepers)
    first_done = min(r.finish_time for r in keepers)
    early = [it for it in mixed if it.start >= all_in and it.start + it.duration < first_done]
    assert early
    for it in early:
        assert {"k0", "k1", "k2", "k3"} <= set(it.decode)
        assert not {rid for rid, _ in it.prefill} & set(it.decode)


def _view(running: int, waiting_prompt: int) -> InstanceView:
    v = InstanceView(iid=0, kv_capacity=100_000, max_prefill_tokens=256, max_running=64)
    for i in range(running):
        r = RequestView(rid=f"r{i}", arrival=0.0, prompt_len=10, phase=Phase.RUNNING, instance=0)
        r.kv_tokens = 11
        r.output_len = 1
        v.running.append(r)
        v.kv_used += r.kv_tokens
    w = RequestView(rid="w", arrival=1.0, prompt_len=waiting_prompt, phase=Phase.WAITING, instance=0)
    v.waiting.append(w)
    return v


@pytest.mark.parametrize("mixed", [False, True])
def test_sglang_prefill_budget_is_short_by_the_decode_rows(mixed):
    """PrefillAdder(num_mixed_decode_tokens=running_bs): with 6 decode rows riding the forward a 256-token
    chunk budget leaves 250 prompt tokens; without mixed chunks the whole 256 and no decode rows."""
    cm = CostModel.for_names("llama-3-8b", "h100")
    sched = make_instance_scheduler("sglang", PolicyContext(cost_model=cm, mixed_chunk=mixed))
    plan = sched.schedule(_view(running=6, waiting_prompt=1000), now=1.0)
    assert [c.tokens for c in plan.prefill] == [250 if mixed else 256]
    assert len(plan.decode) == (6 if mixed else 0)


def test_option_overrides_the_deployment():
    cm = CostModel.for_names("llama-3-8b", "h100")
    sched = make_instance_scheduler("sglang:mixed_chunk=0", PolicyContext(cost_model=cm, mixed_chunk=True))
    plan = sched.schedule(_view(running=6, waiting_prompt=1000), now=1.0)
    assert plan.decode == [] and [c.tokens for c in plan.prefill] == [256]


@pytest.mark.parametrize("flags,expected", [([], False), (["--mixed-chunk"], True)])
def test_simulate_cli_flag(flags, expected):
    import argparse

    from sglang_cascade.sim.cli_simulate import add_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--trace", "sharegpt", *flags])
    assert config_from_args(args, "round_robin", "cascade").mixed_chunk is expected


@pytest.mark.parametrize("mixed", [False, True])
def test_plugin_driver_tells_the_policy_what_the_server_runs(mixed):
    """The live driver builds the policy with the server's mixed-chunk setting (Scheduler.is_mixed_chunk), as
    the simulator does from SimConfig.mixed_chunk: the same policy object sees the same engine."""
    from types import SimpleNamespace

    from sglang_cascade.plugin.config import PluginConfig
    from sglang_cascade.plugin.driver import CascadeDriver

    sched = SimpleNamespace(
        token_to_kv_pool_allocator=SimpleNamespace(size=50_000),
        max_total_num_tokens=50_000,
        max_prefill_tokens=256,
        max_running_requests=64,
        is_mixed_chunk=mixed,
    )
    d = CascadeDriver.for_scheduler(sched, PluginConfig(scheduler="sglang"))
    assert d.policy.mixed is mixed
    plan = d.policy.schedule(_view(running=6, waiting_prompt=1000), now=1.0)
    assert len(plan.decode) == (6 if mixed else 0)
