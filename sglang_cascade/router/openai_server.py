"""The router's /v1/completions and /v1/chat/completions: migratable requests run as /generate segments
(:class:`.session.GenerateSession`, so migration and failure resume work unchanged) and are rendered as
OpenAI answers (:mod:`.openai_render`); the rest (:func:`.openai_request.unsupported`, or a policy that never
migrates) is proxied byte for byte to one worker's OpenAI endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from ..core.views import RequestView
from .membership import error_response as _error
from .openai_render import OpenAIRenderer, RenderSpec, error_event
from .openai_request import WorkerInfo, generate_body, tokenize_body, unsupported
from .openai_stop import StopScanner
from .prefix import block_hashes
from .session import GenerateSession, RouterHTTPError, dumps, loads
from .validation import check_context, check_openai

log = logging.getLogger("sglang_cascade.router")
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
INFO_TIMEOUT_S = 5.0


class OpenAIEndpoints:
    def __init__(self, router):
        self.r = router  # the server.Router (its pool, placement, admission, proxy and metrics)
        self.info: WorkerInfo | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        r, t0 = self.r, time.monotonic()
        chat = request.path.endswith("chat/completions")
        endpoint = "chat_completions" if chat else "completions"
        try:
            body = await r._json(request)
            check_openai(body, chat=chat)
            text, n = self._estimate(body, chat)
            await r.admission.acquire()
        except RouterHTTPError as e:
            r._record(endpoint, e.status, t0)
            return _error(e.status, e.message)
        try:
            reason = (
                "the policy does not migrate"
                if not r.placement.migrates
                else unsupported(body, chat, await self._worker_info())
            )
            if reason is None:
                return await self._migratable(request, body, chat, endpoint, t0)
            log.debug("%s proxied unmigrated: %s", endpoint, reason)
            mx = body.get("max_completion_tokens") or body.get("max_tokens")
            view = RequestView(
                rid=uuid.uuid4().hex,
                arrival=t0,
                prompt_len=n,
                max_new_tokens=mx if isinstance(mx, int) else None,
                block_hashes=block_hashes(text, _token_prompt(body, chat)),
            )
            return await r._proxy(request, request.path, dumps(body), view, endpoint, t0)
        finally:
            r.admission.release()

    def _estimate(self, body: dict, chat: bool) -> tuple[str | None, int]:
        """(prompt text for prefix hashes, estimated prompt tokens for placement of proxied requests)."""
        counter = self.r.counter
        if chat:
            text = " ".join(str(m.get("content", "")) for m in body["messages"])
            return text, counter.estimate(text)
        p = body["prompt"]
        if isinstance(p, str):
            return p, counter.estimate(p)
        if isinstance(p[0], int):
            check_context(len(p), self.r.pool.context_length())
            return None, len(p)
        return None, sum(counter.estimate(x) for x in p)

    # --- worker facts --------------------------------------------------------------------------------------
    async def _worker_info(self) -> WorkerInfo | None:
        """The workers' OpenAI-relevant configuration, learned once from a usable worker's /server_info."""
        if self.info is not None:
            return self.info
        for w in self.r.pool.usable(time.monotonic()):
            for path in ("/server_info", "/get_server_info"):
                try:
                    async with self.r.http.get(
                        w.url + path, timeout=aiohttp.ClientTimeout(total=INFO_TIMEOUT_S)
                    ) as resp:
                        if resp.status == 200:
                            self.info = WorkerInfo.from_server_info(loads(await resp.read()))
                            return self.info
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
                    log.debug("%s%s failed: %s", w.url, path, e)
        return None

    async def _chat_prompt_ids(self, body: dict) -> list[int]:
        """The chat prompt as the workers' chat endpoint renders it (their ``/v1/tokenize`` with messages)."""
        last = "no healthy worker available"
        for w in self.r.pool.usable(time.monotonic()):
            try:
                async with self.r.http.post(
                    w.url + "/v1/tokenize",
                    data=dumps(tokenize_body(body)),
                    headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=INFO_TIMEOUT_S),
                ) as resp:
                    data = await resp.read()
                    if resp.status == 200:
                        tokens = loads(data).get("tokens")
                        if isinstance(tokens, list) and tokens and all(isinstance(t, int) for t in tokens):
                            return tokens
                        last = f"worker {w.url} rendered no prompt tokens"
                    elif 400 <= resp.status < 500:  # the request's fault (e.g. the template rejects it)
                        raise RouterHTTPError(resp.status, data.decode(errors="replace")[:300], data)
                    else:
                        last = f"worker {w.url} /v1/tokenize answered {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
                last = f"worker {w.url} /v1/tokenize: {type(e).__name__}: {e}"
        raise RouterHTTPError(503, last)

    # --- migratable requests -------------------------------------------------------------------------------
    async def _session(self, body: dict, chat: bool) -> GenerateSession:
        r = self.r
        prompt_ids = await self._chat_prompt_ids(body) if chat else None
        gbody = generate_body(body, chat, str(body.get("rid") or uuid.uuid4().hex), self.info, prompt_ids)
        text = gbody.get("text")
        n = await r._prompt_len(gbody, text)
        if gbody.get("input_ids") is not None:
            check_context(n, r.pool.context_length())
        sess = GenerateSession(r.http, r.placement, r.migrator, r.retry, gbody, n, text, r.sessions, r.metrics)
        return sess

    async def _migratable(self, request: web.Request, body: dict, chat: bool, endpoint: str, t0: float):
        r = self.r
        so = body.get("stream_options") or {}
        spec = RenderSpec(
            chat,
            str(body.get("model") or "default"),
            include_usage=bool(so.get("include_usage")) or self.info.include_usage_default,
            continuous_usage=bool(so.get("continuous_usage_stats")),
        )
        scanner = StopScanner(body.get("stop"))
        try:
            sess = await self._session(body, chat)
        except RouterHTTPError as e:
            r._record(endpoint, e.status, t0)
            return _http_error(e)
        gen = _guarded(sess, scanner, bool(body.get("no_stop_trim")))
        renderer = OpenAIRenderer(spec, scanner)
        try:  # a client that hangs up cancels this handler: aclose stops the worker's segment
            first = await gen.__anext__()
            if body.get("stream"):
                return await self._stream(request, gen, first, renderer, endpoint, t0)
            last = first
            async for c in gen:
                last = c
            if "error" in last:
                r._record(endpoint, 502, t0)
                return web.json_response(error_event(last["error"]["message"])["error"], status=502)
            r._record(endpoint, 200, t0)
            return web.Response(body=dumps(renderer.response(last)), content_type="application/json")
        except RouterHTTPError as e:
            r._record(endpoint, e.status, t0)
            return _http_error(e)
        except StopAsyncIteration:
            r._record(endpoint, 502, t0)
            return _error(502, "worker returned no output")
        except (ConnectionResetError, asyncio.CancelledError):
            r._record(endpoint, 499, t0)
            raise
        finally:
            await gen.aclose()

    async def _stream(self, request, gen, first: dict, renderer: OpenAIRenderer, endpoint: str, t0: float):
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)

        async def send(c: dict) -> None:
            if "error" in c:
                await resp.write(b"data: " + dumps(error_event(c["error"]["message"])) + b"\n\n")
                return
            for ev in renderer.stream_chunks(c):
                await resp.write(b"data: " + dumps(ev) + b"\n\n")

        await send(first)
        async for c in gen:
            await send(c)
        for ev in renderer.stream_tail():
            await resp.write(b"data: " + dumps(ev) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        self.r._record(endpoint, 200, t0)
        return resp


def _http_error(e: RouterHTTPError) -> web.Response:
    """The worker's own 4xx body when there is one, else the router's error."""
    if e.body:
        return web.Response(status=e.status, body=e.body, content_type="application/json")
    return _error(e.status, e.message)


async def _guarded(sess: GenerateSession, scanner: StopScanner, no_stop_trim: bool) -> AsyncIterator[dict]:
    """The session's chunks; a stop string spanning a segment boundary ends the request there
    (:mod:`.openai_stop`): the worker's segment is stopped and the last chunk says ``stop``."""
    gen = sess.run()
    bounds: list[int] = []
    try:
        async for c in gen:
            st = sess.st
            if st.text_prefix and (not bounds or bounds[-1] != len(st.text_prefix)):
                bounds.append(len(st.text_prefix))
            m = scanner.spanning(c.get("text") or "", bounds) if bounds and "error" not in c else None
            if m is None:
                yield c
                continue
            if st.worker is not None and not st.finished:
                await sess.migrator.stop_source(sess.http, st.worker, st.seg_rid)
            st.finished = True  # the session's cleanup then reports the finish to the policy
            meta = {**c["meta_info"], "finish_reason": {"type": "stop", "matched": m.stop}}
            end = m.start + (len(m.stop) if no_stop_trim else 0)
            yield {**c, "text": c["text"][:end], "meta_info": meta}
            return
    finally:
        await gen.aclose()


def _token_prompt(body: dict, chat: bool):
    """A completions prompt sent as one list of token ids (hashed by ids), else None."""
    p = None if chat else body.get("prompt")
    return p if isinstance(p, list) and p and isinstance(p[0], int) else None
