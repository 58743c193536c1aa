"""The router's HTTP server (aiohttp): sglang_router's endpoints over :mod:`.session` (for /generate, with
live migration) and a byte pass-through proxy (for OpenAI endpoints and requests migration cannot splice).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import aiohttp
from aiohttp import web

from ..core.views import RequestView
from .admission import Admission
from .args import RouterArgs
from .health import PROBE_HEADER, ROUTER_ID_HEADER, HealthConfig, health_loop, load_loop
from .membership import MembershipMixin
from .membership import error_response as _error
from .metrics import RouterMetrics
from .migration import make_migrator
from .openai_server import OpenAIEndpoints
from .placement import Placement
from .prefix import block_hashes
from .replicas import ReplicaSync, StageRange
from .session import GenerateSession, RetryConfig, RouterHTTPError, dumps, loads
from .tokenizer import TokenCounter, TokenCounterConfig
from .validation import check_context, check_generate, check_rid
from .worker_urls import is_self_address, local_host_names
from .workers import BreakerConfig, Worker, WorkerPool

log = logging.getLogger("sglang_cascade.router")
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


CALL_TIMEOUT_S = 5.0  # deadline of the router's control calls to a worker (abort, flush, info, health_generate)


class Router(MembershipMixin):
    def __init__(self, args: RouterArgs, policy_factory=None):
        self.args = args
        self.metrics = RouterMetrics(args.prometheus_duration_buckets)
        self.pool = WorkerPool(
            BreakerConfig(
                args.cb_failure_threshold,
                args.cb_success_threshold,
                args.cb_timeout_duration_secs,
                args.cb_window_duration_secs,
                enabled=not args.disable_circuit_breaker,
            )
        )
        self.placement = Placement(args, self.pool, policy_factory, self.metrics)
        try:
            self.pool.default_capacity = self.placement.cost_model.kv_capacity_tokens()
        except ValueError:
            pass
        # with health checks on, workers join routing once their first check succeeds (as sglang_router waits
        # for its workers at startup); without, they are trusted at once
        self.starting = not args.disable_health_check
        self.router_id = uuid.uuid4().hex  # answered on /get_server_info: a worker that echoes it is this router
        self.listen_port = args.port or None  # the bound port (serve / start_router set it)
        self.self_hosts = local_host_names(args.host)
        for u in args.worker_urls:
            w = self.pool.add(u, starting=self.starting)
            if is_self_address(w.url, self.listen_port, self.self_hosts):
                raise ValueError(f"--worker-urls {w.url} is this router's own address")
        self.migrator = make_migrator(self.placement.options.migration_mode(), self.placement.migration_costs)
        self.migrator.stage_kv = self.migrator.stage_kv and args.kv_stage
        self.retry = RetryConfig(
            max_retries=args.max_retries,
            initial_backoff_s=args.retry_initial_backoff_ms / 1e3,
            max_backoff_s=args.retry_max_backoff_ms / 1e3,
            multiplier=args.retry_backoff_multiplier,
            jitter=args.retry_jitter_factor,
            read_timeout_s=args.request_timeout_secs,
        )
        self.admission = Admission(args.max_concurrent_requests, args.queue_size, args.queue_timeout_secs, self.metrics)
        self.counter = TokenCounter(TokenCounterConfig(args.token_count, args.tokenizer_path or args.model_path))
        self.health_cfg = HealthConfig(
            args.health_check_interval_secs,
            args.health_check_timeout_secs,
            args.health_check_endpoint,
            args.health_failure_threshold,
            args.health_success_threshold,
            enabled=not args.disable_health_check,
        )
        self.sessions: dict[str, GenerateSession] = {}
        self.replica_id = args.replica_id or uuid.uuid4().hex[:8]
        self.replicas: ReplicaSync | None = None
        self.http: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task] = []
        self.openai_endpoints = OpenAIEndpoints(self)
        self.app = self._make_app()

    # --- app -----------------------------------------------------------------------------------------------
    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.args.max_payload_size)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        r = app.router
        r.add_route("POST", "/generate", self.generate)
        r.add_route("PUT", "/generate", self.generate)
        r.add_post("/v1/completions", self.openai)
        r.add_post("/v1/chat/completions", self.openai)
        for p in ("/v1/models", "/get_model_info", "/model_info", "/get_server_info", "/server_info"):
            r.add_get(p, self.forward_get)
        r.add_get("/health", self.health)
        r.add_get("/health_generate", self.health_generate)
        r.add_get("/readiness", self.health_generate)
        r.add_get("/liveness", self.health)
        r.add_route("*", "/flush_cache", self.flush_cache)
        r.add_get("/get_loads", self.get_loads)
        r.add_post("/abort_request", self.abort_request)
        r.add_get("/workers", self.list_workers)
        r.add_post("/workers", self.add_worker_rest)
        r.add_get("/workers/{url:.+}", self.get_worker_rest)
        r.add_delete("/workers/{url:.+}", self.remove_worker_rest)
        r.add_post("/add_worker", self.add_worker_legacy)
        r.add_post("/remove_worker", self.remove_worker_legacy)
        r.add_get("/list_workers", self.list_workers_legacy)
        r.add_get("/metrics", self.prometheus)
        return app

    async def _startup(self, app) -> None:
        conn = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
        # a backstop deadline for any call without its own (generate streams set theirs: silence-based)
        self.http = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=300, sock_connect=10))
        loop = asyncio.get_running_loop()
        if self.health_cfg.enabled:
            self._tasks.append(loop.create_task(health_loop(self.http, self.pool, self.health_cfg, self.learn_later)))
        else:
            for w in self.pool.workers:
                self.learn_later(w)
        if self.args.load_poll_interval_secs > 0:
            self._tasks.append(loop.create_task(load_loop(self.http, self.pool, self.args.load_poll_interval_secs)))
        self._tasks.append(loop.create_task(self._rebalance_loop()))
        plugin = {}
        for item in self.args.plugin_load_endpoints:
            url, sep, ep = item.partition("=")
            if not sep:
                raise ValueError(f"--plugin-load-endpoints expects WORKER_URL=ZMQ_ENDPOINT, got {item!r}")
            plugin[ep] = url.rstrip("/")
        if self.args.replica_bind or self.args.replica_peers or plugin:
            self.replicas = ReplicaSync(
                self.pool,
                self.replica_id,
                self.args.replica_bind,
                self.args.replica_peers,
                plugin,
                self.args.replica_publish_interval_secs,
                ranges_fn=self._ranges,
                on_plugin_load=lambda w, load: self.placement.publish(load, time.monotonic()),
            )
            self.replicas.start()

    async def _cleanup(self, app) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.replicas is not None:
            await self.replicas.stop()
        if self.http is not None:
            await self.http.close()
        await asyncio.to_thread(self.placement.close)  # stops the plan checker's process / thread

    def _ranges(self) -> list[StageRange]:
        """Stage ranges of the policy (published to peer replicas)."""
        out = []
        for iid, stage, lo, hi in self.placement.stage_ranges():
            if 0 <= iid < len(self.pool.workers):
                out.append(StageRange(self.pool.workers[iid].url, int(stage), int(lo), None if hi is None else int(hi)))
        return out

    def rebalance_interval(self) -> float:
        """The policy's ``rebalance_interval`` when it declares one (Llumnix: 0.05 s), else
        ``--refine-interval``; read every round, so a policy rebuilt for new workers takes effect."""
        try:
            declared = self.placement.policy.rebalance_interval
        except Exception:  # the policy cannot be built (bad options): requests report it, the loop goes on
            log.exception("policy %s cannot be built", self.args.policy)
            declared = None
        return max(0.01, self.args.refine_interval if declared is None else declared)

    async def _rebalance_loop(self) -> None:
        while True:
            await asyncio.sleep(self.rebalance_interval())
            now = time.monotonic()
            for w in self.pool.workers:
                self.metrics.worker_healthy.labels(worker=w.url).set(1 if w.usable(now) else 0)
                self.metrics.worker_in_flight.labels(worker=w.url).set(w.in_flight)
            running: dict[int, list[RequestView]] = {}
            for s in self.sessions.values():
                w = s.st.worker
                if w is not None and w.iid >= 0 and not s.st.finished:
                    running.setdefault(w.iid, []).append(s.st.view)
            try:
                moves = self.placement.rebalance(running, now)
            except Exception:
                log.exception("policy rebalance failed")
                continue
            for dst, m in moves:
                s = self.sessions.get(m.req.rid)
                if s is not None and s.st.worker is not dst:
                    s.st.move_to, s.st.move_plan = dst, m

    # --- request plumbing ----------------------------------------------------------------------------------
    async def _json(self, request: web.Request) -> dict:
        try:
            body = loads(await request.read())
        except ValueError as e:
            raise RouterHTTPError(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise RouterHTTPError(400, "request body must be a JSON object")
        return body

    def _record(self, endpoint: str, status: int, t0: float) -> None:
        self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.metrics.duration.labels(endpoint=endpoint).observe(time.monotonic() - t0)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic()
        try:
            body = await self._json(request)
            spec = check_generate(body)
            if spec.input_ids is not None:
                check_context(len(spec.input_ids), self.pool.context_length())
            await self.admission.acquire()
        except RouterHTTPError as e:
            self._record("generate", e.status, t0)
            return _error(e.status, e.message)
        spliceable = (
            spec.single and spec.n == 1 and not body.get("return_logprob") and not body.get("return_hidden_states")
        )
        try:
            if spliceable and (body.get("stream") or self.placement.migrates):
                return await self._generate_session(request, body, spec.text, t0)
            n = (
                len(spec.input_ids)
                if spec.input_ids is not None
                else (self.counter.estimate(spec.text) if spec.text else 0)
            )
            view = RequestView(
                rid=str(body.get("rid") or uuid.uuid4().hex),
                arrival=t0,
                prompt_len=n,
                max_new_tokens=spec.max_new_tokens,
                block_hashes=block_hashes(spec.text, spec.input_ids),
            )
            return await self._proxy(request, "/generate", dumps(body), view, "generate", t0)
        finally:
            self.admission.release()

    async def _prompt_len(self, body: dict, text: str | None) -> int:
        """Prompt tokens; 400 when an exact count exceeds the model's context."""
        if text is None:
            return len(body["input_ids"])
        first = self.pool.usable(time.monotonic())
        n, ids = await self.counter.count(text, self.http, first[0].url if first else None)
        if ids is not None or self.counter.tokenizer is not None:
            check_context(n, self.pool.context_length())
        return n

    async def _generate_session(self, request: web.Request, body: dict, text: str | None, t0: float):
        try:
            n = await self._prompt_len(body, text)
        except RouterHTTPError as e:
            self._record("generate", e.status, t0)
            return _error(e.status, e.message)
        sess = GenerateSession(
            self.http, self.placement, self.migrator, self.retry, body, n, text, self.sessions, self.metrics
        )
        gen = sess.run()
        try:  # a client that hangs up cancels this handler: aclose stops the worker's segment
            first = await gen.__anext__()
            if not body.get("stream"):
                last = first
                async for c in gen:
                    last = c
                status = 502 if "error" in last else 200
                self._record("generate", status, t0)
                return web.Response(status=status, body=dumps(last), content_type="application/json")
            return await self._stream(request, gen, first, t0)
        except RouterHTTPError as e:
            self._record("generate", e.status, t0)
            return (
                web.Response(status=e.status, body=e.body, content_type="application/json")
                if e.body
                else _error(e.status, e.message)
            )
        except StopAsyncIteration:
            self._record("generate", 502, t0)
            return _error(502, "worker returned no output")
        except (ConnectionResetError, asyncio.CancelledError):
            self._record("generate", 499, t0)
            raise
        finally:
            await gen.aclose()

    async def _stream(self, request: web.Request, gen, first: dict, t0: float) -> web.StreamResponse:
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        await resp.write(b"data: " + dumps(first) + b"\n\n")
        async for c in gen:
            await resp.write(b"data: " + dumps(c) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        self._record("generate", 200, t0)
        return resp

    async def _proxy(
        self, request: web.Request, path: str, payload: bytes, view: RequestView, endpoint: str, t0: float
    ) -> web.StreamResponse:
        """Forward bytes to one worker; retry others on connection errors / 5xx before any byte is sent."""
        excluded: set[Worker] = set()
        last_err = "no healthy worker available"
        for attempt in range(1, self.retry.max_retries + 1):
            w = await self.placement.admit(view, time.monotonic(), excluded)
            if w is None:
                break
            w.in_flight += 1
            w.in_flight_tokens += view.length
            w.requests_total += 1
            try:
                async with self.http.post(
                    w.url + path,
                    data=payload,
                    headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.retry.read_timeout_s),
                ) as r:
                    if r.status >= 500:
                        last_err = f"worker {w.url} answered {r.status}: {(await r.text())[:200]}"
                        raise _Retry()
                    w.breaker.record(True, time.monotonic())
                    ctype = r.headers.get("Content-Type", "application/json")
                    if "text/event-stream" not in ctype:
                        data = await r.read()
                        self._record(endpoint, r.status, t0)
                        return web.Response(status=r.status, body=data, headers={"Content-Type": ctype})
                    resp = web.StreamResponse(
                        status=r.status, headers={"Content-Type": ctype, "Cache-Control": "no-cache"}
                    )
                    await resp.prepare(request)
                    try:
                        async for data in r.content.iter_any():
                            await resp.write(data)
                    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                        err = {"error": {"message": f"worker {w.url} failed mid-stream: {e}", "code": 502}}
                        await resp.write(b"data: " + dumps(err) + b"\n\ndata: [DONE]\n\n")
                    self._record(endpoint, r.status, t0)
                    return resp
            except (_Retry, aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
                if not isinstance(e, _Retry):
                    last_err = f"worker {w.url}: {type(e).__name__}: {e}"
                w.breaker.record(False, time.monotonic())
                w.failures_total += 1
                self.metrics.worker_failures.labels(worker=w.url).inc()
                excluded.add(w)
                await asyncio.sleep(self.retry.backoff(attempt))
            finally:
                w.in_flight -= 1
                w.in_flight_tokens -= view.length
        self._record(endpoint, 503, t0)
        return _error(503, last_err)

    async def openai(self, request: web.Request) -> web.StreamResponse:
        return await self.openai_endpoints.handle(request)

    async def _call(self, method: str, w: Worker, path: str, body: bytes | None = None) -> tuple[str, object]:
        """One control call with a deadline: (url, HTTP status or the error)."""
        try:
            async with self.http.request(
                method,
                w.url + path,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S),
            ) as r:
                await r.read()
                return w.url, r.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            return w.url, f"{type(e).__name__}: {e}"

    async def forward_get(self, request: web.Request) -> web.Response:
        ident = {ROUTER_ID_HEADER: self.router_id}
        if request.headers.get(PROBE_HEADER):
            return web.json_response({"cascade_router": {"id": self.router_id}}, headers=ident)
        for w in self.pool.usable(time.monotonic()) or list(self.pool.workers):
            try:
                async with self.http.get(
                    w.url + request.path_qs, timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
                ) as r:
                    data = await r.read()
                    if r.status < 500:
                        return web.Response(
                            status=r.status,
                            body=self._tag_info(request.path, data),
                            headers={"Content-Type": r.headers.get("Content-Type", "application/json"), **ident},
                        )
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                log.debug("GET %s on %s failed: %s", request.path, w.url, e)
        return web.Response(
            status=503,
            body=dumps({"error": {"message": "no healthy worker answered", "code": 503}}),
            content_type="application/json",
            headers=ident,
        )

    def _tag_info(self, path: str, data: bytes) -> bytes:
        """/get_server_info answers carry this router's identity (``cascade_router.id``)."""
        if path not in ("/get_server_info", "/server_info"):
            return data
        try:
            d = loads(data)
        except ValueError:
            return data
        if isinstance(d, dict):
            d["cascade_router"] = {"id": self.router_id}
            return dumps(d)
        return data

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def health_generate(self, request: web.Request) -> web.Response:
        res = await asyncio.gather(
            *(self._call("GET", w, "/health_generate") for w in self.pool.usable(time.monotonic()))
        )
        if any(st == 200 for _, st in res):
            return web.Response(text="OK")
        return _error(503, "no healthy worker")

    async def flush_cache(self, request: web.Request) -> web.Response:
        res = await asyncio.gather(*(self._call("POST", w, "/flush_cache") for w in self.pool.workers))
        failed = {u: s for u, s in res if s != 200}
        if failed:
            return _error(502, f"flush_cache failed on: {failed}")
        return web.Response(text=f"Cache flushed on {len(res)} workers.\n")

    def _worker_info(self, w: Worker) -> dict:
        now = time.monotonic()
        return {
            "url": w.url,
            "id": w.iid,
            "healthy": w.healthy,
            "starting": w.starting,
            "usable": w.usable(now),
            "circuit_breaker": w.breaker.state,
            "in_flight": w.in_flight,
            "in_flight_tokens": w.in_flight_tokens,
            "load": w.load(now, self.pool.default_capacity).num_running,
            "requests_total": w.requests_total,
            "failures_total": w.failures_total,
        }

    async def get_loads(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "workers": [
                    {"worker": w.url, "load": i["load"], **i} for w in self.pool.workers for i in [self._worker_info(w)]
                ],
                "plan_decision": self.placement.plan_decision(),  # cascade: the last plan check (else null)
                "plan_info": self.placement.plan_info(),  # cascade: the plan and its prefill pool, with why (else null)
                "plan_checker": self.placement.checker_stats(),  # cascade:plan_check=1: its counters (else null)
                # cascade:plan_check=1: the CPU budget governor (spent, next_check_at / next_check_in_s; else null)
                "plan_budget": self.placement.plan_budget(time.monotonic()),
                "held": self.placement.held,  # requests the policy holds (cascade:pool_hold), not yet sent to a worker
            }
        )

    async def abort_request(self, request: web.Request) -> web.Response:
        try:
            body = await self._json(request)
            rid = None if body.get("abort_all") is True else check_rid(body)
        except RouterHTTPError as e:
            return _error(e.status, e.message)
        s = self.sessions.get(rid) if rid is not None else None
        if s is not None and s.st.worker is not None:
            await self.migrator.stop_source(self.http, s.st.worker, s.st.seg_rid)
            return web.Response(status=200)
        held = self.placement.abort_held(rid, RouterHTTPError(499, "aborted (/abort_request) while the router held it"))
        if held and rid is not None:  # never sent to a worker: nothing to abort there
            return web.Response(status=200)
        payload = dumps({"abort_all": True} if rid is None else {"rid": rid})
        await asyncio.gather(*(self._call("POST", w, "/abort_request", payload) for w in self.pool.workers))
        return web.Response(status=200)

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})


class _Retry(Exception):
    pass


async def serve(args: RouterArgs, ready: asyncio.Event | None = None) -> None:
    """Run the router until cancelled (also starts the separate Prometheus listener when asked)."""
    router = Router(args)
    runner = web.AppRunner(router.app, access_log=None, handler_cancellation=True)
    await runner.setup()
    sites = [web.TCPSite(runner, args.host, args.port, backlog=4096)]
    if args.prometheus_port:
        mapp = web.Application()
        mapp.router.add_get("/metrics", router.prometheus)
        mrunner = web.AppRunner(mapp, access_log=None)
        await mrunner.setup()
        sites.append(web.TCPSite(mrunner, args.prometheus_host, args.prometheus_port))
    for s in sites:
        await s.start()
    log.info("router on %s:%d policy=%s workers=%s", args.host, args.port, args.policy, args.worker_urls)
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
