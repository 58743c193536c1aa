"""The SGLang plugin on CPU with real sglang 0.5.23 classes (no server, no GPU)."""

from __future__ import annotations

import pickle
from array import array
from importlib.metadata import entry_points
from types import SimpleNamespace

import pytest

sglang = pytest.importorskip("sglang")
torch = pytest.importorskip("torch")

from sglang_cascade.core.decisions import IterationPlan, PrefillChunk  # noqa: E402
from sglang_cascade.core.interfaces import InstanceScheduler  # noqa: E402
from sglang_cascade.core.messages import LoadMessage, decode_load, encode_load  # noqa: E402
from sglang_cascade.core.views import InstanceLoad, InstanceView, Phase, RequestView  # noqa: E402
from sglang_cascade.plugin import batch_ops, hooks  # noqa: E402
from sglang_cascade.plugin.adapter import PlanApplier, ViewCache  # noqa: E402
from sglang_cascade.plugin.config import PluginConfig  # noqa: E402
from sglang_cascade.plugin.driver import CascadeDriver  # noqa: E402
from sglang_cascade.testing.probe_policy import ProbeConfig, ProbeScheduler  # noqa: E402

VOCAB = 100


@pytest.fixture(scope="module")
def srt():
    """SGLang's plugin loading (runs our entry point, applies hooks) + a test runtime context."""
    from sglang.srt import runtime_context as rc
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import ServerArgs

    load_plugins()
    rc.publish(ServerArgs(model_path="dummy", device="cpu"), role="test")
    from sglang.srt.managers.overlap_utils import FutureMap
    from sglang.srt.managers.schedule_batch import Req, ScheduleBatch
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
    from sglang.srt.sampling.sampling_batch_info import SamplingBatchInfo
    from sglang.srt.sampling.sampling_params import SamplingParams
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    return SimpleNamespace(
        Req=Req,
        ScheduleBatch=ScheduleBatch,
        ReqToTokenPool=ReqToTokenPool,
        SamplingBatchInfo=SamplingBatchInfo,
        SamplingParams=SamplingParams,
        Spec=SpeculativeAlgorithm,
        FutureMap=FutureMap,
    )


def make_req(srt, rid: str, prompt_len: int, out: int = 0, max_new: int = 32, pool_idx: int | None = None, **sp):
    params = srt.SamplingParams(max_new_tokens=max_new, temperature=0, **sp)
    params.normalize(None)
    params.verify(VOCAB)
    req = srt.Req(rid, "", array("q", range(1, prompt_len + 1)), params, vocab_size=VOCAB)
    for t in range(out):
        req.output_ids.append(10 + t)
    if pool_idx is not None:
        req.kv.req_pool_idx = pool_idx
        req.kv.kv_committed_len = prompt_len + max(0, out - 1)
    return req


def make_env(srt, reqs):
    """A real decode ScheduleBatch over ``reqs`` plus the scheduler attributes batch_ops reads."""
    pool = srt.ReqToTokenPool(size=32, max_context_len=256, device="cpu", enable_memory_saver=False)
    mc = SimpleNamespace(is_encoder_decoder=False, vocab_size=VOCAB)
    spec = srt.Spec.from_string(None)
    sched = SimpleNamespace(
        device="cpu",
        req_to_token_pool=pool,
        token_to_kv_pool_allocator=None,
        tree_cache=None,
        model_config=mc,
        enable_overlap=False,
        spec_algorithm=spec,
        future_map=srt.FutureMap("cpu", spec, pool, needs_cpu_seq_lens=True),
    )
    return sched, batch_ops.build_decode_batch(sched, reqs)


# --- entry point, CLI, hooks ----------------------------------------------------------------------------
def test_entry_point_registered_and_loads():
    eps = {ep.name: ep for ep in entry_points(group="sglang.srt.plugins")}
    assert "cascade" in eps
    assert eps["cascade"].value == "sglang_cascade.plugin.entry:register"
    assert callable(eps["cascade"].load())


def test_cli_flag_parses_and_travels_with_server_args(srt):
    from sglang.srt.server_args import prepare_server_args

    sa = prepare_server_args(
        [
            "--model-path",
            "dummy",
            "--scheduler-plugin",
            "cascade",
            "--cascade-options",
            "pipelining=0,aligned=1",
            "--cascade-publish-addr",
            "tcp://127.0.0.1:5999",
            "--cascade-fail-every",
            "7",
        ]
    )
    cfg = hooks.plugin_config(sa)
    assert cfg.scheduler == "cascade" and cfg.options == {"pipelining": 0, "aligned": 1}
    assert cfg.publish_addr == "tcp://127.0.0.1:5999" and cfg.fail_every == 7
    # Scheduler processes get server_args by pickling: the config must survive it.
    assert hooks.plugin_config(pickle.loads(pickle.dumps(sa))) == cfg
    assert hooks.plugin_config(prepare_server_args(["--model-path", "dummy"])) is None  # stock


def test_unknown_plugin_name_fails_clearly(srt, capsys):
    from sglang.srt.server_args import prepare_server_args

    with pytest.raises(SystemExit):
        prepare_server_args(["--model-path", "dummy", "--scheduler-plugin", "nosuch"])
    err = capsys.readouterr().err
    assert "unknown scheduler plugin 'nosuch'" in err and "cascade" in err


def test_help_lists_choices(srt):
    import argparse

    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    text = parser.format_help()
    assert "--scheduler-plugin {cascade," in text and "--cascade-publish-addr" in text


