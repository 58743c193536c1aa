"""Decisions policies return; drivers apply them.

An instance scheduler returns one :class:`IterationPlan` per engine iteration; a router returns an
instance id for a new request and :class:`Migration` s for running ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .views import RequestView

HOLD = -1  # ``RouterPolicy.route``: the router keeps the request; a later ``release`` sends it


class MigrationMode(str, Enum):
    RECOMPUTE = "recompute"  # destination prefills prompt + generated tokens
    KV_TRANSFER = "kv_transfer"  # KV copied over the instance link in stages, then a short stop-and-copy


@dataclass(slots=True)
class PrefillChunk:
    req: RequestView
    tokens: int  # tokens computed for this request in this iteration (chunk of its remaining prefill)


@dataclass(slots=True)
class IterationPlan:
    """What one engine iteration does.

    Order of application by drivers: ``preempt`` (free KV, back to waiting), ``park`` (KV to host),
    ``resume`` (KV back to GPU), then the iteration computes ``prefill`` chunks and one token for each
    request in ``decode``. ``reserve`` sets a request's KV reservation (tokens beyond what it holds).
    ``stable_steps`` > 1 promises the same decode set may repeat that many iterations if nothing arrives,
    finishes or is parked (a simulator may fast-forward; live drivers ignore it).

    ``held_groups`` (optional, a driver convenience) names, by ``RequestView.group``, the running requests
    this iteration does NOT decode: a running request is held back iff its group is in ``held_groups`` and
    it is not in ``decode_extra`` (members of a held group that decode anyway, e.g. part of an oversized
    bucket). Group -1 (a request the policy has not grouped) always decodes; an empty set means every
    running request decodes; None means "not given" (drivers derive the held-back set from ``decode``).
    It must agree with ``decode`` (tests check it); it lets a driver split its batch with one vectorized
    lookup per step instead of a per-request diff.
    """

    prefill: list[PrefillChunk] = field(default_factory=list)
    decode: list[RequestView] = field(default_factory=list)
    preempt: list[RequestView] = field(default_factory=list)
    park: list[RequestView] = field(default_factory=list)
    resume: list[RequestView] = field(default_factory=list)
    reserve: dict[str, int] = field(default_factory=dict)
    stable_steps: int = 1
    held_groups: set[int] | None = None
    decode_extra: list[RequestView] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.prefill or self.decode or self.preempt or self.park or self.resume)

    @property
    def num_prefill_tokens(self) -> int:
        return sum(c.tokens for c in self.prefill)


# A KV move whose destination has no room for the request's KV is refused before its source stops (the live import
# answers out_of_kv; the simulator checks the room), and asked again this many tokens later (router/session.py,
# sim/migration.py).
ROOM_RETRY_TOKENS = 16


def leaves_at_first_token(bound: int | None, prompt_len: int) -> bool:
    """A request whose migration bound on its instance is ``bound`` moves right after its first token (a
    prefill-pool member's long prompt): the router stages its KV, the simulator moves it at its prefill's end."""
    return bound is not None and bound <= prompt_len + 1


@dataclass(slots=True)
class Migration:
    req: RequestView
    src: int
    dst: int
    mode: MigrationMode = MigrationMode.RECOMPUTE
    reason: str = ""
    stalls: dict[str, float] | None = None  # predicted stall (s) per mechanism, when the policy estimated them
