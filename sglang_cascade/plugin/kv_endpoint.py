"""The plugin's KV migration endpoint: a pyzmq ROUTER socket served from the scheduler thread.

Bound when the scheduler starts (``--scheduler-plugin``), at ``tcp://<host>:<free port>`` (or the
``SGLANG_CASCADE_KV_ADDR`` address, e.g. ``ipc:///tmp/x``). The address is published in
``/get_server_info`` ``internal_states[i]["cascade_kv_endpoint"]``. :meth:`KVEndpoint.serve` runs after every
``Scheduler.ingest_requests`` (between batches, so the pools are consistent) and answers every pending
request without blocking; the socket is also registered with the scheduler's idle poller so a sleeping
scheduler wakes for it. Messages: :mod:`sglang_cascade.core.kv_messages`; pool access:
:mod:`.kv_pool_io`. Errors become ``ok=False`` replies (the router then falls back to recompute); the
scheduler never raises from here.

Pins: an ``import`` with ``pin`` (the router's stop-and-copy), or the ``pin`` op on a prefix an earlier import
left in the cache, keeps that prefix locked (``kv_pool_io.pin_prefix``) until the router's ``release`` (sent once
the continuation's first token arrived from this worker, or when the move is given up) or until
``SGLANG_CASCADE_KV_PIN_TTL_S`` seconds (default 30). Unlocked, an imported prefix is evictable cache, and a worker
short of KV evicted it to admit other queued requests before the continuation's turn came, which then prefilled
its whole context again (on an overloaded 1 + 1 CPU-engine pool 30 moved long prompts were prefilled again and
17 served from the moved KV: docs/results/prefill_pool_live_nopin_overload.txt).
"""

from __future__ import annotations

import logging
import os
import time

import zmq

from ..core.kv_messages import KVReply, KVRequest, decode_request, encode
from . import kv_pool_io as io

log = logging.getLogger("sglang_cascade.plugin")
ADDR_ENV = "SGLANG_CASCADE_KV_ADDR"
PIN_TTL_ENV = "SGLANG_CASCADE_KV_PIN_TTL_S"


def bind_router(host: str, addr: str | None, env: str) -> tuple[zmq.Socket, str]:
    """A ROUTER socket bound to ``addr``, else the ``env`` address, else a free TCP port on ``host``."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    addr = addr or os.environ.get(env)
    if addr:
        sock.bind(addr)
        return sock, addr
    return sock, f"tcp://{host}:{sock.bind_to_random_port(f'tcp://{host}')}"


def serve_pending(sock: zmq.Socket, handle, counters: dict, max_msgs: int = 64) -> int:
    """Answer every request waiting on ``sock`` (at most ``max_msgs``) without blocking: ``handle(req, frames)``
    gives (reply, frames); a :class:`~.kv_pool_io.KVIOError` becomes an ``ok=False`` reply with its reason, any
    other error an ``internal`` one (counted in ``counters["errors"]``). Never raises for a bad message."""
    n = 0
    while n < max_msgs:
        try:
            parts = sock.recv_multipart(flags=zmq.NOBLOCK, copy=True)
        except zmq.Again:
            break
        n += 1
        ident, payload = parts[0], parts[1:]
        delim = payload[:1] if payload and payload[0] == b"" else []  # REQ clients send an empty frame
        body = payload[len(delim) :]
        try:
            reply, frames = handle(decode_request(body[0]), body[1:])
        except io.KVIOError as e:
            counters["errors"] += 1
            reply, frames = KVReply(ok=False, error=e.reason, token_ids=[]), []
            log.info("kv endpoint: %s", e)
        except Exception as e:  # never break the scheduler
            counters["errors"] += 1
            reply, frames = KVReply(ok=False, error="internal"), []
            log.warning("kv endpoint failed: %r", e, exc_info=True)
        sock.send_multipart([ident, *delim, encode(reply), *frames])
    return n


class KVEndpoint:
    def __init__(self, sched, host: str = "127.0.0.1", addr: str | None = None):
        self.sched = sched
        self.sock, self.addr = bind_router(host, addr, ADDR_ENV)
        self.counters = {"exports": 0, "imports": 0, "errors": 0, "bytes_out": 0, "bytes_in": 0, "pins_expired": 0}
        self.pin_ttl_s = float(os.environ.get(PIN_TTL_ENV, "30"))
        self.pins: dict[str, tuple[object, float]] = {}  # name -> (the tree's lock, expiry on time.monotonic())
        sleeper = getattr(sched, "idle_sleeper", None)
        poller = getattr(sleeper, "poller", None)
        if poller is not None:
            poller.register(self.sock, zmq.POLLIN)

    def serve(self, max_msgs: int = 64) -> int:
        if self.pins:
            self.expire(time.monotonic())
        return serve_pending(self.sock, self.handle, self.counters, max_msgs)

    def pin(self, name: str, token_ids: list[int], end: int) -> None:
        """Lock ``token_ids[:end]`` under ``name``; an earlier lock of that name (a shorter stage) is dropped."""
        lock = io.pin_prefix(self.sched, token_ids, end)
        old = self.pins.pop(name, None)
        self.pins[name] = (lock, time.monotonic() + self.pin_ttl_s)
        if old is not None:
            io.unpin(self.sched, old[0])

    def release(self, name: str) -> bool:
        held = self.pins.pop(name, None)
        if held is not None:
            io.unpin(self.sched, held[0])
        return held is not None

    def expire(self, now: float) -> None:
        for name in [n for n, (_, until) in self.pins.items() if until <= now]:
            self.release(name)
            self.counters["pins_expired"] += 1
            log.info("kv endpoint: pin %s expired after %.0f s", name, self.pin_ttl_s)

    def handle(self, req: KVRequest, frames: list[bytes]) -> tuple[KVReply, list[bytes]]:
        """Answer one request; ``frames`` are the raw tensor frames after its header."""
        s = self.sched
        if req.op == "stats":
            return KVReply(stats={**io.pool_stats(s), **self.counters, "pins": len(self.pins)}), []
        if req.op == "release":
            return KVReply(end=int(self.release(req.pin))), []
        if req.op == "pin":  # a prefix an earlier import left in the cache (raises "gap" when evicted since)
            self.pin(req.pin, list(req.token_ids), req.end)
            return KVReply(start=0, end=req.end), []
        dtype, k_shape, v_shape, layers = io.layout(s)
        lay = dict(dtype=dtype, k_shape=k_shape, v_shape=v_shape, layers=layers)
        if req.op == "export":
            tokens, start, end, frames = io.export_kv(s, req.rid, req.start, req.end)
            self.counters["exports"] += 1
            self.counters["bytes_out"] += sum(len(f) for f in frames)
            return KVReply(start=start, end=end, token_ids=tokens, **lay), frames
        if req.op == "import":
            if (req.dtype, req.k_shape, req.v_shape, req.layers) != (dtype, k_shape, v_shape, layers):
                raise io.KVIOError("layout", f"{req.dtype}{req.k_shape}x{req.layers} into {dtype}{k_shape}x{layers}")
            end = io.import_kv(s, list(req.token_ids), req.start, req.end, frames, req.max_new_left)
            if req.pin:
                self.pin(req.pin, list(req.token_ids), end)
            self.counters["imports"] += 1
            self.counters["bytes_in"] += sum(len(f) for f in frames)
            return KVReply(start=req.start, end=end, **lay), []
        raise io.KVIOError("op", req.op)

    def close(self) -> None:
        for name in list(self.pins):
            self.release(name)
        self.sock.close(linger=0)
