"""SGLang's radix (prefix) cache on one simulated instance, at the granularity of a trace's prefix blocks.

A trace with ``hash_ids`` (Mooncake: one id per 512-token prompt block, equal ids = equal content) says which
prompt blocks requests share. SGLang keeps every computed prompt in its radix tree and, when it schedules a
request, reuses the longest cached prefix: only the rest is prefilled, attending to the cached part. The
simulator models that with ``SimConfig.prefix_cache_block`` > 0 (the trace's block size in tokens):

- *match*: when a request's first prefill chunk is scheduled (SGLang matches at scheduling, not at arrival), its
  leading run of cached blocks becomes KV it holds (``kv_tokens``; at most prompt - 1 tokens, as SGLang always
  computes one), as long as the pool can lock them next to the iteration's new KV;
- *insert*: each chunk of a fresh prompt's prefill adds the blocks computed so far (SGLang's ``cache_unfinished_req``;
  they are the request's own KV, so that insert evicts nothing), and the completed prefill adds its prompt's blocks
  (most recently used);
- *evict*: least recently used blocks go first, never those of the instance's running requests (locked in the
  tree); the others may use the pool's free space (``kv_capacity - kv_used``).

Simplifications (the direction of each error is stated): a hit is counted as the request's own KV, so requests
sharing a prefix each count it against the pool (SGLang stores it once: the model under-states capacity when
many running requests share a long prefix); a migrated or recomputed request matches nothing on its
destination. Without ``hash_ids`` (the length-table traces) nothing is shared and nothing changes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence


def prompt_blocks(hashes: Sequence[int], prompt_len: int, block: int) -> Sequence[int]:
    """The hashes covering a prompt of ``prompt_len`` tokens (a clipped prompt keeps its leading blocks)."""
    n = -(-prompt_len // block)
    return hashes[:n] if len(hashes) > n else hashes


class PrefixCache:
    """One instance's cached prompt blocks in LRU order (oldest first)."""

    __slots__ = ("block", "blocks", "hit_tokens", "evicted")

    def __init__(self, block: int):
        if block < 1:
            raise ValueError(f"prefix cache block must be >= 1 token, got {block}")
        self.block = block
        self.blocks: OrderedDict[int, None] = OrderedDict()
        self.hit_tokens = 0  # prompt tokens served from the cache (metrics)
        self.evicted = 0  # blocks evicted

    def match(self, hashes: Sequence[int], prompt_len: int) -> int:
        """Tokens of the longest cached leading run of ``hashes`` (touched: most recently used), capped at
        ``prompt_len - 1``."""
        blocks = self.blocks
        k = 0
        for h in prompt_blocks(hashes, prompt_len, self.block):
            if h not in blocks:
                break
            blocks.move_to_end(h)
            k += 1
        return max(0, min(k * self.block, prompt_len - 1))

    def insert(self, hashes: Sequence[int], prompt_len: int, free_tokens: int, running: Iterable) -> None:
        """Add a prefilled prompt's blocks, then evict LRU blocks that are not locked by a ``running`` request
        until the unlocked ones fit in ``free_tokens``."""
        blocks = self.blocks
        for h in prompt_blocks(hashes, prompt_len, self.block):
            blocks[h] = None
            blocks.move_to_end(h)
        limit = max(0, free_tokens) // self.block
        if len(blocks) <= limit:
            return  # every cached block fits in the free space: nothing to evict (the common case at low load)
        locked = set()
        for r in running:
            if r.block_hashes:
                locked.update(prompt_blocks(r.block_hashes, r.prompt_len, self.block))
        limit += sum(1 for h in locked if h in blocks)
        for _ in range(len(blocks)):
            if len(blocks) <= limit:
                break
            h, _v = blocks.popitem(last=False)
            if h in locked:
                blocks[h] = None  # locked: back to the young end
            else:
                self.evicted += 1
