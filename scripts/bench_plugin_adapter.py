"""Per-iteration cost of the plugin's adapter + policy with N running requests (no SGLang, no GPU).

What is timed per engine iteration (the work the plugin adds to one SGLang scheduler step):
  * ``CascadeDriver.engine_running``: the running list the step starts from (plus the last prefill's requests);
  * ``CascadeDriver.plan_step``: refresh the cached RequestViews from the engine's request objects,
    call ``policy.schedule`` (or reuse the last plan when it promised ``stable_steps``);
  * ``CascadeDriver.select_decode`` on the running batch (the update_running_batch hook: which requests
    decode, from the plan's ``held_groups`` and the batch's ``req_pool_indices_cpu``; whether the held-back
    requests may be split off; the held-back list), SGLang's ``filter_batch`` excluded;
  * ``CascadeDriver.after_result`` for the decoded batch (the process_batch_result hook: finished requests,
    found from the request rows SGLang freed while processing the result; a scan of the batch only on
    every ``finish_scan_every``-th step).
Reservation lookups (PrefillAdder, only when admission runs) replace SGLang's own per-request estimate
one for one and are not counted.
SGLang's own batch operations (filter_batch / merge_batch) are not included: they are SGLang's cost.
On a shared machine the mean is dominated by CPU preemption spikes; p50 is reported next to it.

The requests are light stand-ins with the attributes the adapter reads. The loop first admits N
requests (moving planned prefills to running), then measures steady decode iterations in which every
planned request gains one token.

    python scripts/bench_plugin_adapter.py --running 1024 --policy cascade --iters 300
"""

from __future__ import annotations

import argparse
import statistics
import time
from array import array
from types import SimpleNamespace

import numpy as np

from sglang_cascade.plugin.config import PluginConfig
from sglang_cascade.plugin.driver import CascadeDriver


class Req:
    """Stand-in for SGLang's ``Req``: a plain class, so (like ``Req``) equal and hashed by identity. It has
    the fields the adapter reads, with the values SGLang gives a plain greedy request (``Req.__init__`` sets
    every one of them; ``sampling_state.splittable`` reads the sampling ones)."""

    def __init__(self, rid: str, origin_input_ids, max_new: int):
        self.rid = rid
        self.origin_input_ids = origin_input_ids
        self.output_ids = array("q")
        self.sampling_params = SimpleNamespace(
            max_new_tokens=max_new,
            frequency_penalty=0.0,
            presence_penalty=0.0,
            repetition_penalty=1.0,
            min_new_tokens=0,
            logit_bias=None,
            custom_params=None,
        )
        self.kv = SimpleNamespace(kv_committed_len=0, req_pool_idx=None)
        self.finished_reason = None
        self.grammar = self.custom_logit_processor = self.beam_group = None
        self.return_logprob = self.return_hidden_states = False


def make_req(i: int, prompt: int, max_new: int) -> Req:
    return Req(f"r{i}", array("q", bytes(8 * prompt)), max_new)


class _Batch:
    """The running ScheduleBatch as the plugin's decode split sees it; ``filter_batch`` (SGLang's own cost)
    is a no-op here, so the stand-in batch keeps every request and the loop decodes the plan's subset.
    Its sampling state is that of a batch without penalties, logit bias or custom logit processors, so the
    split takes the plugin's default path (held-back rows kept as a filtered copy of the batch,
    ``batch_ops.split_off``; with ``--rebuild-split``, as for batches that carry such state, the held-back
    requests are listed for a rebuild instead)."""

    spec_algorithm = None
    sampling_info = SimpleNamespace(
        penalizer_orchestrator=SimpleNamespace(is_required=False), has_custom_logit_processor=False, logit_bias=None
    )
    model_config = SimpleNamespace(is_encoder_decoder=False)

    def __init__(self, reqs: list, copy_split: bool = True):
        self.reqs = reqs
        self.req_pool_indices_cpu = np.zeros(0, dtype=np.int64)  # SGLang keeps it in batch order
        if not copy_split:
            self.sampling_info = None

    def is_empty(self) -> bool:
        return not self.reqs

    def filter_batch(self, keep_indices=None) -> None:
        pass


