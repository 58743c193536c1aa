"""How a running /generate request moves from one worker to another.

A :class:`Migrator` turns "the client has seen ``out_ids`` so far" into (1) stopping the source segment and
(2) the request body that continues it on the destination. The splice (offset translation of the
destination's stream) lives in :mod:`.session` and is the same for every migrator.

- :class:`RecomputeMigrator` (implemented): abort the source (``POST /abort_request {"rid"}``, and drop
  the connection, which SGLang also treats as an abort); the destination prefills
  ``input_ids = prompt_ids + out_ids`` and generates the remaining ``max_new_tokens`` with the same
  sampling parameters.
- :class:`KVTransferMigrator` (``--migration-mode kv_transfer``): the same continuation body, but before it
  is sent the KV of ``prompt_ids + out_ids`` (all but the last token) is copied from the source's pool into
  the destination's radix cache through the workers' plugin endpoints (:mod:`.kv_transport`), so the
  destination computes only the last token (``meta_info.cached_tokens``). Llumnix-style: :meth:`bulk` runs
  while the source keeps decoding and the client keeps receiving tokens; :meth:`finish` is the short
  stop-and-copy of the positions streamed meanwhile, awaited before the source is stopped. A bulk copy whose
  destination has no room (``out_of_kv``) makes the session refuse the move (the request stays on its source:
  ``GenerateSession._refused``); any other failure (no plugin endpoint, timeout, source gone) leaves the move a plain
  recompute of the same body: nothing is lost, the outcome is labelled in the migrations metric.
- :class:`AutoMigrator` (``--migration-mode auto``): per move, the mechanism the policy's
  ``MigrationPlanner`` chose (the same planner code the simulator runs), fed through
  :class:`~..policies.migration_costs.MigrationCosts` with the stall every earlier move really had
  (:meth:`Migrator.observe`); a worker known to have no endpoint is moved by recompute without a try.

The session drives every migrator the same way: :meth:`Migrator.start` when the move is decided (a copy that
runs while the source keeps decoding, or None), :meth:`Migrator.finish` once that is done (at the next
chunk), then :meth:`Migrator.stop_source`, and :meth:`Migrator.observe` with the stall the client saw.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from ..core.decisions import MigrationMode
from ..core.kv_messages import STAGE_STATE_KEY, STATE_KEY
from ..policies.migration_costs import MigrationCosts
from .gen_state import GenState
from .kv_transport import ExportedKV, KVTransferError, KVTransport, ZmqRelayTransport
from .tasks import background

if TYPE_CHECKING:  # pragma: no cover
    from .workers import Worker

log = logging.getLogger("sglang_cascade.router")


def _left(st: GenState) -> int:
    """The continuation's output left, as a KV import for the move tells the destination (-1: no limit)."""
    return -1 if st.unbounded else max(0, st.max_new - len(st.out_ids))


class Migrator(ABC):
    stage_kv = False  # --kv-stage: may ask workers to stage a request's KV (KVTransferMigrator; see :meth:`stage`)
    mode: MigrationMode
    costs: MigrationCosts | None = None  # measured stalls, shared with the policy's planner (auto)

    @abstractmethod
    def continuation(self, st: GenState, dst: Worker, rid: str) -> dict:
        """Body of the /generate request that continues ``st`` on ``dst`` under worker rid ``rid``."""

    @abstractmethod
    async def stop_source(self, http, src: Worker, rid: str) -> None:
        """Stop the source segment ``rid`` on ``src`` (its remaining output is discarded)."""

    async def stage(self, http, w: Worker, rid: str) -> bool:
        """Ask ``w`` to capture segment ``rid``'s KV as its prefill ends (it will move right after its first
        token; ``plugin/kv_stage.py``); True when ``w`` took it. Only KV-moving migrators stage."""
        return False

    def start(self, http, st: GenState, src: Worker, dst: Worker, rid: str) -> asyncio.Future | None:
        """Begin a move while the source keeps decoding; None when there is nothing to wait for."""
        return None

    async def finish(self, http, st: GenState, src: Worker, dst: Worker, rid: str, pending) -> None:
        """Complete the move (``pending`` = what :meth:`start` returned) before the source is stopped; sets
        ``st.move_mode`` / ``st.move_fallback``."""
        st.move_mode, st.move_fallback = MigrationMode.RECOMPUTE.value, ""

    def release(self, st: GenState) -> None:
        """Let the destination evict the KV a move imported (``st.kv_pin``): the continuation's first token came
        from there (it holds that prefix itself now), or the move was given up. Nothing to do without a pin."""

    def observe(self, mode: str, tokens: int, stall_s: float) -> None:
        """A finished move of ``tokens`` context by ``mode`` stalled the client ``stall_s`` seconds."""
        if self.costs is not None:
            self.costs.observe(MigrationMode(mode), tokens, stall_s)


