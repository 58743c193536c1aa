"""OpenAI translation, rendering and stop-string handling of the router, without servers."""

from __future__ import annotations

import asyncio

import pytest

from sglang_cascade.core.views import RequestView
from sglang_cascade.router.gen_state import GenState
from sglang_cascade.router.openai_render import OpenAIRenderer, RenderSpec
from sglang_cascade.router.openai_request import WorkerInfo, generate_body, unsupported
from sglang_cascade.router.openai_server import _guarded
from sglang_cascade.router.openai_stop import StopScanner


def _chunk(text: str, n: int, finish=None, rid: str = "r1") -> dict:
    return {
        "text": text,
        "output_ids": list(range(n)),
        "meta_info": {"id": rid, "prompt_tokens": 3, "completion_tokens": n, "finish_reason": finish},
    }


def test_stop_scanner_holds_back_prefixes_and_finds_spanning_matches():
    s = StopScanner(["cat!", "dog"])
    assert s.held("a black ca") == 2 and s.held("a black cat") == 3 and s.held("do") == 2 and s.held("xyz") == 0
    assert s.held("") == 0 and StopScanner(None).held("ca") == 0
    # the boundary at 5 splits "cat!" (starts at 3): found; a match wholly inside one segment is the worker's
    assert s.spanning("the cat! dog", [5]).start == 4
    m = s.spanning("abcat!zz", [4])
    assert (m.start, m.stop) == (2, "cat!")
    assert s.spanning("cat! and more", [8]) is None  # before the boundary: the source already stopped there
    assert s.spanning("xx|dog", [3]) is None  # after the boundary: the destination stops there itself
    m = s.spanning("adog cat!", [2, 7])  # the earliest of several boundaries' matches
    assert (m.start, m.stop) == (1, "dog")


def test_completion_stream_rendering_matches_sglang_shape():
    r = OpenAIRenderer(RenderSpec(chat=False, model="m", include_usage=True, created=7), StopScanner(["xyz"]))
    evs = r.stream_chunks(_chunk(" a", 1)) + r.stream_chunks(_chunk(" a bx", 2))
    evs += r.stream_chunks(_chunk(" a bxq", 3, {"type": "length", "length": 3})) + r.stream_tail()
    texts = [e["choices"][0]["text"] for e in evs if e["choices"]]
    assert texts == [" a", " b", "xq"]  # "x" may start "xyz": held until the next chunk shows it does not
    assert evs[0] == {
        "id": "r1",
        "object": "text_completion",
        "created": 7,
        "model": "m",
        "usage": None,
        "choices": [{"index": 0, "text": " a", "logprobs": None, "finish_reason": None, "matched_stop": None}],
    }
    assert evs[2]["choices"][0]["finish_reason"] == "length"
    assert evs[3]["choices"] == [] and evs[3]["usage"] == {
        "prompt_tokens": 3,
        "total_tokens": 6,
        "completion_tokens": 3,
        "reasoning_tokens": 0,
    }


def test_chat_stream_and_responses():
    r = OpenAIRenderer(RenderSpec(chat=True, model="m", created=7), StopScanner(None))
    evs = r.stream_chunks(_chunk("Hi", 1)) + r.stream_chunks(_chunk("Hi!", 2, {"type": "stop", "matched": 2}))
    assert r.stream_tail() == []  # no usage unless asked for
    assert [e["choices"][0]["delta"] for e in evs] == [
        {"reasoning_content": None, "role": "assistant", "content": ""},
        {"reasoning_content": None, "content": "Hi"},
        {"reasoning_content": None, "content": "!"},
        {"reasoning_content": None},
    ]
    assert [e["choices"][0]["finish_reason"] for e in evs] == [None, None, None, "stop"]
    assert evs[-1]["choices"][0]["matched_stop"] == 2 and evs[0]["object"] == "chat.completion.chunk"
    d = r.response(_chunk("Hi!", 2, {"type": "stop", "matched": "!"}))
    assert d["object"] == "chat.completion" and d["choices"][0]["message"]["content"] == "Hi!"
    assert d["choices"][0]["matched_stop"] == "!" and d["usage"]["total_tokens"] == 5
    c = OpenAIRenderer(RenderSpec(chat=False, model="m"), StopScanner(None)).response(_chunk("ab", 2))
    assert c["object"] == "text_completion" and c["choices"][0]["text"] == "ab" and c["id"] == "r1"


