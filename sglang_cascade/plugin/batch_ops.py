"""The SGLang batch operations the plugin performs, each built from SGLang 0.5.23's own primitives.

* split: ``ScheduleBatch.filter_batch(keep_indices=...)`` keeps the decode subset in the running batch;
  the held-back requests keep their ``req_pool_idx`` and KV pages (nothing is freed).
* rejoin: a decode batch is rebuilt for held-back requests the way SGLang's HiSparse path does
  (``Scheduler._build_hisparse_decode_batch``: ``ScheduleBatch.init_new`` + pool indices + seq lens +
  ``SamplingBatchInfo.from_schedule_batch``), their last token is stashed in the pool-indexed
  ``FutureMap`` relay, and the batch is merged back with ``merge_batch``.
* park / preempt: ``ScheduleBatch.release_req(idx, ..., offload_kv=False)`` (the per-request step of
  SGLang's ``retract_decode``) then ``filter_batch``. A preempted request is re-queued with
  ``Scheduler._add_request_to_queue(req, is_retracted=True)`` and recomputed by prefill.
* host parking: before that release, :func:`copy_kv_to_host` takes the request's KV with the allocator's
  ``get_cpu_copy`` (what ``Req.offload_kv_cache`` does for SGLang's PD-decode retraction); on resume
  :func:`restore_kv_from_host` allocates a fresh ``req_to_token`` row and KV slots (as the PD decode
  path's ``_pre_alloc`` does for a retracted request), writes the row, copies the KV back with
  ``load_cpu_copy`` (``Req.load_kv_cache``), and the request rejoins the running batch through
  :func:`rejoin`: no recompute. Requests :func:`host_parkable` rejects fall back to recompute.

Held-back requests must not carry per-batch sampling state that a rebuilt ``SamplingBatchInfo`` would
lose (penalizer history, grammar, logit bias, custom logit processors, logprobs, beams); such a request
is never held back (:func:`splittable`; the kept part of a split stays in SGLang's own batch, filtered as
SGLang filters out finished requests, so it keeps its state).
"""

from __future__ import annotations

import copy
from typing import Any

from .sampling_state import speculative, splittable


def batch_splittable(batch: Any) -> bool:
    return not speculative(batch) and all(splittable(r) for r in batch.reqs)


def split_batch(batch: Any, keep: list[int], held: list[Any] | None = None) -> list[Any]:
    """Keep ``batch.reqs[keep]`` in ``batch`` (in place); return the held-back requests (``held``: the
    caller already knows them, in batch order, e.g. ``PlanApplier.held``)."""
    if held is None:
        keep_set = set(keep)
        held = [r for i, r in enumerate(batch.reqs) if i not in keep_set]
    batch.filter_batch(keep_indices=keep)
    return held


def copy_splittable(batch: Any) -> bool:
    """Whether the held-back part can be kept as a filtered copy of ``batch`` (:func:`split_off`) instead of
    being rebuilt: the copy shares the batch's penalizer orchestrator, which ``filter`` / ``merge`` leave
    alone only while no request in the batch uses penalties; custom logit processors, logit bias,
    speculative decoding, encoder-decoder models and HiSparse keep per-batch state a copy would share."""
    si = getattr(batch, "sampling_info", None)
    if si is None or si.penalizer_orchestrator.is_required or si.has_custom_logit_processor:
        return False
    if si.logit_bias is not None or getattr(batch, "hisparse_coordinator", None) is not None:
        return False
    return not speculative(batch) and not batch.model_config.is_encoder_decoder


def split_off(batch: Any, keep: list[int], held_idx: list[int]):
    """Split ``batch`` in place to ``keep`` and return the held-back rows ``held_idx`` as their own
    ScheduleBatch: a shallow copy (own ``SamplingBatchInfo``) filtered with SGLang's ``filter_batch``, so
    their sampling rows, lengths, pool indices and pending input ids are kept, not rebuilt. Only for
    :func:`copy_splittable` batches. ``filter_batch`` reassigns every field it changes, so the two parts
    share no mutable state afterwards."""
    held = _shallow_copy(batch)
    held.sampling_info = _shallow_copy(batch.sampling_info)
    held.filter_batch(keep_indices=held_idx)
    batch.filter_batch(keep_indices=keep)
    return held


