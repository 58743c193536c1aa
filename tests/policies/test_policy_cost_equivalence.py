"""Guards the scheduling-cost optimisations (issues 4 and 7): decisions must not change.

The digests below were recorded with the code as it was BEFORE the cost optimisations (2026-11-21):
every plan the ``cascade`` policy returns on fixed synthetic scenarios (prefill chunks, decode set in order,
park / preempt / resume, reservations, stable_steps), the per-iteration schedule and the metrics of the
simulator running ``cascade`` on a small trace, and the plugin adapter's decode-subset indices. An
optimisation that changes any decision changes a digest. (A deliberate behaviour change must re-record
them: ``python tests/policies/test_policy_cost_equivalence.py`` prints the current values.)

The adapter's decode-subset answer is also checked against a plain reference implementation, both ways it
can decide (diffing the plan's decode list by rid, and the vectorized lookup of ``held_groups`` by pool
slot), and every plan's ``held_groups`` is checked against its ``decode`` list.
"""

from __future__ import annotations

import hashlib
import json
import random
from array import array
from types import SimpleNamespace

import numpy as np
import pytest

from sglang_cascade.core.views import InstanceView, RequestView
from sglang_cascade.policies.registry import PolicyContext, make_instance_scheduler
from sglang_cascade.testing.plan_applier import apply_plan, retire


class FrozenCostModel:
    """A fixed cost model (the digests must not move when core/costmodel.py is recalibrated): fixed step
    cost, linear token cost, padded decode attention (batch x longest KV), PCIe-like host moves."""

    kv_bytes_per_token = 131072
    model = type("M", (), {"max_context": 32768, "name": "frozen"})()
    gpu = type("G", (), {"pcie_bandwidth": 25e9, "nvlink_bandwidth": 300e9})()

    def iteration_time(
        self, prefill_tokens, prefill_attn, decode_batch, decode_kv_sum, decode_kv_max, prefill_causal=None
    ):
        if prefill_tokens + decode_batch <= 0:
            return 0.0
        return (
            4e-3
            + 2e-5 * (prefill_tokens + decode_batch)
            + 1e-10 * prefill_attn
            + 3e-10 * decode_batch * decode_kv_max
            + 1e-10 * decode_kv_sum
        )

    def host_to_device_time(self, tokens):
        return 1e-5 + tokens * self.kv_bytes_per_token / 25e9

    def device_to_device_time(self, tokens):
        return 1e-5 + tokens * self.kv_bytes_per_token / 300e9

    def kv_capacity_tokens(self):
        return 120_000


# (variant, host KV tokens): the host scenarios park and resume
SCENARIOS = [
    ("cascade", 0),
    ("cascade:reserve=1", 0),
    ("cascade:reserve=1,pipelining=1", 0),
    ("cascade:aligned=0", 0),
    ("cascade:reserve=1", 60_000),
    ("cascade:reserve=1,overadmit=1", 60_000),
]


def _plan_record(plan) -> list:
    return [
        [(c.req.rid, c.tokens) for c in plan.prefill],
        [r.rid for r in plan.decode],
        [r.rid for r in plan.park],
        [r.rid for r in plan.preempt],
        [r.rid for r in plan.resume],
        sorted(plan.reserve.items()),
        plan.stable_steps,
    ]


def policy_trace(variant: str, running: int = 192, iters: int = 400, seed: int = 3, host: int = 0) -> list:
    """The bench_policy_cost loop (plans applied as the benchmark applies them), smaller, recorded."""
    rng = random.Random(seed)
    sched = make_instance_scheduler(variant, PolicyContext(cost_model=FrozenCostModel()))
    inst = InstanceView(iid=0, kv_capacity=120_000, max_prefill_tokens=4096, max_running=running, host_kv_capacity=host)
    out = []
    nid = 0
    now = 0.0

    def new():
        nonlocal nid
        r = RequestView(rid=f"r{nid}", arrival=now, prompt_len=rng.randint(50, 1200))
        r.extra["_true"] = int(rng.lognormvariate(5.0, 1.0)) + 1
        nid += 1
        sched.on_arrival(r, inst, now)
        inst.waiting.append(r)

    for _ in range(running + 40):
        new()
    for it in range(iters):
        inst.iteration = it + 1
        plan = sched.schedule(inst, now)
        check_held_groups(inst, plan)
        out.append(_plan_record(plan))
        now += 0.02
        done = apply_plan(inst, plan)
        for r in done:
            retire(inst, sched, r, now)
            if rng.random() < 0.9:
                new()
        inst.recount_kv_used()
    out.append(sorted((k, v) for k, v in sched.metrics().items() if isinstance(v, (int, float))))
    return out


def check_held_groups(inst: InstanceView, plan) -> None:
    """``plan.held_groups`` (when given) names exactly the running requests ``plan.decode`` leaves out."""
    if plan.held_groups is None:
        return
    gone = {id(r) for r in plan.park} | {id(r) for r in plan.preempt}
    cands = [r for r in inst.running + plan.resume if id(r) not in gone]
    dec = {id(r) for r in plan.decode}
    extra = {id(r) for r in plan.decode_extra}
    for r in cands:
        by_group = r.group < 0 or r.group not in plan.held_groups or id(r) in extra
        assert (id(r) in dec) == by_group, (r.rid, r.group, sorted(plan.held_groups), id(r) in dec)


