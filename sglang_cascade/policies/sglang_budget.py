"""SGLang 0.5.23's KV admission budget as plain arithmetic (``PrefillAdder``, managers/schedule_policy.py, and
``mem_cache/prefill_budget.py``), shared by the simulator's SGLang scheduler and the plugin's KV import.

A waiting request is admitted while ``extend + min(max_new left, clip) + page < free KV - reserve``, where the
reserve is what the running requests may still decode: ``min(max_new - output, clip)`` each, times
``new_token_ratio`` (times 1 for a request with ``ignore_eos``: "fixed-length requests cannot benefit from the
early-EOS estimate", ``_get_running_request_total_token_offset``).

A KV import for a move must leave that budget to the continuation it is for: an import that fits the free KV but
not the budget pins KV (the router pins the stop-and-copy) for a continuation SGLang will not admit until running
requests finish, and with FCFS every later request waits behind it (seen live: docs/router.md).
"""

from __future__ import annotations

from collections.abc import Iterable

CLIP_MAX_NEW_TOKENS = 4096  # SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION


def running_reserve(rows: Iterable[tuple[int, bool]], ratio: float, clip: int = CLIP_MAX_NEW_TOKENS) -> float:
    """KV tokens the running requests may still decode, as admission counts them; ``rows``: (max_new_tokens
    left, ignore_eos) per running request."""
    return sum(min(max(left, 0), clip) * (1.0 if fixed else ratio) for left, fixed in rows)


def admission_tokens(extend: int, max_new_left: int, clip: int = CLIP_MAX_NEW_TOKENS, page: int = 1) -> int:
    """What admitting one waiting request takes from the budget: its extend, its whole remaining output
    (clipped; no ratio for a candidate) and a page."""
    return extend + min(max(max_new_left, 0), clip) + page
