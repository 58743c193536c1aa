"""Publishes an instance's load for routers: pyzmq PUB socket, msgspec-encoded :class:`LoadMessage` s.

Frames: ``[LOAD_TOPIC, payload]`` (see :mod:`sglang_cascade.core.messages`); subscribers filter on the
topic. PUB never blocks the scheduler: with no subscriber (or a slow one) messages are dropped by zmq,
which is the intended staleness semantics (a router uses the last load it received).
"""

from __future__ import annotations

import zmq

from ..core.messages import LOAD_TOPIC, LoadMessage, encode_load
from ..core.views import InstanceLoad


class LoadPublisher:
    def __init__(self, addr: str, *, bind: bool = True, ctx: zmq.Context | None = None):
        self.addr = addr
        self._ctx = ctx or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 16)
        (self._sock.bind if bind else self._sock.connect)(addr)
        self.seq = 0

    def publish(self, load: InstanceLoad, *, policy: str = "", counters: dict[str, int] | None = None) -> LoadMessage:
        self.seq += 1
        msg = LoadMessage.from_load(load, seq=self.seq, policy=policy, counters=counters)
        try:
            self._sock.send_multipart([LOAD_TOPIC, encode_load(msg)], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass
        return msg

    def close(self) -> None:
        self._sock.close(linger=0)


class LoadSubscriber:
    """Minimal SUB side (for routers that do not bring their own, and for tests)."""

    def __init__(self, addr: str, *, ctx: zmq.Context | None = None):
        self._ctx = ctx or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, LOAD_TOPIC)
        self._sock.connect(addr)

    def recv(self, timeout_ms: int = 1000) -> LoadMessage | None:
        from ..core.messages import decode_load

        if not self._sock.poll(timeout_ms):
            return None
        _topic, payload = self._sock.recv_multipart()
        return decode_load(payload)

    def close(self) -> None:
        self._sock.close(linger=0)
