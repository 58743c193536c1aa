"""Control messages instances publish for routers (msgspec-encoded, sent over pyzmq PUB/SUB).

Importable without sglang, torch or zmq: the router decodes these, the SGLang plugin and the fake
worker encode them. One message = one instance's load at ``published_at`` (wall-clock seconds,
``time.time()`` of the publisher) plus the plugin's own counters.

Wire format: a two-frame zmq message ``[LOAD_TOPIC, msgspec.msgpack.encode(LoadMessage)]``.
"""

from __future__ import annotations

import msgspec

from .views import InstanceLoad

LOAD_TOPIC = b"cascade.load"


class LoadMessage(msgspec.Struct, kw_only=True):
    """What one instance publishes about itself (the wire twin of :class:`InstanceLoad`)."""

    iid: int
    seq: int = 0  # per-publisher sequence number (lets a subscriber see drops)
    published_at: float = 0.0
    num_running: int = 0
    num_waiting: int = 0
    num_parked: int = 0
    kv_used: int = 0
    kv_capacity: int = 1
    outstanding_tokens: int = 0
    stage: int = -1
    range_lo: int = 0
    range_hi: int | None = None  # None = unbounded
    healthy: bool = True
    policy: str = ""
    counters: dict[str, int] = {}

    @classmethod
    def from_load(
        cls, load: InstanceLoad, *, seq: int = 0, policy: str = "", counters: dict[str, int] | None = None
    ) -> LoadMessage:
        return cls(
            iid=load.iid,
            seq=seq,
            published_at=load.published_at,
            num_running=load.num_running,
            num_waiting=load.num_waiting,
            num_parked=load.num_parked,
            kv_used=load.kv_used,
            kv_capacity=load.kv_capacity,
            outstanding_tokens=load.outstanding_tokens,
            stage=load.stage,
            range_lo=load.range_lo,
            range_hi=load.range_hi,
            healthy=load.healthy,
            policy=policy,
            counters=dict(counters or {}),
        )

    def to_load(self) -> InstanceLoad:
        return InstanceLoad(
            iid=self.iid,
            num_running=self.num_running,
            num_waiting=self.num_waiting,
            num_parked=self.num_parked,
            kv_used=self.kv_used,
            kv_capacity=self.kv_capacity,
            outstanding_tokens=self.outstanding_tokens,
            stage=self.stage,
            range_lo=self.range_lo,
            range_hi=self.range_hi,
            published_at=self.published_at,
            healthy=self.healthy,
        )


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(LoadMessage)


def encode_load(msg: LoadMessage) -> bytes:
    return _ENCODER.encode(msg)


def decode_load(data: bytes) -> LoadMessage:
    """Decode one payload; raises ``msgspec.ValidationError``/``DecodeError`` on malformed input."""
    return _DECODER.decode(data)