def test_hooks_are_applied(srt):
    from sglang.srt.managers.schedule_policy import PrefillAdder, SchedulePolicy
    from sglang.srt.managers.scheduler import Scheduler
    from sglang.srt.plugins.hook_registry import HookRegistry

    for target in hooks.HOOK_TARGETS:
        assert target in HookRegistry._patched, target
    assert Scheduler.get_next_batch_to_run.__wrapped__ is not None
    assert SchedulePolicy.calc_priority.__wrapped__ is not None
    assert PrefillAdder.add_one_req.__wrapped__ is not None


def test_hooks_without_plugin_call_stock(srt):
    calls = []
    sched = SimpleNamespace()  # no _cascade: stock scheduler
    out = hooks.get_next_batch_hook(lambda s, **kw: calls.append(kw) or "stock", sched, running_batch=1, last_batch=2)
    assert out == "stock" and calls == [{"running_batch": 1, "last_batch": 2}]
    assert hooks.add_one_req_hook(lambda a, r, *x: "orig", None, None) == "orig"
    assert hooks.running_offset_hook(lambda a, r: 5.0, None, None) == 5.0


# --- adapter on real Req / ScheduleBatch -----------------------------------------------------------------
def test_view_cache_reads_real_reqs(srt):
    w = make_req(srt, "w", 7)
    r = make_req(srt, "r", 5, out=3, pool_idx=1)
    cache = ViewCache(iid=3)
    inst = InstanceView(iid=3, kv_capacity=1000)
    new = cache.build(inst, [w], [r], [], now=1.0)
    assert [(v.rid, lst is inst.waiting) for v, lst in new] == [("w", True), ("r", False)]
    for v, lst in new:
        lst.append(v)
    vw, vr = cache.views["w"], cache.views["r"]
    assert (vw.prompt_len, vw.output_len, vw.phase, vw.max_new_tokens) == (7, 0, Phase.WAITING, 32)
    assert (vr.prompt_len, vr.output_len, vr.phase, vr.kv_tokens) == (5, 3, Phase.RUNNING, 8)
    r.output_ids.append(99)  # one more decode step: same view object, refreshed in place
    assert cache.build(inst, [w], [r], [], now=2.0) == []
    assert vr.output_len == 4 and inst.running == [vr] and vr.arrival == 1.0


def test_a_waiting_view_counts_the_prefix_its_radix_cache_holds(srt):
    """A moved request's continuation waits with all but its last token in the radix cache: its view must not ask
    for a whole prefill (the policy held such continuations back live); a running view is unchanged."""
    c = make_req(srt, "c", 40)  # the continuation: 39 tokens imported
    n = make_req(srt, "n", 30)  # nothing cached
    r = make_req(srt, "r", 5, out=3, pool_idx=1)
    cache = ViewCache(iid=0)
    cache.prefix_len = lambda req: {"c": 39, "n": 0, "r": 8}[req.rid]
    inst = InstanceView(iid=0, kv_capacity=1000)
    for v, lst in cache.build(inst, [c, n], [r], [], now=0.0):
        lst.append(v)
    vc, vn, vr = cache.views["c"], cache.views["n"], cache.views["r"]
    assert (vc.kv_tokens, vc.tokens_to_prefill) == (39, 1)
    assert (vn.kv_tokens, vn.tokens_to_prefill) == (0, 30)
    assert vr.kv_tokens == 8  # running: prompt + output, as before
    cache.prefix_len = lambda req: 40  # a fully cached input still prefills its last token
    full = make_req(srt, "f", 40)
    vf, _ = cache.view_of(full, 0.0)
    vf.phase = Phase.WAITING
    assert vf.tokens_to_prefill == 1


def test_waiting_order_through_real_calc_priority(srt):
    from sglang.srt.managers.schedule_policy import SchedulePolicy
    from sglang.srt.mem_cache.radix_cache import RadixCache

    policy = SchedulePolicy(
        policy="fcfs",
        tree_cache=RadixCache.create_simulated(disable=True),
        enable_hierarchical_cache=False,
        enable_priority_scheduling=False,
        schedule_low_priority_values_first=False,
    )
    queue = [make_req(srt, f"q{i}", n) for i, n in enumerate([9, 3, 6, 4])]
    views = {q.rid: RequestView(q.rid, 0.0, len(q.origin_input_ids)) for q in queue}
    plan = IterationPlan(prefill=[PrefillChunk(views["q3"], 4), PrefillChunk(views["q1"], 3)])
    d = SimpleNamespace(applier=PlanApplier(plan))
    d.order_waiting = d.applier.order_waiting
    hooks._current = d
    try:
        policy.calc_priority(queue, None)  # the hooked SGLang method
    finally:
        hooks._current = None
    assert [q.rid for q in queue] == ["q3", "q1", "q0", "q2"]  # planned first (plan order), rest stable
    policy.calc_priority(queue, None)  # no plugin step in progress: SGLang's fcfs leaves it alone
    assert [q.rid for q in queue] == ["q3", "q1", "q0", "q2"]


