"""The composed ``cascade`` scheduler: registry names, options, and runs in the simulator."""

from __future__ import annotations

import pytest

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.traces import load_trace
from sglang_cascade.policies.registry import PolicyContext, make_instance_scheduler

CM = CostModel.for_names("llama-3-8b", "h100")
CTX = PolicyContext(cost_model=CM)


def test_registry_variants_switch_mechanisms():
    s = make_instance_scheduler("cascade:pipelining=0,aligned=0,offload=0,predictor=oracle", CTX)
    assert s.name.startswith("cascade")
    assert s.cfg.admission.pipelining == 0 and not s.cfg.batching.aligned and not s.cfg.pool.offload
    assert s.predictor.name == "oracle"
    full = make_instance_scheduler("cascade:reserve=1", CTX)
    assert full.cfg.admission.reserve and full.cfg.admission.pooled and full.cfg.batching.aligned
    assert not make_instance_scheduler("cascade:reserve=1,pipelining=1", CTX).cfg.admission.pooled
    dflt = make_instance_scheduler("cascade", CTX)
    assert not dflt.cfg.admission.reserve and dflt.cfg.pool.offload and dflt.cfg.admission.holdfirst
    # pipelining needs reservations
    assert not make_instance_scheduler("cascade:reserve=0", CTX).cfg.admission.pooled
    with pytest.raises(ValueError, match="unknown option.*valid: .*kv_ratio"):
        make_instance_scheduler("cascade:bogus=1", CTX)
    with pytest.raises(ValueError):
        make_instance_scheduler("cascade:predictor=nope", CTX)
    with pytest.raises(ValueError, match="pipelining takes 0, 1 or 2"):
        make_instance_scheduler("cascade:pipelining=3", CTX)
    with pytest.raises(ValueError, match="0/1"):
        make_instance_scheduler("cascade:aligned=2", CTX)


def test_every_documented_option_key_is_a_config_field():
    from sglang_cascade.core.options import option_names
    from sglang_cascade.policies.instance import CascadeSchedulerConfig, make_cascade_scheduler

    keys = {
        "reserve",
        "pipelining",
        "holdfirst",
        "loan_margin",
        "aligned",
        "merge",
        "kv_base",
        "kv_ratio",
        "max_batch",
        "offload",
        "overadmit",
        "prefetch",
        "pool_factor",
        "quantile",
        "bucket_ratio",
        "check",
        "predictor",
    }
    assert keys <= set(option_names(CascadeSchedulerConfig))
    s = make_cascade_scheduler(
        CTX,
        kv_base=64,
        kv_ratio=2.0,
        max_batch=8,
        pool_factor=3,
        quantile=0.5,
        bucket_ratio=1.5,
        loan_margin=1.1,
        pipelining=1,
        reserve=1,
        warm=1,
    )
    assert (s.index.bucket_of(63), s.index.bucket_of(64), s.index.bucket_of(128)) == (0, 1, 2)
    assert s.cfg.batching.max_batch == 8 and s.cfg.pool.pool_factor == 3.0 and s.cfg.prediction.quantile == 0.5
    assert s.predictor.cfg.bucket_ratio == 1.5 and s.ledger is None and s.cfg.admission.loan_margin == 1.1


def _sim(scheduler, n=300, rate=12.0, host=0, instances=1, trace="azure_conv", **kw):
    from sglang_cascade.sim import SimConfig, simulate

    tr = load_trace(trace, num_requests=n, rate=rate, seed=1)
    cfg = SimConfig(
        instances=instances,
        scheduler=scheduler,
        host_kv_tokens=host,
        check_invariants=True,
        kv_capacity=kw.pop("kv_capacity", 60_000),
        **kw,
    )
    res = simulate(tr, cfg)
    assert res.metrics["completed"] == n, res.metrics
    return res


@pytest.mark.parametrize(
    "name",
    [
        "cascade",
        "cascade:reserve=1",
        "cascade:reserve=1,aligned=0",
        "cascade:aligned=0,offload=0",
        "cascade:reserve=1,predictor=oracle",
        "cascade:reserve=1,overadmit=1",
    ],
)
def test_cascade_runs_in_simulator_under_memory_pressure(name):
    res = _sim(name, host=100_000)
    assert res.metrics["throughput_tok_s"] > 0


def test_cascade_reports_predictor_accuracy_and_reservations_avoid_retractions():
    from sglang_cascade.sim import SimConfig
    from sglang_cascade.sim.cluster import build

    tr = load_trace("azure_code", num_requests=300, rate=12.0, seed=2)
    cfg = SimConfig(instances=1, scheduler="cascade:reserve=1,predictor=oracle,aligned=0,offload=0", kv_capacity=40_000)
    sim = build(cfg, tr)
    sim.run(tr)
    m = sim.insts[0].sched.metrics()
    assert m["pred_n"] == 300 and m["pred_bucket_hit"] == 1.0
    assert sim.preemptions == 0  # exact reservations: nothing is ever retracted


def test_cascade_eight_instances_with_router():
    res = _sim("cascade", n=400, rate=60.0, instances=8, router="round_robin")
    assert res.metrics["completed"] == 400


def test_adopts_migrated_in_and_forgets_migrated_out_requests():
    from sglang_cascade.core.views import InstanceView, Phase, RequestView

    s = make_instance_scheduler("cascade:reserve=1,check=1", CTX)
    inst = InstanceView(iid=0, kv_capacity=10_000)
    assert s.schedule(inst, 0.0).empty  # the scheduler has been running
    a = RequestView(rid="a", arrival=0.0, prompt_len=100, output_len=5, kv_tokens=104, phase=Phase.RUNNING, instance=0)
    s.on_arrival(a, inst, 0.0)  # landed with its KV (live migration)
    inst.running.append(a)
    inst.recount_kv_used()
    inst.iteration = 1
    plan = s.schedule(inst, 0.0)
    assert a in plan.decode and "a" in s.tracks and plan.reserve["a"] > 0
    assert s.ledger.reserved >= a.kv_tokens + 1
    a.kv_tokens += 1
    a.output_len += 1
    # it leaves again without on_finish (migrated away): the next plan forgets it and frees its claim
    inst.running.remove(a)
    a.instance = 1
    inst.recount_kv_used()
    inst.iteration = 2
    plan = s.schedule(inst, 0.1)
    assert not plan.decode and "a" not in s.tracks and s.ledger.reserved == 0