def test_translation_follows_sglang_and_rejects_what_cannot_migrate():
    info = WorkerInfo(gen_defaults={"temperature": 0.7})
    g = generate_body({"prompt": "hi", "stop": "x", "seed": 3}, False, "r", info)
    assert g["text"] == "hi" and g["rid"] == "r" and g["stream"] is True
    sp = g["sampling_params"]
    assert sp["max_new_tokens"] == 16 and sp["temperature"] == 1.0 and sp["stop"] == "x" and sp["sampling_seed"] == 3
    g = generate_body({"messages": [], "top_p": 0.5, "max_tokens": 9}, True, "r", info, prompt_ids=[1, 2])
    sp = g["sampling_params"]
    assert g["input_ids"] == [1, 2] and sp["temperature"] == 0.7 and sp["top_p"] == 0.5 and sp["top_k"] == -1
    assert sp["max_new_tokens"] == 9
    chat = generate_body({"messages": []}, True, "r", info, prompt_ids=[1])["sampling_params"]
    assert chat["max_new_tokens"] is None  # no max_tokens on chat: until the context is full, as in SGLang
    msgs = [{"role": "user", "content": "hi"}]
    assert unsupported({"prompt": "a", "n": 1, "echo": False, "logprobs": None}, False, info) is None
    assert unsupported({"messages": msgs, "response_format": {"type": "text"}}, True, info) is None
    for body, chat_, why in [
        ({"prompt": "a", "n": 2}, False, "n"),
        ({"prompt": "a", "logprobs": 0}, False, "logprobs"),
        ({"prompt": ["a", "b"]}, False, "batch"),
        ({"prompt": "a", "echo": True}, False, "echo"),
        ({"messages": msgs, "tools": [{"type": "function"}]}, True, "tools"),
        ({"messages": msgs, "logit_bias": {"1": 2}}, True, "logit_bias"),
        ({"messages": msgs, "response_format": {"type": "json_object"}}, True, "response_format"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, True, "multimodal"),
        ({"messages": msgs, "logprobs": True}, True, "logprobs"),
    ]:
        assert why in unsupported(body, chat_, info), body
    assert "conversation template" in unsupported({"messages": msgs}, True, WorkerInfo(chat_template="chatml"))
    assert unsupported({"messages": msgs}, True, WorkerInfo(chat_template="t.jinja")) is None
    assert "unknown" in unsupported({"messages": msgs}, True, WorkerInfo(gen_defaults=None))
    assert unsupported({"prompt": "a"}, False, None) is not None


class _Migrator:
    def __init__(self):
        self.stopped = []

    async def stop_source(self, http, src, rid):
        self.stopped.append(rid)


class _Session:
    """A session whose second segment starts after "xx ca": the stop string "cat" spans the boundary."""

    def __init__(self):
        self.http, self.migrator = None, _Migrator()
        self.st = GenState(rid="r", body={}, max_new=10, view=RequestView(rid="r", arrival=0.0, prompt_len=3))
        self.st.worker, self.st.seg_rid = object(), "r.1.0"

    async def run(self):
        yield _chunk("xx ca", 2)
        self.st.text_prefix = "xx ca"
        yield _chunk("xx cat is", 3)
        yield _chunk("xx cat is here", 4)


@pytest.mark.parametrize("no_trim, text", [(False, "xx "), (True, "xx cat")])
def test_stop_string_across_a_segment_boundary_ends_the_request(no_trim, text):
    async def go():
        s = _Session()
        out = [c async for c in _guarded(s, StopScanner(["cat"]), no_trim)]
        return s, out

    s, out = asyncio.run(go())
    assert [c["text"] for c in out] == ["xx ca", text]
    assert out[-1]["meta_info"]["finish_reason"] == {"type": "stop", "matched": "cat"}
    assert out[-1]["meta_info"]["completion_tokens"] == 3 and s.st.finished and s.migrator.stopped == ["r.1.0"]
