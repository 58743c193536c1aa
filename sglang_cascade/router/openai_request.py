"""An OpenAI request (/v1/completions, /v1/chat/completions) as the /generate body SGLang 0.5.23 builds from it.

SGLang's OpenAI layer turns a request into a ``GenerateReqInput``
(``serving_completions._build_sampling_params``, ``ChatCompletionRequest.to_sampling_params``); the router
does the same, so the request can run as migratable /generate segments (:mod:`.session`) and be rendered
back (:mod:`.openai_render`). The prompt: a completion's string prompt goes as ``text`` (the worker
tokenizes it, as its OpenAI endpoint does), token ids as ``input_ids``; a chat's messages are rendered by the
worker's own ``POST /v1/tokenize {"messages"}`` (SGLang's ``_process_messages``: the chat template exactly as
its chat endpoint applies it) and go as ``input_ids``.

What the router cannot reproduce exactly is not migrated: :func:`unsupported` names the reason and the
request is proxied to one worker's OpenAI endpoint unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

CHAT_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}
_SAMPLING = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "stop",
    "stop_token_ids",
    "seed",
    "n",
    "min_tokens",
    "ignore_eos",
    "no_stop_trim",
    "skip_special_tokens",
)
_COMMON = {"model", "stream", "stream_options", "user", "max_tokens", "rid", *_SAMPLING}
_ALLOWED = {
    False: _COMMON | {"prompt"},
    True: _COMMON
    | {
        "messages",
        "max_completion_tokens",
        "chat_template_kwargs",
        "continue_final_message",
        "tool_choice",
        "separate_reasoning",
        "stream_reasoning",
    },
}
_HARMLESS = {"n": 1, "best_of": 1, "echo": False, "logprobs": False, "top_logprobs": 0}
_ROLES = ("system", "user", "assistant", "developer")


@dataclass
class WorkerInfo:
    """What of a worker's configuration decides whether its OpenAI answers can be reproduced."""

    chat_template: str | None = None
    completion_template: str | None = None
    reasoning_parser: str | None = None
    enable_cache_report: bool = False
    include_usage_default: bool = False
    gen_defaults: dict | None = field(default_factory=dict)  # None: the model's defaults are unknown

    @classmethod
    def from_server_info(cls, info: dict) -> WorkerInfo:
        return cls(
            chat_template=info.get("chat_template"),
            completion_template=info.get("completion_template"),
            reasoning_parser=info.get("reasoning_parser"),
            enable_cache_report=bool(info.get("enable_cache_report")),
            include_usage_default=bool(info.get("stream_response_default_include_usage")),
            gen_defaults=_generation_defaults(info),
        )


def _generation_defaults(info: dict) -> dict | None:
    """SGLang's ``ModelConfig.get_default_sampling_params`` (chat only): the model's generation_config.json
    values of the five chat defaults when ``--sampling-defaults model``; None when the router cannot read it."""
    if info.get("sampling_defaults", "model") != "model":
        return {}
    path = info.get("model_path")
    if not isinstance(path, str) or not os.path.isdir(path):
        return None
    try:
        with open(os.path.join(path, "generation_config.json")) as f:
            cfg = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return None
    return {k: cfg[k] for k in CHAT_DEFAULTS if cfg.get(k) is not None}


def _message_reason(m: dict) -> str | None:
    if m.get("role") not in _ROLES:
        return f"message role {m.get('role')!r}"
    if any(k not in ("role", "content", "name") and v is not None for k, v in m.items()):
        return "tool calls or extra fields in messages"
    c = m.get("content")
    if isinstance(c, list) and not all(isinstance(p, dict) and p.get("type") == "text" for p in c):
        return "multimodal message content"
    if c is not None and not isinstance(c, (str, list)):
        return "message content that is not text"
    return None


def _is_default(key: str, value, chat: bool) -> bool:
    """A field the router does not translate, but whose value changes nothing."""
    if value is None or value in ({}, []):
        return True
    if key == "logprobs" and not chat:  # completions: logprobs=0 asks for the sampled tokens' logprobs
        return False
    if key == "response_format":
        return isinstance(value, dict) and value.get("type") == "text"
    return value is _HARMLESS.get(key, False) or (type(value) is int and value == _HARMLESS.get(key))


