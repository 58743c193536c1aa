"""Which SGLang requests carry per-batch sampling state (no torch, no sglang import).

A request held back from a decode step is rebuilt into a fresh ``SamplingBatchInfo`` when it rejoins the
running batch, which would lose penalizer history, grammar state, logit bias, custom logit processors,
logprob bookkeeping or beams; such a request must never be held back. The check reads only fields fixed
when the request is created, so drivers run it once per request.
"""

from __future__ import annotations

from typing import Any


def speculative(batch: Any) -> bool:
    """Whether ``batch`` decodes speculatively (its draft state is per batch: never split)."""
    spec = getattr(batch, "spec_algorithm", None)
    return spec is not None and not spec.is_none()


def _sp_has_state(sp: Any) -> bool:
    return bool(
        getattr(sp, "frequency_penalty", 0.0)
        or getattr(sp, "presence_penalty", 0.0)
        or getattr(sp, "repetition_penalty", 1.0) != 1.0
        or getattr(sp, "min_new_tokens", 0)
        or getattr(sp, "logit_bias", None)
        or getattr(sp, "custom_params", None)
    )


def splittable(req: Any) -> bool:
    """Whether ``req`` can be held back and rebuilt without losing per-batch sampling state."""
    return not (
        getattr(req, "grammar", None) is not None
        or getattr(req, "return_logprob", False)
        or getattr(req, "custom_logit_processor", None)
        or getattr(req, "beam_group", None) is not None
        or getattr(req, "return_hidden_states", False)
        or _sp_has_state(getattr(req, "sampling_params", None))
    )