class RecomputeMigrator(Migrator):
    mode = MigrationMode.RECOMPUTE

    def __init__(self, abort_timeout_s: float = 5.0, costs: MigrationCosts | None = None):
        self.abort_timeout_s = abort_timeout_s
        self.costs = costs

    def continuation(self, st: GenState, dst: Worker, rid: str) -> dict:
        if st.prompt_ids is None:
            raise RuntimeError("recompute migration needs the prompt token ids")
        body = {
            k: v
            for k, v in st.body.items()
            if k not in ("text", "input_ids", "rid", "stream", "return_prompt_token_ids")
        }
        sp = dict(st.body.get("sampling_params") or {})
        sp["max_new_tokens"] = None if st.unbounded else st.max_new - len(st.out_ids)
        if "min_new_tokens" in sp:
            sp["min_new_tokens"] = max(0, int(sp["min_new_tokens"]) - len(st.out_ids))
        body.update(input_ids=st.prompt_ids + st.out_ids, sampling_params=sp, stream=True, rid=rid)
        return body

    async def stop_source(self, http, src: Worker, rid: str) -> None:
        try:
            async with asyncio.timeout(self.abort_timeout_s):
                async with http.post(src.url + "/abort_request", json={"rid": rid}) as r:
                    await r.read()
        except Exception as e:  # the source may be gone; dropping the connection aborts it anyway
            log.debug("abort %s on %s failed: %s", rid, src.url, e)


class KVTransferMigrator(RecomputeMigrator):
    mode = MigrationMode.KV_TRANSFER

    def __init__(
        self,
        transport: KVTransport | None = None,
        abort_timeout_s: float = 5.0,
        info_timeout_s: float = 5.0,
        costs: MigrationCosts | None = None,
    ):
        super().__init__(abort_timeout_s, costs)
        self.transport = transport or ZmqRelayTransport()
        self.info_timeout_s = info_timeout_s
        self.stage_kv = True  # the server sets --kv-stage / --no-kv-stage (off: every export waits for the source)
        self.stage_timeout_s = 0.5
        self._addr: dict[str, str | None] = {}
        self._stage_addr: dict[str, str | None] = {}

    async def endpoint(self, http, w: Worker) -> str | None:
        """The worker's KV endpoint from ``/get_server_info`` (None: no plugin endpoint); cached per URL, with
        its KV stage endpoint (:meth:`stage_endpoint`)."""
        if w.url not in self._addr:
            addr = stage = None
            try:
                async with asyncio.timeout(self.info_timeout_s):
                    async with http.get(w.url + "/get_server_info") as r:
                        info = await r.json(content_type=None)
                for s in info.get("internal_states") or []:
                    addr = addr or (s or {}).get(STATE_KEY)
                    stage = stage or (s or {}).get(STAGE_STATE_KEY)
            except Exception as e:  # unreachable now: ask again next time
                log.debug("kv endpoint of %s: %s", w.url, e)
                return None
            self._addr[w.url], self._stage_addr[w.url] = addr, stage
        return self._addr[w.url]

    async def stage_endpoint(self, http, w: Worker) -> str | None:
        await self.endpoint(http, w)
        return self._stage_addr.get(w.url)

    async def stage(self, http, w: Worker, rid: str) -> bool:
        if not self.stage_kv:
            return False
        addr = await self.stage_endpoint(http, w)
        if addr is None:
            return False
        try:
            async with asyncio.timeout(self.stage_timeout_s):
                await self.transport.stage(addr, rid)
            return True
        except Exception as e:  # (KVTransferError, a timeout): the move exports the usual way
            log.debug("stage of %s on %s failed: %r", rid, w.url, e)
            return False

    async def _ends(self, http, src: Worker, dst: Worker) -> tuple[str, str]:
        a, b = await self.endpoint(http, src), await self.endpoint(http, dst)
        if a is None or b is None:
            raise KVTransferError("plugin_absent", f"{src.url if a is None else dst.url} has no KV endpoint")
        return a, b

    def start(self, http, st: GenState, src: Worker, dst: Worker, rid: str) -> asyncio.Future | None:
        return asyncio.ensure_future(self.bulk(http, st, src, dst, rid))

    async def bulk(self, http, st: GenState, src: Worker, dst: Worker, rid: str) -> ExportedKV:
        """Stage 1, while the source keeps decoding: copy the KV of everything streamed so far from the
        source into the destination's radix cache."""
        a, b = await self._ends(http, src, dst)
        end = len(st.prompt_ids) + len(st.out_ids) - 1
        if st.staged_rid == rid:  # captured as its prefill ended: no wait for the source's scheduler
            t0 = time.perf_counter()
            try:
                kv = await self.transport.export_staged(self._stage_addr[src.url], rid, 0, end)
            except KVTransferError as e:
                log.debug("staged export of %s: %s", rid, e)
            else:
                await self.transport.import_(b, kv, max_new_left=_left(st))
                self._timed(kv.nbytes, t0)
                st.stage_used = True
                return kv  # (the tail [kv.reply.end, end), if any, is copied by finish)
        t0 = time.perf_counter()
        kv = await self.transport.export(a, rid, 0, end)
        await self.transport.import_(b, kv, max_new_left=_left(st))
        self._timed(kv.nbytes, t0)  # the timed copy feeds the measured link
        return kv

    async def _import(self, st: GenState, b: str, kv: ExportedKV | None, pin: str) -> None:
        """The stop-and-copy's import into ``b``, pinned under ``pin`` (the source segment's rid, one per move):
        the whole prefix stays locked there until the continuation, sent right after, is admitted
        (:meth:`release`). ``kv`` None: nothing left to copy, only pin what the bulk copy imported.

        Only the stop-and-copy pins. The bulk copy stays evictable cache: pinned from the bulk on, an overloaded
        CPU-engine decode server held up to ~6 moves' KV (14K of its 16K tokens) while their sources, busy
        prefilling long prompts, had not answered the tail export yet, and ran 1-3 requests with 15 queued;
        an evicted bulk is imported again from the frames the router kept ("gap")."""
        st.kv_pin = (b, pin)  # before the call: a copy cancelled mid-import still releases its pin
        if kv is None:
            await self.transport.pin(b, pin, st.prompt_ids + st.out_ids, len(st.prompt_ids) + len(st.out_ids) - 1)
        else:
            await self.transport.import_(b, kv, pin=pin, max_new_left=_left(st))

    def release(self, st: GenState) -> None:
        if st.kv_pin is not None:
            addr, pin = st.kv_pin
            st.kv_pin = None
            background(self._release(addr, pin))

    async def _release(self, addr: str, pin: str) -> None:
        try:
            await self.transport.release(addr, pin)
        except Exception as e:  # the pin's time to live on the worker ends it anyway
            log.debug("release of pin %s on %s failed: %r", pin, addr, e)

    def _timed(self, nbytes: int, t0: float) -> None:
        if self.costs is not None:
            self.costs.observe_link(nbytes, time.perf_counter() - t0)

    async def finish(self, http, st: GenState, src: Worker, dst: Worker, rid: str, bulk) -> None:
        """Stage 2, stop-and-copy: move the positions streamed since :meth:`bulk` (export from the source,
        import after the staged prefix); if the destination evicted that prefix meanwhile ("gap"), import the
        whole range again. Sets ``st.move_mode`` / ``st.move_fallback``."""
        await super().finish(http, st, src, dst, rid, bulk)
        if bulk is None:
            return
        try:
            kv = await bulk
            a, b = await self._ends(http, src, dst)
            end = len(st.prompt_ids) + len(st.out_ids) - 1
            nbytes, tail = kv.nbytes, None
            t0 = time.perf_counter()
            if end > kv.reply.end:
                tail = await self.transport.export(a, rid, kv.reply.end, end)
                nbytes += tail.nbytes
            try:
                await self._import(st, b, tail, rid)
                if tail is not None:
                    self._timed(tail.nbytes, t0)
            except KVTransferError as e:
                if e.reason != "gap":
                    raise
                await self._import(st, b, kv if tail is None else kv.extend(tail), rid)
                nbytes += kv.nbytes
            st.move_mode = MigrationMode.KV_TRANSFER.value
            st.kv_bytes = nbytes
        except KVTransferError as e:
            st.move_fallback = e.reason
        except Exception as e:  # never lose the request: the continuation recomputes what is missing
            st.move_fallback = "error"
            log.warning("kv transfer of %s failed: %r", rid, e)


