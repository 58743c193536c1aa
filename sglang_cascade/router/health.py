"""Background loops over the workers: health checks (remove from / re-add to routing) and /v1/loads polling."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp

from .workers import Worker, WorkerPool

ROUTER_ID_HEADER = "X-Cascade-Router-Id"  # the router's identity, on its /get_server_info answers
PROBE_HEADER = "X-Cascade-Router-Probe"  # asks a router to answer /get_server_info with its identity only
CONTEXT_KEYS = ("context_length", "max_model_len", "max_context_length", "context_len")

log = logging.getLogger("sglang_cascade.router")


@dataclass
class HealthConfig:
    interval_s: float = 60.0
    timeout_s: float = 5.0
    endpoint: str = "/health"
    failure_threshold: int = 3  # consecutive failures before a worker leaves routing
    success_threshold: int = 2  # consecutive successes before it comes back
    enabled: bool = True
    recheck_s: float = 1.0  # check cadence for unhealthy workers


async def check_once(http: aiohttp.ClientSession, w: Worker, cfg: HealthConfig, on_up=None) -> bool:
    try:
        async with http.get(w.url + cfg.endpoint, timeout=aiohttp.ClientTimeout(total=cfg.timeout_s)) as r:
            await r.read()
            ok = r.status == 200
    except Exception:
        ok = False
    if ok:
        w.breaker.probe_ok()  # an open breaker goes half-open at once: a restarted worker is tried again
        w.health_failures = 0
        w.health_successes += 1
        if w.starting:  # first sight of a new worker: no need to wait for the success threshold
            w.starting, w.healthy = False, True
            log.info("worker %s is up", w.url)
            if on_up is not None:
                on_up(w)
        elif not w.healthy and w.health_successes >= cfg.success_threshold:
            w.healthy = True
            log.info("worker %s is healthy again", w.url)
    else:
        w.health_successes = 0
        w.health_failures += 1
        if w.starting:
            if w.health_failures == 1:
                log.info("waiting for worker %s to come up", w.url)
        elif w.healthy and w.health_failures >= cfg.failure_threshold:
            w.healthy = False
            log.warning("worker %s failed %d health checks; removed from routing", w.url, w.health_failures)
    return ok


async def health_loop(http: aiohttp.ClientSession, pool: WorkerPool, cfg: HealthConfig, on_up=None) -> None:
    """Healthy workers are checked every ``interval_s``; unhealthy ones every ``min(interval_s,
    recheck_s)`` so a worker that comes back (or finishes starting) rejoins within seconds."""
    tick = min(cfg.interval_s, cfg.recheck_s)
    due: dict[int, float] = {}
    while True:
        now = time.monotonic()
        ws = [w for w in pool.workers if not w.healthy or w.breaker.state == "open" or due.get(id(w), 0.0) <= now]
        for w in ws:
            due[id(w)] = now + cfg.interval_s
        if ws:
            await asyncio.gather(*(check_once(http, w, cfg, on_up) for w in ws))
        await asyncio.sleep(tick)


@dataclass
class WorkerInfo:
    router_id: str | None = None  # set when the "worker" is a sglang-cascade router
    context_length: int | None = None


def _context_length(d) -> int | None:
    if not isinstance(d, dict):
        return None
    for k in CONTEXT_KEYS:
        v = d.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


async def _get_json(http: aiohttp.ClientSession, url: str, timeout_s: float, headers=None):
    async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
        rid = r.headers.get(ROUTER_ID_HEADER)
        if r.status != 200:
            return rid, None
        try:
            return rid, await r.json(content_type=None)
        except ValueError:
            return rid, None


async def fetch_info(http: aiohttp.ClientSession, url: str, timeout_s: float = 2.0) -> WorkerInfo:
    """What the router needs to know about a worker: is it a router (which one), and its context length
    (``/get_server_info``, else ``/v1/models``' ``max_model_len``). Unreachable workers give an empty info."""
    info = WorkerInfo()
    try:
        rid, d = await _get_json(http, url + "/get_server_info", timeout_s, {PROBE_HEADER: "1"})
        info.router_id = rid or ((d.get("cascade_router") or {}).get("id") if isinstance(d, dict) else None)
        if info.router_id is not None:
            return info
        info.context_length = _context_length(d)
        if info.context_length is None:
            _, d = await _get_json(http, url + "/v1/models", timeout_s)
            data = d.get("data") if isinstance(d, dict) else None
            info.context_length = _context_length(data[0]) if isinstance(data, list) and data else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, AttributeError, OSError) as e:
        log.debug("info from %s failed: %s", url, e)
    return info


def apply_loads(w: Worker, payload: dict, now: float) -> None:
    """Sum SGLang's /v1/loads entries (one per DP rank) into the worker's polled load."""
    loads = payload.get("loads") or []
    w.polled_running = sum(int(x.get("num_running_reqs", 0)) for x in loads)
    w.polled_waiting = sum(int(x.get("num_waiting_reqs", 0)) for x in loads)
    w.polled_kv_used = sum(int(x.get("num_used_tokens", 0)) for x in loads)
    cap = sum(int(x.get("max_total_num_tokens", 0)) for x in loads)
    if cap > 0:
        w.kv_capacity = cap
    w.polled_at = now


async def load_loop(http: aiohttp.ClientSession, pool: WorkerPool, interval_s: float, on_update=None) -> None:
    unsupported: set[str] = set()

    async def poll(w: Worker) -> None:
        try:
            async with http.get(w.url + "/v1/loads?include=core", timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 404:
                    unsupported.add(w.url)
                    log.info("worker %s has no /v1/loads; using the router's own counts", w.url)
                    return
                if r.status == 200:
                    apply_loads(w, await r.json(), time.monotonic())
                    if on_update is not None:
                        on_update(w)
        except Exception as e:
            log.debug("load poll %s failed: %s", w.url, e)

    while True:
        ws = [w for w in pool.workers if w.url not in unsupported and w.healthy]
        if ws:
            await asyncio.gather(*(poll(w) for w in ws))
        await asyncio.sleep(interval_s)
