"""Fitting a trace's lengths to a server's context window and making its prompts (token ids)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..core.request_limits import max_input_tokens, max_total_tokens
from ..core.traces import TraceRequest


def clip_to_context(trace: list[TraceRequest], context_length: int) -> tuple[list[TraceRequest], int]:
    """Requests SGLang serves in full on a server with this context length, and how many were changed: the
    prompt cut to the longest SGLang prefills (``core.request_limits``: a longer one is aborted after a 1-token
    stand-in prefill, which a client that only counts tokens takes for a fast success, or rejected with a 400
    at ``>= context``) and the output to what is left of ``max_req_len`` (at least 1)."""
    max_prompt, max_total = max_input_tokens(context_length), max_total_tokens(context_length)
    out, changed = [], 0
    for r in trace:
        p = min(r.prompt_len, max_prompt)
        o = max(1, min(r.output_len, max_total - p))
        if (p, o) != (r.prompt_len, r.output_len):
            changed += 1
            r = replace(r, prompt_len=p, output_len=o)
        out.append(r)
    return out, changed


def prompt_ids(trace: list[TraceRequest], vocab_size: int, seed: int, low: int = 10, block: int = 0) -> list[list[int]]:
    """Random token ids in ``[low, vocab_size)`` (skipping the first ids, where special tokens live), one list
    per request, reproducible per seed. Random ids make the radix cache useless (the simulator's
    ``prefix_cache_block=0``). With ``block`` > 0 a request with ``hash_ids`` gets, per hash, the ``block`` ids
    that hash always stands for, then random ids for the rest: requests sharing leading hashes share those
    token prefixes, so the server's radix cache reuses what the simulator's (``prefix_cache_block=block``) does."""
    rng = np.random.default_rng(seed)
    hi = max(vocab_size, low + 1)
    out = []
    for r in trace:
        ids: list[int] = []
        if block > 0:
            for h in r.hash_ids[: -(-r.prompt_len // block)]:
                ids += np.random.default_rng([seed, int(h)]).integers(low, hi, size=block).tolist()
            del ids[r.prompt_len :]
        out.append(ids + rng.integers(low, hi, size=r.prompt_len - len(ids)).tolist())
    return out


def scale_lengths(trace: list[TraceRequest], factor: float) -> list[TraceRequest]:
    """Prompt and output lengths divided by ``factor`` (at least 1 token each): a trace's shape on a smaller
    model, e.g. the CPU engine's tiny one (``scripts/eval_fidelity.py``)."""
    if factor == 1.0:
        return list(trace)
    return [
        replace(r, prompt_len=max(1, round(r.prompt_len / factor)), output_len=max(1, round(r.output_len / factor)))
        for r in trace
    ]
