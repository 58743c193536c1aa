"""Every driver applies the same plan the same way: the shared rules (policies/plan_rules.settle_plan) and
the one order preempt -> park -> resume.

A scripted policy returns the same plans (by request id) to each applier; after every step the running,
parked and waiting lists (membership and order) must agree. Appliers: ``testing.plan_applier`` (views
only) and the SGLang plugin's driver on real SGLang requests, batch, KV pools and radix cache (host parks
restored without recompute), and the simulator's plan step (``Simulator._apply_scheduler_plan``).
"""

from __future__ import annotations

import pytest

from sglang_cascade.core.decisions import IterationPlan
from sglang_cascade.core.interfaces import InstanceScheduler
from sglang_cascade.core.views import InstanceView, Phase, RequestView
from sglang_cascade.policies.plan_rules import running_after, settle_plan
from sglang_cascade.testing.plan_applier import apply_moves

N_REQUESTS = 4
PROMPT, OUT = 5, 3  # request i: prompt PROMPT + i tokens, OUT tokens generated (test_plugin.make_kv_env)

# one script per step: rids to preempt / park / resume; everything else that runs decodes
SCENARIOS = {
    "preempt_park_then_resume": [
        {"preempt": ["r3"], "park": ["r1"]},
        {"resume": ["r1"], "park": ["r2"]},
        {"resume": ["r2"], "preempt": ["r0"]},
    ],
    "park_resume_same_step": [{"park": ["r0", "r2"]}, {"resume": ["r2"], "park": ["r1"]}, {"resume": ["r0", "r1"]}],
    "parking_the_last_work_is_dropped": [{"park": ["r0", "r1", "r2", "r3"]}, {"park": ["r1"]}, {}],
}


class ScriptedPolicy(InstanceScheduler):
    name = "scripted"

    def __init__(self, scripts):
        self.scripts = list(scripts)

    def schedule(self, inst: InstanceView, now: float) -> IterationPlan:
        script = self.scripts.pop(0) if self.scripts else {}
        views = {r.rid: r for lst in (inst.running, inst.parked, inst.waiting) for r in lst}
        plan = IterationPlan(**{k: [views[rid] for rid in script.get(k, ())] for k in ("preempt", "park", "resume")})
        plan.decode = [r for r in running_after(plan, inst) if r.rid not in {v.rid for v in plan.preempt}]
        plan.held_groups = set()
        return plan


def _state(running, parked, waiting):
    return ([r.rid for r in running], [r.rid for r in parked], [r.rid for r in waiting])


def _apply_with_plan_applier(scripts, n):
    inst = InstanceView(iid=0, kv_capacity=96, host_kv_capacity=1000, max_prefill_tokens=8192)
    for i in range(N_REQUESTS):
        inst.running.append(
            RequestView(
                rid=f"r{i}",
                arrival=0.0,
                prompt_len=PROMPT + i,
                output_len=OUT,
                kv_tokens=PROMPT + i + OUT - 1,
                phase=Phase.RUNNING,
                instance=0,
            )
        )
    policy = ScriptedPolicy(scripts)
    states = []
    for _ in range(n):
        inst.recount_kv_used()
        plan = policy.schedule(inst, 0.0)
        settle_plan(plan, inst)
        apply_moves(inst, plan)
        states.append(_state(inst.running, inst.parked, inst.waiting))
    return states


def _apply_with_plugin(scripts, n):
    pytest.importorskip("sglang")
    pytest.importorskip("torch")
    import test_plugin as tp

    from sglang_cascade.plugin.config import PluginConfig
    from sglang_cascade.plugin.driver import CascadeDriver

    srt = _srt(tp)
    sched, _, batch, _ = tp.make_kv_env(srt, N_REQUESTS, prompt_len=PROMPT, out=OUT)
    d = CascadeDriver(PluginConfig("x", host_kv_tokens=1000), kv_capacity=96, policy=ScriptedPolicy(scripts))
    states = []
    for _ in range(n):
        d.dirty = True
        batch = d.begin_step(sched, batch, None)
        states.append(_state(batch.reqs, d.parked.values(), sched.waiting_queue))
    assert d.counters["policy_errors"] == 0 and d.counters["resumed_recompute"] == 0
    assert d.counters["idle_guard_resumes"] == 0
    return states


def _apply_with_sim(scripts, n):
    from sglang_cascade.core.costmodel import CostModel
    from sglang_cascade.policies.baselines import RoundRobinConfig, RoundRobinRouter
    from sglang_cascade.sim.cluster import Simulator
    from sglang_cascade.sim.config import SimConfig
    from sglang_cascade.sim.instance import SimRequest

    cm = CostModel.for_names("llama-3-8b", "h100")
    cfg = SimConfig(instances=1, host_kv_tokens=1000, kv_capacity=96, cost_model=cm)
    sim = Simulator(cfg, cm, [ScriptedPolicy(scripts)], RoundRobinRouter(1, RoundRobinConfig()), 96)
    inst = sim.insts[0]
    for i in range(N_REQUESTS):
        inst.view.running.append(
            SimRequest(
                rid=f"r{i}",
                arrival=0.0,
                prompt_len=PROMPT + i,
                output_len=OUT,
                kv_tokens=PROMPT + i + OUT - 1,
                phase=Phase.RUNNING,
                instance=0,
                target=100,
            )
        )
    inst.view.recount_kv_used()
    states = []
    for _ in range(n):
        sim._apply_scheduler_plan(inst, 0.0)
        states.append(_state(inst.view.running, inst.view.parked, inst.view.waiting))
    assert sim.park_rejected == 0
    return states


def _srt(tp):
    """test_plugin's ``srt`` fixture body (SGLang's plugin loading + runtime context), called directly."""
    fixture = tp.srt
    body = (
        fixture._get_wrapped_function() if hasattr(fixture, "_get_wrapped_function") else fixture.__pytest_wrapped__.obj
    )
    return body()


APPLIERS = {"plan_applier": _apply_with_plan_applier, "plugin": _apply_with_plugin, "simulator": _apply_with_sim}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_appliers_agree(scenario):
    scripts = SCENARIOS[scenario]
    results = {name: fn(scripts, len(scripts)) for name, fn in APPLIERS.items()}
    reference = results.pop("plan_applier")
    for name, states in results.items():
        assert states == reference, (name, scenario)


def test_the_reference_states():
    """What the scenarios do (so an applier that agrees with a wrong reference cannot pass)."""
    states = _apply_with_plan_applier(SCENARIOS["preempt_park_then_resume"], 3)
    assert states == [(["r0", "r2"], ["r1"], ["r3"]), (["r0", "r1"], ["r2"], ["r3"]), (["r1", "r2"], [], ["r3", "r0"])]
    states = _apply_with_plan_applier(SCENARIOS["parking_the_last_work_is_dropped"], 3)
    assert states[0] == (["r0", "r1", "r2", "r3"], [], [])  # rule 1: the parks were dropped
    assert states[1] == (["r0", "r2", "r3"], ["r1"], [])
