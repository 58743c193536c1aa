"""The SGLang batch operations the plugin performs, each built from SGLang 0.5.23's own primitives.

* split: ``ScheduleBatch.filter_batch(keep_indices=...)`` keeps the decode subset in the running batch;
  the held-back requests keep their ``req_pool_idx`` and KV pages (nothing is freed).
* rejoin: a decode batch is rebuilt for held-back requests the way SGLang's HiSparse path does
  (``Scheduler._build_hisparse_decode_batch``: ``ScheduleBatch.init_new`` + pool indices + seq lens +
  ``SamplingBatchInfo.from_schedule_batch``), their last token is stashed in the pool-indexed
  ``FutureMap`` relay, and the batch is merged back with ``merge_batch``.
* park / preempt: ``ScheduleBatch.release_req(idx, ..., offload_kv=False)`` (the per-request step of
  SGLang's ``retract_decode``) then ``filter_batch``; the request is later re-queued with
  ``Scheduler._add_request_to_queue(req, is_retracted=True)`` and recomputed by prefill.

Held-back requests must not carry per-batch sampling state that a rebuilt ``SamplingBatchInfo`` would
lose (penalizer history, grammar, logit bias, custom logit processors, logprobs, beams); such a batch is
never split (:func:`splittable`).
"""

from __future__ import annotations

from typing import Any

import torch


def _sp_has_state(sp: Any) -> bool:
    return bool(
        getattr(sp, "frequency_penalty", 0.0) or getattr(sp, "presence_penalty", 0.0)
        or getattr(sp, "repetition_penalty", 1.0) != 1.0 or getattr(sp, "min_new_tokens", 0)
        or getattr(sp, "logit_bias", None) or getattr(sp, "custom_params", None)
    )


def splittable(req: Any) -> bool:
    """Whether ``req`` can be held back and rebuilt without losing per-batch sampling state."""
    return not (
        getattr(req, "grammar", None) is not None or getattr(req, "return_logprob", False)
        or getattr(req, "custom_logit_processor", None) or getattr(req, "beam_group", None) is not None
        or getattr(req, "return_hidden_states", False) or _sp_has_state(getattr(req, "sampling_params", None))
    )


def batch_splittable(batch: Any) -> bool:
    spec = getattr(batch, "spec_algorithm", None)
    if spec is not None and not spec.is_none():
        return False
    return all(splittable(r) for r in batch.reqs)


def split_batch(batch: Any, keep: list[int]) -> list[Any]:
    """Keep ``batch.reqs[keep]`` in ``batch`` (in place); return the held-back requests."""
    keep_set = set(keep)
    held = [r for i, r in enumerate(batch.reqs) if i not in keep_set]
    batch.filter_batch(keep_indices=keep)
    return held


def build_decode_batch(sched: Any, reqs: list[Any]):
    """A decode-ready ScheduleBatch for requests that hold KV but sit in no batch (SGLang's HiSparse
    staging-to-decode construction)."""
    from sglang.srt.managers.overlap_utils import RelayPayload
    from sglang.srt.managers.schedule_batch import ScheduleBatch
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.srt.sampling.sampling_batch_info import SamplingBatchInfo

    device = sched.device
    batch = ScheduleBatch.init_new(
        reqs=reqs, req_to_token_pool=sched.req_to_token_pool,
        token_to_kv_pool_allocator=sched.token_to_kv_pool_allocator, tree_cache=sched.tree_cache,
        model_config=sched.model_config, enable_overlap=sched.enable_overlap,
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