def test_admission_and_reservation_hooks_on_real_reqs(srt):
    from sglang.srt.managers.schedule_policy import AddReqResult

    a, b = make_req(srt, "a", 8, max_new=500), make_req(srt, "b", 8, max_new=500)
    plan = IterationPlan(prefill=[PrefillChunk(RequestView("a", 0, 8), 8)], reserve={"a": 40, "r": 7})
    d = SimpleNamespace(
        applier=PlanApplier(plan), admitted=[], counters={"refused_by_policy": 0, "refused_by_sglang": 0}
    )
    d.may_admit = lambda req: d.applier.may_admit(req.rid)
    d.reservation = lambda req: d.applier.reservation(req.rid)
    d.note_admitted = d.admitted.append
    adder = SimpleNamespace(can_run_list=[])
    seen = []

    def original(adder_, req, *args):
        seen.append(req.sampling_params.max_new_tokens)
        adder_.can_run_list.append(req)
        return AddReqResult.CONTINUE

    hooks._current = d
    try:
        assert hooks.add_one_req_hook(original, adder, b, False, None) == AddReqResult.OTHER  # not planned
        assert hooks.add_one_req_hook(original, adder, a, False, None) == AddReqResult.CONTINUE
        running = make_req(srt, "r", 5, out=3, max_new=100)
        assert hooks.running_offset_hook(lambda *_: 1e9, adder, running) == 7  # policy's reservation
        other = make_req(srt, "x", 5, out=98, max_new=100)
        assert hooks.running_offset_hook(lambda *_: 1.5, adder, other) == 1.5  # not in plan: SGLang's
    finally:
        hooks._current = None
    assert seen == [40]  # SGLang's admission check saw the reservation (output 0 + 40) ...
    assert a.sampling_params.max_new_tokens == 500  # ... and the real limit is back
    assert adder.can_run_list == [a] and d.admitted == [a]
    assert d.counters == {"refused_by_policy": 1, "refused_by_sglang": 0}
    # planned, but SGLang's own budget says no (PrefillAdder): counted, not admitted
    full = SimpleNamespace(can_run_list=[])
    hooks._current = d
    try:
        assert hooks.add_one_req_hook(lambda *_: AddReqResult.NO_TOKEN, full, a, False, None) == AddReqResult.NO_TOKEN
    finally:
        hooks._current = None
    assert full.can_run_list == [] and d.admitted == [a] and d.counters["refused_by_sglang"] == 1
    # a step SGLang decides (no plan, e.g. after a policy error): SGLang admits, the plugin counts it
    d.applier, d.counters = None, {"admitted_stock": 0}
    hooks._current = d
    try:
        assert hooks.add_one_req_hook(original, adder, b, False, None) == AddReqResult.CONTINUE
    finally:
        hooks._current = None
    assert adder.can_run_list == [a, b] and d.counters["admitted_stock"] == 1 and seen == [40, 500]


def test_decode_subset_split_and_rejoin_on_real_batch(srt):
    reqs = [make_req(srt, f"r{i}", 4 + i, out=2, pool_idx=i + 1) for i in range(4)]
    sched, batch = make_env(srt, reqs)
    views = {r.rid: RequestView(r.rid, 0, 4) for r in reqs}
    plan = IterationPlan(decode=[views["r0"], views["r2"]])
    applier = PlanApplier(plan, known_running=set(views))
    keep = applier.decode_keep_indices(batch.reqs)
    assert keep == [0, 2]
    held = batch_ops.split_batch(batch, keep)
    assert [r.rid for r in batch.reqs] == ["r0", "r2"] and [r.rid for r in held] == ["r1", "r3"]
    assert batch.seq_lens.tolist() == [4 + 0 + 1, 4 + 2 + 1]
    assert batch.sampling_info.temperatures.shape[0] == 2
    # Held requests keep their pool rows; rejoining rebuilds their rows and relays their last token.
    held[1].output_ids.append(55)
    merged = batch_ops.rejoin(sched, batch, held)
    assert [r.rid for r in merged.reqs] == ["r0", "r2", "r1", "r3"]
    assert merged.req_pool_indices.tolist() == [1, 3, 2, 4]
    assert merged.seq_lens.tolist() == [5, 7, 6, 9]
    assert sched.future_map.output_tokens_buf[4].item() == 55
    assert merged.sampling_info.temperatures.shape[0] == 4
    # Unknown requests (not in the plan's view) always decode; an empty selection decodes all.
    assert PlanApplier(IterationPlan(decode=[views["r0"]]), known_running={"r0"}).decode_keep_indices(reqs) is None
    assert PlanApplier(IterationPlan(), known_running=set(views)).decode_keep_indices(reqs) is None


def test_group_split_on_real_batch_through_the_driver(srt):
    """The plugin's per-step path: the plan names held groups, the driver splits SGLang's running batch by
    one lookup on its req_pool_indices_cpu; a request with sampling state in a held group still decodes;
    the rejoin brings the held ones back with pool indices in step with the requests."""
    reqs = [make_req(srt, f"r{i}", 4 + i, out=2, pool_idx=i + 1) for i in range(5)]
    reqs.append(make_req(srt, "pen", 4, out=2, pool_idx=9, frequency_penalty=0.5))
    sched, batch = make_env(srt, reqs)
    d = CascadeDriver(PluginConfig("sglang"), kv_capacity=1000, policy=ProbeScheduler())
    views = [d.views.view_of(r, 0.0)[0] for r in reqs]
    for v, grp in zip(views, [0, 1, 0, 1, 2, 1]):
        v.group = grp
    plan = IterationPlan(decode=[views[i] for i in (0, 2, 5)], held_groups={1, 2})
    d.applier = PlanApplier(plan, known_running={r.rid for r in reqs}, groups=d.views.groups)
    d.select_decode(batch)
    assert d.applier.split_by_groups
    assert [r.rid for r in batch.reqs] == ["r0", "r2", "pen"] and [r.rid for r in d.held] == ["r1", "r3", "r4"]
    assert batch.req_pool_indices_cpu.tolist() == [1, 3, 9] and batch.seq_lens.tolist() == [5, 7, 5]
    assert d.counters["decode_splits"] == d.counters["slot_splits"] == 1 and d.counters["unsplittable_steps"] == 0
    merged = batch_ops.rejoin(sched, batch, d.held)
    assert [r.rid for r in merged.reqs] == ["r0", "r2", "pen", "r1", "r3", "r4"]
    assert merged.req_pool_indices_cpu.tolist() == [r.kv.req_pool_idx for r in merged.reqs]


