"""SGLang 0.5.23's request length limits on a server with a given context length (shared by the replay's
clipping and the router's moves).

``max_req_len = context - 1`` (``tp_worker.py``, when the KV pool holds one full-length request) and
``max_req_input_len = max_req_len - 5``. The scheduler aborts a request whose input has ``>=
max_req_input_len`` tokens (``validate_input_length``: it finishes at once with an ``abort`` reason after a
1-token stand-in prefill), and caps ``max_new_tokens`` at ``max_req_len - input - 1``; the tokenizer manager
rejects an input of ``>= context`` tokens with a 400.
"""

from __future__ import annotations


def max_input_tokens(context_length: int) -> int:
    """The longest input SGLang prefills in full: ``max_req_input_len - 1``."""
    return context_length - 1 - 5 - 1


def max_total_tokens(context_length: int) -> int:
    """The longest input + output: ``max_req_len - 1``."""
    return context_length - 1 - 1
