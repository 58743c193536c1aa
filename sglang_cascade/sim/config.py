"""Simulator configuration and result types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.costmodel import CostModel
from ..core.traces import LENGTH_SAMPLE_SIZE, TraceRequest
from ..core.views import RequestView


class SimError(RuntimeError):
    """A policy returned an impossible decision, or the run cannot make progress."""


@dataclass
class SimConfig:
    """One simulated deployment: N instances of one model behind one router.

    Times in seconds, sizes in tokens.
    """

    model: str = "llama-3-8b"
    gpu: str = "h100"
    tp: int = 1
    attention_backend: str = "flashinfer"  # SGLang --attention-backend the cost model times (flashinfer|fa3|triton)
    instances: int = 1
    router: str = "round_robin"
    scheduler: str = "sglang"
    slo_ttft: float = 2.0  # goodput: a request is good when its TTFT <= slo_ttft ...
    slo_tpot: float = 0.1  # ... and its TPOT <= slo_tpot
    slo_ttft_scale: float = 0.0  # > 0: a request's TTFT SLO is max(slo_ttft, this x its prompt's isolated prefill
    # time: CostModel.isolated_prefill_time at max_prefill_tokens), so a prompt whose prefill alone exceeds
    # slo_ttft can still meet it (DistServe-style SLO scale; Mooncake's 100K-token prompts); 0: slo_ttft for all
    seed: int = 0
    publish_interval: float = 0.05  # instances publish InstanceLoad every this many seconds (staleness)
    rebalance_interval: float | None = None  # RouterPolicy.rebalance period (routers that override it);
    # None = the router's own ``rebalance_interval`` attribute if it has one (Llumnix: 0.05 s), else 0.5 s
    max_prefill_tokens: int = 8192  # chunked-prefill token budget per iteration (InstanceView.max_prefill_tokens)
    mixed_chunk: bool = False  # SGLang's --enable-mixed-chunk: one forward may run prefill chunks and decode
    # steps together. False (SGLang's default): a plan with prefill chunks runs them alone and its decode part
    # waits for the next iteration, whatever the scheduler planned (SGLang runs a prefill batch as a forward of
    # its own; the plugin cannot change that); the `sglang` scheduler mixes its running batch into a prefill
    # forward only when True (PolicyContext.mixed_chunk)
    schedule_policy: str = "fcfs"  # SGLang's --schedule-policy on every engine (PolicyContext.schedule_policy):
    # fcfs | lpm | shortest-prefill-first | hrrn (policies/sglang_order.py)
    prefix_cache_block: int = 512  # SGLang's radix cache (on by default there), at the size in tokens of the
    # trace's prefix blocks (hash_ids; Mooncake's: 512): a request reuses the cached leading blocks of its prompt on
    # its instance and prefills only the rest (sim/prefix_cache.py). Acts only on traces with hash_ids (the length
    # tables have none); 0 = SGLang's --disable-radix-cache, or prompts that share nothing (random token ids, as
    # `sglang-cascade replay` sends)
    host_kv_tokens: int = 0  # host-memory KV pool per instance for parking (0 = none)
    paired_prefetch: bool = False  # instances 2k and 2k+1 are paired: host<->GPU KV moves may use the
    # partner's PCIe link and an NVLink hop (policies.offload.kv_move_time(paired=True)); an odd last
    # instance has no partner
    kv_capacity: int | None = None  # GPU KV tokens per instance; None = cost_model.kv_capacity_tokens()
    max_running: int = 0  # InstanceView.max_running; 0 = SGLang's rule: clamp(cap / context * 512, 2048, 4096)
    max_new_tokens: int | None = None  # max_new_tokens every request carries (None: the client sent none)
    max_new_tokens_from_trace: bool = False  # each request carries its true output length as max_new_tokens
    # (with ignore_eos), as `sglang-cascade replay` sends it; SGLang's admission then reserves that length
    # policy options, merged over those in the names ("cascade:migration=0"); keys = field names of the policy's
    # config dataclass (core.options.config_from_options), an unknown key fails when the policy is built
    router_options: dict[str, Any] = field(default_factory=dict)
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    plan_check: bool = True  # give routers a simulator plan checker (PolicyContext.plan_checker): cascade
    # scores its candidate stage plans on replays with it (policies/plan_check.py); the replays run without
    record_schedule: bool = False  # keep IterationRecords per instance (memory grows with iterations)
    exact_steps: bool = False  # time every fast-forwarded decode step with the cost model (else affine fit)
    fast_forward: bool = True  # honour IterationPlan.stable_steps
    affine_tolerance: float = 0.002  # max relative error of the affine fit at a segment's midpoint
    check_invariants: bool = False  # recount KV from the request lists after every iteration (tests)
    migration_stop_copy_tokens: int = 256  # KV transfer: stop-and-copy once a stage left fewer new tokens
    # (Llumnix LAST_STAGE_MAX_BLOCKS = 16 blocks of 16 tokens)
    migration_max_stages: int = 3  # KV transfer: pre-copy stages before the stop-and-copy (Llumnix MAX_STAGES)
    migration_retry_tokens: int = 1  # tokens between migrate() calls for a request past its bound
    # (at least: a router's migration_bound after a refused migrate() may ask for a later retry)
    migration_overhead_s: float = 0.0  # KV transfer: seconds a move's stop-and-copy adds beyond the copy (the live
    # router's stop, tail export / import and the destination's resume; scripts/check_prefill_pool_live.py measures
    # it on the CPU engine; 0 = the copy alone)
    stage_first_kv: bool = True  # KV staging (the router's stage op, plugin/kv_stage.py): a request whose router
    # bound at dispatch says it moves at its first token (a prefill-pool member's long prompt) has its KV exported
    # by the source as its prefill ends, so a KV-transfer move copies it at once and the request leaves the
    # source then, never waiting for the source's next iteration (a long prefill chunk); False = the export waits
    # for the source's next iteration boundary like any other move
    migration_link: str = ""  # KV-transfer copy time: "" = CostModel.device_to_device_time (datasheet
    # NVLink); "nvlink" | "infiniband" | "tcp" = Vidur's measured H100 send_recv curve
    # (policies/migration_link.py), the same curve the cascade migration planner uses to choose the mode
    result_lag: bool | None = None  # SGLang's overlap scheduler on a synchronous device (the CPU engine): a
    # batch's tokens are processed, so the client sees a first token or a finish, only after the next batch's
    # forward has run (one iteration later; at once when the instance goes idle). None = the hardware
    # profile's "result_lag" (core/hardware.py; cpu-engine: true), False elsewhere (a GPU overlaps it)
    co_run_slowdown: float | dict | None = None  # instances share one host: an iteration that starts while k of
    # the other n - 1 instances are busy runs (1 + s x k / (n - 1)) times longer, s = {"decode": .., "prefill": ..}
    # by the iteration's kind (one with a prefill chunk is a prefill iteration; a float: both); a decode iteration
    # next to a co-runner running a prefill: "decode_next_to_prefill" (default "decode"; measured 0.177 vs 0.029
    # next to a mixed co-runner, docs/results/cpu_engine_co_run_kind.txt). The factor is taken when an iteration
    # starts; with fast_forward a segment keeps its first step's. None = the
    # hardware profile's "co_run_slowdown" (cpu-engine: measured by calibrate_cpu_engine.py --co-runner),
    # 0 elsewhere (one GPU per instance)
    time_scale: float | tuple[float, float] = 1.0  # every iteration this many times longer than the cost model
    # says, or (decode, prefill): an iteration with a prefill chunk takes the second. The measured speed of the
    # machine during one real run over its calibration (scripts/eval_fidelity.py's drift-normalized comparison:
    # replay.fidelity.step_speed); 1.0 elsewhere
    length_sample_size: int = (
        LENGTH_SAMPLE_SIZE  # (prompt, output) pairs of the trace given to policies (PolicyContext)
    )
    warm_start: tuple = ()  # requests in flight at t = 0: (instance, prompt, generated, output, kv_tokens) each
    # (a plan check's replay starts from the live cluster's state; EventLoop._place_warm)
    cost_model: CostModel | None = None  # override the model built from (model, gpu, tp)


@dataclass(slots=True)
class IterationRecord:
    """One engine iteration of one instance (the optimal solver's feasibility checker reads these)."""

    start: float
    duration: float
    prefill: list[tuple[str, int]] = field(default_factory=list)  # (rid, tokens computed)
    decode: list[str] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    parked: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)


@dataclass
class SimResult:
    metrics: dict[str, Any]
    requests: list[RequestView]  # finished requests
    schedules: list[list[IterationRecord]] | None = None  # per instance, when record_schedule
    rejected: list[TraceRequest] = field(default_factory=list)  # could never fit one instance's KV pool
    config: SimConfig | None = None
