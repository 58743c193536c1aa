"""How KV bytes move between two workers' KV migration endpoints (``plugin/kv_endpoint.py``).

:class:`KVTransport` is the seam: ``move(src, dst, rid, start, end)`` copies the KV of token positions
``[start, end)`` of the running request ``rid`` from the source worker's pool into the destination's radix
cache and returns what moved. :class:`ZmqRelayTransport` (implemented; TCP or IPC) asks the source
endpoint for the frames and hands them to the destination endpoint, so the bytes pass through the
router's host. A GPU path (NCCL / CUDA IPC / SGLang's disaggregation transfer engine) is another subclass:
its ``export`` returns an :class:`ExportedKV` whose frames are handles to the source's KV slots rather than
bytes, and its ``import_`` has the destination endpoint pull them worker-to-worker (a ``pull`` op beside
``import``), answering the same reasons (``gap``, ``out_of_kv``, ...); the migrators, which call only
``export`` / ``import_`` / ``release`` / ``stats`` (the staged bulk + tail), do not change. No GPU was available when this
was written: only the pyzmq path exists and is tested.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import msgspec
import zmq
import zmq.asyncio

from ..core.kv_messages import KVReply, KVRequest, decode_reply, encode


class KVTransferError(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason  # the fallback label: timeout | no_request | out_of_kv | gap | layout | ...


@dataclass
class MoveResult:
    start: int
    end: int  # the destination's cached prefix after the import
    token_ids: list[int] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0


@dataclass
class ExportedKV:
    """KV of positions ``[reply.start, reply.end)`` of one request, as the source sent it."""

    reply: KVReply
    frames: list

    @property
    def nbytes(self) -> int:
        return sum(len(f) for f in self.frames)

    def extend(self, tail: ExportedKV) -> ExportedKV:
        """This range followed by ``tail`` (which starts where this one ends): frames are per-layer
        C-contiguous along the token axis, so joining is byte concatenation."""
        if tail.reply.start != self.reply.end or len(tail.frames) != len(self.frames):
            raise KVTransferError("range", f"[{tail.reply.start}, ..) does not continue [.., {self.reply.end})")
        r = msgspec.structs.replace(tail.reply, start=self.reply.start)
        return ExportedKV(r, [bytes(a) + bytes(b) for a, b in zip(self.frames, tail.frames, strict=True)])


class KVTransport(ABC):
    """``export`` reads a range from the source's pool, ``import_`` writes it into the destination's radix
    cache (one call, so the destination's pool is never left with a partial prefix); ``move`` does both."""

    name = "abstract"

    @abstractmethod
    async def export(self, src: str, rid: str, start: int, end: int) -> ExportedKV: ...

    @abstractmethod
    async def import_(self, dst: str, kv: ExportedKV, pin: str = "", max_new_left: int | None = None) -> int:
        """Import ``kv``; with ``pin``, the destination keeps the prefix locked under that name until
        :meth:`release` (or the pin's time to live on the worker); with ``max_new_left`` (a move: its
        continuation's output left, -1 unknown) it answers ``out_of_kv`` unless its admission could then take the
        continuation (``plugin/kv_pool_io.admission_reserve``)."""

    async def pin(self, dst: str, pin: str, token_ids: list[int], end: int) -> None:
        """Lock ``token_ids[:end]``, already in ``dst``'s radix cache, under ``pin``; ``gap`` when it is not (all)
        there any more."""
        raise KVTransferError("unsupported", f"{self.name} transport cannot pin")

    async def release(self, dst: str, pin: str) -> None:
        """Unlock the prefix pinned under ``pin`` on ``dst`` (idempotent)."""

    async def move(self, src: str, dst: str, rid: str, start: int, end: int) -> MoveResult:
        t0 = time.perf_counter()
        kv = await self.export(src, rid, start, end)
        end = await self.import_(dst, kv)
        return MoveResult(kv.reply.start, end, kv.reply.token_ids, kv.nbytes, time.perf_counter() - t0)

    @abstractmethod
    async def stats(self, addr: str) -> dict[str, int]: ...

    async def stage(self, addr: str, rid: str) -> None:
        """Ask a worker's KV stage endpoint (``plugin/kv_stage.py``) to capture ``rid``'s KV as its prefill ends."""
        raise KVTransferError("unsupported", f"{self.name} transport has no KV staging")

    async def export_staged(self, addr: str, rid: str, start: int, end: int) -> ExportedKV:
        """``[start, end)`` of ``rid`` from its capture, or less (up to what was captured); ``not_staged``
        when nothing was."""
        raise KVTransferError("unsupported", f"{self.name} transport has no KV staging")


class ZmqRelayTransport(KVTransport):
    name = "zmq"

    def __init__(self, timeout_s: float = 10.0, ctx: zmq.asyncio.Context | None = None):
        self.timeout_s = timeout_s
        self._ctx = ctx or zmq.asyncio.Context.instance()

    async def call(self, addr: str, req: KVRequest, frames: list[bytes] = ()) -> tuple[KVReply, list[bytes]]:
        """One request/reply on a fresh DEALER socket (a timed-out call leaves nothing behind)."""
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(addr)
            await sock.send_multipart([b"", encode(req), *frames], copy=False)
            if not await sock.poll(int(self.timeout_s * 1000), zmq.POLLIN):
                raise KVTransferError("timeout", f"{req.op} on {addr}")
            parts = await sock.recv_multipart()
        finally:
            sock.close(linger=0)
        rep = decode_reply(parts[1])
        if not rep.ok:
            raise KVTransferError(rep.error or "error", f"{req.op} on {addr}")
        return rep, parts[2:]

    async def export(self, src: str, rid: str, start: int, end: int) -> ExportedKV:
        rep, frames = await self.call(src, KVRequest(op="export", rid=rid, start=start, end=end))
        if rep.end < end:
            raise KVTransferError("short", f"source exported [{rep.start}, {rep.end}) of [{start}, {end})")
        return ExportedKV(rep, list(frames))

    async def import_(self, dst: str, kv: ExportedKV, pin: str = "", max_new_left: int | None = None) -> int:
        r = kv.reply
        imp = KVRequest(
            op="import",
            start=r.start,
            end=r.end,
            token_ids=r.token_ids[: r.end],
            dtype=r.dtype,
            k_shape=r.k_shape,
            v_shape=r.v_shape,
            layers=r.layers,
            pin=pin,
            max_new_left=max_new_left,
        )
        got, _ = await self.call(dst, imp, kv.frames)
        return got.end

    async def pin(self, dst: str, pin: str, token_ids: list[int], end: int) -> None:
        await self.call(dst, KVRequest(op="pin", pin=pin, token_ids=token_ids[:end], end=end))

    async def release(self, dst: str, pin: str) -> None:
        await self.call(dst, KVRequest(op="release", pin=pin))

    async def stats(self, addr: str) -> dict[str, int]:
        rep, _ = await self.call(addr, KVRequest(op="stats"))
        return dict(rep.stats)

    async def stage(self, addr: str, rid: str) -> None:
        await self.call(addr, KVRequest(op="stage", rid=rid))

    async def export_staged(self, addr: str, rid: str, start: int, end: int) -> ExportedKV:
        rep, frames = await self.call(addr, KVRequest(op="export", rid=rid, start=start, end=end))
        return ExportedKV(rep, list(frames))