def unsupported(body: dict, chat: bool, info: WorkerInfo | None) -> str | None:
    """Why this request cannot run as migratable segments (it is then proxied), or None."""
    if info is None:
        return "the workers' configuration is unknown"
    for k, v in body.items():
        if k not in _ALLOWED[chat] and not _is_default(k, v, chat):
            return f"'{k}'"
    if body.get("n", 1) != 1:
        return "n > 1"
    if body.get("max_tokens") == 0 or body.get("max_completion_tokens") == 0:
        return "max_tokens 0"
    if not isinstance(body.get("rid", ""), str):
        return "a list of rids"
    if info.enable_cache_report:
        return "the workers report cached tokens (--enable-cache-report)"
    if chat:
        return _chat_reason(body, info)
    if info.completion_template is not None:
        return "the workers use a completion template"
    p = body.get("prompt")
    return None if isinstance(p, str) or (isinstance(p, list) and p and isinstance(p[0], int)) else "a batch of prompts"


def _chat_reason(body: dict, info: WorkerInfo) -> str | None:
    if info.chat_template is not None and not str(info.chat_template).endswith(".jinja"):
        return "the workers use a conversation template (its stop strings are not known here)"
    if info.reasoning_parser is not None:
        return "the workers run a reasoning parser"
    if info.gen_defaults is None and any(body.get(k) is None for k in CHAT_DEFAULTS):
        return "the model's default sampling parameters are unknown here"
    for m in body["messages"]:
        reason = _message_reason(m)
        if reason:
            return reason
    return None


def _completion_params(body: dict) -> dict:
    """``OpenAIServingCompletion._build_sampling_params`` for the fields a migrated request may carry."""
    return {
        "temperature": body.get("temperature", 1.0),
        "max_new_tokens": body.get("max_tokens", 16),
        "min_new_tokens": body.get("min_tokens", 0),
        "stop": body.get("stop"),
        "stop_token_ids": body.get("stop_token_ids"),
        "top_p": body.get("top_p", 1.0),
        "top_k": body.get("top_k", -1),
        "min_p": body.get("min_p", 0.0),
        "presence_penalty": body.get("presence_penalty", 0.0),
        "frequency_penalty": body.get("frequency_penalty", 0.0),
        "repetition_penalty": body.get("repetition_penalty", 1.0),
        "n": 1,
        "no_stop_trim": body.get("no_stop_trim", False),
        "ignore_eos": body.get("ignore_eos", False),
        "skip_special_tokens": body.get("skip_special_tokens", True),
        "sampling_seed": body.get("seed"),
    }


def _chat_params(body: dict, gen_defaults: dict) -> dict:
    """``ChatCompletionRequest.to_sampling_params``: user value > model generation config > OpenAI default."""
    sp = {k: body[k] if body.get(k) is not None else gen_defaults.get(k, d) for k, d in CHAT_DEFAULTS.items()}
    ctk = body.get("chat_template_kwargs") or {}
    sp.update(
        max_new_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
        min_new_tokens=body.get("min_tokens", 0),
        stop=body.get("stop"),
        stop_token_ids=body.get("stop_token_ids"),
        presence_penalty=body.get("presence_penalty", 0.0),
        frequency_penalty=body.get("frequency_penalty", 0.0),
        n=1,
        no_stop_trim=body.get("no_stop_trim", False),
        ignore_eos=body.get("ignore_eos", False),
        skip_special_tokens=body.get("skip_special_tokens", True),
        sampling_seed=body.get("seed"),
        spaces_between_special_tokens=ctk.get("spaces_between_special_tokens", True),
    )
    return sp


def tokenize_body(body: dict) -> dict:
    """The body of ``POST /v1/tokenize`` that renders a chat request's messages as its chat endpoint would."""
    drop = ("stream", "stream_options", "prompt", "add_special_tokens", "add_generation_prompt", "rid")
    return {k: v for k, v in body.items() if k not in drop}


def generate_body(body: dict, chat: bool, rid: str, info: WorkerInfo, prompt_ids: list[int] | None = None) -> dict:
    """The /generate body of a migratable request (``prompt_ids``: a chat's rendered prompt)."""
    body = {k: v for k, v in body.items() if v is not None}
    if chat:
        prompt = {"input_ids": list(prompt_ids or [])}
        sp = _chat_params(body, info.gen_defaults or {})
    else:
        p = body["prompt"]
        prompt = {"text": p} if isinstance(p, str) else {"input_ids": list(p)}
        sp = _completion_params(body)
    sp = {k: v for k, v in sp.items() if v is not None or k == "max_new_tokens"}
    return {**prompt, "sampling_params": sp, "stream": True, "rid": rid}
