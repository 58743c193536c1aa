"""OpenAI responses and SSE chunks from the router's /generate chunks, shaped as SGLang 0.5.23 shapes them
(``serving_completions.py`` / ``serving_chat.py``): same fields, same order of events.

A /generate chunk here is what :class:`.session.GenerateSession` yields: cumulative ``text`` of all
segments, ``meta_info`` with the client's ``id``, ``prompt_tokens``, the total ``completion_tokens`` and
``finish_reason`` (``{"type", "matched"?}``). Streams: completions send ``choices[0].text`` deltas, the finish
reason on the chunk with the last text; chat first sends ``delta: {role: assistant, content: ""}``, then
``delta.content`` deltas, then a chunk with the finish reason and an empty delta; both end with a usage chunk
(``stream_options.include_usage``) and ``[DONE]`` (written by the server).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .openai_stop import StopScanner


@dataclass
class RenderSpec:
    chat: bool
    model: str
    include_usage: bool = False
    continuous_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))


def usage(meta: dict, drop_none: bool = False) -> dict:
    p, c = int(meta.get("prompt_tokens", 0)), int(meta.get("completion_tokens", 0))
    u = {
        "prompt_tokens": p,
        "total_tokens": p + c,
        "completion_tokens": c,
        "prompt_tokens_details": None,
        "reasoning_tokens": int(meta.get("reasoning_tokens", 0) or 0),
        "completion_tokens_details": None,
    }
    return {k: v for k, v in u.items() if v is not None} if drop_none else u


def finish_fields(meta: dict) -> tuple[str | None, object]:
    fr = meta.get("finish_reason")
    if not isinstance(fr, dict):
        return None, None
    return fr.get("type"), fr.get("matched")


class OpenAIRenderer:
    """Turns the /generate chunks of one request into its OpenAI answer (one renderer per request)."""

    def __init__(self, spec: RenderSpec, stops: StopScanner):
        self.spec, self.stops = spec, stops
        self.sent = 0  # characters of text the client has
        self.started = False
        self.last_meta: dict = {}

    # --- streams -------------------------------------------------------------------------------------------
    def _frame(self, meta: dict, choices: list[dict]) -> dict:
        obj = "chat.completion.chunk" if self.spec.chat else "text_completion"
        return {
            "id": meta.get("id"),
            "object": obj,
            "created": self.spec.created,
            "model": self.spec.model,
            "choices": choices,
        }

    def _choice(self, text: str | None, reason: str | None, matched, role: bool = False) -> dict:
        if not self.spec.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason, "matched_stop": matched}
        delta: dict = {"reasoning_content": None}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason, "matched_stop": matched}

    def stream_chunks(self, chunk: dict) -> list[dict]:
        """The SSE payloads for one /generate chunk (text the client lacks; a stop-string prefix waits)."""
        meta = chunk.get("meta_info") or {}
        self.last_meta = meta
        reason, matched = finish_fields(meta)
        text = chunk.get("text") or ""
        end = len(text) if reason is not None else len(text) - self.stops.held(text)
        delta = text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        out = []
        if self.spec.chat and not self.started:
            out.append(self._frame(meta, [self._choice("", None, None, role=True)]))
        self.started = True
        if not self.spec.chat:
            out.append(self._frame(meta, [self._choice(delta, reason, matched)]))
        elif delta:
            out.append(self._frame(meta, [self._choice(delta, None, None)]))
        if self.spec.continuous_usage and out:
            out[-1]["usage"] = usage(meta)
        elif not self.spec.chat:
            out[-1]["usage"] = None
        if self.spec.chat and reason is not None:
            out.append(self._frame(meta, [self._choice(None, reason, matched)]))
        return out

    def stream_tail(self) -> list[dict]:
        """The usage chunk (when asked for) after the last /generate chunk."""
        if not self.spec.include_usage:
            return []
        u = usage(self.last_meta, drop_none=not self.spec.chat)
        return [{**self._frame(self.last_meta, []), "usage": u}]

    # --- non-streaming -------------------------------------------------------------------------------------
    def response(self, chunk: dict) -> dict:
        meta = chunk.get("meta_info") or {}
        reason, matched = finish_fields(meta)
        text = chunk.get("text") or ""
        if self.spec.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "reasoning_content": None},
                "logprobs": None,
                "finish_reason": reason,
                "matched_stop": matched,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason, "matched_stop": matched}
        out = {
            "id": meta.get("id"),
            "object": "chat.completion" if self.spec.chat else "text_completion",
            "created": self.spec.created,
            "model": self.spec.model,
            "choices": [choice],
            "usage": usage(meta),
        }
        if meta.get("weight_version") is not None:
            out["metadata"] = {"weight_version": meta["weight_version"]}
        return out


def error_event(message: str, code: int = 502, err_type: str = "ServiceUnavailableError") -> dict:
    """SGLang's streaming error payload (``create_streaming_error_response``)."""
    return {"error": {"object": "error", "message": message, "type": err_type, "param": None, "code": code}}
