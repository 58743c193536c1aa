"""Prefix-block hashes of a request's prompt: the router's side of ``RequestView.block_hashes``.

The text is cut into ``BLOCK_CHARS``-character blocks, or a request sent as token ids (``input_ids``) into
``BLOCK_TOKENS``-token blocks (a trailing partial block is dropped), and each block's hash chains the previous one,
so equal hashes mean equal prefixes. Policies that route by prefix affinity
(``policies/cache_aware.py``) read only these hashes; the simulator fills the same field from a trace's
``hash_ids``. Hashes are per process (Python's ``hash``), which is all one router needs.
"""

from __future__ import annotations

BLOCK_CHARS = 32  # = CacheAwareConfig.block_size's default (the tree-size unit)
BLOCK_TOKENS = 32  # token ids per block: a 191K-token prompt hashes ~6K blocks (a few ms on the request path)


def block_hashes(text: str | None, input_ids=None, block: int = BLOCK_CHARS) -> tuple[int, ...]:
    """Chained block hashes of ``input_ids`` when given (``BLOCK_TOKENS`` ids per block), else of ``text``."""
    if input_ids is not None:
        seq, block = tuple(input_ids), BLOCK_TOKENS
    elif text:
        seq = text
    else:
        return ()
    out, h = [], 0
    for i in range(0, len(seq) - block + 1, block):
        h = hash((h, seq[i : i + block]))
        out.append(h)
    return tuple(out)
