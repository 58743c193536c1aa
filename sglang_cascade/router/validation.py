"""Request-body checks done at the router, before anything reaches a worker.

A body the router can tell is malformed gets 400 with the field and the reason (:class:`RouterHTTPError`),
so a client's mistake never becomes a worker error, a retry on other workers or a circuit-breaker failure.
The checks follow SGLang's own (``GenerateReqInput`` / ``SamplingParams.verify``): only values SGLang would
reject are rejected; other ``null`` numbers mean SGLang's defaults (dropped); ``max_new_tokens: null`` is passed
on: SGLang then generates until the context (or the KV budget) is full.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .session import RouterHTTPError

DEFAULT_MAX_NEW_TOKENS = 128  # SGLang's SamplingParams default
_INTS = ("max_new_tokens", "min_new_tokens", "top_k", "n")
_FLOATS = ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty")
_BOOLS = ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim")


def _bad(message: str) -> RouterHTTPError:
    return RouterHTTPError(400, message)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def check_sampling_params(sp, where: str = "sampling_params") -> dict:
    """A copy of one sampling-params object with ``null`` numbers dropped (= SGLang's defaults)."""
    if not isinstance(sp, dict):
        raise _bad(f"'{where}' must be an object, got {type(sp).__name__}")
    out = {k: v for k, v in sp.items() if not (v is None and k in _INTS + _FLOATS and k != "max_new_tokens")}
    for k in _INTS:
        if (
            k in out
            and out[k] is not None
            and (not _is_int(out[k]) or out[k] < (1 if k == "n" else -1 if k == "top_k" else 0))
        ):
            raise _bad(
                f"'{where}.{k}' must be {'a positive' if k == 'n' else 'a non-negative'} integer, got {out[k]!r}"
            )
    for k in _FLOATS:
        if k in out and (not _is_num(out[k]) or (out[k] < 0 and not k.endswith("y_penalty"))):
            raise _bad(
                f"'{where}.{k}' must be a finite{'' if k.endswith('y_penalty') else ' non-negative'} number, "
                f"got {out[k]!r}"
            )
    if "top_p" in out and not 0 < out["top_p"] <= 1:
        raise _bad(f"'{where}.top_p' must be in (0, 1], got {out['top_p']!r}")
    for k in _BOOLS:
        if k in out and not isinstance(out[k], bool):
            raise _bad(f"'{where}.{k}' must be a boolean, got {out[k]!r}")
    stop = out.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise _bad(f"'{where}.stop' must be a string or a list of strings")
    ids = out.get("stop_token_ids")
    if ids is not None and not (isinstance(ids, list) and all(_is_int(x) and x >= 0 for x in ids)):
        raise _bad(f"'{where}.stop_token_ids' must be a list of non-negative integers")
    mx, mn = out.get("max_new_tokens"), out.get("min_new_tokens")
    if mx is not None and mn is not None and mn > mx:
        raise _bad(f"'{where}.min_new_tokens' ({mn}) must not exceed 'max_new_tokens' ({mx})")
    return out


@dataclass
class GenerateSpec:
    single: bool  # one prompt (a session can splice it) or a batch (proxied)
    text: str | None
    input_ids: list[int] | None
    sampling_params: dict | list | None
    n: int
    max_new_tokens: int | None  # None: the worker's default


def _check_prompt(body: dict) -> tuple[bool, str | None, list | None, int]:
    """(single?, text, input_ids, batch size)."""
    text, ids = body.get("text"), body.get("input_ids")
    if text is None and ids is None:
        raise _bad("either 'text' or 'input_ids' is required")
    if text is not None and ids is not None:
        raise _bad("give either 'text' or 'input_ids', not both")
    if ids is not None:
        if not isinstance(ids, list) or not ids:
            raise _bad("'input_ids' must be a non-empty list of token ids")
        rows = ids if isinstance(ids[0], list) else [ids]
        for row in rows:
            if not isinstance(row, list) or not row or not all(_is_int(x) and x >= 0 for x in row):
                raise _bad("'input_ids' must contain non-empty lists of non-negative integers")
        return rows is not ids, None, ids, len(rows)
    if isinstance(text, list):
        if not text or not all(isinstance(x, str) for x in text):
            raise _bad("'text' must be a string or a non-empty list of strings")
        return False, None, None, len(text)
    if not isinstance(text, str):
        raise _bad(f"'text' must be a string, got {type(text).__name__}")
    return True, text, None, 1


def check_generate(body: dict) -> GenerateSpec:
    """Validate a /generate body; normalizes ``sampling_params`` in ``body`` (nulls -> defaults)."""
    single, text, ids, batch = _check_prompt(body)
    for k in ("stream", "return_logprob", "return_text_in_logprobs", "return_hidden_states"):
        if k in body and body[k] is not None and not isinstance(body[k], bool):
            raise _bad(f"'{k}' must be a boolean, got {body[k]!r}")
    rid = body.get("rid")
    if rid is not None and not isinstance(rid, str) and not (not single and isinstance(rid, list)):
        raise _bad("'rid' must be a string")
    sp = body.get("sampling_params")
    if sp is None:
        sp = {}
    elif isinstance(sp, list):
        if single or len(sp) != batch:
            raise _bad(f"'sampling_params' must be an object{'' if single else f' or a list of {batch} objects'}")
        sp = [check_sampling_params(x, f"sampling_params[{i}]") for i, x in enumerate(sp)]
    else:
        sp = check_sampling_params(sp)
    if "sampling_params" in body:
        body["sampling_params"] = sp
    first = sp if isinstance(sp, dict) else sp[0]
    return GenerateSpec(single, text, ids if single else None, sp, int(first.get("n", 1)), first.get("max_new_tokens"))


def check_openai(body: dict, chat: bool) -> None:
    """The fields the router reads or SGLang would reject on /v1/completions and /v1/chat/completions."""
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise _bad("'messages' must be a non-empty list of objects")
    else:
        p = body.get("prompt")
        ok = isinstance(p, str) or (
            isinstance(p, list) and p and (all(isinstance(x, str) for x in p) or all(_is_int(x) and x >= 0 for x in p))
        )
        if not ok:
            raise _bad("'prompt' must be a string, a list of strings or a list of token ids")
    for k in ("max_tokens", "max_completion_tokens", "n"):
        v = body.get(k)
        if v is not None and (not _is_int(v) or v < (1 if k == "n" else 0)):
            raise _bad(f"'{k}' must be a {'positive' if k == 'n' else 'non-negative'} integer, got {v!r}")
    for k in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
        v = body.get(k)
        if v is not None and not (_is_num(v) and (v >= 0 or k.endswith("penalty"))):
            raise _bad(f"'{k}' must be a finite number, got {v!r}")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise _bad(f"'stream' must be a boolean, got {body['stream']!r}")


def check_rid(body: dict) -> str:
    rid = body.get("rid")
    if not isinstance(rid, str) or not rid:
        raise _bad("'rid' must be a non-empty string")
    return rid


def check_context(prompt_len: int, context_length: int | None) -> None:
    """400 when the prompt cannot fit the model's context (SGLang rejects ``prompt_len >= context_len``)."""
    if context_length and prompt_len >= context_length:
        raise _bad(
            f"the input ({prompt_len} tokens) is longer than the model's context length ({context_length} tokens)"
        )
