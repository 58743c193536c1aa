"""sglang_router's ``cache_aware`` policy over prefix-block hashes (registry name ``cache_aware``).

A request carries ``RequestView.block_hashes``: chained hashes of its prompt's prefix blocks (the HTTP router
hashes 32-character blocks of the text, ``router/prefix.py``; the simulator takes a trace's ``hash_ids``,
e.g. Mooncake's 512-token blocks). Each instance keeps an LRU set of the hashes it was sent (an approximate
prefix tree); a request's match rate on an instance is its leading run of known hashes over its hash count.
Like sglang_router: if the cluster is imbalanced (``max - min > balance_abs_threshold`` and
``max > min * balance_rel_threshold``, load = running + waiting) pick the least-loaded instance; else the
best-matching instance when its match rate exceeds ``cache_threshold``, otherwise the instance with the
smallest tree. The request's hashes are then inserted into the chosen instance's tree. A request without
hashes goes to the least-loaded instance.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.interfaces import RouterPolicy
from ..core.options import config_from_options
from ..core.views import ClusterView, RequestView
from .prefix_affinity import PrefixTrees


@dataclass
class CacheAwareConfig:
    cache_threshold: float = 0.3  # sglang_router --cache-threshold
    balance_abs_threshold: int = 64  # --balance-abs-threshold
    balance_rel_threshold: float = 1.5  # --balance-rel-threshold
    max_tree_size: int = 67108864  # --max-tree-size: tree capacity over all instances, in block_size units
    block_size: int = 32  # units (characters, tokens) one block hash covers; sizes the trees only


class CacheAwarePolicy(RouterPolicy):
    name = "cache_aware"

    def __init__(self, n: int, cfg: CacheAwareConfig):
        self.cfg = cfg
        self.prefix = PrefixTrees(n, max(1024, cfg.max_tree_size // max(1, cfg.block_size) // max(1, n)))

    def _imbalanced(self, loads: dict[int, int]) -> bool:
        lo, hi = min(loads.values()), max(loads.values())
        return hi - lo > self.cfg.balance_abs_threshold and hi > lo * self.cfg.balance_rel_threshold

    def _best_match(self, loads: dict[int, int], hashes) -> int:
        best, best_len = -1, -1
        for i in loads:
            m = self.prefix.matched(i, hashes)
            if m > best_len:
                best, best_len = i, m
        if best_len / len(hashes) > self.cfg.cache_threshold:
            return best
        return min(loads, key=lambda i: (len(self.prefix.trees[i]), loads[i]))

    def route(self, req: RequestView, cluster: ClusterView, now: float) -> int:
        loads = {x.iid: x.num_running + x.num_waiting for x in cluster.loads if x.healthy}
        if not loads:
            raise RuntimeError("no healthy instance")
        hashes = req.block_hashes
        if not hashes or self._imbalanced(loads):
            iid = min(loads, key=lambda i: (loads[i], i))
        else:
            iid = self._best_match(loads, hashes)
        self.prefix.insert(iid, hashes)
        return iid


def make_cache_aware(ctx, **options) -> CacheAwarePolicy:
    """Registry factory: options are :class:`CacheAwareConfig` field names."""
    return CacheAwarePolicy(ctx.num_instances, config_from_options(CacheAwareConfig, options))
