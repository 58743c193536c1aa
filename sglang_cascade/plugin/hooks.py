"""The hooks the plugin registers with SGLang's ``HookRegistry`` (sglang 0.5.23).

Every hook is a no-op pass-through unless ``--scheduler-plugin`` was given: without the flag the
scheduler has no ``_cascade`` driver and each wrapper calls SGLang's original at once.

Targets are class attributes that SGLang looks up at call time (``self.method(...)``), so hooks applied
by ``load_plugins()`` inside the spawned scheduler process take effect even though that process imported
SGLang while unpickling its arguments.
"""

from __future__ import annotations

import logging
from typing import Any

from .config import PluginConfig, add_arguments, config_from_namespace

logger = logging.getLogger("sglang_cascade.plugin")

SERVER_ARGS = "sglang.srt.server_args.ServerArgs"
SCHEDULER = "sglang.srt.managers.scheduler.Scheduler"
POLICY = "sglang.srt.managers.schedule_policy.SchedulePolicy"
ADDER = "sglang.srt.managers.schedule_policy.PrefillAdder"

CONFIG_ATTR = "_cascade_plugin"  # underscore bookkeeping attribute on ServerArgs (pickled with it)

# The driver of the scheduler step in progress (one scheduler per process); read by the hooks on
# SchedulePolicy / PrefillAdder, which have no reference to the scheduler.
_current = None


def current_driver():
    return _current


# --- CLI ------------------------------------------------------------------------------------------------
def add_cli_args_hook(original, parser, *args, **kwargs):
    result = original(parser, *args, **kwargs)
    add_arguments(parser)
    return result


def from_cli_args_hook(original, cls, args, *rest, **kwargs):
    cfg = config_from_namespace(args)
    server_args = original(cls, args, *rest, **kwargs)
    if cfg is not None:
        setattr(server_args, CONFIG_ATTR, cfg.to_dict())
    return server_args


def plugin_config(server_args: Any) -> PluginConfig | None:
    d = getattr(server_args, CONFIG_ATTR, None) if server_args is not None else None
    return PluginConfig.from_dict(d) if d else None


# --- scheduler lifecycle -------------------------------------------------------------------------------
def scheduler_init_hook(result, sched, *args, **kwargs):
    server_args = kwargs.get("server_args", args[0] if args else None)
    cfg = plugin_config(server_args)
    if cfg is None:
        return None
    from .driver import CascadeDriver

    try:
        sched._cascade = CascadeDriver.for_scheduler(sched, cfg)
    except Exception as exc:
        raise RuntimeError(f"--scheduler-plugin {cfg.scheduler!r}: could not build the policy: {exc}") from exc
    _start_kv_endpoint(sched, server_args)
    logger.info(
        "cascade plugin active: scheduler=%s aligned_decode=%s publish=%s",
        cfg.scheduler,
        cfg.aligned_decode,
        cfg.publish_addr,
    )
    return None


def _start_kv_endpoint(sched, server_args) -> None:
    host = getattr(server_args, "host", None) or "127.0.0.1"
    sched._cascade_kv = sched._cascade_stage = None
    try:
        from .kv_endpoint import KVEndpoint

        sched._cascade_kv = KVEndpoint(sched, host=host)
        logger.info("cascade KV migration endpoint at %s", sched._cascade_kv.addr)
    except Exception as exc:  # the router then migrates by recompute
        logger.warning("cascade KV migration endpoint not started: %r", exc)
        return
    try:
        from .kv_stage import KVStage

        sched._cascade_stage = KVStage(host=host)
        logger.info("cascade KV stage endpoint at %s", sched._cascade_stage.addr)
    except Exception as exc:  # the router then exports through the KV endpoint only
        logger.warning("cascade KV stage endpoint not started: %r", exc)


def ingest_requests_hook(result, sched, *args, **kwargs):
    ep = getattr(sched, "_cascade_kv", None)
    if ep is not None:
        ep.serve()
    return None


def get_internal_state_hook(result, sched, *args, **kwargs):
    ep = getattr(sched, "_cascade_kv", None)
    state = getattr(result, "internal_state", None)
    if ep is not None and isinstance(state, dict):
        from ..core.kv_messages import STAGE_STATE_KEY, STATE_KEY

        state[STATE_KEY] = ep.addr
        stage = getattr(sched, "_cascade_stage", None)
        if stage is not None:
            state[STAGE_STATE_KEY] = stage.addr
    return None


def get_next_batch_hook(original, sched, *args, **kwargs):
    global _current
    d = getattr(sched, "_cascade", None)
    if d is None:
        return original(sched, *args, **kwargs)
    args = list(args)
    if args:
        running_batch = args[0]
    else:
        running_batch = kwargs["running_batch"]
    last_batch = args[1] if len(args) > 1 else kwargs.get("last_batch")
    running_batch = d.begin_step(sched, running_batch, last_batch)
    if args:
        args[0] = running_batch
    else:
        kwargs["running_batch"] = running_batch
    _current = d
    try:
        return original(sched, *args, **kwargs)
    finally:
        _current = None
        d.end_step()


def update_running_batch_hook(original, sched, batch, *args, **kwargs):
    d = getattr(sched, "_cascade", None)
    if d is not None:
        try:
            d.select_decode(batch)
        except Exception as exc:
            d._fail("decode subset", exc)
    return original(sched, batch, *args, **kwargs)


