"""Worker membership endpoints (REST ``/workers`` and the legacy ``/add_worker``), with the checks that keep
bad workers out: an invalid URL (400), the router's own address under any alias it can detect (400), and a
"worker" whose ``/get_server_info`` carries this router's identity (400: a self-loop through a proxy or a
name the router cannot resolve). What a probe learns (the model's context length) is kept on the worker.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse

from aiohttp import web

from .health import fetch_info
from .session import RouterHTTPError, dumps
from .worker_urls import is_self_address, normalize_worker_url
from .workers import Worker

log = logging.getLogger("sglang_cascade.router")
PROBE_TIMEOUT_S = 2.0


def error_response(status: int, message: str) -> web.Response:
    return web.Response(
        status=status, body=dumps({"error": {"message": message, "code": status}}), content_type="application/json"
    )


class MembershipMixin:
    """Needs ``pool``, ``http``, ``starting``, ``router_id``, ``listen_port``, ``self_hosts``, ``_json``
    and ``_worker_info`` from the router."""

    def _check_not_self(self, url: str) -> None:
        if is_self_address(url, self.listen_port, self.self_hosts):
            raise RouterHTTPError(400, f"worker url {url} is this router's own address")

    async def learn(self, w: Worker) -> None:
        """Probe a worker once it is reachable: drop it if it is this router, keep its context length."""
        info = await fetch_info(self.http, w.url, PROBE_TIMEOUT_S)
        if info.router_id == self.router_id and self.pool.get(w.url) is w:
            self.pool.remove(w.url)
            log.error("worker %s is this router itself; removed", w.url)
        elif info.context_length:
            w.context_length = info.context_length

    def learn_later(self, w: Worker) -> None:
        t = asyncio.get_running_loop().create_task(self.learn(w))
        self._tasks.append(t)
        t.add_done_callback(lambda t: t in self._tasks and self._tasks.remove(t))

    async def _add(self, url) -> web.Response:
        if url is None or url == "":
            return error_response(400, "missing worker 'url'")
        try:
            url = normalize_worker_url(url)
            self._check_not_self(url)
            if self.pool.get(url) is not None:
                return error_response(409, f"worker {url} is already registered")
            info = await fetch_info(self.http, url, PROBE_TIMEOUT_S)
            if info.router_id == self.router_id:
                raise RouterHTTPError(400, f"worker url {url} answers as this router itself")
            w = self.pool.add(url, starting=self.starting)
        except ValueError as e:
            return error_response(409 if "already" in str(e) else 400, str(e))
        except RouterHTTPError as e:
            return error_response(e.status, e.message)
        w.context_length = info.context_length
        log.info("worker %s added", w.url)
        return web.json_response({"status": "ok", "message": f"worker {w.url} added", "url": w.url})

    def _remove(self, url) -> web.Response:
        if not isinstance(url, str) or not url:
            return error_response(400, "missing worker 'url' (a string)")
        try:
            w = self.pool.remove(url)
        except KeyError as e:
            return error_response(404, str(e.args[0]))
        log.info("worker %s removed (%d requests in flight finish there)", w.url, w.in_flight)
        return web.json_response({"status": "ok", "message": f"worker {w.url} removed", "url": w.url})

    async def list_workers(self, request: web.Request) -> web.Response:
        ws = [self._worker_info(w) for w in self.pool.workers]
        return web.json_response({"workers": ws, "total": len(ws)})

    async def add_worker_rest(self, request: web.Request) -> web.Response:
        try:
            body = await self._json(request)
        except RouterHTTPError as e:
            return error_response(e.status, e.message)
        return await self._add(body.get("url"))

    async def get_worker_rest(self, request: web.Request) -> web.Response:
        w = self.pool.get(urllib.parse.unquote(request.match_info["url"]))
        return web.json_response(self._worker_info(w)) if w else error_response(404, "worker not registered")

    async def remove_worker_rest(self, request: web.Request) -> web.Response:
        return self._remove(urllib.parse.unquote(request.match_info["url"]))

    async def add_worker_legacy(self, request: web.Request) -> web.Response:
        return await self._add(request.query.get("url"))

    async def remove_worker_legacy(self, request: web.Request) -> web.Response:
        return self._remove(request.query.get("url"))

    async def list_workers_legacy(self, request: web.Request) -> web.Response:
        return web.json_response({"urls": [w.url for w in self.pool.workers]})
