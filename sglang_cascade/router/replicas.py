"""Decentralized router replicas: each replica PUBlishes its per-worker load (and the stage ranges its policy
uses) every ``publish_interval`` and SUBscribes to its peers, so every replica routes with the cluster-wide
load and none is a single point of failure (a dead peer's share simply ages out after ``peer_ttl``).

Wire format: two zmq frames ``[REPLICA_TOPIC, msgspec.msgpack.encode(ReplicaUpdate)]``. Plugin load
publications from workers (``core.messages.LoadMessage`` on ``LOAD_TOPIC``) are received here too.
Ages use the receiver's clock (time of receipt), so replicas need no clock sync.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
import zmq
import zmq.asyncio

from ..core.messages import LOAD_TOPIC, decode_load
from .workers import WorkerPool

log = logging.getLogger("sglang_cascade.router")
REPLICA_TOPIC = b"cascade.replica"


class WorkerShare(msgspec.Struct, array_like=True):
    url: str
    in_flight: int
    tokens: int


class StageRange(msgspec.Struct, array_like=True):
    url: str
    stage: int
    lo: int
    hi: int | None


class ReplicaUpdate(msgspec.Struct, kw_only=True):
    replica_id: str
    seq: int
    sent_at: float
    workers: list[WorkerShare] = []
    ranges: list[StageRange] = []  # stage ranges this replica's policy routes by (empty: not a stage policy)
    ranges_version: int = 0


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(ReplicaUpdate)


def encode_update(u: ReplicaUpdate) -> bytes:
    return _enc.encode(u)


def decode_update(b: bytes) -> ReplicaUpdate:
    return _dec.decode(b)


class ReplicaSync:
    def __init__(
        self,
        pool: WorkerPool,
        replica_id: str,
        bind: str | None,
        peers: list[str],
        plugin_endpoints: dict[str, str] | None = None,
        publish_interval: float = 0.05,
        ranges_fn=None,
        on_ranges=None,
        on_plugin_load=None,
    ):
        self.pool, self.replica_id = pool, replica_id
        self.bind, self.peers = bind, list(peers)
        self.plugin_endpoints = dict(plugin_endpoints or {})  # zmq endpoint -> worker url
        self.publish_interval = publish_interval
        self.ranges_fn = ranges_fn  # () -> list[StageRange]
        self.on_ranges = on_ranges  # (replica_id, version, ranges) -> None
        self.on_plugin_load = on_plugin_load  # (worker, InstanceLoad) -> None
        self.ctx = zmq.asyncio.Context.instance()
        self.pub = None
        self.subs: list = []
        self.seq = 0
        self.received = 0
        self.peer_ranges: dict[str, tuple[int, list[StageRange]]] = {}
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        if self.bind:
            self.pub = self.ctx.socket(zmq.PUB)
            self.pub.setsockopt(zmq.LINGER, 0)
            self.pub.bind(self.bind)
            self._tasks.append(asyncio.get_running_loop().create_task(self._publish_loop()))
        for ep in self.peers:
            self._sub(ep, REPLICA_TOPIC)
        for ep in self.plugin_endpoints:
            self._sub(ep, LOAD_TOPIC)

    def _sub(self, endpoint: str, topic: bytes) -> None:
        s = self.ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SUBSCRIBE, topic)
        s.connect(endpoint)
        self.subs.append(s)
        self._tasks.append(asyncio.get_running_loop().create_task(self._recv_loop(s, endpoint)))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for s in self.subs + ([self.pub] if self.pub is not None else []):
            s.close(0)

    def snapshot(self) -> ReplicaUpdate:
        self.seq += 1
        ranges = list(self.ranges_fn()) if self.ranges_fn else []
        return ReplicaUpdate(
            replica_id=self.replica_id,
            seq=self.seq,
            sent_at=time.time(),
            workers=[WorkerShare(w.url, w.in_flight, w.in_flight_tokens) for w in self.pool.workers],
            ranges=ranges,
        )

    async def _publish_loop(self) -> None:
        while True:
            try:
                await self.pub.send_multipart([REPLICA_TOPIC, encode_update(self.snapshot())])
            except Exception as e:  # pragma: no cover
                log.warning("replica publish failed: %s", e)
            await asyncio.sleep(self.publish_interval)

    def apply(self, u: ReplicaUpdate, now: float) -> None:
        if u.replica_id == self.replica_id:
            return
        self.received += 1
        for s in u.workers:
            w = self.pool.get(s.url)
            if w is not None:
                w.peers[u.replica_id] = (s.in_flight, s.tokens, now)
        if u.ranges:
            self.peer_ranges[u.replica_id] = (u.seq, list(u.ranges))
            if self.on_ranges is not None:
                self.on_ranges(u.replica_id, u.seq, u.ranges)

    async def _recv_loop(self, sock, endpoint: str) -> None:
        while True:
            try:
                topic, payload = await sock.recv_multipart()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # pragma: no cover
                log.warning("replica recv on %s failed: %s", endpoint, e)
                await asyncio.sleep(0.1)
                continue
            now = time.monotonic()
            try:
                if topic == REPLICA_TOPIC:
                    self.apply(decode_update(payload), now)
                elif topic == LOAD_TOPIC:
                    msg = decode_load(payload)
                    w = self.pool.get(self.plugin_endpoints.get(endpoint, ""))
                    if w is not None:
                        load = msg.to_load()
                        load.published_at = now
                        w.plugin_load = load
                        if self.on_plugin_load is not None:
                            self.on_plugin_load(w, load)
            except (msgspec.ValidationError, msgspec.DecodeError) as e:
                log.warning("dropping malformed message from %s: %s", endpoint, e)