def test_copy_split_keeps_the_held_rows_and_merges_them_back(srt):
    """Without penalties in the batch the held-back part is a filtered copy of SGLang's batch (its sampling
    rows, lengths and pool indices kept, nothing rebuilt) and merges back unchanged."""
    reqs = [make_req(srt, f"r{i}", 4 + i, out=2, pool_idx=i + 1) for i in range(5)]
    sched, batch = make_env(srt, reqs)
    assert batch_ops.copy_splittable(batch)
    temps0 = batch.sampling_info.temperatures.clone()
    d = CascadeDriver(PluginConfig("sglang"), kv_capacity=1000, policy=ProbeScheduler())
    views = [d.views.view_of(r, 0.0)[0] for r in reqs]
    for v, grp in zip(views, [0, 1, 0, 1, 1]):
        v.group = grp
    d.applier = PlanApplier(
        IterationPlan(decode=[views[0], views[2]], held_groups={1}),
        known_running={r.rid for r in reqs},
        groups=d.views.groups,
    )
    d.select_decode(batch)
    hb = d.held_batch
    assert d.counters["copy_splits"] == 1 and not d.held and hb is not None
    assert [r.rid for r in batch.reqs] == ["r0", "r2"] and [r.rid for r in hb.reqs] == ["r1", "r3", "r4"]
    assert hb.req_pool_indices_cpu.tolist() == [2, 4, 5] and hb.seq_lens.tolist() == [6, 8, 9]
    assert hb.sampling_info is not batch.sampling_info and hb.sampling_info.temperatures.shape[0] == 3
    assert batch.sampling_info.temperatures.shape[0] == 2
    reqs[3].finished_reason = object()  # e.g. aborted while held: dropped at merge by SGLang's own filter
    reqs[3].finished = lambda: True
    merged = d.begin_step(
        SimpleNamespace(
            chunked_req=None,
            waiting_queue=[],
            tree_cache=None,
            token_to_kv_pool_allocator=SimpleNamespace(available_size=lambda: 900),
        ),
        batch,
        None,
    )
    assert d.held_batch is None and [r.rid for r in merged.reqs] == ["r0", "r2", "r1", "r4"]
    assert merged.req_pool_indices_cpu.tolist() == [1, 3, 2, 5] and merged.seq_lens.tolist() == [5, 7, 6, 9]
    assert merged.sampling_info.temperatures.tolist() == temps0[[0, 2, 1, 4]].tolist()


def test_batch_with_sampling_state_is_never_split(srt):
    reqs = [make_req(srt, "p", 4, out=1, pool_idx=1, frequency_penalty=0.5), make_req(srt, "q", 4, out=1, pool_idx=2)]
    _, batch = make_env(srt, reqs)
    assert not batch_ops.batch_splittable(batch)
    d = CascadeDriver(PluginConfig("sglang"), kv_capacity=100, policy=ProbeScheduler())
    views = {r.rid: RequestView(r.rid, 0, 4) for r in reqs}
    d.applier = PlanApplier(IterationPlan(decode=[views["q"]]), known_running=set(views))
    d.select_decode(batch)
    assert len(batch.reqs) == 2 and d.counters["unsplittable_steps"] == 1 and not d.held


def test_release_from_batch_uses_sglang_release_and_filter(srt):
    reqs = [make_req(srt, f"r{i}", 4, out=1, pool_idx=i + 1) for i in range(3)]
    _, batch = make_env(srt, reqs)
    released_idx = []
    batch.release_req = lambda idx, remaining, offload_kv=True: released_idx.append((idx, remaining, offload_kv))
    out = batch_ops.release_from_batch(batch, {"r1", "zz"})
    assert [r.rid for r in out] == ["r1"] and released_idx == [(1, 2, False)]
    assert [r.rid for r in batch.reqs] == ["r0", "r2"]


# --- driver: plan, moves, fallback -----------------------------------------------------------------------
class FakeAlloc:
    def __init__(self, free):
        self.free = free
        self.size = 1000

    def available_size(self):
        return self.free


def fake_sched(waiting):
    s = SimpleNamespace(
        waiting_queue=waiting,
        chunked_req=None,
        token_to_kv_pool_allocator=FakeAlloc(900),
        tree_cache=SimpleNamespace(evictable_size=lambda: 50),
        requeued=[],
    )

    def add(req, is_retracted=False):
        s.waiting_queue.append(req)
        s.requeued.append((req.rid, is_retracted))

    s._add_request_to_queue = add
    return s


class ListPolicy(InstanceScheduler):
    """Admits waiting in reverse arrival order, decodes everything; optionally raises."""

    def __init__(self, raise_on=()):
        self.calls, self.raise_on, self.arrived, self.finished = 0, set(raise_on), [], []

    def on_arrival(self, req, inst, now):
        self.arrived.append(req.rid)

    def on_finish(self, req, inst, now):
        self.finished.append((req.rid, req.output_len))

    def schedule(self, inst, now):
        self.calls += 1
        if self.calls in self.raise_on:
            raise ValueError("boom")
        return IterationPlan(
            prefill=[PrefillChunk(r, r.tokens_to_prefill) for r in reversed(inst.waiting)],
            decode=list(inst.running),
            reserve={r.rid: 16 for r in inst.waiting},
        )