class AutoMigrator(KVTransferMigrator):
    """KV transfer or recompute per move, as the policy's planner decided (``st.move_plan.mode``)."""

    mode = MigrationMode.KV_TRANSFER  # the most it may do

    def start(self, http, st: GenState, src: Worker, dst: Worker, rid: str) -> asyncio.Future | None:
        plan = st.move_plan
        if plan is None or plan.mode is not MigrationMode.KV_TRANSFER:
            return None
        if self._addr.get(src.url, "") is None or self._addr.get(dst.url, "") is None:
            return None  # known to have no endpoint: recompute without a try
        return super().start(http, st, src, dst, rid)

    async def finish(self, http, st: GenState, src: Worker, dst: Worker, rid: str, bulk) -> None:
        await super().finish(http, st, src, dst, rid, bulk)
        plan = st.move_plan
        if bulk is None and plan is not None and plan.mode is MigrationMode.KV_TRANSFER:
            st.move_fallback = "plugin_absent"


def make_migrator(mode: str, costs: MigrationCosts | None = None) -> Migrator:
    if mode == MigrationMode.RECOMPUTE.value:
        return RecomputeMigrator(costs=costs)
    if mode == MigrationMode.KV_TRANSFER.value:
        return KVTransferMigrator(costs=costs)
    if mode == "auto":
        return AutoMigrator(costs=costs)
    raise ValueError(f"migration mode must be recompute, kv_transfer or auto, got {mode!r}")