def sim_trace(scheduler: str = "cascade") -> list:
    from sglang_cascade.core.traces import load_trace
    from sglang_cascade.sim import SimConfig, simulate_instance

    cm = FrozenCostModel()
    trace = load_trace("sharegpt", num_requests=300, rate=30.0, seed=2)
    sched = make_instance_scheduler(scheduler, PolicyContext(cost_model=cm))
    # an engine that runs a plan's prefill and decode in one forward (--enable-mixed-chunk): the digests were
    # recorded before the simulator modelled SGLang's default (a prefill batch runs alone) and guard decisions
    res = simulate_instance(trace, sched, cm, kv_capacity=60_000, record_schedule=True, cfg=SimConfig(mixed_chunk=True))
    assert res.metrics["settled_plans"] == 0  # the shared plan rules never had to change a cascade plan here
    recs = [
        [rec.prefill, rec.decode, rec.preempted, rec.parked, rec.resumed, round(rec.start, 9)]
        for rec in res.schedules[0]
    ]
    metrics = sorted(
        (k, round(v, 9) if isinstance(v, float) else v)
        for k, v in res.metrics.items()
        if isinstance(v, (int, float)) and "wall" not in k and k != "settled_plans"  # metric added later
    )
    return [recs, metrics]


def _req(i: int, prompt: int, max_new: int):
    return SimpleNamespace(
        rid=f"r{i}",
        origin_input_ids=array("q", bytes(8 * prompt)),
        output_ids=array("q"),
        sampling_params=SimpleNamespace(max_new_tokens=max_new),
        kv=SimpleNamespace(kv_committed_len=0, req_pool_idx=None),
        finished_reason=None,
    )


def adapter_trace(
    policy: str = "cascade",
    n: int = 512,
    iters: int = 300,
    seed: int = 0,
    check_reference: bool = False,
    incremental: bool = False,
    counters: dict | None = None,
) -> list:
    """The bench_plugin_adapter loop (with finishes and replacements), recording every plan the driver
    hands out and the decode-subset indices of the running batch. ``incremental``: membership changes are
    reported the way the plugin's hooks report them (joined / finished / queue changes) instead of forcing
    a full view rebuild; decisions must not change."""
    from sglang_cascade.plugin.config import PluginConfig
    from sglang_cascade.plugin.driver import CascadeDriver

    rng = random.Random(seed)
    nid = 0

    def new():
        nonlocal nid
        r = _req(nid, rng.randint(64, 1024), rng.choice([16, 64, 256, 1024]))
        nid += 1
        return r

    waiting = [new() for _ in range(n)]
    running: list = []
    kv_used = [0]
    cap = 400_000
    pol = make_instance_scheduler(policy, PolicyContext(cost_model=FrozenCostModel(), kv_capacity=cap))
    d = CascadeDriver(
        PluginConfig(policy), kv_capacity=cap, max_prefill_tokens=16384, max_running=n, policy=pol, clock=lambda: 0.0
    )
    out = []
    joined: list = []
    free_slots = list(range(n, 0, -1))  # SGLang's req_to_token rows: freed on finish, reused (stale-slot case)
    for _ in range(iters):
        a = d.plan_step(waiting, running, engine_kv_used=kv_used[0], engine_kv_free=cap - kv_used[0])
        if a is None:
            out.append(None)
            continue
        keep = a.decode_keep_indices(running)
        if check_reference:
            dec = {r.rid for r in a.plan.decode}
            known = {r.rid for r in d.inst.running}
            ref = [i for i, r in enumerate(running) if r.rid in dec or r.rid not in known]
            ref = None if (a.decode_all or not ref or len(ref) == len(running)) else ref
            assert (None if keep is None else list(keep)) == ref
            slots = np.array([r.kv.req_pool_idx for r in running], dtype=np.int64)
            for kw in ({}, {"slots": slots}):
                split = a.decode_split(running, with_held=True, **kw)
                assert (None if split is None else split[0]) == ref, kw.keys()
                if split is not None:
                    kept = set(split[0])
                    assert split[1] == [r for i, r in enumerate(running) if i not in kept]
            if a.plan.held_groups:
                assert a.split_by_groups, "the slot lookup was not used"  # (this policy names held_groups)
        plan = a.plan
        out.append([_plan_record(plan), None if keep is None else list(keep)])
        if plan.prefill:
            admitted = {c.req.rid for c in plan.prefill}
            for r in waiting:
                if r.rid in admitted:
                    r.kv.req_pool_idx = free_slots.pop()
                    r.kv.kv_committed_len = len(r.origin_input_ids)
                    r.output_ids.append(1)
                    kv_used[0] += len(r.origin_input_ids) + 1
                    running.append(r)
                    joined.append(r)
            waiting[:] = [r for r in waiting if r.rid not in admitted]
            if incremental:
                d.note_joined(joined)
                for r in joined:
                    d.note_admitted(r)
                joined = []
            else:
                d.dirty = True
        batch = running if keep is None else [running[i] for i in keep]
        for r in batch:
            r.output_ids.append(1)
            r.kv.kv_committed_len += 1
            kv_used[0] += 1
            if len(r.output_ids) >= r.sampling_params.max_new_tokens:
                r.finished_reason = "length"
        d.on_result(batch)
        fin = [r for r in running if r.finished_reason is not None]
        if fin:
            for r in fin:
                kv_used[0] -= len(r.origin_input_ids) + len(r.output_ids)
                free_slots.append(r.kv.req_pool_idx)
            running[:] = [r for r in running if r.finished_reason is None]
            arrivals = [new() for _ in fin]
            waiting.extend(arrivals)
            if incremental:
                for r in arrivals:  # (the finishes were reported by on_result)
                    d.note_queue_change(r)
            else:
                d.dirty = True
    if counters is not None:
        counters.update(d.counters)
    # counters added after the digests were recorded are observability only (not decisions): left out;
    # "admitted" counts admissions reported as the PrefillAdder hook reports them: only the incremental run
    # reports them (the recorded run did not), so it is recorded as 0 there
    cnt = dict(d.counters, **({"admitted": 0} if incremental else {}))
    out.append(sorted((k, v) for k, v in cnt.items() if k not in COUNTERS_ADDED_LATER))
    return out