def run(
    policy: str,
    n: int,
    iters: int,
    warm: int,
    kv_capacity: int,
    seed: int = 0,
    output_lens: tuple[int, ...] = (256, 1024, 4096),
    backlog: int = 0,
    copy_split: bool = True,
) -> dict:
    import random

    rng = random.Random(seed)
    nid = [0]
    free_slots = list(range(n, 0, -1))  # SGLang's req_to_token rows, reused after a finish

    def arrive() -> Req:
        # output lengths: one of --output-lens, +-50% (so requests admitted together do not finish together)
        r = make_req(nid[0], rng.randint(64, 1024), max(2, int(rng.choice(output_lens) * rng.uniform(0.5, 1.5))))
        nid[0] += 1
        by_rid[r.rid] = r
        return r

    by_rid: dict = {}
    waiting = [arrive() for _ in range(n + backlog)]  # backlog: queued beyond max_running (overload)
    running: list = []
    finished = [0]
    d = CascadeDriver(PluginConfig(policy), kv_capacity=kv_capacity, max_prefill_tokens=65536, max_running=n)
    policy_time = [0.0]
    inner = d.policy.schedule

    def timed_schedule(inst, now):
        t = time.perf_counter()
        try:
            return inner(inst, now)
        finally:
            policy_time[0] += time.perf_counter() - t

    d.policy.schedule = timed_schedule

    def step(timed: bool) -> float:
        t0 = time.perf_counter()
        # begin_step: the running batch (finished requests filtered out) + the last prefill's requests
        run_list = d.engine_running(running, joined)
        dt = time.perf_counter() - t0
        part[0] += dt
        if done_last:  # SGLang's own filter_batch drops the finished requests (its cost: not timed)
            running[:] = [r for r in running if r.finished_reason is None]
            done_last.clear()
        running.extend(joined)
        joined.clear()
        batch.req_pool_indices_cpu = np.array([r.kv.req_pool_idx for r in running], dtype=np.int64)
        t0 = time.perf_counter()
        # SGLang's allocator knows the KV in use; the plugin reads it (O(1)) instead of recounting views
        a = d.plan_step(waiting, run_list, engine_kv_used=kv_used[0], engine_kv_free=kv_capacity - kv_used[0])
        t1 = time.perf_counter()
        part[1] += t1 - t0
        if a is not None:
            d.select_decode(batch)  # decode-subset split: keep indices, splittability, held-back list
            d.held.clear()  # (the next step's rejoin / merge_back is SGLang's batch work: not timed)
            d.held_batch = None
        t2 = time.perf_counter()
        part[2] += t2 - t1
        dt += t2 - t0
        if a is None:
            return dt
        plan = a.plan
        if plan.prefill:
            admitted = {c.req.rid for c in plan.prefill}
            for rid in admitted:
                r = by_rid[rid]
                r.kv.req_pool_idx = free_slots.pop()  # SGLang gives each admitted request a req_to_token row
                r.kv.kv_committed_len = len(r.origin_input_ids)
                r.output_ids.append(1)  # prefill produces the first token
                kv_used[0] += len(r.origin_input_ids) + 1
                d.note_admitted(r)  # the PrefillAdder hook
            waiting[:] = [r for r in waiting if r.rid not in admitted]
            joined.extend(by_rid[rid] for rid in admitted)  # they join the running batch next step
        decoded = []
        done = []
        for rv in plan.decode:
            r = by_rid[rv.rid]
            r.output_ids.append(1)
            r.kv.kv_committed_len += 1
            kv_used[0] += 1
            decoded.append(r)
            if len(r.output_ids) >= r.sampling_params.max_new_tokens:
                r.finished_reason = "length"
                done.append(r)
        result_batch = SimpleNamespace(reqs=decoded)  # the batch SGLang just decoded
        freed = [r.kv.req_pool_idx for r in done]  # rows SGLang frees while processing the result
        t1 = time.perf_counter()
        d.after_result(result_batch, freed)  # the process_batch_result hook
        t2 = time.perf_counter()
        part[3] += t2 - t1
        dt += t2 - t1
        if done:  # SGLang frees their rows and KV (they leave the batch next step); new requests arrive
            for r in done:
                free_slots.append(r.kv.req_pool_idx)
                kv_used[0] -= len(r.origin_input_ids) + len(r.output_ids)
                del by_rid[r.rid]
            done_last.extend(done)
            for _ in done:
                r = arrive()
                waiting.append(r)
                d.note_queue_change(r)  # what the add_request_to_queue hook reports for an arrival
            finished[0] += len(done)
        return dt

    batch = _Batch(running, copy_split)
    joined: list = []  # admitted in the last step: join the running batch at the next one
    done_last: list = []  # finished in the last step: still in the batch until SGLang filters them
    kv_used = [0]
    part = [0.0] * 4  # engine_running, plan_step, select_decode, after_result (seconds, timed steps)
    fill = 0
    while len(running) + len(joined) < n and fill < 10 * n:
        step(False)
        fill += 1
    for _ in range(warm):
        step(False)
    policy_time[0] = 0.0
    finished[0] = 0
    part[:] = [0.0] * 4
    times = [step(True) for _ in range(iters)]
    policy_us = policy_time[0] * 1e6 / iters
    parts = {k: v * 1e6 / iters for k, v in zip(("running_us", "plan_us", "select_us", "result_us"), part)}
    parts["plan_us"] -= policy_us  # plan_step without the policy: view sync + PlanApplier
    us = sorted(t * 1e6 for t in times)
    return {
        "policy": policy,
        "running": len(running),
        "waiting": len(waiting),
        "iters": iters,
        "mean_us": statistics.fmean(us),
        "p50_us": us[len(us) // 2],
        "p99_us": us[int(0.99 * (len(us) - 1))],
        "policy_us": policy_us,
        "adapter_us": statistics.fmean(us) - policy_us,
        "plans": d.counters["plans"],
        "reused": d.counters["reused_plans"],
        "finished_per_step": finished[0] / iters,
        **parts,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--running", type=int, default=1024)
    ap.add_argument("--policy", action="append", help="registry name(s); default: cascade, sglang")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--warm", type=int, default=30)
    ap.add_argument("--kv-capacity", type=int, default=4_000_000)
    ap.add_argument("--target-us", type=float, default=100.0)
    ap.add_argument(
        "--output-lens",
        default="256,1024,4096",
        help="output lengths drawn per request; finished requests are replaced by new arrivals "
        "(short outputs = churn: membership changes most steps)",
    )
    ap.add_argument("--backlog", type=int, default=0, help="requests queued beyond --running (overload)")
    ap.add_argument(
        "--rebuild-split",
        action="store_true",
        help="batches with per-batch sampling state: held-back requests are listed for a rebuild "
        "(default: SGLang's default batch, held back as a filtered copy)",
    )
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="also print the mean per step of each timed part (engine_running, plan_step without "
        "the policy, select_decode, after_result)",
    )
    args = ap.parse_args(argv)
    lens = tuple(int(x) for x in args.output_lens.split(","))
    print(
        f"{'policy':<16}{'running':>8}{'fin/step':>9}{'mean_us':>9}{'p50_us':>9}{'p99_us':>9}{'adapter':>9}"
        f"{'policy':>9}{'plans':>7}{'reused':>7}  target"
    )
    for pol in args.policy or ["cascade", "sglang"]:
        r = run(
            pol,
            args.running,
            args.iters,
            args.warm,
            args.kv_capacity,
            output_lens=lens,
            backlog=args.backlog,
            copy_split=not args.rebuild_split,
        )
        ok = ("p50 OK" if r["p50_us"] <= args.target_us else "p50 OVER") + (
            ", mean OK" if r["mean_us"] <= args.target_us else ", mean OVER"
        )
        print(
            f"{pol:<16}{r['running']:>8}{r['finished_per_step']:>9.2f}{r['mean_us']:>9.1f}{r['p50_us']:>9.1f}{r['p99_us']:>9.1f}"
            f"{r['adapter_us']:>9.1f}{r['policy_us']:>9.1f}{r['plans']:>7}{r['reused']:>7}"
            f"  {ok} (<= {args.target_us:g} us)"
        )
        if args.breakdown:
            print(
                "    mean us per step: "
                + ", ".join(f"{k[:-3]} {r[k]:.1f}" for k in ("running_us", "plan_us", "select_us", "result_us"))
                + f", policy {r['policy_us']:.1f}"
            )


if __name__ == "__main__":
    main()