def test_driver_plans_from_real_reqs_and_reports_engine_kv(srt):
    waiting = [make_req(srt, "w0", 6), make_req(srt, "w1", 3)]
    sched = fake_sched(list(waiting))
    pol = ListPolicy()
    d = CascadeDriver(PluginConfig("x"), kv_capacity=1000, policy=pol)
    d.begin_step(sched, None, None)
    # 900 free + 50 evictable radix-cache tokens: the policy sees 950 free (SGLang evicts cache on demand; when
    # the cache counted as used, a full cache starved admission until running requests finished)
    assert pol.arrived == ["w0", "w1"] and d.inst.kv_used == 50 and d.inst.kv_free_external == 950
    assert d.applier is not None and d.applier.reservation("w0") == 16
    d.order_waiting(sched.waiting_queue)
    assert [r.rid for r in sched.waiting_queue] == ["w1", "w0"]
    waiting[1].finished_reason = object()  # SGLang marks it finished; the result hook reports it
    waiting[1].output_ids.append(3)
    d.on_result([waiting[1]])
    assert pol.finished == [("w1", 1)] and d.counters["finished"] == 1 and "w1" not in d.views.views


def test_result_hook_finds_finishes_from_freed_rows(srt):
    """process_batch_result: a finished request frees its req_to_token row while SGLang processes the
    result. Freed rows of known running requests name the finished ones (no scan); an unknown freed row
    means a scan of the batch; no freed row, no scan, except every finish_scan_every-th result."""
    reqs = [make_req(srt, f"w{i}", 4) for i in range(4)]
    sched = fake_sched(list(reqs))
    pol = ListPolicy()
    d = CascadeDriver(PluginConfig("x", finish_scan_every=4), kv_capacity=1000, policy=pol)
    sched._cascade = d
    d.begin_step(sched, None, None)
    sched.req_to_token_pool = pool = SimpleNamespace(free_slots=[1, 2])
    reqs[2].kv.req_pool_idx = 7  # w2 runs in row 7
    d.views.note_row(d.views.views["w2"])
    assert d.views.rows == {7: d.views.views["w2"]}
    batch = SimpleNamespace(reqs=reqs)

    def process(s, b, finish=(), free=()):  # SGLang's result processing, as far as the hook sees it
        for r in finish:
            r.finished_reason = object()
            r.output_ids.append(5)
        pool.free_slots.extend(free)
        return "processed"

    finished = lambda: [f[0] for f in pol.finished]  # noqa: E731
    # result 1: w2's row 7 comes back (found from the row); w3 finished keeping its row: not scanned for
    assert hooks.process_batch_result_hook(process, sched, batch, [reqs[2], reqs[3]], [7]) == "processed"
    assert finished() == ["w2"] and 7 not in d.views.rows and d.counters["finished_by_row"] == 1
    assert d.counters["finish_scans"] == 0
    # result 2: a row we do not know (w0 finished in its prefill, say): the batch is scanned
    hooks.process_batch_result_hook(process, sched, batch, [reqs[0]], [9])
    assert sorted(finished()) == ["w0", "w2", "w3"]
    hooks.process_batch_result_hook(process, sched, batch, [reqs[1]])  # result 3: no row freed, no scan
    assert "w1" not in finished()
    hooks.process_batch_result_hook(process, sched, batch)  # result 4: the periodic scan finds it
    assert sorted(finished()) == ["w0", "w1", "w2", "w3"] and d.counters["finished"] == 4
    scans = d.counters["finish_scans"]
    # SGLang replaced its free list meanwhile (ReqToTokenPool.clear): the freed rows are unknown, so scan
    hooks.process_batch_result_hook(lambda s, b: setattr(pool, "free_slots", [1]), sched, batch)
    assert d.counters["finish_scans"] == scans + 1
    sched._cascade = None  # stock: the original runs untouched
    assert hooks.process_batch_result_hook(process, sched, batch) == "processed"


def test_policy_error_falls_back_and_server_keeps_going(srt):
    sched = fake_sched([make_req(srt, "w0", 6)])
    pol = ListPolicy(raise_on={2})
    d = CascadeDriver(PluginConfig("x"), kv_capacity=1000, policy=pol)
    sched._cascade = d
    ran = []

    def original(s, running_batch=None, last_batch=None):
        # inside the step the admission hooks consult the driver's applier
        ran.append(hooks.current_driver().applier is not None)
        return "batch"

    for _ in range(3):
        d.dirty = True
        assert hooks.get_next_batch_hook(original, sched, running_batch=None, last_batch=None) == "batch"
    assert ran == [True, False, True]  # the failing step ran as stock SGLang
    assert d.counters["policy_errors"] == 1 and d.counters["fallback_steps"] == 1 and d.counters["plans"] == 2
    assert hooks.current_driver() is None


def test_injected_failures_every_n_calls(srt):
    sched = fake_sched([make_req(srt, "w0", 6)])
    d = CascadeDriver(PluginConfig("x", fail_every=3), kv_capacity=1000, policy=ListPolicy())
    for _ in range(9):
        d.dirty = True
        d.begin_step(sched, None, None)
    assert d.counters["policy_errors"] == 3 and d.counters["plans"] == 6


