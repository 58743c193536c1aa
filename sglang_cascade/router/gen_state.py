"""The state of one /generate request as the router streams it: what the client has seen, where it runs.

Shared by :mod:`.session` (which updates it chunk by chunk) and :mod:`.migration` (which builds the
continuation body from it), so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.decisions import Migration
from ..core.views import RequestView
from .workers import Worker

UNLIMITED = 1 << 30  # max_new when null and no worker reported a context length


@dataclass(eq=False)
class GenState:
    rid: str  # the client's id (meta_info.id)
    body: dict  # the client's body
    max_new: int  # the client's max_new_tokens, or the context left when it sent null (see ``unbounded``)
    view: RequestView
    prompt_ids: list[int] | None = None
    out_ids: list[int] = field(default_factory=list)
    text_prefix: str = ""  # text of finished segments
    seg_text: str = ""
    worker: Worker | None = None
    seg_rid: str = ""
    segments: int = 0
    migrations: int = 0
    resumes: int = 0
    move_to: Worker | None = None  # set by rebalancing; applied at the next chunk
    move_plan: Migration | None = None  # the policy's decision for move_to (its mechanism, predicted stalls)
    move_t0: float | None = None  # when the source stopped for the last move (its stall ends at the next token)
    unbounded: bool = False  # max_new_tokens null: every segment sends null (the worker stops at its context)
    finished: bool = False
    path: list[str] = field(default_factory=list)  # worker urls, in order
    kv_bytes: int = 0  # KV bytes the last KV-transfer move imported into its destination
    move_mode: str = "recompute"  # how the last move went: kv_transfer | recompute
    move_fallback: str = ""  # why a KV-transfer move fell back to recompute ("" = it did not)
    moves: list[dict] = field(default_factory=list)  # per move: mode, fallback, at (tokens streamed by then)
    staged_rid: str = ""  # the segment whose KV its worker captures as its prefill ends (Migrator.stage)
    stage_used: bool = False  # the last move's bulk copy came from that capture
    refused: int = 0  # moves refused because their destination had no room for the KV (Session._refused)
    retry_at: int = 0  # after a refusal: no move is asked before this many tokens were streamed
    kv_pin: tuple[str, str] | None = None  # (destination endpoint, pin name) of KV imported for the move in progress

    @property
    def text(self) -> str:
        return self.text_prefix + self.seg_text
