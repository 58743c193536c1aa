"""A minimal, strict single-instance driver for the instance-scheduler tests (and its own checks).

Semantics follow docs/CONTRACTS.md: preempt -> park -> resume -> prefill chunks -> decode; a request's
prefill-completing iteration produces its first token; KV is ``length - 1`` for a running request;
the driver asserts KV never exceeds GPU or host capacity and that a plan never touches a request twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sglang_cascade.core.costmodel import CostModel
from sglang_cascade.core.views import InstanceView, Phase, RequestView


@dataclass
class DriverResult:
    finished: list[RequestView]
    iterations: int
    time: float
    max_kv: int
    max_host: int
    max_gap: int  # longest run of iterations a running/parked request went without a decode
    max_gap_bound: int  # the aligned bound (non-empty buckets) seen at the worst gap's start
    retractions: int
    decoded_tokens: int
    max_running: int


@dataclass
class MiniDriver:
    sched: object
    kv_capacity: int = 4096
    host_kv_capacity: int = 0
    max_prefill_tokens: int = 512
    max_running: int = 1024
    cost_model: CostModel = field(default_factory=lambda: CostModel.for_names("llama-3-8b", "h100"))
    oracle: bool = True  # expose true lengths in req.extra (like the simulator)

    def run(self, reqs: list[tuple[float, int, int]], max_iters: int = 200000) -> DriverResult:
        inst = InstanceView(
            iid=0,
            kv_capacity=self.kv_capacity,
            host_kv_capacity=self.host_kv_capacity,
            max_prefill_tokens=self.max_prefill_tokens,
            max_running=self.max_running,
        )
        views = []
        for i, (arr, p, o) in enumerate(reqs):
            v = RequestView(rid=f"r{i}", arrival=arr, prompt_len=p)
            v.extra["true_output_len"] = o if self.oracle else None
            v.extra["_true"] = o
            views.append(v)
        pending = sorted(views, key=lambda v: v.arrival)
        k = 0
        now = 0.0
        finished: list[RequestView] = []
        last_served: dict[str, int] = {}
        max_gap = 0
        max_kv = max_host = 0
        retractions = 0
        decoded = 0
        max_running = 0
        it = 0
        while len(finished) < len(views):
            it += 1
            assert it < max_iters, "driver did not finish (a request was lost or starved)"
            while k < len(pending) and pending[k].arrival <= now:
                self.sched.on_arrival(pending[k], inst, now)
                inst.waiting.append(pending[k])
                k += 1
            if not (inst.waiting or inst.running or inst.parked):
                now = pending[k].arrival
                continue
            inst.iteration = it
            plan = self.sched.schedule(inst, now)
            touched = [r.rid for r in plan.preempt + plan.park + plan.resume]
            assert len(touched) == len(set(touched)), "a request moved twice in one plan"
            for r in plan.preempt:
                if r in inst.running:
                    inst.running.remove(r)
                elif r in inst.waiting:
                    inst.waiting.remove(r)
                else:
                    raise AssertionError(f"preempt of {r.rid} which is not on GPU")
                r.kv_tokens = 0
                r.phase = Phase.WAITING
                r.preemptions += 1
                inst.waiting.append(r)
                retractions += 1
            for r in plan.park:
                assert r in inst.running, f"park of non-running {r.rid}"
                inst.running.remove(r)
                r.phase = Phase.PARKED
                inst.parked.append(r)
            host = sum(r.kv_tokens for r in inst.parked)  # parks land before resumes free anything
            assert host <= self.host_kv_capacity, ("host pool overflow at park time", host)
            for r in plan.resume:
                assert r in inst.parked, f"resume of non-parked {r.rid}"
                inst.parked.remove(r)
                r.phase = Phase.RUNNING
                inst.running.append(r)
            here = {r.rid for r in inst.waiting + inst.running + inst.parked}
            for rid, res in plan.reserve.items():
                assert rid in here and res >= 0, f"reservation for {rid} which is not here"
            host = sum(r.kv_tokens for r in inst.parked)
            assert host <= self.host_kv_capacity, (host, self.host_kv_capacity)
            max_host = max(max_host, host)
            assert plan.num_prefill_tokens <= inst.max_prefill_tokens
            running_ids = {id(r) for r in inst.running}
            for r in plan.decode:
                assert id(r) in running_ids, f"decode of non-running {r.rid} ({r.phase})"
            assert len({id(r) for r in plan.decode}) == len(plan.decode)
            gpu_kv = (
                sum(r.kv_tokens for r in inst.running)
                + sum(r.kv_tokens for r in inst.waiting)
                + plan.num_prefill_tokens
                + len(plan.decode)
            )
            assert gpu_kv <= self.kv_capacity, f"KV over capacity: {gpu_kv} > {self.kv_capacity}"
            max_kv = max(max_kv, gpu_kv)
            dec_kv = [r.kv_tokens for r in plan.decode]
            pre = [(c.tokens, c.req.kv_tokens) for c in plan.prefill]
            dt = self.cost_model.batch_time(pre, dec_kv) if (pre or dec_kv) else 1e-3
            now += dt
            done: list[RequestView] = []
            for c in plan.prefill:
                r = c.req
                assert r in inst.waiting, f"prefill of non-waiting {r.rid}"
                assert 0 < c.tokens <= r.tokens_to_prefill
                r.kv_tokens += c.tokens
                if r.tokens_to_prefill == 0:
                    inst.waiting.remove(r)
                    r.output_len += 1
                    r.kv_tokens = r.length - 1
                    r.phase = Phase.RUNNING
                    if r.first_token_time is None:
                        r.first_token_time = now
                    inst.running.append(r)
                    last_served[r.rid] = it
                    if r.output_len >= r.extra["_true"]:
                        done.append(r)
            for r in plan.decode:
                r.kv_tokens += 1
                r.output_len += 1
                decoded += 1
                gap = it - last_served.get(r.rid, it)
                max_gap = max(max_gap, gap)
                last_served[r.rid] = it
                if r.output_len >= r.extra["_true"]:
                    done.append(r)
            max_running = max(max_running, len(inst.running))
            for r in done:
                inst.running.remove(r)
                r.phase = Phase.FINISHED
                r.finish_time = now
                self.sched.on_finish(r, inst, now)
                finished.append(r)
            inst.recount_kv_used()
            # requests that wait in the pool (running or parked) without decode
            for r in inst.running + inst.parked:
                max_gap = max(max_gap, it - last_served.get(r.rid, it))
        return DriverResult(finished, it, now, max_kv, max_host, max_gap, 0, retractions, decoded, max_running)


def test_driver_runs_fcfs_like_all_decode():
    from sglang_cascade.policies.instance import make_cascade_scheduler
    from sglang_cascade.policies.registry import PolicyContext

    ctx = PolicyContext(cost_model=CostModel.for_names("llama-3-8b", "h100"))
    s = make_cascade_scheduler(ctx, aligned=0, offload=0, check=1)
    res = MiniDriver(s, kv_capacity=4096).run([(0.0, 100, 20), (0.0, 50, 5), (0.01, 300, 40)])
    assert len(res.finished) == 3
    assert all(r.output_len == r.extra["_true"] for r in res.finished)
    assert res.decoded_tokens == sum(r.extra["_true"] for r in res.finished) - 3
