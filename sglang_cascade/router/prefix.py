"""Prefix-block hashes of a request's text: the router's side of ``RequestView.block_hashes``.

The text is cut into ``BLOCK_CHARS``-character blocks (a trailing partial block is dropped) and each block's
hash chains the previous one, so equal hashes mean equal prefixes. Policies that route by prefix affinity
(``policies/cache_aware.py``) read only these hashes; the simulator fills the same field from a trace's
``hash_ids``. Hashes are per process (Python's ``hash``), which is all one router needs.
"""

from __future__ import annotations

BLOCK_CHARS = 32  # = CacheAwareConfig.block_size's default (the tree-size unit)


def block_hashes(text: str | None, block: int = BLOCK_CHARS) -> tuple[int, ...]:
    if not text:
        return ()
    out, h = [], 0
    for i in range(0, len(text) - block + 1, block):
        h = hash((h, text[i : i + block]))
        out.append(h)
    return tuple(out)