def test_park_and_resume_through_the_driver(srt):
    reqs = [make_req(srt, f"r{i}", 4, out=2, pool_idx=i + 1) for i in range(3)]
    _, batch = make_env(srt, reqs)
    batch.release_req = lambda idx, remaining, offload_kv=True: None
    sched = fake_sched([])
    d = CascadeDriver(
        PluginConfig("x", host_kv_tokens=1000),
        kv_capacity=1000,
        policy=ProbeScheduler(ProbeConfig(park_every=2, park_after_tokens=1, park_steps=2, alternate_decode=0)),
    )
    d.begin_step(sched, batch, None)  # arrivals r0, r1 (2nd -> to park), r2; r1 parked at once
    assert d.counters["parked"] == 1 and list(d.parked) == ["r1"]
    assert [r.rid for r in batch.reqs] == ["r0", "r2"]
    assert d.views.views["r1"].phase is Phase.RUNNING  # refreshed to PARKED on the next plan
    d.dirty = True
    d.begin_step(sched, batch, None)
    assert d.views.views["r1"].phase is Phase.PARKED and d.counters["resumed"] == 0
    d.dirty = True
    d.begin_step(sched, batch, None)  # park_steps later: resumed through SGLang's retract re-queue
    assert d.counters["resumed"] == 1 and sched.requeued == [("r1", True)] and not d.parked
    # this scheduler stand-in has no KV pools: the host copy fails and the park falls back to recompute
    assert d.counters["host_copy_failures"] == 1 and d.counters["parked_recompute"] == 1
    assert d.counters["resumed_recompute"] == 1 and d.counters["parked_host"] == 0 and not d.host_kv


# --- host parking on real SGLang pools (MHA KV pool, allocator, req_to_token, radix cache) --------------
def make_kv_env(srt, n_reqs: int, prompt_len: int = 5, out: int = 3, layers: int = 2, size: int = 96):
    """Real CPU pools, requests holding rows and KV slots filled with distinct values, a decode batch."""
    from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool
    from sglang.srt.mem_cache.radix_cache import RadixCache

    kv = MHATokenToKVPool(
        size=size,
        page_size=1,
        dtype=torch.float32,
        head_num=2,
        head_dim=4,
        layer_num=layers,
        device="cpu",
        enable_memory_saver=False,
    )
    alloc = TokenToKVPoolAllocator(size, torch.float32, "cpu", kv, need_sort=False)
    r2t = srt.ReqToTokenPool(size=16, max_context_len=64, device="cpu", enable_memory_saver=False)
    tree = RadixCache(
        CacheInitParams(disable=False, req_to_token_pool=r2t, token_to_kv_pool_allocator=alloc, page_size=1)
    )
    gen = torch.Generator().manual_seed(0)
    reqs = []
    for i in range(n_reqs):
        req = make_req(srt, f"r{i}", prompt_len + i, out=out)
        n = req.seqlen - 1  # a decoding request's committed KV: all but its last sampled token
        r2t.alloc([req])
        loc = alloc.alloc(n)
        r2t.write((req.kv.req_pool_idx, slice(0, n)), loc.to(torch.int32))
        req.kv.kv_committed_len = req.kv.kv_allocated_len = n
        for layer in range(layers):
            kv.k_buffer[layer][loc] = torch.randn(n, 2, 4, generator=gen)
            kv.v_buffer[layer][loc] = torch.randn(n, 2, 4, generator=gen)
        reqs.append(req)
    mc = SimpleNamespace(is_encoder_decoder=False, vocab_size=VOCAB)
    spec = srt.Spec.from_string(None)
    sched = fake_sched([])
    sched.__dict__.update(
        device="cpu",
        req_to_token_pool=r2t,
        token_to_kv_pool_allocator=alloc,
        tree_cache=tree,
        model_config=mc,
        enable_overlap=False,
        spec_algorithm=spec,
        future_map=srt.FutureMap("cpu", spec, r2t, needs_cpu_seq_lens=True),
    )
    return sched, kv, batch_ops.build_decode_batch(sched, reqs), reqs


def kv_of(kv, r2t, req, layers: int = 2):
    loc = r2t.req_to_token[req.kv.req_pool_idx, : req.seqlen - 1].long()
    return [(kv.k_buffer[i][loc].clone(), kv.v_buffer[i][loc].clone()) for i in range(layers)]


def test_host_park_frees_device_kv_and_restores_it_without_recompute(srt):
    sched, kv, batch, reqs = make_kv_env(srt, 3)
    alloc, r2t, r1 = sched.token_to_kv_pool_allocator, sched.req_to_token_pool, reqs[1]
    before_kv, n = kv_of(kv, r2t, r1), r1.seqlen - 1
    free0, rows0 = alloc.available_size(), r2t.available_size()
    d = CascadeDriver(
        PluginConfig("x", host_kv_tokens=1000),
        kv_capacity=96,
        policy=ProbeScheduler(ProbeConfig(park_every=2, park_after_tokens=1, park_steps=2, alternate_decode=0)),
    )
    batch = d.begin_step(sched, batch, None)  # r1 (2nd arrival) parked through host memory
    assert d.counters["parked_host"] == 1 and d.counters["parked_recompute"] == 0 and list(d.parked) == ["r1"]
    assert [r.rid for r in batch.reqs] == ["r0", "r2"] and d.host_kv_used == n
    assert alloc.available_size() == free0 + n and r2t.available_size() == rows0 + 1  # device KV freed
    assert not r1.kv.holds_kv and r1.is_retracted  # an in-flight result for it would be skipped
    assert len(r1.output_ids) == 3  # its tokens are kept (nothing to recompute)
    # someone else takes (and scribbles over) the freed slots, then gives them back
    grab = alloc.alloc(alloc.available_size())
    for layer in range(2):
        kv.k_buffer[layer][grab] = 7.0
        kv.v_buffer[layer][grab] = -7.0
    alloc.free(grab)
    d.dirty = True
    batch = d.begin_step(sched, batch, None)
    assert d.counters["resumed_host"] == 0 and "r1" in d.parked
    d.dirty = True
    batch = d.begin_step(sched, batch, None)  # park_steps later: KV copied back, r1 rejoins the batch
    assert d.counters["resumed_host"] == 1 and d.counters["resumed_recompute"] == 0 and not d.parked
    assert sched.requeued == [] and d.host_kv_used == 0 and not d.host_kv
    assert [r.rid for r in batch.reqs] == ["r0", "r2", "r1"]
    assert r1.kv.holds_kv and not r1.is_retracted and r1.kv.kv_committed_len == n == r1.kv.kv_allocated_len
    assert alloc.available_size() == free0 and r2t.available_size() == rows0  # slots reallocated
    assert batch.seq_lens.tolist()[2] == n and sched.future_map.output_tokens_buf[r1.kv.req_pool_idx].item() == 12
    after_kv = kv_of(kv, r2t, r1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(before_kv, after_kv))


