"""Per-call state of one :meth:`CascadeScheduler.schedule` call, and the scheduler's counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.decisions import IterationPlan
from ..core.views import InstanceView
from .admission import Track
from .aligned import KBucket


@dataclass(slots=True, eq=False)
class StepContext:
    """Everything one ``schedule()`` call computes and its phases share (nothing of it outlives the call)."""

    inst: InstanceView
    iteration: int  # the scheduler's own call count (aligned-index stamps)
    plan: IterationPlan
    kv_capacity: int  # GPU KV tokens of the instance
    host_capacity: int  # host KV tokens usable for parking (0: offload off or no host pool)
    move_budget: int  # KV tokens this plan may still park + resume (bounds PCIe time)
    gpu_kv: int  # GPU KV after this plan's moves so far (greedy-mode resume / admission checks)
    prefill_budget: int  # prefill tokens this plan may still schedule
    prefill_tokens: int = 0  # prefill tokens scheduled so far
    host_freed: int = 0  # host KV released by this plan's resumes (usable only by the next plan)
    moved: set[str] = field(default_factory=set)  # rids parked / resumed / preempted by this plan
    pool_limit: int | None = None  # over-admission: in-flight cap, computed once when first needed
    profile: tuple[list, list] | None = None  # pipelining=2: future KV profile, built when the pool is full
    served: list[KBucket] = field(default_factory=list)  # buckets decoded by this plan
    partial: list[Track] = field(default_factory=list)  # members decoding of buckets served in part
    partial_groups: set[int] = field(default_factory=set)  # indices of those buckets


@dataclass
class SchedStats:
    iterations: int = 0
    admitted: int = 0
    admitted_on_loan: int = 0
    loans_recalled: int = 0
    borrower_evictions: int = 0  # recalled borrowers that had to leave the GPU (misprediction cost)
    extensions: int = 0
    overrun_evictions: int = 0  # requests parked/preempted to cover someone's overrun
    preempted: int = 0
    parked: int = 0
    resumed: int = 0
    prefetched: int = 0
    kv_exhausted_calls: int = 0
    admitted_pooled: int = 0  # pipelining=2: admitted on the predicted KV profile without a reservation
    resyncs: int = 0
    max_in_flight: int = 0
    max_running: int = 0
    too_long: int = 0  # longer than GPU KV capacity: never admitted (reported)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)
