"""One /generate request through the router: placement, streaming, live migration and failure resume.

The request runs as a chain of *segments*, each a streaming /generate on one worker (rid ``<id>.<k>``).
The first segment sends the client's body (plus ``return_prompt_token_ids`` when the prompt is text, so
the router learns the worker-exact prompt ids). Each worker chunk is translated into the client's stream:
``output_ids`` = all tokens so far, ``text`` = text of earlier segments + this segment's text, ``meta_info``
with the client's ``id``, the original ``prompt_tokens`` and the total ``completion_tokens``. After each
chunk the policy's ``migration_bound`` is checked; past it, ``migrate`` names a destination, the source is
stopped and the next segment continues from exactly the tokens the client has (see :mod:`.migration`).
A worker that fails mid-stream is handled the same way (resume elsewhere), or the stream ends with an
error event when it cannot be resumed. The splice never re-sends or skips a token: only tokens the client
has received are ever part of a continuation.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from ..core.decisions import ROOM_RETRY_TOKENS, MigrationMode, leaves_at_first_token
from ..core.request_limits import max_input_tokens
from ..core.views import Phase, RequestView
from .gen_state import UNLIMITED, GenState
from .kv_transport import KVTransferError
from .migration import Migrator
from .placement import Placement
from .prefix import block_hashes
from .tasks import background as _background
from .workers import Worker

try:
    import orjson

    loads, dumps = orjson.loads, orjson.dumps
except ImportError:  # pragma: no cover
    import json

    loads = json.loads

    def dumps(o) -> bytes:
        return json.dumps(o).encode()


log = logging.getLogger("sglang_cascade.router")
_seq = itertools.count()
_COPIED = object()  # _next_or_copied: a move's copy ended first


async def _next_or_copied(chunks, copy: asyncio.Future | None):
    """The stream's next bytes (None at its end), or ``_COPIED`` as soon as ``copy`` (a move's copy in flight)
    has ended, whichever comes first."""
    if copy is not None and copy.done():
        return _COPIED
    nxt = asyncio.ensure_future(chunks.__anext__())
    try:
        if copy is not None:
            await asyncio.wait((nxt, copy), return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                return _COPIED
        return await nxt
    except StopAsyncIteration:
        return None
    finally:
        if not nxt.done():
            nxt.cancel()


class RouterHTTPError(Exception):
    """Ends a request before anything was streamed: the server answers ``status`` with ``message``."""

    def __init__(self, status: int, message: str, body: bytes | None = None):
        super().__init__(message)
        self.status, self.message, self.body = status, message, body


class _SegmentFailed(Exception):
    def __init__(self, reason: str, status: int | None = None, body: bytes | None = None):
        super().__init__(reason)
        self.status, self.body = status, body


@dataclass
class RetryConfig:
    max_retries: int = 5  # attempts per request (failures), --retry-max-retries
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 30.0
    multiplier: float = 1.5
    jitter: float = 0.2
    read_timeout_s: float = 1800.0  # --request-timeout-secs: longest silence from a worker

    def backoff(self, attempt: int) -> float:
        b = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** max(0, attempt - 1))
        return b * (1.0 + self.jitter * (2 * random.random() - 1))


class GenerateSession:
    """Runs one single-prompt /generate; iterate :meth:`run` for the client's chunks (dicts)."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        placement: Placement,
        migrator: Migrator,
        retry: RetryConfig,
        body: dict,
        prompt_len: int,
        text: str | None,
        registry: dict,
        metrics=None,
        clock=time.monotonic,
    ):
        self.http, self.placement, self.migrator, self.retry = http, placement, migrator, retry
        self.metrics, self.registry, self.clock = metrics, registry, clock
        sp = body.get("sampling_params") or {}
        max_new = sp.get("max_new_tokens")
        unbounded = max_new is None  # SGLang: until the context is full (the router's view: what is left of it)
        if unbounded:
            ctx = placement.pool.context_length()
            max_new = max(1, ctx - prompt_len - 1) if ctx else UNLIMITED
        max_new = int(max_new)
        now = clock()
        rid = str(body.get("rid") or uuid.uuid4().hex)
        view = RequestView(
            rid=rid,
            arrival=now,
            prompt_len=prompt_len,
            max_new_tokens=max_new,
            block_hashes=block_hashes(text, body.get("input_ids")),
        )
        self.st = GenState(rid=rid, body=body, max_new=max_new, view=view, unbounded=unbounded)
        if body.get("input_ids") is not None:
            self.st.prompt_ids = list(body["input_ids"])
        self.want_prompt_ids = bool(body.get("return_prompt_token_ids"))

    # --- worker bookkeeping ------------------------------------------------------------------------------
    def _attach(self, w: Worker) -> None:
        st = self.st
        st.worker = w
        st.view.instance = w.iid
        st.view.phase = Phase.RUNNING
        w.in_flight += 1
        w.in_flight_tokens += st.view.length
        w.requests_total += 1
        st.path.append(w.url)

    def _detach(self) -> None:
        st, w = self.st, self.st.worker
        if w is not None:
            w.in_flight -= 1
            w.in_flight_tokens -= st.view.length
        st.worker = None

    # --- the segment loop --------------------------------------------------------------------------------
    async def run(self) -> AsyncIterator[dict]:
        st, pl = self.st, self.placement
        self.registry[st.rid] = self
        failures, excluded = 0, set()
        try:
            w = await pl.admit(st.view, self.clock())  # a policy may hold it first (decisions.HOLD)
        except BaseException:  # aborted while held, or its client left
            self.registry.pop(st.rid, None)
            raise
        if w is None:
            self.registry.pop(st.rid, None)
            raise RouterHTTPError(503, "no healthy worker available")
        try:
            while True:
                try:
                    body = (
                        self._first_body() if st.segments == 0 else self.migrator.continuation(st, w, self._seg_rid())
                    )
                except (ValueError, TypeError, RuntimeError) as e:  # never a silent cut: end with an error event
                    yield self._error_chunk(f"request could not be continued on {w.url}: {e}")
                    return
                if st.segments == 0:
                    body["rid"] = self._seg_rid()
                    st.staged_rid = ""
                    stage = self.migrator.stage_kv and self._moves_at_first_token(w)
                    if stage and await self.migrator.stage(self.http, w, body["rid"]):
                        st.staged_rid = body["rid"]
                self._attach(w)
                st.segments += 1
                try:
                    async for chunk in self._segment(w, body):
                        yield chunk
                    if st.finished:
                        w.breaker.record(True, self.clock())
                        return
                    # the segment stopped for a move: continue on st.move_to
                    dst = st.move_to
                    st.move_to = None
                    self._detach()
                    self._note_move()
                    w = dst
                except _SegmentFailed as e:
                    self._detach()
                    if e.status is not None and 400 <= e.status < 500:  # the request's fault, not the worker's
                        if not st.out_ids:
                            raise RouterHTTPError(e.status, str(e), e.body) from None
                        yield self._error_chunk(f"worker {w.url} rejected the continuation: {e}")
                        return
                    w.breaker.record(False, self.clock())
                    w.failures_total += 1
                    if self.metrics:
                        self.metrics.worker_failures.labels(worker=w.url).inc()
                    failures += 1
                    excluded.add(w)
                    resumable = not st.out_ids or st.prompt_ids is not None
                    log.warning(
                        "request %s: worker %s failed (%s); attempt %d/%d",
                        st.rid,
                        w.url,
                        e,
                        failures,
                        self.retry.max_retries,
                    )
                    if not resumable or failures >= self.retry.max_retries:
                        if not st.out_ids:
                            raise RouterHTTPError(502, f"worker failed: {e}") from None
                        yield self._error_chunk(
                            f"worker {w.url} failed mid-stream ({e}) and the request could not be resumed"
                        )
                        return
                    await asyncio.sleep(self.retry.backoff(failures))
                    nxt = await pl.admit(st.view, self.clock(), excluded) or await pl.admit(st.view, self.clock())
                    if nxt is None:
                        if not st.out_ids:
                            raise RouterHTTPError(503, f"worker failed ({e}) and no other worker is available") from e
                        yield self._error_chunk(f"worker {w.url} failed mid-stream ({e}); no worker to resume on")
                        return
                    st.text_prefix += st.seg_text
                    st.seg_text = ""
                    if st.out_ids:
                        st.resumes += 1
                        if self.metrics:
                            self.metrics.migrations.labels(reason="failure", mode="recompute", fallback="").inc()
                    else:
                        st.segments = 0  # nothing streamed yet: plain retry of the client's request
                    w = nxt
        finally:
            self.migrator.release(st)
            if st.worker is not None:
                if not st.finished:
                    _background(self.migrator.stop_source(self.http, st.worker, st.seg_rid))
                self._detach()
            self.registry.pop(st.rid, None)
            if st.finished:
                st.view.phase = Phase.FINISHED
                st.view.finish_time = self.clock()
                pl.finish(st.view, self.clock())

    def _note_move(self) -> None:
        """Bookkeeping of a finished move (text splice, counters, the move's record and metric)."""
        st = self.st
        st.text_prefix += st.seg_text
        st.seg_text = ""
        st.migrations += 1
        st.view.migrations += 1
        move = {"mode": st.move_mode, "fallback": st.move_fallback, "at": len(st.out_ids), "bytes": st.kv_bytes}
        if st.stage_used:
            move["staged"] = True
            st.stage_used = False
        plan = st.move_plan
        if plan is not None and plan.stalls:
            move["planned"] = plan.mode.value
            move["predicted_stall_s"] = dict(plan.stalls)
        st.moves.append(move)
        if self.metrics:
            self.metrics.migrations.labels(reason="stage", mode=st.move_mode, fallback=st.move_fallback).inc()
        st.move_mode, st.move_fallback, st.kv_bytes = MigrationMode.RECOMPUTE.value, "", 0
        st.move_plan = None

    def _note_stall(self, stall_s: float) -> None:
        st = self.st
        st.move_t0 = None
        if not st.moves:
            return
        move = st.moves[-1]
        move["stall_s"] = round(stall_s, 6)
        self.migrator.observe(move["mode"], st.view.prompt_len + move["at"], stall_s)

    def _seg_rid(self) -> str:
        self.st.seg_rid = f"{self.st.rid}.{self.st.segments}.{next(_seq)}"
        return self.st.seg_rid

    def _first_body(self) -> dict:
        body = dict(self.st.body)
        body["stream"] = True
        if self.st.prompt_ids is None:
            body["return_prompt_token_ids"] = True
        return body

    def _error_chunk(self, message: str) -> dict:
        self.st.finished = True
        return {
            "error": {"message": message, "type": "worker_error", "code": 502, "retryable": False},
            "text": self.st.text,
            "output_ids": list(self.st.out_ids),
            "meta_info": {
                "id": self.st.rid,
                "finish_reason": {"type": "abort", "message": message},
                "prompt_tokens": self.st.view.prompt_len,
                "completion_tokens": len(self.st.out_ids),
            },
        }

    async def _segment(self, w: Worker, body: dict) -> AsyncIterator[dict]:
        """Stream one segment; returns normally when finished or when a move was decided (st.move_to). A move's
        copy in flight (:meth:`Migrator.start`) completes the move as soon as it ends, not at the source's next
        token: a source busy prefilling other prompts may not decode this one for a long while (SGLang runs
        prefill batches first), and the simulator's move does not wait for one either."""
        st = self.st
        seg_seen = 0
        kv_bulk: asyncio.Future | None = None  # KVTransferMigrator.bulk of a move in progress
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.retry.read_timeout_s)
        try:
            async with self.http.post(
                w.url + "/generate", data=dumps(body), timeout=timeout, headers={"Content-Type": "application/json"}
            ) as resp:
                if resp.status != 200:
                    raise _SegmentFailed(
                        f"HTTP {resp.status}: {(await resp.text())[:300]}", resp.status, await resp.read()
                    )
                buf = bytearray()
                chunks = resp.content.iter_any().__aiter__()
                while True:
                    data = await _next_or_copied(chunks, kv_bulk)
                    if data is _COPIED:  # the move's copy ended before the source's next token: move now
                        moved = not self._refused(kv_bulk) and await self._complete_move(w, kv_bulk)
                        kv_bulk = None
                        if moved:
                            return
                        continue
                    if data is None:
                        break
                    buf += data
                    while True:
                        i = buf.find(b"\n\n")
                        if i < 0:
                            break
                        event = bytes(buf[:i]).strip()
                        del buf[: i + 2]
                        if event.startswith(b"data:"):
                            event = event[5:].strip()
                        if not event:
                            continue
                        if event == b"[DONE]":
                            if not st.finished:
                                raise _SegmentFailed("stream ended without a finish reason")
                            return
                        try:
                            d = loads(event)
                        except ValueError:
                            raise _SegmentFailed(f"malformed stream event {event[:80]!r}") from None
                        if "error" in d and not d.get("meta_info"):
                            raise _SegmentFailed(f"worker error: {d['error']}")
                        seg_seen, out = self._on_chunk(d, seg_seen)
                        if out is not None:
                            yield out
                        if st.finished:
                            return
                        if kv_bulk is not None:  # a move's copy in flight while the source keeps decoding
                            if not kv_bulk.done():
                                continue
                        elif not self._should_move(w):
                            continue
                        else:
                            kv_bulk = self.migrator.start(self.http, st, w, st.move_to, st.seg_rid)
                            if kv_bulk is not None:
                                continue
                        moved = not self._refused(kv_bulk) and await self._complete_move(w, kv_bulk)
                        kv_bulk = None
                        if moved:
                            return
                if not st.finished:
                    raise _SegmentFailed("connection closed before the request finished")
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
            raise _SegmentFailed(f"{type(e).__name__}: {e}") from None
        finally:
            if kv_bulk is not None:
                kv_bulk.cancel()

    def _refused(self, kv_bulk) -> bool:
        """The move's bulk copy found no room on the destination (its import answered ``out_of_kv``): the move is
        refused before the source stops, and the request keeps decoding there, as the simulator refuses a KV move
        whose destination cannot hold it; a move is asked again ``ROOM_RETRY_TOKENS`` tokens later. (Before, the
        move fell back to a recompute onto the full destination, which queued it there.)"""
        if kv_bulk is None or not kv_bulk.done() or kv_bulk.cancelled():
            return False
        e = kv_bulk.exception()
        if not (isinstance(e, KVTransferError) and e.reason == "out_of_kv"):
            return False
        self._refuse(e.reason)
        return True

    def _refuse(self, reason: str) -> None:
        st = self.st
        st.refused += 1
        st.retry_at = len(st.out_ids) + ROOM_RETRY_TOKENS
        st.move_to, st.move_plan, st.staged_rid = None, None, ""
        self.migrator.release(st)  # a bulk copy the tail's refusal leaves behind
        if self.metrics:
            self.metrics.migrations.labels(reason="stage", mode="refused", fallback=reason).inc()

    async def _complete_move(self, w: Worker, kv_bulk) -> bool:
        """Finish the move to ``st.move_to`` (the tail copy, for KV transfer) and stop the source. False: the
        tail's import found no room either (refused like a bulk copy that does not fit: the source never stopped)."""
        st = self.st
        st.move_t0 = self.clock()  # the last token from the source: the move's stall starts
        await self.migrator.finish(self.http, st, w, st.move_to, st.seg_rid, kv_bulk)
        if st.move_fallback == "out_of_kv":
            st.move_t0 = None
            st.move_mode, st.move_fallback, st.kv_bytes = MigrationMode.RECOMPUTE.value, "", 0
            self._refuse("out_of_kv")
            return False
        _background(self.migrator.stop_source(self.http, w, st.seg_rid))
        return True

    def _on_chunk(self, d: dict, seg_seen: int) -> tuple[int, dict | None]:
        st = self.st
        meta = d.get("meta_info") or {}
        ids = d.get("output_ids") or []
        n = int(meta.get("completion_tokens", len(ids)))
        if st.prompt_ids is None and d.get("prompt_token_ids") is not None:
            st.prompt_ids = list(d["prompt_token_ids"])
            if st.worker is not None:  # keep the worker's token count consistent with the view
                st.worker.in_flight_tokens += len(st.prompt_ids) - st.view.prompt_len
            st.view.prompt_len = len(st.prompt_ids)
        new = n - seg_seen
        if new > 0:
            st.out_ids.extend(ids[-new:] if len(ids) >= new else ids)
            st.view.output_len = len(st.out_ids)
            st.view.kv_tokens = st.view.length
            if st.worker is not None:
                st.worker.in_flight_tokens += new
            if st.view.first_token_time is None:
                st.view.first_token_time = self.clock()
            if st.move_t0 is not None:  # the first token after a move: the stall the client saw
                self._note_stall(self.clock() - st.move_t0)
                self.migrator.release(st)  # the destination holds the imported prefix for its own request now
        text = d.get("text")
        if text is not None:
            st.seg_text = text if len(ids) == n else st.seg_text + text
        fr = meta.get("finish_reason")
        if fr is not None:
            if isinstance(fr, dict) and fr.get("type") == "length":
                fr = {**fr, "length": len(st.out_ids)}
            st.finished = True
        if new <= 0 and fr is None:
            return n, None
        m = dict(meta)
        m.update(id=st.rid, prompt_tokens=st.view.prompt_len, completion_tokens=len(st.out_ids), finish_reason=fr)
        if st.migrations or st.resumes:
            m["cascade"] = {
                "migrations": st.migrations,
                "resumes": st.resumes,
                "path": list(st.path),
                "moves": list(st.moves),
            }
        if st.refused:
            m.setdefault("cascade", {"migrations": 0, "resumes": 0, "path": list(st.path), "moves": []})
            m["cascade"]["refused_moves"] = st.refused
        out = {"text": st.text, "output_ids": list(st.out_ids), "meta_info": m}
        if self.want_prompt_ids and st.prompt_ids is not None:
            out["prompt_token_ids"] = st.prompt_ids
        return n, out

    def _moves_at_first_token(self, w: Worker) -> bool:
        """The policy's bound on ``w`` says the request leaves right after its first token (a prefill-pool
        member's long prompt): its KV is worth staging (the simulator asks the same, ``SimConfig.stage_first_kv``)."""
        st = self.st
        if st.migrations >= self.placement.policy.max_migrations:
            return False
        return leaves_at_first_token(self.placement.bound(st.view, w), st.view.prompt_len)

    def _should_move(self, w: Worker) -> bool:
        st = self.st
        if st.prompt_ids is None or st.migrations >= self.placement.policy.max_migrations:  # as the simulator
            return False
        if len(st.out_ids) < st.retry_at:  # a move was refused for want of room on its destination
            return False
        ctx = self.placement.pool.context_length()
        if ctx and len(st.prompt_ids) + len(st.out_ids) > max_input_tokens(ctx):
            st.move_to = None  # the continuation's input (prompt + generated) would be aborted by SGLang's
            return False  # input-length check on the destination: the request finishes where it is
        if st.move_to is not None:
            if st.move_to.usable(self.clock()) and st.move_to is not w:
                return True
            st.move_to = None
        bound = self.placement.bound(st.view, w)
        if bound is None or st.view.length < bound:
            return False
        move = self.placement.migrate(st.view, w, self.clock())
        if move is None:
            return False
        st.move_to, st.move_plan = move
        return True