def _shallow_copy(obj: Any) -> Any:
    """``copy.copy`` of a plain ``__dict__`` object (ScheduleBatch, SamplingBatchInfo: dataclasses without
    slots or ``__copy__``) without the reduce protocol; anything else goes to ``copy.copy``."""
    cls = type(obj)
    if hasattr(cls, "__slots__") or hasattr(cls, "__copy__") or not hasattr(obj, "__dict__"):
        return copy.copy(obj)
    new = cls.__new__(cls)
    new.__dict__.update(obj.__dict__)
    return new


def merge_back(running_batch: Any, held: Any):
    """Rejoin a :func:`split_off` part (requests that finished meanwhile, e.g. aborted, dropped by SGLang's
    own filter); returns the running batch."""
    held.filter_batch()
    if held.is_empty():
        return running_batch
    if running_batch is None or running_batch.is_empty():
        held.batch_is_full = False
        return held
    running_batch.merge_batch(held)
    return running_batch


def build_decode_batch(sched: Any, reqs: list[Any]):
    """A decode-ready ScheduleBatch for requests that hold KV but sit in no batch (SGLang's HiSparse
    staging-to-decode construction)."""
    import torch  # (lazily: the per-step split functions need none)
    from sglang.srt.managers.overlap_utils import RelayPayload
    from sglang.srt.managers.schedule_batch import ScheduleBatch
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.srt.sampling.sampling_batch_info import SamplingBatchInfo

    device = sched.device
    batch = ScheduleBatch.init_new(
        reqs=reqs,
        req_to_token_pool=sched.req_to_token_pool,
        token_to_kv_pool_allocator=sched.token_to_kv_pool_allocator,
        tree_cache=sched.tree_cache,
        model_config=sched.model_config,
        enable_overlap=sched.enable_overlap,
        spec_algorithm=sched.spec_algorithm,
    )
    idx = [r.kv.req_pool_idx for r in reqs]
    batch.req_pool_indices = torch.tensor(idx, dtype=torch.int64, device=device)
    batch.req_pool_indices_cpu = torch.tensor(idx, dtype=torch.int64)
    seq_lens = [len(r.origin_input_ids) + len(r.output_ids) - 1 for r in reqs]
    batch.seq_lens = torch.tensor(seq_lens, dtype=torch.int64, device=device)
    batch.seq_lens_cpu = torch.tensor(seq_lens, dtype=torch.int64)
    batch.orig_seq_lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    batch.seq_lens_sum = sum(seq_lens)
    last = torch.tensor([r.output_ids[-1] for r in reqs], dtype=torch.int64, device=device)
    sched.future_map.stash(batch.req_pool_indices, RelayPayload(bonus_tokens=last))
    batch.input_ids = None
    batch.multimodal_inputs = [r.multimodal_inputs for r in reqs]  # as prepare_for_extend leaves it
    batch.forward_mode = ForwardMode.DECODE
    batch.sampling_info = SamplingBatchInfo.from_schedule_batch(batch, sched.model_config.vocab_size)
    return batch


def rejoin(sched: Any, running_batch: Any, reqs: list[Any]):
    """Merge held-back ``reqs`` (finished ones dropped) back into ``running_batch``; returns the batch."""
    reqs = [r for r in reqs if not r.finished()]
    if not reqs:
        return running_batch
    extra = build_decode_batch(sched, reqs)
    if running_batch is None or running_batch.is_empty():
        extra.batch_is_full = False
        return extra
    running_batch.merge_batch(extra)
    return running_batch


def release_from_batch(batch: Any, rids: set[str]) -> list[Any]:
    """Free the KV of ``batch``'s requests whose rid is in ``rids`` (SGLang's retract step) and drop them
    from the batch; returns the released requests (ready for ``_add_request_to_queue``)."""
    idx = [i for i, r in enumerate(batch.reqs) if r.rid in rids and not r.finished()]
    if not idx:
        return []
    released = []
    remaining = len(batch.reqs) - len(idx)
    for i in idx:
        batch.release_req(i, remaining, offload_kv=False)
        released.append(batch.reqs[i])
    drop = set(idx)
    batch.filter_batch(keep_indices=[i for i in range(len(batch.reqs)) if i not in drop])
    batch.batch_is_full = False
    return released


