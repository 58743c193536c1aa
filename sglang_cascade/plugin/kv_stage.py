"""KV staging: a request's KV captured as its prefill ends and served without waiting for the scheduler.

The KV endpoint (:mod:`.kv_endpoint`) answers between scheduler iterations, so an export asked for right after
a request's first token waits for whatever the scheduler runs next: on a prefill-pool member that is another
prompt's prefill chunk (seconds on a large model), and the move of a request that would decode elsewhere
waits that long for its second token. When the router will move a request right after its first token it sends
``stage`` for it at dispatch; :meth:`KVStage.capture` (the ``process_batch_result`` hook, scheduler thread,
before SGLang streams the first token) exports its prompt's KV once the batch that completes its prefill has run;
a thread with its own socket
answers the router's ``export`` from that copy at once. A capture is dropped once fetched, after ``ttl_s`` and
beyond ``max_bytes`` (oldest first); a request not captured is exported the usual way (the router asks the KV
endpoint). The simulator's counterpart is ``SimConfig.stage_first_kv``.

Bound at ``tcp://<host>:<free port>`` (or ``SGLANG_CASCADE_KV_STAGE_ADDR``), published in ``/get_server_info``
``internal_states[i]["cascade_kv_stage_endpoint"]``. Messages: :mod:`sglang_cascade.core.kv_messages`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict

import msgspec
import zmq

from ..core.kv_messages import KVReply, KVRequest
from . import kv_pool_io as io
from .kv_endpoint import bind_router, serve_pending

log = logging.getLogger("sglang_cascade.plugin")
ADDR_ENV = "SGLANG_CASCADE_KV_STAGE_ADDR"
MAX_BYTES_ENV = "SGLANG_CASCADE_KV_STAGE_MAX_BYTES"


def slice_range(reply: KVReply, frames: list[bytes], start: int, end: int) -> tuple[KVReply, list[bytes]]:
    """Positions ``[start, min(end, captured end))`` of a capture of ``[reply.start, reply.end)`` (``end`` < 0:
    all); frames are per layer K then V, rows of equal size along the token axis."""
    end = reply.end if end < 0 else min(end, reply.end)
    if not reply.start <= start <= end:
        raise io.KVIOError("range", f"[{start}, {end}) of the captured [{reply.start}, {reply.end})")
    n = reply.end - reply.start
    if (start, end) == (reply.start, reply.end) or n == 0:
        return reply, frames
    a, b = start - reply.start, end - reply.start
    out = [f[a * (len(f) // n) : b * (len(f) // n)] for f in frames]
    return msgspec.structs.replace(reply, start=start, end=end), out


class KVStage:
    def __init__(self, host: str = "127.0.0.1", addr: str | None = None, ttl_s: float = 60.0, max_bytes=None):
        self.ttl_s = ttl_s
        self.max_bytes = int(max_bytes if max_bytes is not None else os.environ.get(MAX_BYTES_ENV, 4 << 30))
        self._lock = threading.Lock()
        self.wanted: dict[str, float] = {}  # rid -> when staged (not captured yet)
        self.captured: OrderedDict[str, tuple[KVReply, list[bytes], float]] = OrderedDict()
        self.bytes = 0
        self.counters = {"staged": 0, "captured": 0, "fetched": 0, "not_staged": 0, "dropped": 0, "errors": 0}
        self.sock, self.addr = bind_router(host, addr, ADDR_ENV)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cascade-kv-stage", daemon=True)
        self._thread.start()  # the socket is used by that thread only from here on

    # ------------------------------------------------------------------ scheduler thread
    def capture(self, sched, batch) -> int:
        """Before SGLang processes a batch's result (which streams the first tokens): export the prompt KV of
        every wanted request whose prefill this batch completed, so the router's export, sent when it sees the
        first token, finds it. A request still being chunked has ``inflight_middle_chunks`` > 0 (SGLang
        0.5.23 counts the chunks in flight that are not its last). Returns how many; never raises."""
        if not self.wanted:
            return 0
        n = 0
        for req in getattr(batch, "reqs", None) or ():
            if req.rid not in self.wanted or getattr(req, "inflight_middle_chunks", 0) > 0:
                continue  # not staged, or a chunk of a prefill still in progress
            with self._lock:
                self.wanted.pop(req.rid, None)
            if req.output_ids or req.finished() or getattr(req, "is_retracted", False):
                continue  # decoding already (a mixed batch, a re-prefill after retraction): not a first token
            try:
                dtype, k_shape, v_shape, layers = io.layout(sched)
                tokens, start, end, frames = io.export_req(sched, req, 0, -1, prefill_done=True)
            except Exception as e:  # the router then exports through the KV endpoint
                self.counters["errors"] += 1
                log.info("kv stage: capture of %s failed: %r", req.rid, e)
                continue
            reply = KVReply(
                start=start, end=end, token_ids=tokens, dtype=dtype, k_shape=k_shape, v_shape=v_shape, layers=layers
            )
            self.put(req.rid, reply, frames)
            n += 1
        return n

    def put(self, rid: str, reply: KVReply, frames: list[bytes]) -> None:
        size = sum(len(f) for f in frames)
        with self._lock:
            if size > self.max_bytes:
                self.counters["dropped"] += 1
                return
            self.captured[rid] = (reply, frames, time.monotonic())
            self.bytes += size
            self.counters["captured"] += 1
            while self.bytes > self.max_bytes:
                self._drop(next(iter(self.captured)))

    # ------------------------------------------------------------------ the serving thread
    def answer(self, req: KVRequest, frames=()) -> tuple[KVReply, list[bytes]]:
        if req.op == "stage":
            with self._lock:
                self.wanted[req.rid] = time.monotonic()
                self.counters["staged"] += 1
            return KVReply(), []
        if req.op == "stats":
            with self._lock:
                return KVReply(stats={**self.counters, "bytes": self.bytes, "held": len(self.captured)}), []
        if req.op == "export":
            with self._lock:
                got = self._pop(req.rid)
                self.counters["fetched" if got is not None else "not_staged"] += 1
            if got is None:
                return KVReply(ok=False, error="not_staged"), []
            return slice_range(got[0], got[1], req.start, req.end)
        raise io.KVIOError("op", req.op)

    def expire(self, now: float) -> None:
        with self._lock:
            for rid in [r for r, t in self.wanted.items() if now - t > self.ttl_s]:
                del self.wanted[rid]
            for rid in [r for r, v in self.captured.items() if now - v[2] > self.ttl_s]:
                self._drop(rid)

    def _pop(self, rid: str):  # (under the lock)
        got = self.captured.pop(rid, None)
        if got is not None:
            self.bytes -= sum(len(f) for f in got[1])
        return got

    def _drop(self, rid: str) -> None:  # (under the lock)
        self._pop(rid)
        self.counters["dropped"] += 1

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                if poller.poll(200):
                    serve_pending(self.sock, self.answer, self.counters)
                self.expire(time.monotonic())
            except zmq.ZMQError:  # closed under us (close())
                return
            except Exception as e:  # never let the thread die silently on one bad message
                log.warning("kv stage: %r", e, exc_info=True)
        self.sock.close(linger=0)

    def close(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
