"""SGLang 0.5.23's request length limits on a server with a given context length and KV pool (shared by the
simulated SGLang scheduler, the replay's clipping, the router's moves and the simulator's).

``max_req_len = min(context - 1, KV pool - 1)`` (``tp_worker.py``) and ``max_req_input_len = max_req_len - 5``.
The scheduler aborts a request whose input has ``>= max_req_input_len`` tokens (``validate_input_length``: it
finishes at once with an ``abort`` reason after a 1-token stand-in prefill), and caps ``max_new_tokens`` at
``max_req_len - input - 1``; the tokenizer manager rejects an input of ``>= context`` tokens with a 400.
"""

from __future__ import annotations


def max_req_len(context_length: int, kv_capacity: int | None = None) -> int:
    """SGLang's ``max_req_len`` (a KV pool of None: one that holds a full-length request)."""
    return min(context_length, kv_capacity or context_length) - 1


def max_input_tokens(context_length: int, kv_capacity: int | None = None) -> int:
    """The longest input SGLang prefills in full: ``max_req_input_len - 1``."""
    return max_req_len(context_length, kv_capacity) - 5 - 1


def max_total_tokens(context_length: int, kv_capacity: int | None = None) -> int:
    """The longest input + output: ``max_req_len - 1``."""
    return max_req_len(context_length, kv_capacity) - 1
