"""The ``cascade`` instance scheduler: EcoServe-style admission (KV reserved for the predicted length, KV
pipelining) and AlignedServe-style decode (KV-length-aligned batches over a CPU-offloaded request pool),
composed over InstanceView / RequestView / IterationPlan.

:meth:`CascadeScheduler.schedule` is the sequence of its phases, each a method taking the call's
:class:`~.instance_step.StepContext`:

1. *Bookkeeping* (instance_bookkeeping.py): requests whose prefill completed join the aligned index;
   requests that landed with KV are adopted; the tracks are reconciled with the driver's lists.
2. *Events* (ecoserve_admission.py): due events only (a request crossed its KV-length bucket, or reached
   its reservation limit): re-bucket, recall loans, extend reservations, and when the pool is exhausted
   park/preempt by the fixed rule of admission.py. Never every request (see aligned.py).
3. *Prefill queue + admission* (ecoserve_admission.py, the EcoServe parts): in-progress chunked prefills
   continue, parked requests resume first, then waiting requests are admitted in KV-holding-first order
   while their predicted KV fits (own reservation, a loan, or the pool-level profile), up to
   ``max_prefill_tokens`` prefill tokens.
4. *Decode* (alignedserve_decode.py, the AlignedServe parts): the aligned batch (head bucket + cheap
   merges) after resuming its parked members; parked members of the next bucket are prefetched; the
   physical-KV guard sheds what does not fit.

Options (factory keywords, also ``"cascade:pipelining=0,aligned=0,offload=0,predictor=oracle"``) are the
leaf fields of :class:`CascadeSchedulerConfig` (see core/options.py): ``reserve``, ``pipelining`` (0, 1 =
owner loans, 2 = owner loans + pool-level profile; needs ``reserve=1``), ``holdfirst``, ``loan_margin``
(admission.py); ``aligned``, ``merge``, ``kv_base``, ``kv_ratio``, ``max_batch`` (aligned.py);
``offload``, ``overadmit``, ``prefetch``, ``pool_factor`` (offload.py); ``quantile``, ``bucket_ratio``
(predictor.py); ``predictor`` (bucket | oracle | fixed); ``check`` (assert invariants every iteration;
tests). Factory keywords outside the config: ``predictor=<object>`` (a predictor.LengthPredictor),
``warm_start=[(prompt_len, output_len), ...]`` and ``warm=1`` (warm-start from ``ctx.length_sample``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.decisions import IterationPlan
from ..core.interfaces import InstanceScheduler
from ..core.options import config_from_options
from ..core.views import InstanceView, Phase, RequestView
from .admission import GPU_STATE, HOST_STATE, AdmissionConfig, KVLedger, Track, WaitQueues
from .aligned import AlignedConfig, AlignedIndex, KBucket
from .alignedserve_decode import AlignedServeDecode
from .ecoserve_admission import EcoServeAdmission
from .instance_bookkeeping import Bookkeeping
from .instance_step import SchedStats, StepContext
from .offload import OffloadConfig
from .predictor import LengthPredictor, PredictorConfig, make_predictor
from .sglang_order import SPF


@dataclass(frozen=True)
class CascadeSchedulerConfig:
    """Every option of the ``cascade`` instance scheduler; an option key is a leaf field's name."""

    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    batching: AlignedConfig = field(default_factory=AlignedConfig)
    pool: OffloadConfig = field(default_factory=OffloadConfig)
    prediction: PredictorConfig = field(default_factory=PredictorConfig)
    predictor: str = "bucket"  # bucket | oracle | fixed (predictor.make_predictor)
    check: bool = False  # verify invariants every iteration (tests; O(n))


