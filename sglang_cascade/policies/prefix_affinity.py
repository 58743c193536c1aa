"""Prefix-cache affinity for routers: which instance was sent which prompt blocks, and what a match saves.

A request carries ``RequestView.block_hashes`` (chained hashes of its prompt's prefix blocks: the HTTP router
hashes the text, ``router/prefix.py``; the simulator takes a trace's ``hash_ids``). ``PrefixTrees`` keeps, per
instance, an LRU set of the hashes it was sent: an approximate copy of the instance's radix cache (sglang_router's
``cache_aware`` keeps the same). ``cache_aware`` routes on the match rate; ``cascade:affinity=w`` turns the match
into prefill seconds the instance would not spend (``affinity_credit``), in the units its picker compares.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence


class PrefixTrees:
    """Per instance, the prompt-block hashes it was sent, least recently used first."""

    def __init__(self, n: int, cap_blocks: int):
        self.trees: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(n)]
        self.cap = max(1, int(cap_blocks))

    def matched(self, iid: int, hashes: Sequence[int]) -> int:
        """Length of the leading run of ``hashes`` instance ``iid`` holds."""
        tree, m = self.trees[iid], 0
        for h in hashes:
            if h not in tree:
                break
            m += 1
        return m

    def insert(self, iid: int, hashes: Sequence[int], cap_blocks: int | None = None) -> None:
        """The request's hashes become the most recent on ``iid``; the oldest go beyond ``cap_blocks``
        (default: the trees' capacity)."""
        tree = self.trees[iid]
        for h in hashes:
            tree[h] = None
            tree.move_to_end(h)
        cap = self.cap if cap_blocks is None else max(1, int(cap_blocks))
        while len(tree) > cap:
            tree.popitem(last=False)


def saved_tokens(trees: PrefixTrees, members: Sequence[int], hashes: Sequence[int], tokens: int) -> dict[int, int]:
    """Per member holding a fraction f > 0 of the prompt's leading blocks: the ``tokens x f`` prompt tokens its
    cache would not prefill (at most ``tokens - 1``: one is always computed)."""
    saved: dict[int, int] = {}
    if hashes and tokens > 1:
        for i in members:
            m = trees.matched(i, hashes)
            if m:
                saved[i] = min(tokens - 1, int(tokens * m / len(hashes)))
    return saved


def affinity_credit(
    trees: PrefixTrees,
    members: Sequence[int],
    hashes: Sequence[int],
    tokens: int,
    prefill_s: Callable[[int], float],
    weight: float,
    slo_ttft: float,
) -> tuple[dict[int, float], dict[int, int]]:
    """Per member with a match: (a negative penalty, the prompt tokens it would not prefill). A member holding
    a fraction f of the prompt's blocks saves ``tokens x f`` prompt tokens; its credit is ``weight x`` the
    prefill seconds saved ``/ slo_ttft`` (the picker's pressure units)."""
    if weight <= 0:
        return {}, {}
    saved = saved_tokens(trees, members, hashes, tokens)
    full = prefill_s(tokens) if saved else 0.0
    return {i: -weight * (full - prefill_s(tokens - s)) / slo_ttft for i, s in saved.items()}, saved