# --- host parking ---------------------------------------------------------------------------------------
def host_parkable(req: Any) -> bool:
    """Whether ``req``'s state survives a host park: the rejoin rebuilds its sampling info (so no
    per-batch sampling state, :func:`splittable`), and SGLang's retract reset must leave its tokens
    alone (no input embeddings, no multimodal positions, no mamba state)."""
    kv = req.kv
    return (
        splittable(req)
        and kv.holds_kv
        and len(req.output_ids) >= 1
        and getattr(req, "input_embeds", None) is None
        and getattr(req, "multimodal_inputs", None) is None
        and getattr(kv, "mamba_pool_idx", None) is None
    )


def copy_kv_to_host(req_to_token_pool: Any, allocator: Any, req: Any) -> tuple[Any, int]:
    """Host copy of ``req``'s committed KV: positions ``[0, seqlen - 1)`` of its ``req_to_token`` row (the
    last output token's KV is (re)written by its next decode, as in ``Req.offload_kv_cache``).
    Returns ``(cpu_tensors, tokens)``; raises where the pool has no CPU copy (``NotImplementedError``)."""
    import torch  # (lazily: the per-step split functions need none)

    n = len(req.origin_input_ids) + len(req.output_ids) - 1
    idx = req_to_token_pool.req_to_token[req.kv.req_pool_idx, :n].to(torch.int64)
    return allocator.get_cpu_copy(idx), n


def restore_kv_from_host(sched: Any, req: Any, cpu_kv: Any, n: int) -> bool:
    """Give a host-parked (released) ``req`` a ``req_to_token`` row and ``n`` fresh KV slots, copy its
    KV back and make it a decoding request again (``kv_committed_len == n``, not retracted).
    Returns False (nothing held, nothing changed) when the row or the slots cannot be had."""
    import torch  # (lazily: the per-step split functions need none)
    from sglang.srt.mem_cache.common import evict_from_tree_cache

    r2t, alloc, tree = sched.req_to_token_pool, sched.token_to_kv_pool_allocator, sched.tree_cache
    assert not req.kv.holds_kv, "a host-parked request holds no device KV"
    if len(req.origin_input_ids) + len(req.output_ids) - 1 != n:
        raise RuntimeError(f"{req.rid}: length changed while parked ({n} tokens saved)")
    if r2t.available_size() <= 0:
        return False
    page = getattr(alloc, "page_size", 1)
    need = -(-n // page) * page
    if alloc.available_size() < need:
        evict_from_tree_cache(tree, need)
    if alloc.available_size() < need:
        return False
    if page == 1:
        loc = alloc.alloc(n)
    else:
        dev = alloc.device
        loc = alloc.alloc_extend(
            prefix_lens=torch.tensor([0], dtype=torch.int64, device=dev),
            prefix_lens_cpu=torch.tensor([0], dtype=torch.int64),
            seq_lens=torch.tensor([n], dtype=torch.int64, device=dev),
            seq_lens_cpu=torch.tensor([n], dtype=torch.int64),
            last_loc=torch.tensor([-1], dtype=torch.int64, device=dev),
            extend_num_tokens=n,
        )
    if loc is None:
        return False
    if r2t.alloc([req]) is None:
        alloc.free(loc)
        return False
    r2t.write((req.kv.req_pool_idx, slice(0, n)), loc.to(torch.int32))
    alloc.load_cpu_copy(cpu_kv, loc)
    # the state SGLang's PD-decode _pre_alloc leaves for a resumed retracted request (no tree prefix)
    req.kv.kv_allocated_len = n
    req.kv.kv_committed_len = n
    req.kv.cache_protected_len = 0
    req.prefix_len = 0
    req.extend_end = n
    req.is_retracted = False
    return True