def test_group_mirror_follows_park_and_host_restore(srt):
    """A parked request's pool row is freed (and may be reused): its decode-group mirror goes with it, and
    it comes back under the new row the host restore gives it."""
    sched, kv, batch, reqs = make_kv_env(srt, 3)
    r1 = reqs[1]
    d = CascadeDriver(
        PluginConfig("x", host_kv_tokens=1000),
        kv_capacity=96,
        policy=ProbeScheduler(ProbeConfig(park_every=2, park_after_tokens=1, park_steps=2)),
    )
    for r in reqs:  # what the first step does (views, arrivals in order), so r1 can be grouped before
        d.policy.on_arrival(d.views.view_of(r, 0.0)[0], d.inst, 0.0)
    v1 = d.views.views["r1"]
    v1.group = 1
    slots = d.views.groups.by_slot
    old = r1.kv.req_pool_idx
    assert slots[old] == 2
    batch = d.begin_step(sched, batch, None)  # r1 parked through host memory
    assert d.counters["parked_host"] == 1 and list(d.parked) == ["r1"] and r1.kv.req_pool_idx is None
    assert v1._slot is None and d.views.groups.by_slot[old] == 0
    for _ in range(2):
        d.dirty = True
        batch = d.begin_step(sched, batch, None)
    assert d.counters["resumed_host"] == 1 and r1.kv.req_pool_idx is not None
    assert v1.group == 1 and v1._slot == r1.kv.req_pool_idx and d.views.groups.by_slot[r1.kv.req_pool_idx] == 2


def test_host_park_falls_back_to_recompute_when_the_budget_is_spent(srt):
    sched, kv, batch, reqs = make_kv_env(srt, 3)
    n = reqs[1].seqlen - 1
    d = CascadeDriver(
        PluginConfig("x", host_kv_tokens=n - 1),
        kv_capacity=96,
        policy=ProbeScheduler(ProbeConfig(park_every=2, park_after_tokens=1, park_steps=1, alternate_decode=0)),
    )
    free0 = sched.token_to_kv_pool_allocator.available_size()
    batch = d.begin_step(sched, batch, None)
    assert d.counters["parked_recompute"] == 1 and d.counters["parked_host"] == 0 and not d.host_kv
    assert sched.token_to_kv_pool_allocator.available_size() == free0 + n  # released all the same
    d.dirty = True
    batch = d.begin_step(sched, batch, None)
    assert sched.requeued == [("r1", True)] and d.counters["resumed_recompute"] == 1
    assert [r.rid for r in batch.reqs] == ["r0", "r2"]


def test_host_restore_waits_a_step_and_falls_back_when_slots_are_short(srt):
    sched, kv, batch, reqs = make_kv_env(srt, 3)
    d = CascadeDriver(
        PluginConfig("x", host_kv_tokens=1000),
        kv_capacity=96,
        policy=ProbeScheduler(ProbeConfig(park_every=2, park_after_tokens=1, park_steps=1, alternate_decode=0)),
    )
    batch = d.begin_step(sched, batch, None)
    assert d.counters["parked_host"] == 1
    alloc = sched.token_to_kv_pool_allocator
    hog = alloc.alloc(alloc.available_size())  # no free slot left for the restore
    d.dirty = True
    batch = d.begin_step(sched, batch, None)
    assert d.counters["host_restore_fallbacks"] == 1 and sched.requeued == [("r1", True)]
    assert d.counters["resumed_recompute"] == 1 and not d.host_kv and d.host_kv_used == 0
    alloc.free(hog)


def test_starvation_rules_admit_or_fall_back_to_stock_step(srt):
    """An empty plan while work waits: the shared rules (plan_rules.settle_plan) prefill the first waiting
    request that fits; when none can fit, the step is SGLang's own (``starvation_fallbacks``)."""

    class Idle(InstanceScheduler):
        def schedule(self, inst, now):
            return IterationPlan()

    # 900 free + 50 evictable: 950 tokens for the policy, "huge" needs 980
    sched = fake_sched([make_req(srt, "huge", 980), make_req(srt, "w0", 6)])
    d = CascadeDriver(PluginConfig("x"), kv_capacity=1000, policy=Idle())
    d.begin_step(sched, None, None)
    assert d.applier is not None and d.counters["stock_prefills"] == 1 and d.counters["starvation_fallbacks"] == 0
    assert d.applier.may_admit("w0") and not d.applier.may_admit("huge")
    sched = fake_sched([make_req(srt, "huge", 980)])
    d = CascadeDriver(PluginConfig("x"), kv_capacity=1000, policy=Idle())
    d.begin_step(sched, None, None)
    assert d.applier is None and d.counters["starvation_fallbacks"] == 1


