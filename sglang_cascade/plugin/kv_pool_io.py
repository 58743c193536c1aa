"""Read and write one request's KV in SGLang's own pools (sglang 0.5.23), in the scheduler thread.

- :func:`export_kv`: the K/V of a running request's token positions ``[start, end)``, read through its
  ``req_to_token`` row (the slots of positions ``< prompt + output - 1`` are computed; the last sampled
  token has no KV yet).
- :func:`import_kv`: allocate slots, write the K/V, and insert the token prefix into the radix cache in
  one call, so SGLang's own prefix matching serves the continuation (``meta_info.cached_tokens``). Slots
  are allocated only past what the tree already holds, so nothing is duplicated; the inserted nodes are
  unlocked (evictable) like any finished request's cache.

Only plain MHA pools with ``page_size == 1`` are supported; anything else raises :class:`KVIOError`
("layout"), which the router turns into a recompute fallback.
"""

from __future__ import annotations

from array import array

import torch


class KVIOError(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _pool(sched):
    pool = sched.token_to_kv_pool_allocator.get_kvcache()
    if getattr(sched, "page_size", 1) != 1 or not hasattr(pool, "k_buffer") or not hasattr(pool, "v_buffer"):
        raise KVIOError("layout", f"{type(pool).__name__} page_size={getattr(sched, 'page_size', 1)}")
    return pool


def layout(sched) -> tuple[str, list[int], list[int], int]:
    pool = _pool(sched)
    k, v = pool.k_buffer[0], pool.v_buffer[0]
    return str(k.dtype).removeprefix("torch."), list(k.shape[1:]), list(v.shape[1:]), len(pool.k_buffer)


def find_req(sched, rid: str):
    batches = [
        getattr(sched, "running_batch", None),
        getattr(sched, "last_batch", None),
        getattr(sched, "cur_batch", None),
    ]
    for b in batches:
        for r in getattr(b, "reqs", None) or []:
            if r.rid == rid:
                return r
    return None


def req_pool_idx(req):
    kv = getattr(req, "kv", None)
    idx = getattr(kv, "req_pool_idx", None) if kv is not None else None
    return idx if idx is not None else getattr(req, "req_pool_idx", None)


def export_kv(sched, rid: str, start: int, end: int) -> tuple[list[int], int, int, list[bytes]]:
    """(token ids so far, start, end, frames) of request ``rid``; ``end`` < 0 = all computed positions."""
    req = find_req(sched, rid)
    if req is None:
        raise KVIOError("no_request", rid)
    return export_req(sched, req, start, end)


def export_req(sched, req, start: int, end: int, prefill_done: bool = False) -> tuple[list[int], int, int, list[bytes]]:
    """:func:`export_kv` of the request object itself. ``prefill_done``: the batch that completes its prefill
    has run but its result is not processed yet (no output token): every prompt position has KV (the KV
    stage captures it there, before the first token is streamed)."""
    idx = req_pool_idx(req)
    if idx is None or req.finished():
        raise KVIOError("no_request", req.rid)
    tokens = list(req.origin_input_ids) + list(req.output_ids)
    computed = len(tokens) if prefill_done else len(tokens) - 1
    end = computed if end < 0 else min(end, computed)
    if not 0 <= start <= end:
        raise KVIOError("range", f"[{start}, {end}) of {computed}")
    pool = _pool(sched)
    if pool.k_buffer[0].is_cuda:  # an overlapped forward may still be writing earlier positions (untested: no GPU)
        torch.cuda.synchronize(pool.k_buffer[0].device)
    slots = sched.req_to_token_pool.req_to_token[idx, start:end].to(torch.int64)
    frames = []
    for k, v in zip(pool.k_buffer, pool.v_buffer, strict=True):
        for buf in (k, v):
            frames.append(buf[slots.to(buf.device)].contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return tokens, start, end, frames


def _match(tree, key) -> tuple[int, torch.Tensor]:
    from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams

    m = tree.match_prefix(MatchPrefixParams(key=key))
    n = m.device_prefix_len
    idx = tree.path_device_indices(m.last_device_node)[:n] if n else torch.empty(0, dtype=torch.int64)
    return n, idx.to(torch.int64)


def cached_prefix_len(sched, req) -> int:
    """Tokens of ``req``'s input its radix cache holds now: what SGLang matches when it admits it (a moved request's
    continuation: all its imported prefix). 0 without a radix cache."""
    tree = getattr(sched, "tree_cache", None)
    if tree is None or getattr(tree, "disable", False):
        return 0
    from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams

    key = radix_key(list(req.origin_input_ids), getattr(req, "extra_key", None))
    return int(tree.match_prefix(MatchPrefixParams(key=key)).device_prefix_len)


def radix_key(token_ids: list[int], extra_key=None):
    from sglang.srt.mem_cache.radix_cache import RadixKey

    return RadixKey(array("q", token_ids), extra_key)


def admission_reserve(sched, max_new_left: int | None) -> int:
    """KV tokens SGLang's admission keeps back from an import (``policies/sglang_budget``): what the running requests
    may still decode, and, for a move (``max_new_left`` = its continuation's output left; -1 = unknown, the clip),
    what admitting the continuation takes. None: no move (0)."""
    if max_new_left is None:
        return 0
    from sglang.srt.managers.schedule_policy import CLIP_MAX_NEW_TOKENS as clip

    from ..policies.sglang_budget import admission_tokens, running_reserve

    tracker = getattr(sched, "new_token_ratio_tracker", None)
    ratio = float(getattr(tracker, "min", 1.0))  # the ratio's floor, as the simulator's room check
    rows = []
    for r in getattr(getattr(sched, "running_batch", None), "reqs", None) or []:
        sp = r.sampling_params
        rows.append((int(sp.max_new_tokens or clip) - len(r.output_ids), bool(getattr(sp, "ignore_eos", False))))
    left = clip if max_new_left < 0 else max_new_left
    return int(running_reserve(rows, ratio, clip)) + admission_tokens(1, left, clip, getattr(sched, "page_size", 1))


def import_kv(
    sched, token_ids: list[int], start: int, end: int, frames: list[bytes], max_new_left: int | None = None
) -> int:
    """Insert ``token_ids[:end]`` with the given KV of ``[start, end)``; returns the cached prefix length. For a
    move (``max_new_left`` given) the pool must also keep what admitting its continuation needs
    (:func:`admission_reserve`), else ``out_of_kv``."""
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams

    pool, tree, alloc = _pool(sched), sched.tree_cache, sched.token_to_kv_pool_allocator
    if getattr(tree, "disable", False):
        raise KVIOError("layout", "radix cache disabled")
    if len(frames) != 2 * len(pool.k_buffer) or not 0 <= start <= end <= len(token_ids):
        raise KVIOError("frames", f"{len(frames)} frames for {len(pool.k_buffer)} layers, [{start}, {end})")
    key = radix_key(token_ids[:end])
    have, idx = _match(tree, key)
    if have >= end:
        return have
    if have < start:
        raise KVIOError("gap", f"destination holds {have} tokens, the frames start at {start}")
    need = end - have
    keep = admission_reserve(sched, max_new_left)
    if alloc.available_size() < need + keep:
        tree.evict(EvictParams(num_tokens=need + keep - alloc.available_size()))
        have, idx = _match(tree, key)  # eviction may have taken part of our own earlier stage
        if have < start:
            raise KVIOError("gap", "evicted while importing")
        need = end - have
        if alloc.available_size() < need + keep:
            raise KVIOError("out_of_kv", f"need {need} + {keep} kept for admission, available {alloc.available_size()}")
    loc = alloc.alloc(need)
    if loc is None:
        raise KVIOError("out_of_kv", f"alloc({need}) failed")
    off = have - start
    for i, (k, v) in enumerate(zip(pool.k_buffer, pool.v_buffer, strict=True)):
        for buf, fr in ((k, frames[2 * i]), (v, frames[2 * i + 1])):
            t = torch.frombuffer(bytearray(fr), dtype=torch.uint8).view(buf.dtype).reshape(end - start, *buf.shape[1:])
            buf[loc.to(buf.device)] = t[off:].to(buf.device)
    value = torch.cat([idx, loc.to(torch.int64).cpu()])
    # prev_prefix_len: the first ``have`` values are the tree's own (UnifiedRadixCache would otherwise free
    # them as duplicates of themselves); the legacy RadixCache ignores it and frees nothing.
    free0 = alloc.available_size()
    res = tree.insert(InsertParams(key=key, value=value, prev_prefix_len=have))
    dup = int(getattr(res, "prefix_len", have)) - have
    if dup > 0 and alloc.available_size() - free0 < dup:  # positions cached meanwhile: give our copies back
        alloc.free(loc[:dup])
    return end


def pin_prefix(sched, token_ids: list[int], end: int):
    """Lock the radix path of ``token_ids[:end]`` (just imported) so that nothing evicts it until :func:`unpin`:
    the locked tokens count as ``protected``, as a running request's prefix does. Returns the tree's lock."""
    from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams

    tree = sched.tree_cache
    m = tree.match_prefix(MatchPrefixParams(key=radix_key(token_ids[:end])))
    if m.device_prefix_len < end:
        raise KVIOError("gap", f"pin: the tree holds {m.device_prefix_len} of {end} tokens")
    return tree.lock(m.last_device_node)


def unpin(sched, lock) -> bool:
    """Drop a :func:`pin_prefix` lock; False when the tree was reset meanwhile (``/flush_cache`` on an idle
    worker: the lock went with the old tree, and unlocking its nodes would corrupt the new tree's counters)."""
    tree, node = sched.tree_cache, lock.node
    if hasattr(node, "parent"):  # a node object (RadixCache): is it still under this tree's root?
        root = getattr(tree, "root_node", None)
        while node is not None and node is not root:
            node = node.parent
        if node is None:
            return False
    try:
        tree.unlock(lock)
    except KeyError:  # a node handle the tree no longer has (UnifiedRadixCache never re-mints handles)
        return False
    return True


def pool_stats(sched) -> dict[str, int]:
    alloc, tree = sched.token_to_kv_pool_allocator, sched.tree_cache
    running = len(getattr(getattr(sched, "running_batch", None), "reqs", None) or [])
    return {
        "available": int(alloc.available_size()),
        "evictable": int(tree.evictable_size()),
        "protected": int(tree.protected_size()),
        "total": int(getattr(sched, "max_total_num_tokens", 0) or 0),
        "running": running,
        "waiting": len(getattr(sched, "waiting_queue", None) or []),
    }
