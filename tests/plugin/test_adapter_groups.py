"""Decode groups by pool slot (plugin/adapter.py): the vectorized decode split the plugin uses every step.

No SGLang needed: requests are light stand-ins with the attributes the adapter reads.
"""

from __future__ import annotations

from array import array
from types import SimpleNamespace

import numpy as np

from sglang_cascade.core.decisions import IterationPlan
from sglang_cascade.plugin.adapter import PlanApplier, SlotGroups, ViewCache


class Req:
    """Identity-hashed like SGLang's Req."""

    def __init__(self, rid: str, slot: int | None, **extra):
        self.rid = rid
        self.origin_input_ids = array("q", [1, 2, 3])
        self.output_ids = array("q", [4])
        self.sampling_params = SimpleNamespace(max_new_tokens=16)
        self.kv = SimpleNamespace(kv_committed_len=3, req_pool_idx=slot)
        self.finished_reason = None
        self.__dict__.update(extra)


def cache_with(reqs):
    vc = ViewCache()
    return vc, [vc.view_of(r, 0.0)[0] for r in reqs]


def test_slot_groups_lookup_grows_and_clips():
    g = SlotGroups(size=4)
    g.put(2, 0)
    g.put(40, 3)  # beyond the initial table: grows
    slots = np.array([2, 40, 7, 10_000, 0])  # 10_000: never written, beyond the table: no group
    assert g.held_flags(slots, {0}).tolist() == [True, False, False, False, False]
    assert g.held_flags(slots, {3}).tolist() == [False, True, False, False, False]
    assert g.held_flags(slots, {0, 3, 99}).tolist() == [True, True, False, False, False]
    g.clear(2)
    assert g.held_flags(slots, {0}).tolist() == [False] * 5


def test_view_group_is_mirrored_under_its_slot_and_follows_it():
    reqs = [Req("a", 5), Req("b", 6), Req("c", None)]
    vc, (a, b, c) = cache_with(reqs)
    a.group, b.group, c.group = 1, 2, 1  # c holds no slot yet (e.g. parked): nothing to mirror
    slots = np.array([5, 6])
    assert vc.groups.held_flags(slots, {1}).tolist() == [True, False]
    b.group = 1  # re-bucketed
    assert vc.groups.held_flags(slots, {1}).tolist() == [True, True]
    a.group = -1  # left the buckets
    assert vc.groups.held_flags(slots, {1}).tolist() == [False, True]
    reqs[1].kv.req_pool_idx = 9  # restored from host memory into another row
    b.resync_slot()
    assert vc.groups.held_flags(np.array([6, 9]), {1}).tolist() == [False, True]
    vc.drop("b")  # finished: its row may be reused by a request the policy has not grouped
    assert vc.groups.held_flags(np.array([9]), {1}).tolist() == [False]


def test_requests_with_sampling_state_are_never_mirrored():
    reqs = [
        Req("p", 1, return_logprob=True),
        Req("q", 2, sampling_params=SimpleNamespace(max_new_tokens=16, frequency_penalty=0.5)),
        Req("r", 3),
    ]
    vc, views = cache_with(reqs)
    for v in views:
        v.group = 0
    assert vc.groups.held_flags(np.array([1, 2, 3]), {0}).tolist() == [False, False, True]


def test_group_split_matches_the_plan_and_keeps_batch_order():
    reqs = [Req(f"r{i}", 10 + i) for i in range(6)]
    vc, views = cache_with(reqs)
    for v, grp in zip(views, [0, 1, 2, 1, 0, -1]):
        v.group = grp
    slots = np.array([r.kv.req_pool_idx for r in reqs])
    # groups 1 and 2 held, except r3 (decode_extra: part of an oversized bucket); r5 has no group
    plan = IterationPlan(decode=[views[0], views[3], views[4], views[5]], held_groups={1, 2}, decode_extra=[views[3]])
    a = PlanApplier(plan, known_running={r.rid for r in reqs}, groups=vc.groups)
    keep, held = a.decode_split(reqs, with_held=True, slots=slots)
    assert a.split_by_groups and keep == [0, 3, 4, 5] and held == [reqs[1], reqs[2]]
    # the rid diff (no slots) gives the same answer
    assert a.decode_split(reqs, with_held=True) == (keep, held) and not a.split_by_groups
    # a batch whose slots do not line up with its requests falls back to the rid diff
    assert a.decode_split(reqs, with_held=True, slots=slots[:3]) == (keep, held) and not a.split_by_groups
    # nothing held back -> None (decode all); everything held back -> None (never an empty decode)
    assert PlanApplier(IterationPlan(held_groups=set()), groups=vc.groups).decode_split(reqs, slots=slots) is None
    only = [reqs[1], reqs[2]]
    everything = PlanApplier(IterationPlan(decode=[], held_groups={1, 2}), groups=vc.groups)
    assert everything.decode_split(only, slots=slots[1:3]) is None