def process_batch_result_hook(original, sched, batch, *args, **kwargs):
    d = getattr(sched, "_cascade", None)
    if d is None or batch is None:
        return original(sched, batch, *args, **kwargs)
    # A finished request gives its req_to_token row back while SGLang processes the result (nothing is
    # allocated there; ReqToTokenPool.free_rows appends to free_slots): the rows appended meanwhile say
    # which requests finished (CascadeDriver.after_result); anything unexpected means "scan the batch".
    stage = getattr(sched, "_cascade_stage", None)
    if stage is not None and stage.wanted:
        stage.capture(sched, batch)  # before the first tokens are streamed (never raises)
    pool = getattr(sched, "req_to_token_pool", None)
    slots = getattr(pool, "free_slots", None)
    n0 = len(slots) if type(slots) is list else None
    result = original(sched, batch, *args, **kwargs)
    freed: bool | list = True
    if n0 is not None:
        slots = pool.free_slots
        if type(slots) is list and len(slots) >= n0:
            freed = slots[n0:]
    d.after_result(batch, freed)
    return result


def add_request_to_queue_hook(result, sched, *args, **kwargs):
    d = getattr(sched, "_cascade", None)
    if d is not None:
        req = kwargs.get("req", args[0] if args else None)
        retracted = kwargs.get("is_retracted", args[1] if len(args) > 1 else False)
        d.note_queue_change(req, retracted=bool(retracted))
    return None


def abort_request_hook(sched, recv_req, *args, **kwargs):
    d = getattr(sched, "_cascade", None)
    if d is not None and (d.parked or d.held):
        try:
            d.before_abort(sched, getattr(recv_req, "rid", "") or "", bool(getattr(recv_req, "abort_all", False)))
        except Exception as exc:
            d._fail("abort of a parked/held request", exc)
    return None


# --- admission ------------------------------------------------------------------------------------------
def calc_priority_hook(original, policy, waiting_queue, *args, **kwargs):
    result = original(policy, waiting_queue, *args, **kwargs)
    d = _current
    if d is not None and d.applier is not None:
        try:
            d.order_waiting(waiting_queue)
        except Exception as exc:
            d._fail("waiting order", exc)
    return result


def add_one_req_hook(original, adder, req, *args, **kwargs):
    d = _current
    if d is None:
        return original(adder, req, *args, **kwargs)
    if d.applier is None:  # a step SGLang decides (fallback / no plan): count what it admits
        res = original(adder, req, *args, **kwargs)
        if adder.can_run_list and adder.can_run_list[-1] is req:
            d.counters["admitted_stock"] += 1
        return res
    from sglang.srt.managers.schedule_policy import AddReqResult

    if not d.may_admit(req):
        d.counters["refused_by_policy"] += 1
        return AddReqResult.OTHER
    sp = req.sampling_params
    saved = sp.max_new_tokens
    reserve = d.reservation(req)
    if reserve is not None and saved is not None and len(req.output_ids) + reserve < saved:
        # SGLang sizes the admission check from max_new_tokens; feed it the policy's reservation for
        # the duration of this call only (the request's real limit is restored before anything runs).
        sp.max_new_tokens = len(req.output_ids) + reserve
    try:
        res = original(adder, req, *args, **kwargs)
    finally:
        sp.max_new_tokens = saved
    if adder.can_run_list and adder.can_run_list[-1] is req:
        d.note_admitted(req)
    else:  # the plan admits it, SGLang's own budget (PrefillAdder) does not: the live admission is both
        d.counters["refused_by_sglang"] += 1
    return res


def running_offset_hook(original, adder, req, *args, **kwargs):
    d = _current
    if d is None or d.applier is None:
        return original(adder, req, *args, **kwargs)
    reserve = d.reservation(req)
    if reserve is None:
        return original(adder, req, *args, **kwargs)
    left = max(0, req.sampling_params.max_new_tokens - len(req.output_ids))
    return min(reserve, left)


def register_hooks() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    A, AFTER = HookType.AROUND, HookType.AFTER
    for target, fn, kind in (
        (f"{SERVER_ARGS}.add_cli_args", add_cli_args_hook, A),
        (f"{SERVER_ARGS}.from_cli_args", from_cli_args_hook, A),
        (f"{SCHEDULER}.__init__", scheduler_init_hook, AFTER),
        (f"{SCHEDULER}.get_next_batch_to_run", get_next_batch_hook, A),
        (f"{SCHEDULER}.ingest_requests", ingest_requests_hook, AFTER),
        (f"{SCHEDULER}.get_internal_state", get_internal_state_hook, AFTER),
        (f"{SCHEDULER}.update_running_batch", update_running_batch_hook, A),
        (f"{SCHEDULER}.process_batch_result", process_batch_result_hook, A),
        (f"{SCHEDULER}._add_request_to_queue", add_request_to_queue_hook, AFTER),
        (f"{SCHEDULER}.abort_request", abort_request_hook, HookType.BEFORE),
        (f"{POLICY}.calc_priority", calc_priority_hook, A),
        (f"{ADDER}.add_one_req", add_one_req_hook, A),
        (f"{ADDER}._get_running_request_total_token_offset", running_offset_hook, A),
    ):
        HookRegistry.register(target, fn, kind)


HOOK_TARGETS = (
    f"{SERVER_ARGS}.add_cli_args",
    f"{SERVER_ARGS}.from_cli_args",
    f"{SCHEDULER}.__init__",
    f"{SCHEDULER}.get_next_batch_to_run",
    f"{SCHEDULER}.ingest_requests",
    f"{SCHEDULER}.get_internal_state",
    f"{SCHEDULER}.update_running_batch",
    f"{SCHEDULER}.process_batch_result",
    f"{SCHEDULER}._add_request_to_queue",
    f"{SCHEDULER}.abort_request",
    f"{POLICY}.calc_priority",
    f"{ADDER}.add_one_req",
    f"{ADDER}._get_running_request_total_token_offset",
)
