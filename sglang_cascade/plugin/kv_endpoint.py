"""The plugin's KV migration endpoint: a pyzmq ROUTER socket served from the scheduler thread.

Bound when the scheduler starts (``--scheduler-plugin``), at ``tcp://<host>:<free port>`` (or the
``SGLANG_CASCADE_KV_ADDR`` address, e.g. ``ipc:///tmp/x``). The address is published in
``/get_server_info`` ``internal_states[i]["cascade_kv_endpoint"]``. :meth:`KVEndpoint.serve` runs after every
``Scheduler.ingest_requests`` (between batches, so the pools are consistent) and answers every pending
request without blocking; the socket is also registered with the scheduler's idle poller so a sleeping
scheduler wakes for it. Messages: :mod:`sglang_cascade.core.kv_messages`; pool access:
:mod:`.kv_pool_io`. Errors become ``ok=False`` replies (the router then falls back to recompute); the
scheduler never raises from here.
"""

from __future__ import annotations

import logging
import os

import zmq

from ..core.kv_messages import KVReply, KVRequest, decode_request, encode
from . import kv_pool_io as io

log = logging.getLogger("sglang_cascade.plugin")
ADDR_ENV = "SGLANG_CASCADE_KV_ADDR"


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
        self.counters = {"exports": 0, "imports": 0, "errors": 0, "bytes_out": 0, "bytes_in": 0}
        sleeper = getattr(sched, "idle_sleeper", None)
        poller = getattr(sleeper, "poller", None)
        if poller is not None:
            poller.register(self.sock, zmq.POLLIN)

    def serve(self, max_msgs: int = 64) -> int:
        return serve_pending(self.sock, self.handle, self.counters, max_msgs)

    def handle(self, req: KVRequest, frames: list[bytes]) -> tuple[KVReply, list[bytes]]:
        """Answer one request; ``frames`` are the raw tensor frames after its header."""
        s = self.sched
        if req.op == "stats":
            return KVReply(stats={**io.pool_stats(s), **self.counters}), []
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
            end = io.import_kv(s, list(req.token_ids), req.start, req.end, frames)
            self.counters["imports"] += 1
            self.counters["bytes_in"] += sum(len(f) for f in frames)
            return KVReply(start=req.start, end=end, **lay), []
        raise io.KVIOError("op", req.op)

    def close(self) -> None:
        self.sock.close(linger=0)
