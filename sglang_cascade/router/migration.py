"""How a running /generate request moves from one worker to another.

A :class:`Migrator` turns "the client has seen ``out_ids`` so far" into (1) stopping the source segment and
(2) the request body that continues it on the destination. The splice (offset translation of the
destination's stream) lives in :mod:`.session` and is the same for every migrator.

- :class:`RecomputeMigrator` (implemented): abort the source (``POST /abort_request {"rid"}``, and drop
  the connection, which SGLang also treats as an abort); the destination prefills
  ``input_ids = prompt_ids + out_ids`` and generates the remaining ``max_new_tokens`` with the same
  sampling parameters.
- KV transfer (future, ``--migration-mode kv_transfer``): ``continuation`` would carry SGLang
  disaggregation bootstrap fields (``bootstrap_host/port/room``) so the destination pulls the KV of
  ``prompt_ids + out_ids`` from the source while the source keeps decoding, and ``stop_source`` becomes the
  final stop-and-copy. The session code needs no change.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from ..core.decisions import MigrationMode
from .gen_state import GenState

if TYPE_CHECKING:  # pragma: no cover
    from .workers import Worker

log = logging.getLogger("sglang_cascade.router")


class Migrator(ABC):
    mode: MigrationMode

    @abstractmethod
    def continuation(self, st: GenState, dst: Worker, rid: str) -> dict:
        """Body of the /generate request that continues ``st`` on ``dst`` under worker rid ``rid``."""

    @abstractmethod
    async def stop_source(self, http, src: Worker, rid: str) -> None:
        """Stop the source segment ``rid`` on ``src`` (its remaining output is discarded)."""


class RecomputeMigrator(Migrator):
    mode = MigrationMode.RECOMPUTE

    def __init__(self, abort_timeout_s: float = 5.0):
        self.abort_timeout_s = abort_timeout_s

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


def make_migrator(mode: str) -> Migrator:
    if mode == MigrationMode.RECOMPUTE.value:
        return RecomputeMigrator()
    raise NotImplementedError(f"migration mode {mode!r} is not implemented (use recompute)")
