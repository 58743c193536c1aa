"""SGLang's waiting-queue orders (``--schedule-policy``) over RequestViews.

SGLang 0.5.23 ``SchedulePolicy.calc_priority`` (managers/schedule_policy.py) sorts the waiting queue before
every prefill batch is built:

- ``fcfs`` (the default): arrival order; retracted requests re-enter at the back.
- ``lpm`` (longest prefix match): by cached prefix, longest first. The simulator has no prefix cache, so every
  match is 0 and the stable sort keeps FCFS order.
- ``shortest-prefill-first``: by uncached prefill work ``max(1, prompt + output - cached)``, ties by queue
  entry time (``_sort_by_shortest_prefill``); and while a chunked request is in progress its next chunk is
  capped so that the shorter waiting requests fit in the same forward (``shortest_prefill_chunk_limit``).
  SGLang requires the radix cache for it (it refuses to start with ``--disable-radix-cache``).
- ``hrrn`` (highest response ratio next, token-based aging): by ``(prefill tokens the engine processed since
  the request queued) / uncached prompt tokens``, highest first, ties by rid (``_sort_by_hrrn``); with more than
  ``WAITING_QUEUE_PREFIX_MATCH_MAX`` (128) waiting requests it is not sorted (``_determine_active_policy``).

Pure functions; the ``sglang`` scheduler (baselines.py) keeps the state they need (the processed-token counter
and each request's counter at queue entry, for hrrn).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core.views import RequestView

FCFS, LPM, SPF, HRRN = "fcfs", "lpm", "shortest-prefill-first", "hrrn"
SCHEDULE_POLICIES = (FCFS, LPM, SPF, HRRN)
WAITING_QUEUE_PREFIX_MATCH_MAX = 128  # schedule_policy.py: hrrn / lpm fall back to FCFS above it


def check_policy(name: str) -> str:
    if name not in SCHEDULE_POLICIES:
        raise ValueError(f"unknown schedule_policy {name!r}; the simulator models {', '.join(SCHEDULE_POLICIES)}")
    return name


def prefill_work(r: RequestView) -> int:
    """``SchedulePolicy._shortest_prefill_work``: tokens still to prefill, at least 1."""
    return max(1, r.tokens_to_prefill)


def ordered(
    policy: str,
    waiting: Sequence[RequestView],
    processed_tokens: int = 0,
    queued_at: dict[str, int] | None = None,
) -> Sequence[RequestView]:
    """The waiting requests in the order ``policy`` admits them. ``waiting`` is in queue-entry order;
    ``processed_tokens`` / ``queued_at`` (rid -> the counter when it queued) feed hrrn only. FCFS and lpm
    return ``waiting`` itself (no copy: the queue can hold thousands)."""
    if policy in (FCFS, LPM):
        return waiting
    reqs = list(waiting)
    if policy == SPF:
        return sorted(reqs, key=prefill_work)  # stable: ties keep queue-entry order
    if policy == HRRN:
        if len(reqs) > WAITING_QUEUE_PREFIX_MATCH_MAX:
            return reqs
        seen = queued_at or {}

        def key(r: RequestView):
            work = max(0, r.prompt_len - r.kv_tokens)  # _uncached_len: the prompt only (no output tokens)
            if work <= 0:
                return (float("-inf"), r.rid)
            waited = max(0, processed_tokens - seen.get(r.rid, processed_tokens))
            return (-waited / work, r.rid)

        return sorted(reqs, key=key)
    raise ValueError(f"unknown schedule_policy {policy!r}")


def chunk_limit(chunked: RequestView, order: list[RequestView], budget: int, page: int) -> int | None:
    """``SchedulePolicy.shortest_prefill_chunk_limit``: the in-progress chunked request's next chunk, capped so
    that the waiting requests shorter than what it has left (in ``order``, shortest first) fit beside it in
    a ``budget``-token forward; None = no cap."""
    if budget < 2 * page:
        return None
    remaining = chunked.tokens_to_prefill
    reserved = 0
    for r in order:
        work = prefill_work(r)
        charge = -(-work // page) * page
        if work >= remaining or reserved + charge > budget - page:
            break
        reserved += charge
    if not reserved:
        return None
    return (budget - reserved) // page * page
