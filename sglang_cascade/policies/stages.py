"""The run-time stage plan: which instances serve which length range.

A *stage plan* splits N instances into K stages; stage k serves sequences whose current length
(prompt + generated) lies in ``[bounds[k-1], bounds[k])`` (``bounds[-1]`` of the last stage is open).
A request longer than every bound stays in the last stage; a request exactly at a bound belongs to the
stage *starting* there. Routers read it at run time; the offline planner that chooses it is
policies/stage_dp.py (over the analytic per-stage model of policies/stage_model.py).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Stage:
    lo: int
    hi: int | None  # None = unbounded (last stage)
    instances: list[int] = field(default_factory=list)

    def contains(self, length: int) -> bool:
        return length >= self.lo and (self.hi is None or length < self.hi)


@dataclass
class StagePlan:
    """K stages over instance ids. ``bounds`` are the K-1 inner boundaries (strictly increasing)."""

    bounds: list[int]
    members: list[list[int]]

    def __post_init__(self) -> None:
        if len(self.members) != len(self.bounds) + 1:
            raise ValueError(f"{len(self.members)} stages need {len(self.members) - 1} bounds, got {self.bounds}")
        if any(b2 <= b1 for b1, b2 in zip(self.bounds, self.bounds[1:])) or any(b <= 0 for b in self.bounds):
            raise ValueError(f"stage bounds must be positive and strictly increasing: {self.bounds}")
        if any(not m for m in self.members):
            raise ValueError(f"every stage needs at least one instance: {self.members}")
        ids = self.order()
        if len(ids) != len(set(ids)):
            raise ValueError(f"an instance is in two stages: {self.members}")

    @property
    def num_stages(self) -> int:
        return len(self.members)

    def stage_of(self, length: int) -> int:
        """Stage serving ``length``: [b(k-1), b(k)); exactly-at-bound goes up; beyond every bound: last."""
        return bisect.bisect_right(self.bounds, length)

    def lo(self, k: int) -> int:
        return 0 if k == 0 else self.bounds[k - 1]

    def hi(self, k: int) -> int | None:
        return self.bounds[k] if k < len(self.bounds) else None

    def stages(self) -> list[Stage]:
        return [Stage(self.lo(k), self.hi(k), list(m)) for k, m in enumerate(self.members)]

    def counts(self) -> list[int]:
        return [len(m) for m in self.members]

    def order(self) -> list[int]:
        """The instances, stage by stage (a re-plan keeps neighbours together in this order)."""
        return [i for m in self.members for i in m]

    @classmethod
    def from_counts(
        cls, bounds: Sequence[int], counts: Sequence[int], instance_ids: Sequence[int] | None = None
    ) -> StagePlan:
        ids = list(instance_ids) if instance_ids is not None else list(range(sum(counts)))
        if len(ids) != sum(counts):
            raise ValueError(f"counts {list(counts)} need {sum(counts)} instances, got {len(ids)}")
        members, at = [], 0
        for c in counts:
            members.append(ids[at : at + c])
            at += c
        return cls(list(bounds), members)

    def to_json(self) -> list[dict]:
        return [
            {"lo": s.lo, "hi": s.hi, "instances": len(s.instances), "instance_ids": s.instances} for s in self.stages()
        ]