def test_plan_reuse_when_stable(srt):
    class Stable(ListPolicy):
        def schedule(self, inst, now):
            p = super().schedule(inst, now)
            p.stable_steps = 3
            return p

    reqs = [make_req(srt, f"r{i}", 4, out=2, pool_idx=i + 1) for i in range(2)]
    _, batch = make_env(srt, reqs)
    pol = Stable()
    d = CascadeDriver(PluginConfig("x"), kv_capacity=1000, policy=pol)
    for _ in range(4):
        d.begin_step(fake_sched([]), batch, None)
    assert pol.calls == 2 and d.counters["reused_plans"] == 2  # plan, reuse, reuse, plan


# --- probe policy and messages ---------------------------------------------------------------------------
def test_probe_policy_parks_and_alternates():
    pol = ProbeScheduler(ProbeConfig(park_every=2, park_after_tokens=1, park_steps=1))
    inst = InstanceView(iid=0, kv_capacity=1000, host_kv_capacity=100)
    rs = [RequestView(f"r{i}", 0, 4, output_len=1, phase=Phase.RUNNING) for i in range(3)]
    for r in rs:
        pol.on_arrival(r, inst, 0)
        inst.running.append(r)
    p1 = pol.schedule(inst, 0)
    assert [r.rid for r in p1.park] == ["r1"]
    # groups on first sight, alternately (r1 is being parked): r0 -> 0, r2 -> 1; call 1 decodes group 1
    assert [r.rid for r in p1.decode] == ["r2"] and p1.held_groups == {1 - 1} and (rs[0].group, rs[2].group) == (0, 1)
    inst.running.remove(rs[1])
    inst.parked.append(rs[1])
    p2 = pol.schedule(inst, 0)  # r1 resumes into group 0, whose turn it is
    assert [r.rid for r in p2.resume] == ["r1"] and [r.rid for r in p2.decode] == ["r0", "r1"]
    assert p2.held_groups == {1} and rs[1].group == 0


def test_load_message_roundtrip_and_pubsub():
    from sglang_cascade.plugin.publisher import LoadPublisher, LoadSubscriber

    load = InstanceLoad(iid=2, num_running=3, kv_used=40, kv_capacity=100, range_lo=10, range_hi=None, published_at=5.0)
    msg = decode_load(encode_load(LoadMessage.from_load(load, seq=4, policy="cascade", counters={"parked": 1})))
    assert msg.to_load() == load and msg.counters == {"parked": 1} and msg.seq == 4
    pub = LoadPublisher("tcp://127.0.0.1:*")
    addr = pub._sock.getsockopt_string(__import__("zmq").LAST_ENDPOINT)
    sub = LoadSubscriber(addr)
    got = None
    for _ in range(50):  # PUB/SUB slow joiner: publish until the subscriber is connected
        pub.publish(load, policy="p", counters={"steps": 9})
        got = sub.recv(timeout_ms=100)
        if got is not None:
            break
    pub.close()
    sub.close()
    assert got is not None and got.iid == 2 and got.counters == {"steps": 9} and got.policy == "p"


def test_abort_reaches_parked_and_held_requests(srt):
    reqs = [make_req(srt, f"r{i}", 4, out=2, pool_idx=i + 1) for i in range(3)]
    env_sched, batch = make_env(srt, reqs)
    sched = fake_sched([])
    for k in (
        "device",
        "req_to_token_pool",
        "token_to_kv_pool_allocator",
        "tree_cache",
        "model_config",
        "enable_overlap",
        "spec_algorithm",
        "future_map",
    ):
        setattr(sched, k, getattr(env_sched, k))
    sched.running_batch = batch
    d = CascadeDriver(PluginConfig("x"), kv_capacity=1000, policy=ListPolicy())
    parked, held = make_req(srt, "p-1", 4, out=2), batch_ops.split_batch(batch, [0])  # r1, r2 held back
    d.parked["p-1"], d.held = parked, held
    sched._cascade = d
    hooks.abort_request_hook(sched, SimpleNamespace(rid="r2", abort_all=False))  # SGLang matches by prefix
    assert not d.held and [r.rid for r in sched.running_batch.reqs] == ["r0", "r1", "r2"]
    assert d.parked and sched.requeued == []  # "r2" does not match the parked "p-1"
    hooks.abort_request_hook(sched, SimpleNamespace(rid="p-", abort_all=False))
    assert not d.parked and sched.requeued == [("p-1", True)]  # now in the waiting queue SGLang aborts from


def test_scheduler_init_hook_attaches_driver_or_fails_clearly(srt):
    def sched():
        return SimpleNamespace(
            token_to_kv_pool_allocator=FakeAlloc(1000),
            max_prefill_tokens=4096,
            max_running_requests=64,
            max_total_num_tokens=1000,
        )

    ok = sched()
    sa = SimpleNamespace(**{hooks.CONFIG_ATTR: PluginConfig("plugin_probe:park_every=0").to_dict()})
    hooks.scheduler_init_hook(None, ok, sa, None)
    assert isinstance(ok._cascade, CascadeDriver) and ok._cascade.policy.cfg.park_every == 0
    assert ok._cascade.inst.kv_capacity == 1000 and ok._cascade.inst.max_running == 64
    stock = sched()
    hooks.scheduler_init_hook(None, stock, SimpleNamespace(), None)
    assert not hasattr(stock, "_cascade")
    bad = SimpleNamespace(**{hooks.CONFIG_ATTR: PluginConfig("cascade", options={"bogus": 1}).to_dict()})
    with pytest.raises(RuntimeError, match="could not build the policy.*bogus"):
        hooks.scheduler_init_hook(None, sched(), bad, None)
