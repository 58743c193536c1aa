"""The router's HTTP server (aiohttp): sglang_router's endpoints over :mod:`.session` (for /generate, with
live migration) and a byte pass-through proxy (for OpenAI endpoints and requests migration cannot splice).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import urllib.parse
import uuid

import aiohttp
from aiohttp import web

from .args import RouterArgs
from .health import HealthConfig, health_loop, load_loop
from .metrics import RouterMetrics
from .migration import make_migrator
from .placement import Placement
from .replicas import ReplicaSync, StageRange
from .session import GenerateSession, RetryConfig, RouterHTTPError, dumps, loads
from .tokenizer import TokenCounter, TokenCounterConfig
from .workers import BreakerConfig, Worker, WorkerPool
from ..core.views import RequestView

log = logging.getLogger("sglang_cascade.router")
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=dumps({"error": {"message": message, "code": status}}),
                        content_type="application/json")


class Admission:
    """--max-concurrent-requests slots with a --queue-size FIFO; beyond it 429, a queue wait past
    --queue-timeout-secs gets 503. Never blocks without a bound."""

    def __init__(self, max_concurrent: int, queue_size: int, queue_timeout_s: float, metrics: RouterMetrics):
        self.max, self.queue_size, self.timeout = max_concurrent, queue_size, queue_timeout_s
        self.active = 0
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.metrics = metrics

    async def acquire(self) -> None:
        if self.max < 0 or (self.active < self.max and not self.waiters):
            self.active += 1
            self.metrics.active.set(self.active)
            return
        if len(self.waiters) >= self.queue_size:
            self.metrics.rejected.labels(reason="queue_full").inc()
            raise RouterHTTPError(429, f"too many requests: {self.active} running and {len(self.waiters)} queued "
                                       f"(--max-concurrent-requests {self.max}, --queue-size {self.queue_size})")
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        self.metrics.queued.set(len(self.waiters))
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except asyncio.TimeoutError:
            if fut.done():  # got the slot at the last moment: keep it
                return
            fut.cancel()
            self.waiters.remove(fut)
            self.metrics.queued.set(len(self.waiters))
            self.metrics.rejected.labels(reason="queue_timeout").inc()
            raise RouterHTTPError(503, f"queued longer than --queue-timeout-secs {self.timeout}") from None
        except asyncio.CancelledError:
            if fut.done():
                self.release()
            else:
                fut.cancel()
                self.waiters.remove(fut)
            raise

    def release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            self.metrics.queued.set(len(self.waiters))
            if not fut.done():
                fut.set_result(None)  # the slot passes to the next waiter
                return
        self.active -= 1
        self.metrics.active.set(self.active)


class Router:
    def __init__(self, args: RouterArgs, policy_factory=None):
        self.args = args
        self.metrics = RouterMetrics(args.prometheus_duration_buckets)
        self.pool = WorkerPool(BreakerConfig(args.cb_failure_threshold, args.cb_success_threshold,
                                             args.cb_timeout_duration_secs, args.cb_window_duration_secs,
                                             enabled=not args.disable_circuit_breaker))
        self.placement = Placement(args, self.pool, policy_factory)
        try:
            self.pool.default_capacity = self.placement.cost_model.kv_capacity_tokens()
        except ValueError:
            pass
        # with health checks on, workers join routing once their first check succeeds (as sglang_router waits
        # for its workers at startup); without, they are trusted at once
        self.starting = not args.disable_health_check
        for u in args.worker_urls:
            self.pool.add(u, starting=self.starting)
        self.migrator = make_migrator(args.migration_mode)
        self.retry = RetryConfig(max_retries=args.max_retries, initial_backoff_s=args.retry_initial_backoff_ms / 1e3,
                                 max_backoff_s=args.retry_max_backoff_ms / 1e3,
                                 multiplier=args.retry_backoff_multiplier, jitter=args.retry_jitter_factor,
                                 max_migrations=args.max_migrations, read_timeout_s=args.request_timeout_secs)
        self.admission = Admission(args.max_concurrent_requests, args.queue_size, args.queue_timeout_secs,
                                   self.metrics)
        self.counter = TokenCounter(TokenCounterConfig(args.token_count, args.tokenizer_path or args.model_path))
        self.health_cfg = HealthConfig(args.health_check_interval_secs, args.health_check_timeout_secs,
                                       args.health_check_endpoint, args.health_failure_threshold,
                                       args.health_success_threshold, enabled=not args.disable_health_check)
        self.sessions: dict[str, GenerateSession] = {}
        self.replica_id = args.replica_id or uuid.uuid4().hex[:8]
        self.replicas: ReplicaSync | None = None
        self.http: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task] = []
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
        self.http = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None))
        loop = asyncio.get_running_loop()
        if self.health_cfg.enabled:
            self._tasks.append(loop.create_task(health_loop(self.http, self.pool, self.health_cfg)))
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
            self.replicas = ReplicaSync(self.pool, self.replica_id, self.args.replica_bind, self.args.replica_peers,
                                        plugin, self.args.replica_publish_interval_secs, ranges_fn=self._ranges,
                                        on_plugin_load=lambda w, load: self.placement.publish(load, time.monotonic()))
            self.replicas.start()

    async def _cleanup(self, app) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.replicas is not None:
            await self.replicas.stop()
        if self.http is not None:
            await self.http.close()

    def _ranges(self) -> list[StageRange]:
        """Stage ranges of the policy (published to peer replicas)."""
        out = []
        for iid, stage, lo, hi in self.placement.stage_ranges():
            if 0 <= iid < len(self.pool.workers):
                out.append(StageRange(self.pool.workers[iid].url, int(stage), int(lo), None if hi is None else int(hi)))
        return out

    async def _rebalance_loop(self) -> None:
        interval = max(0.01, self.args.refine_interval)
        while True:
            await asyncio.sleep(interval)
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
            for view, dst in moves:
                s = self.sessions.get(view.rid)
                if s is not None and s.st.worker is not dst:
                    s.st.move_to = dst

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

    @staticmethod
    def _validate_generate(body: dict) -> tuple[bool, str | None]:
        """(single prompt?, text) or RouterHTTPError(400)."""
        text, ids = body.get("text"), body.get("input_ids")
        if text is None and ids is None:
            raise RouterHTTPError(400, "either 'text' or 'input_ids' is required")
        if text is not None and ids is not None:
            raise RouterHTTPError(400, "give either 'text' or 'input_ids', not both")
        sp = body.get("sampling_params")
        if sp is not None and not isinstance(sp, (dict, list)):
            raise RouterHTTPError(400, "'sampling_params' must be an object")
        if isinstance(sp, dict) and "max_new_tokens" in sp and sp["max_new_tokens"] is not None:
            m = sp["max_new_tokens"]
            if not isinstance(m, int) or isinstance(m, bool) or m < 0:
                raise RouterHTTPError(400, f"'sampling_params.max_new_tokens' must be a non-negative integer, got {m!r}")
        if ids is not None:
            if not isinstance(ids, list) or not ids:
                raise RouterHTTPError(400, "'input_ids' must be a non-empty list of token ids")
            if isinstance(ids[0], list):
                return False, None
            if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in ids):
                raise RouterHTTPError(400, "'input_ids' must contain non-negative integers")
            return True, None
        if isinstance(text, list):
            if not all(isinstance(x, str) for x in text):
                raise RouterHTTPError(400, "'text' must be a string or a list of strings")
            return False, None
        if not isinstance(text, str):
            raise RouterHTTPError(400, "'text' must be a string")
        return True, text

    async def generate(self, request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic()
        try:
            body = await self._json(request)
            single, text = self._validate_generate(body)
        except RouterHTTPError as e:
            self._record("generate", e.status, t0)
            return _error(e.status, e.message)
        sp = body.get("sampling_params") or {}
        spliceable = (single and isinstance(sp, dict) and int(sp.get("n", 1) or 1) == 1
                      and not body.get("return_logprob") and not body.get("return_hidden_states"))
        try:
            await self.admission.acquire()
        except RouterHTTPError as e:
            self._record("generate", e.status, t0)
            return _error(e.status, e.message)
        try:
            if spliceable and (body.get("stream") or self.placement.migrates):
                return await self._generate_session(request, body, text, t0)
            ids = body.get("input_ids")
            n = len(ids) if single and ids is not None else (self.counter.estimate(text) if text else 0)
            view = RequestView(rid=str(body.get("rid") or uuid.uuid4().hex), arrival=t0, prompt_len=n,
                               max_new_tokens=sp.get("max_new_tokens") if isinstance(sp, dict) else None)
            if text:
                view.extra["text"] = text
            return await self._proxy(request, "/generate", dumps(body), view, "generate", t0)
        finally:
            self.admission.release()

    async def _generate_session(self, request: web.Request, body: dict, text: str | None, t0: float):
        if text is not None:
            first = self.pool.usable(time.monotonic())
            n, _ = await self.counter.count(text, self.http, first[0].url if first else None)
        else:
            n = len(body["input_ids"])
        sess = GenerateSession(self.http, self.placement, self.migrator, self.retry, body, n, text, self.sessions,
                               self.metrics)
        gen = sess.run()
        stream = bool(body.get("stream"))
        try:
            first = await gen.__anext__()
        except RouterHTTPError as e:
            self._record("generate", e.status, t0)
            if e.body:
                return web.Response(status=e.status, body=e.body, content_type="application/json")
            return _error(e.status, e.message)
        except StopAsyncIteration:
            self._record("generate", 502, t0)
            return _error(502, "worker returned no output")
        if not stream:
            last = first
            async for c in gen:
                last = c
            status = 502 if "error" in last else 200
            self._record("generate", status, t0)
            return web.Response(status=status, body=dumps(last), content_type="application/json")
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        try:
            await resp.write(b"data: " + dumps(first) + b"\n\n")
            async for c in gen:
                await resp.write(b"data: " + dumps(c) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            self._record("generate", 200, t0)
        except (ConnectionResetError, asyncio.CancelledError):
            self._record("generate", 499, t0)
            await gen.aclose()
            raise
        finally:
            await gen.aclose()
        return resp

    async def _proxy(self, request: web.Request, path: str, payload: bytes, view: RequestView, endpoint: str,
                     t0: float) -> web.StreamResponse:
        """Forward bytes to one worker; retry others on connection errors / 5xx before any byte is sent."""
        excluded: set[Worker] = set()
        last_err = "no healthy worker available"
        for attempt in range(1, self.retry.max_retries + 1):
            w = self.placement.route(view, time.monotonic(), excluded)
            if w is None:
                break
            w.in_flight += 1
            w.in_flight_tokens += view.length
            w.requests_total += 1
            try:
                async with self.http.post(w.url + path, data=payload, headers={"Content-Type": "application/json"},
                                          timeout=aiohttp.ClientTimeout(total=None, sock_connect=10,
                                                                        sock_read=self.retry.read_timeout_s)) as r:
                    if r.status >= 500:
                        last_err = f"worker {w.url} answered {r.status}: {(await r.text())[:200]}"
                        raise _Retry()
                    w.breaker.record(True, time.monotonic())
                    ctype = r.headers.get("Content-Type", "application/json")
                    if "text/event-stream" not in ctype:
                        data = await r.read()
                        self._record(endpoint, r.status, t0)
                        return web.Response(status=r.status, body=data, headers={"Content-Type": ctype})
                    resp = web.StreamResponse(status=r.status, headers={"Content-Type": ctype,
                                                                        "Cache-Control": "no-cache"})
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
        t0 = time.monotonic()
        path = request.path
        endpoint = "chat_completions" if path.endswith("chat/completions") else "completions"
        try:
            body = await self._json(request)
            if endpoint == "chat_completions":
                msgs = body.get("messages")
                if not isinstance(msgs, list) or not msgs:
                    raise RouterHTTPError(400, "'messages' must be a non-empty list")
                text = " ".join(str(m.get("content", "")) if isinstance(m, dict) else "" for m in msgs)
                n = self.counter.estimate(text)
            else:
                p = body.get("prompt")
                if isinstance(p, str):
                    text, n = p, self.counter.estimate(p)
                elif isinstance(p, list) and p:
                    text, n = None, (len(p) if isinstance(p[0], int) else sum(self.counter.estimate(str(x)) for x in p))
                else:
                    raise RouterHTTPError(400, "'prompt' must be a string, a list of strings or a list of token ids")
            await self.admission.acquire()
        except RouterHTTPError as e:
            self._record(endpoint, e.status, t0)
            return _error(e.status, e.message)
        try:
            mx = body.get("max_completion_tokens") or body.get("max_tokens")
            view = RequestView(rid=uuid.uuid4().hex, arrival=t0, prompt_len=n,
                               max_new_tokens=mx if isinstance(mx, int) else None)
            if text:
                view.extra["text"] = text
            return await self._proxy(request, path, dumps(body), view, endpoint, t0)
        finally:
            self.admission.release()

    async def forward_get(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        for w in self.pool.usable(now) or list(self.pool.workers):
            try:
                async with self.http.get(w.url + request.path_qs, timeout=aiohttp.ClientTimeout(total=10)) as r:
                    data = await r.read()
                    if r.status < 500:
                        return web.Response(status=r.status, body=data,
                                            headers={"Content-Type": r.headers.get("Content-Type", "application/json")})
            except Exception as e:
                log.debug("GET %s on %s failed: %s", request.path, w.url, e)
        return _error(503, "no healthy worker answered")

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def health_generate(self, request: web.Request) -> web.Response:
        for w in self.pool.usable(time.monotonic()):
            try:
                async with self.http.get(w.url + "/health_generate", timeout=aiohttp.ClientTimeout(total=30)) as r:
                    if r.status == 200:
                        return web.Response(text="OK")
            except Exception:
                continue
        return _error(503, "no healthy worker")

    async def flush_cache(self, request: web.Request) -> web.Response:
        async def one(w: Worker):
            try:
                async with self.http.post(w.url + "/flush_cache", timeout=aiohttp.ClientTimeout(total=60)) as r:
                    await r.read()
                    return w.url, r.status
            except Exception as e:
                return w.url, f"{type(e).__name__}: {e}"
        res = await asyncio.gather(*(one(w) for w in self.pool.workers))
        failed = {u: s for u, s in res if s != 200}
        if failed:
            return _error(500, f"flush_cache failed on: {failed}")
        return web.Response(text=f"Cache flushed on {len(res)} workers.\n")

    def _worker_info(self, w: Worker) -> dict:
        now = time.monotonic()
        return {"url": w.url, "id": w.iid, "healthy": w.healthy, "starting": w.starting, "usable": w.usable(now),
                "circuit_breaker": w.breaker.state, "in_flight": w.in_flight, "in_flight_tokens": w.in_flight_tokens,
                "load": w.load(now, self.pool.default_capacity).num_running, "requests_total": w.requests_total,
                "failures_total": w.failures_total}

    async def get_loads(self, request: web.Request) -> web.Response:
        return web.json_response({"workers": [{"worker": w.url, "load": i["load"], **i}
                                              for w in self.pool.workers for i in [self._worker_info(w)]]})

    async def abort_request(self, request: web.Request) -> web.Response:
        try:
            body = await self._json(request)
        except RouterHTTPError as e:
            return _error(e.status, e.message)
        s = self.sessions.get(str(body.get("rid", "")))
        if s is not None and s.st.worker is not None:
            await self.migrator.stop_source(self.http, s.st.worker, s.st.seg_rid)
            return web.Response(status=200)
        await asyncio.gather(*(self.http.post(w.url + "/abort_request", data=dumps(body)) for w in self.pool.workers),
                             return_exceptions=True)
        return web.Response(status=200)

    # --- membership ----------------------------------------------------------------------------------------
    def _add(self, url: str | None) -> web.Response:
        if not url:
            return _error(400, "missing worker 'url'")
        try:
            w = self.pool.add(url, starting=self.starting)
        except ValueError as e:
            return _error(409 if "already" in str(e) else 400, str(e))
        log.info("worker %s added", w.url)
        return web.json_response({"status": "ok", "message": f"worker {w.url} added", "url": w.url})

    def _remove(self, url: str | None) -> web.Response:
        if not url:
            return _error(400, "missing worker 'url'")
        try:
            w = self.pool.remove(url)
        except KeyError as e:
            return _error(404, str(e.args[0]))
        log.info("worker %s removed (%d requests in flight finish there)", w.url, w.in_flight)
        return web.json_response({"status": "ok", "message": f"worker {w.url} removed", "url": w.url})

    async def list_workers(self, request: web.Request) -> web.Response:
        ws = [self._worker_info(w) for w in self.pool.workers]
        return web.json_response({"workers": ws, "total": len(ws)})

    async def add_worker_rest(self, request: web.Request) -> web.Response:
        try:
            body = await self._json(request)
        except RouterHTTPError as e:
            return _error(e.status, e.message)
        return self._add(body.get("url"))

    async def get_worker_rest(self, request: web.Request) -> web.Response:
        w = self.pool.get(urllib.parse.unquote(request.match_info["url"]))
        return web.json_response(self._worker_info(w)) if w else _error(404, "worker not registered")

    async def remove_worker_rest(self, request: web.Request) -> web.Response:
        return self._remove(urllib.parse.unquote(request.match_info["url"]))

    async def add_worker_legacy(self, request: web.Request) -> web.Response:
        return self._add(request.query.get("url"))

    async def remove_worker_legacy(self, request: web.Request) -> web.Response:
        return self._remove(request.query.get("url"))

    async def list_workers_legacy(self, request: web.Request) -> web.Response:
        return web.json_response({"urls": [w.url for w in self.pool.workers]})

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})


class _Retry(Exception):
    pass


async def serve(args: RouterArgs, ready: asyncio.Event | None = None) -> None:
    """Run the router until cancelled (also starts the separate Prometheus listener when asked)."""
    router = Router(args)
    runner = web.AppRunner(router.app, access_log=None)
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
