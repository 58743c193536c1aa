"""sglang_router's ``cache_aware`` policy, approximated on the HTTP side.

Not in the policy registry: it needs the request text, which only the HTTP router has. Each worker keeps
an LRU set of chained hashes of the text's ``block_chars``-character blocks (an approximate prefix tree);
the match rate of a request on a worker is the matched prefix length over the text length. Like
sglang_router: if the cluster is imbalanced (``max - min > balance_abs`` and ``max > min * balance_rel``)
pick the least-loaded worker; else the best-matching worker when its match rate exceeds
``cache_threshold``, otherwise the worker with the smallest tree. The request's blocks are then inserted
into the chosen worker's tree.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ..core.interfaces import RouterPolicy
from ..core.views import ClusterView, RequestView


@dataclass
class CacheAwareConfig:
    cache_threshold: float = 0.3  # sglang_router --cache-threshold
    balance_abs_threshold: int = 64  # --balance-abs-threshold
    balance_rel_threshold: float = 1.5  # --balance-rel-threshold
    block_chars: int = 32  # granularity of the approximate tree
    max_tree_size: int = 67108864  # --max-tree-size, in characters over all workers


def block_hashes(text: str, block: int) -> list[int]:
    out, h = [], 0
    for i in range(0, len(text) - block + 1, block):
        h = hash((h, text[i:i + block]))
        out.append(h)
    return out


class CacheAwarePolicy(RouterPolicy):
    name = "cache_aware"

    def __init__(self, n: int, cfg: CacheAwareConfig):
        self.cfg = cfg
        self.trees: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(n)]
        self.cap = max(1024, cfg.max_tree_size // cfg.block_chars // max(1, n))

    def route(self, req: RequestView, cluster: ClusterView, now: float) -> int:
        healthy = [x for x in cluster.loads if x.healthy]
        if not healthy:
            raise RuntimeError("no healthy instance")
        loads = {x.iid: x.num_running + x.num_waiting for x in healthy}
        lo, hi = min(loads.values()), max(loads.values())
        text = req.extra.get("text") or ""
        hashes = block_hashes(text, self.cfg.block_chars)
        if hi - lo > self.cfg.balance_abs_threshold and hi > lo * self.cfg.balance_rel_threshold or not hashes:
            iid = min(loads, key=lambda i: (loads[i], i))
        else:
            best, best_len = None, -1
            for i in loads:
                tree, m = self.trees[i], 0
                for h in hashes:
                    if h not in tree:
                        break
                    m += 1
                if m > best_len:
                    best, best_len = i, m
            rate = best_len * self.cfg.block_chars / max(1, len(text))
            iid = best if rate > self.cfg.cache_threshold else min(loads, key=lambda i: (len(self.trees[i]), loads[i]))
        tree = self.trees[iid]
        for h in hashes:
            tree[h] = None
            tree.move_to_end(h)
        while len(tree) > self.cap:
            tree.popitem(last=False)
        return iid