class CascadeScheduler(Bookkeeping, EcoServeAdmission, AlignedServeDecode, InstanceScheduler):
    name = "cascade"

    def __init__(
        self,
        cost_model,
        cfg: CascadeSchedulerConfig | None = None,
        predictor: LengthPredictor | None = None,
        warm_start: list[tuple[int, int]] | None = None,
        schedule_policy: str = "fcfs",
    ):
        self.cm = cost_model
        self.cfg = cfg or CascadeSchedulerConfig()
        self.predictor = predictor or make_predictor(self.cfg.predictor, self.cfg.prediction, warm_start)
        self.ledger: KVLedger | None = None
        self.index = AlignedIndex(self.cfg.batching)
        order = self.cfg.admission.prefill_order or schedule_policy  # the engine's --schedule-policy by default
        self.waitq = WaitQueues(self.cfg.admission.holdfirst, shortest_first=order == SPF)
        self.tracks: dict[str, Track] = {}  # on GPU or prefilling, in admission order
        self.host: dict[str, Track] = {}  # parked, in park order
        self.prefilling: dict[str, Track] = {}
        self.host_used = 0
        self.stats = SchedStats()
        self.rejected: set[str] = set()  # longer than GPU KV capacity: never admitted (reported)
        self._seq = 0
        self._it = 0
        self._iid = -1
        self._plan: IterationPlan | None = None  # the last plan
        self._served: list[KBucket] = []  # buckets decoded by the last plan
        self._inst_iter: int | None = None  # InstanceView.iteration at the last schedule()
        self._first_prediction: dict[str, int] = {}  # prediction made at first admission (accuracy stats)
        self._debt = False  # the driver placed KV beyond our reservations (migrations, resync)
        self._incoming: list[RequestView] = []  # running requests that arrived with KV (migrations)

    # ------------------------------------------------------------------------------------------ schedule
    def schedule(self, inst: InstanceView, now: float) -> IterationPlan:
        step = self._begin(inst)
        tight = self._complete_prefills(step)
        self._sync_with_views(step)
        for t in tight:
            if self.tracks.get(t.req.rid) is t and self.ledger is not None:
                self._handle_event(t, step)
        self._handle_due_events(step)
        self._continue_prefills(step)  # EcoServe: the prefill queue
        if self.host:
            self._resume_fifo(step)  # parked requests hold KV: they go before new admissions
        self._admit_waiting(step, now)  # EcoServe: reservation, loans, pooled profile
        self._decode_batch(step)  # AlignedServe: aligned batch, resume, prefetch
        self._fit_physical_kv(step)
        nonempty = self._mark_held_groups(step)
        self._record_sizes()
        self._set_stable_steps(step, nonempty)
        if self.cfg.check:
            self.check_invariants(inst, step.plan)
        self._served = step.served
        self._plan = step.plan
        return step.plan

    def _begin(self, inst: InstanceView) -> StepContext:
        """The call's context; the fast-forward catch-up; the ledger (re)built for this instance."""
        self._it += 1
        self._iid = inst.iid
        self.stats.iterations += 1
        pool = self.cfg.pool
        step = StepContext(
            inst=inst,
            iteration=self._it,
            plan=IterationPlan(),
            kv_capacity=inst.kv_capacity,
            host_capacity=inst.host_kv_capacity if pool.offload else 0,
            move_budget=pool.max_move_tokens,
            gpu_kv=inst.kv_used,
            prefill_budget=inst.max_prefill_tokens,
        )
        self._catch_up_fast_forward(inst)
        if self.ledger is None:
            self._resync(inst)
        elif self.ledger.capacity != inst.kv_capacity:
            self.ledger.capacity = inst.kv_capacity
        return step

    def _handle_due_events(self, step: StepContext) -> None:
        """Bucket crossings and reservation limits that came due (per-bucket heaps: only those)."""
        for b in list(self.index.buckets.values()):
            if b.heap and b.heap[0][0] <= b.cnt:
                for t in self.index.due(b):
                    self._handle_event(t, step)

    def _record_sizes(self) -> None:
        index, stats = self.index, self.stats
        if index.n_gpu > stats.max_running:
            stats.max_running = index.n_gpu
        in_flight = index.n_gpu + index.n_host + len(self.prefilling)
        if in_flight > stats.max_in_flight:
            stats.max_in_flight = in_flight

    # ------------------------------------------------------------------------------------------ hooks
    def on_arrival(self, req: RequestView, inst: InstanceView, now: float) -> None:
        if req.phase == Phase.RUNNING and req.kv_tokens > 0:  # landed with its KV (live migration)
            self._incoming.append(req)
        else:
            self.waitq.push_new(req)

    def on_finish(self, req: RequestView, inst: InstanceView, now: float) -> None:
        t = self.tracks.pop(req.rid, None) or self.host.pop(req.rid, None)
        if t is not None:
            if t.state == HOST_STATE:
                self.host_used -= t.req.kv_tokens
            self._leave_gpu(t)
            self.index.remove(t)
            self.prefilling.pop(req.rid, None)
        self.waitq.discard(req.rid)
        first = self._first_prediction.pop(req.rid, None)
        current = req.predicted_output_len
        req.predicted_output_len = first if first is not None else current
        self.predictor.observe(req, req.output_len)
        req.predicted_output_len = current

    def on_kv_exhausted(self, inst: InstanceView, now: float, needed: int) -> list[RequestView]:
        """The engine could not allocate: retract newest-admitted requests until ``needed`` is covered
        (the driver frees their KV and puts them back in waiting)."""
        self.stats.kv_exhausted_calls += 1
        out: list[RequestView] = []
        freed = 0
        for t in list(reversed(self.tracks.values())):
            if freed >= needed:
                break
            if t.state != GPU_STATE:
                continue
            freed += t.req.kv_tokens
            self._drop(t)
            self.waitq.push_retracted(t.req)
            self.stats.preempted += 1
            out.append(t.req)
        return out

    def metrics(self) -> dict[str, Any]:
        m: dict[str, Any] = dict(self.stats.as_dict())
        m.update(self.predictor.stats.as_dict())
        if self.ledger is not None:
            m["loans_made"] = self.ledger.loans_made
            m["max_borrowers"] = self.ledger.max_borrowers
        return m

    # ------------------------------------------------------------------------------------------ helpers
    def _claim_target(self, r: RequestView) -> int:
        """Total KV tokens to reserve: prompt + predicted output (extended when already exceeded)."""
        predicted = r.predicted_output_len
        if predicted is None:
            p = self.predictor.predict(r)
            r.predicted_output_len, r.prediction_confidence = p.output_len, p.confidence
            self._first_prediction.setdefault(r.rid, p.output_len)
            predicted = p.output_len
        if predicted <= r.output_len:
            predicted = self._extend_prediction(r)
        return r.prompt_len + predicted

    def _extend_prediction(self, r: RequestView) -> int:
        """Overrun rule: the prediction moves to the next bucket's upper edge (doubling for ratio 2)."""
        bucket = self.predictor.bucket_of(max(1, r.output_len)) + 1
        predicted = max(self.predictor.bucket_upper(bucket), r.output_len + self.cfg.admission.min_extension)
        if r.max_new_tokens:
            predicted = min(predicted, max(r.max_new_tokens, r.output_len + 1))
        r.predicted_output_len = predicted
        return predicted

    def _pred_bucket(self, r: RequestView) -> int:
        return self.predictor.bucket_of(r.predicted_output_len or 1)

    def _leave_gpu(self, t: Track) -> None:
        """Release ``t``'s reservation; its borrowers become owners (their event limits change)."""
        if self.ledger is None or not t.claim and t.lender is None:
            t.claim = 0
            return
        for b in self.ledger.release(t):
            if b.state == GPU_STATE and b.kbucket >= 0:
                self.index.push_event(b)

    def _drop(self, t: Track) -> None:
        """Forget a GPU/prefill request (preempted or retracted)."""
        self.tracks.pop(t.req.rid, None)
        self.prefilling.pop(t.req.rid, None)
        self._leave_gpu(t)
        self.index.remove(t)

    def _set_reserve(self, plan: IterationPlan, t: Track) -> None:
        r = t.req
        if r.instance not in (-1, self._iid):
            return
        r.reserved_kv = max(0, t.claim - r.kv_tokens) if t.claim else 0
        plan.reserve[r.rid] = r.reserved_kv

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq


def make_cascade_scheduler(ctx, **options) -> CascadeScheduler:
    """Factory for the registry name ``cascade``: ``options`` are :class:`CascadeSchedulerConfig` leaf
    fields, plus ``predictor=<object>``, ``warm_start=[...]`` and ``warm=1`` (see the module docstring)."""
    options = dict(options)
    predictor = options.pop("predictor") if not isinstance(options.get("predictor", ""), str) else None
    warm_start = options.pop("warm_start", None)
    if options.pop("warm", 0) and warm_start is None:
        warm_start = list(getattr(ctx, "length_sample", []) or [])
    cfg = config_from_options(CascadeSchedulerConfig, options, what="the cascade instance scheduler")
    return CascadeScheduler(ctx.cost_model, cfg, predictor, warm_start, ctx.schedule_policy)