COUNTERS_ADDED_LATER = {
    "slot_splits",
    "copy_splits",
    "view_rebuilds",
    "view_updates",  # observability only
    "finished_by_row",
    "finish_scans",
    # the shared plan rules' counters (policies/plan_rules.py; 0 in these runs: a rule
    # that fired would change the plans above)
    "parks_dropped",
    "stock_decodes",
    "stock_prefills",
    "idle_guard_resumes",
    "refused_by_policy",  # admission outcomes at SGLang's PrefillAdder hook (observability only)
    "refused_by_sglang",
}


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, default=str).encode()).hexdigest()[:16]


def current() -> dict:
    got = {f"{v}@{h}": digest(policy_trace(v, host=h)) for v, h in SCENARIOS}
    got["sim:cascade"] = digest(sim_trace("cascade"))
    got["adapter:cascade"] = digest(adapter_trace("cascade"))
    got["adapter:sglang"] = digest(adapter_trace("sglang"))
    return got


# Recorded from the pre-optimisation code (see module docstring).
EXPECTED = {
    "cascade@0": "db5734b34c2e9b86",
    "cascade:reserve=1@0": "2c4ca0f9ce14acaa",
    "cascade:reserve=1,pipelining=1@0": "5665f66bc129d9c7",
    "cascade:aligned=0@0": "5075848822c83571",
    "cascade:reserve=1@60000": "a9538f357098a0a3",
    "cascade:reserve=1,overadmit=1@60000": "e1fb7fcd03f80af3",
    "sim:cascade": "a51bf8fa859fbacc",
    "adapter:cascade": "602cecea35399853",
    "adapter:sglang": "abaae7b0b7df7088",
}


@pytest.mark.parametrize("variant,host", SCENARIOS)
def test_policy_plans_unchanged(variant, host):
    assert digest(policy_trace(variant, host=host)) == EXPECTED[f"{variant}@{host}"]


def test_simulator_cascade_unchanged():
    assert digest(sim_trace("cascade")) == EXPECTED["sim:cascade"]


@pytest.mark.parametrize("policy", ["cascade", "sglang"])
def test_adapter_plans_and_decode_subsets_unchanged(policy):
    assert digest(adapter_trace(policy, check_reference=True)) == EXPECTED[f"adapter:{policy}"]


@pytest.mark.parametrize("policy", ["cascade", "sglang"])
def test_incremental_view_updates_give_the_same_decisions(policy):
    """The plugin keeps its views up to date incrementally (finished out, prefilled in, waiting refilled)
    instead of rebuilding them from SGLang's lists: every plan and decode subset is the same."""
    c: dict = {}
    assert (
        digest(adapter_trace(policy, check_reference=True, incremental=True, counters=c))
        == EXPECTED[f"adapter:{policy}"]
    )
    assert c["view_updates"] > 50 and c["view_rebuilds"] <= 2, c  # the first plan builds everything


def test_scenarios_exercise_the_decisions():
    """The recorded scenarios are not vacuous: they split decode batches, reserve, park and resume."""
    tr = policy_trace("cascade:reserve=1,overadmit=1", host=60_000)
    plans = tr[:-1]
    assert any(p[2] for p in plans) and any(p[4] for p in plans), "no park/resume in the offload scenario"
    assert any(p[5] for p in policy_trace("cascade:reserve=1")[:-1]), "no reservations"
    at = adapter_trace("cascade")
    assert any(x is not None and x[1] is not None for x in at[:-1]), "no decode subset in the adapter run"


if __name__ == "__main__":
    print(json.dumps(current(), indent=1))
