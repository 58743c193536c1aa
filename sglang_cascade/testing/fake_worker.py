"""A fake SGLang worker: SGLang's HTTP surface, cost-model timing, deterministic tokens, no GPU.

    python -m sglang_cascade.testing.fake_worker --host 127.0.0.1 --port 31000 \
        [--model llama-3-8b --gpu h100 --time-scale 0.1]

Each engine iteration batches the worker's current requests (new ones are prefilled, running ones decode
one token) and sleeps ``CostModel.batch_time(...) * time_scale``. The next token is a hash of the previous
``k`` ids of the full sequence (prompt + output), so a request resumed elsewhere with
``input_ids = prompt + generated`` continues with exactly the tokens an uninterrupted run produces; tests
and benchmarks check continuity with :func:`expected_tokens`.

Endpoints (SGLang formats): /generate (streaming and not; ``text`` or ``input_ids``; cumulative stream
chunks), /v1/completions, /v1/chat/completions, /v1/models, /health, /health_generate, /get_server_info
(/server_info), /get_model_info (/model_info), /flush_cache, /v1/loads, /abort_request, /tokenize.
Useful to load-test routers without GPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web

from ..core.costmodel import CostModel
from ..core.request_limits import max_input_tokens
from . import fake_worker_tokenizer as ftok

try:
    import orjson

    def dumps(obj) -> bytes:
        return orjson.dumps(obj)
except ImportError:  # pragma: no cover

    def dumps(obj) -> bytes:
        return json.dumps(obj).encode()


log = logging.getLogger("fake_worker")


@dataclass
class FakeWorkerConfig:
    model: str = "llama-3-8b"  # cost-model names (core.specs)
    gpu: str = "h100"
    tp: int = 1
    time_scale: float = 1.0  # multiply every iteration time (0 = as fast as possible)
    vocab: int = ftok.DEFAULT_VOCAB
    context_k: int = 4  # next token = hash(previous k ids)
    max_running: int = 1024
    served_model_name: str | None = None  # default: the cost-model name
    tokenizer_path: str | None = None  # reported in /get_model_info (bench_serving reads it)
    kv_capacity: int | None = None  # default: the cost model's
    context_length: int = 1 << 20  # reported in /get_server_info and /v1/models; longer prompts get 400


def next_token(ids: list[int], k: int = 4, vocab: int = ftok.DEFAULT_VOCAB) -> int:
    """Deterministic next token from the last ``k`` ids."""
    h = 1469598103934665603
    for t in ids[-k:]:
        h = ((h ^ (t + 1)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return (h >> 17) % vocab


def expected_tokens(input_ids: list[int], n: int, k: int = 4, vocab: int = ftok.DEFAULT_VOCAB) -> list[int]:
    """The ``n`` tokens an uninterrupted run on a fake worker produces for ``input_ids``."""
    seq = list(input_ids)
    out = []
    for _ in range(n):
        t = next_token(seq, k, vocab)
        seq.append(t)
        out.append(t)
    return out


@dataclass(eq=False)
class FakeReq:
    rid: str
    input_ids: list[int]
    max_new_tokens: int
    arrival: float
    out_ids: list[int] = field(default_factory=list)
    prefilled: bool = False
    finish: dict | None = None
    first_token_time: float | None = None
    event: asyncio.Event = field(default_factory=asyncio.Event)
    abort_reason: dict | None = None  # finish with this instead of "length" (SGLang's input-length abort)


class FakeEngine:
    """The batching loop: one asyncio task advances every request one iteration at a time."""

    def __init__(self, cfg: FakeWorkerConfig):
        self.cfg = cfg
        self.cm = CostModel.for_names(cfg.model, cfg.gpu, cfg.tp)
        self.kv_capacity = cfg.kv_capacity or self.cm.kv_capacity_tokens()
        self.reqs: dict[str, FakeReq] = {}
        self.waiting: list[FakeReq] = []
        self.running: list[FakeReq] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.total_tokens = 0
        self.iterations = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def submit(self, req: FakeReq) -> None:
        if req.rid in self.reqs:
            raise ValueError(f"duplicate rid {req.rid!r}")
        self.reqs[req.rid] = req
        self.waiting.append(req)
        self._wake.set()

    def abort(self, rid: str) -> bool:
        req = self.reqs.get(rid)
        if req is None or req.finish is not None:
            return False
        self._finish(req, {"type": "abort", "message": "Abort request by user"})
        return True

    def _finish(self, req: FakeReq, reason: dict) -> None:
        req.finish = reason
        self.reqs.pop(req.rid, None)
        if req in self.running:
            self.running.remove(req)
        if req in self.waiting:
            self.waiting.remove(req)
        req.event.set()

    async def _loop(self) -> None:
        cfg = self.cfg
        while True:
            if not self.waiting and not self.running:
                self._wake.clear()
                await self._wake.wait()
            room = max(0, cfg.max_running - len(self.running))
            admit, self.waiting = self.waiting[:room], self.waiting[room:]
            decode = list(self.running)
            dt = self.cm.batch_time(
                prefill=[(len(r.input_ids), 0) for r in admit],
                decode_kv=[len(r.input_ids) + len(r.out_ids) for r in decode],
            )
            await asyncio.sleep(dt * cfg.time_scale)
            self.iterations += 1
            now = time.monotonic()
            for r in admit:
                if r.finish is None:
                    r.prefilled = True
                    r.first_token_time = now
                    self.running.append(r)
            for r in admit + decode:
                if r.finish is not None:
                    continue
                if r.max_new_tokens <= 0:
                    self._finish(r, {"type": "length", "length": 0})
                    continue
                k = cfg.context_k
                seq_tail = r.out_ids[-k:] if len(r.out_ids) >= k else (r.input_ids + r.out_ids)[-k:]
                r.out_ids.append(next_token(seq_tail, cfg.context_k, cfg.vocab))
                self.total_tokens += 1
                if len(r.out_ids) >= r.max_new_tokens:
                    self._finish(r, r.abort_reason or {"type": "length", "length": len(r.out_ids)})
                else:
                    r.event.set()

    def loads(self) -> dict:
        used = sum(len(r.input_ids) + len(r.out_ids) for r in self.running)
        return {
            "dp_rank": 0,
            "timestamp": time.time(),
            "num_running_reqs": len(self.running),
            "num_waiting_reqs": len(self.waiting),
            "num_waiting_uncached_tokens": sum(len(r.input_ids) for r in self.waiting),
            "num_used_tokens": used,
            "num_total_tokens": used,
            "max_total_num_tokens": self.kv_capacity,
            "max_running_requests": self.cfg.max_running,
            "token_usage": used / max(1, self.kv_capacity),
        }


def _bad(msg: str, status: int = 400) -> web.Response:
    return web.Response(
        status=status, body=dumps({"error": {"message": msg, "code": status}}), content_type="application/json"
    )


class FakeWorker:
    """The HTTP app around a :class:`FakeEngine` (usable in-process: ``FakeWorker(cfg).app``)."""

    def __init__(self, cfg: FakeWorkerConfig | None = None):
        self.cfg = cfg or FakeWorkerConfig()
        self.engine = FakeEngine(self.cfg)
        self.name = self.cfg.served_model_name or self.cfg.model
        self.requests_seen = 0
        self.aborts = 0
        self._ids = itertools.count()
        app = web.Application(client_max_size=1 << 28)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        r = app.router
        r.add_route("*", "/generate", self.generate)
        r.add_post("/v1/completions", self.completions)
        r.add_post("/v1/chat/completions", self.chat_completions)
        r.add_get("/v1/models", self.models)
        for p in ("/health", "/health_generate", "/ready"):
            r.add_get(p, self.health)
        for p in ("/get_server_info", "/server_info"):
            r.add_get(p, self.server_info)
        for p in ("/get_model_info", "/model_info"):
            r.add_get(p, self.model_info)
        r.add_route("*", "/flush_cache", self.flush_cache)
        r.add_get("/v1/loads", self.v1_loads)
        r.add_post("/abort_request", self.abort_request)
        r.add_post("/tokenize", self.tokenize)
        r.add_post("/v1/tokenize", self.tokenize)
        self.app = app

    async def _on_startup(self, app) -> None:
        self.engine.start()

    async def _on_cleanup(self, app) -> None:
        await self.engine.stop()

    # --- helpers ---------------------------------------------------------------------------------------
    def _new_req(self, input_ids: list[int], max_new: int, rid: str | None) -> FakeReq:
        req = FakeReq(
            rid=rid or uuid.uuid4().hex,
            input_ids=list(input_ids),
            max_new_tokens=int(max_new),
            arrival=time.monotonic(),
        )
        self.engine.submit(req)
        self.requests_seen += 1
        return req

    async def _run(self, req: FakeReq, request: web.Request):
        """Yield (new_ids_count_total, finished) each time the request advances."""
        try:
            while True:
                await req.event.wait()
                req.event.clear()
                yield req.finish is not None
                if req.finish is not None:
                    return
        finally:
            if req.finish is None:  # client went away
                self.engine.abort(req.rid)

    def _meta(self, req: FakeReq) -> dict:
        return {
            "id": req.rid,
            "finish_reason": req.finish,
            "prompt_tokens": len(req.input_ids),
            "completion_tokens": len(req.out_ids),
            "cached_tokens": 0,
            "e2e_latency": time.monotonic() - req.arrival,
        }

    def _prompt_ids(self, body: dict, key_text: str = "text") -> list[int]:
        if body.get("input_ids") is not None:
            ids = body["input_ids"]
            if not isinstance(ids, list) or not all(isinstance(x, int) for x in ids):
                raise ValueError("input_ids must be a list of ints (batches are not supported by the fake worker)")
            return ids
        text = body.get(key_text)
        if not isinstance(text, str):
            raise ValueError(f"either '{key_text}' (a string) or 'input_ids' is required")
        return ftok.encode(text, self.cfg.vocab)

    # --- SGLang native ---------------------------------------------------------------------------------
    async def generate(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            ids = self._prompt_ids(body)
            sp = body.get("sampling_params") or {}
            max_new = sp.get("max_new_tokens", 128)
            # null: until the context is full, as SGLang (max_new_tokens_for_memory)
            max_new = self.cfg.context_length - len(ids) if max_new is None else int(max_new)
        except (ValueError, TypeError, AttributeError) as e:
            return _bad(str(e))
        if len(ids) >= self.cfg.context_length:
            return _bad(
                f"The input ({len(ids)} tokens) is longer than the model's context length "
                f"({self.cfg.context_length} tokens)."
            )
        abort = None
        limit = max_input_tokens(self.cfg.context_length) + 1  # SGLang's max_req_input_len
        if len(ids) >= limit:  # its scheduler aborts the request after a 1-token stand-in prefill
            abort = {  # (validate_input_length): one output token, then this finish reason
                "type": "abort",
                "message": f"Input length ({len(ids)} tokens) exceeds the maximum allowed length ({limit} tokens).",
                "status_code": 400,
            }
            ids, max_new = [0], 1
        try:
            req = self._new_req(ids, max_new, body.get("rid"))
        except ValueError as e:
            return _bad(str(e))
        req.abort_reason = abort
        want_prompt = bool(body.get("return_prompt_token_ids"))

        def chunk() -> dict:
            out = {"text": ftok.decode(req.out_ids), "output_ids": list(req.out_ids), "meta_info": self._meta(req)}
            if want_prompt:
                out["prompt_token_ids"] = req.input_ids
            return out

        if not body.get("stream"):
            async for done in self._run(req, request):
                if done:
                    break
            return web.Response(body=dumps(chunk()), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        sent = 0
        try:
            async for done in self._run(req, request):
                if len(req.out_ids) > sent or done:
                    sent = len(req.out_ids)
                    await resp.write(b"data: " + dumps(chunk()) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionResetError:  # the client (router) went away: the request was aborted in _run
            pass
        return resp

    # --- OpenAI ----------------------------------------------------------------------------------------
    async def _openai(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = await request.json()
            if chat:
                msgs = body.get("messages")
                if not isinstance(msgs, list) or not msgs:
                    raise ValueError("'messages' must be a non-empty list")
                ids = ftok.encode(" ".join(str(m.get("content", "")) for m in msgs), self.cfg.vocab)
            else:
                p = body.get("prompt")
                if isinstance(p, list) and p and isinstance(p[0], int):
                    ids = p
                elif isinstance(p, str):
                    ids = ftok.encode(p, self.cfg.vocab)
                else:
                    raise ValueError("'prompt' must be a string or a list of token ids")
            max_new = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        except (ValueError, TypeError, AttributeError) as e:
            return _bad(str(e))
        req = self._new_req(ids, max_new, None)
        oid = ("chatcmpl-" if chat else "cmpl-") + req.rid
        obj = "chat.completion" if chat else "text_completion"
        created = int(time.time())

        def usage() -> dict:
            return {
                "prompt_tokens": len(ids),
                "completion_tokens": len(req.out_ids),
                "total_tokens": len(ids) + len(req.out_ids),
            }

        finish = lambda: (req.finish or {}).get("type")  # noqa: E731
        if not body.get("stream"):
            async for done in self._run(req, request):
                if done:
                    break
            text = ftok.decode(req.out_ids)
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish()}
                if chat
                else {"index": 0, "text": text, "finish_reason": finish(), "logprobs": None}
            )
            return web.Response(
                body=dumps(
                    {
                        "id": oid,
                        "object": obj,
                        "created": created,
                        "model": self.name,
                        "choices": [choice],
                        "usage": usage(),
                    }
                ),
                content_type="application/json",
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            await self._openai_stream(resp, req, body, chat, oid, created, usage, finish)
        except ConnectionResetError:
            pass
        return resp

    async def _openai_stream(self, resp, req, body, chat, oid, created, usage, finish) -> None:
        sent = 0
        obj_chunk = "chat.completion.chunk" if chat else "text_completion"
        async for done in self._run(req, None):
            new = req.out_ids[sent:]
            sent = len(req.out_ids)
            if not new and not done:
                continue
            piece = ftok.decode(new)
            fr = finish() if done else None
            choice = (
                {"index": 0, "delta": {"content": piece}, "finish_reason": fr}
                if chat
                else {"index": 0, "text": piece, "finish_reason": fr, "logprobs": None}
            )
            await resp.write(
                b"data: "
                + dumps({"id": oid, "object": obj_chunk, "created": created, "model": self.name, "choices": [choice]})
                + b"\n\n"
            )
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(
                b"data: "
                + dumps(
                    {
                        "id": oid,
                        "object": obj_chunk,
                        "created": created,
                        "model": self.name,
                        "choices": [],
                        "usage": usage(),
                    }
                )
                + b"\n\n"
            )
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()

    async def completions(self, request):
        return await self._openai(request, chat=False)

    async def chat_completions(self, request):
        return await self._openai(request, chat=True)

    # --- info and control ------------------------------------------------------------------------------
    async def models(self, request):
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "sglang",
                        "root": self.name,
                        "max_model_len": self.cfg.context_length,
                    }
                ],
            }
        )

    async def health(self, request):
        return web.Response(status=200)

    async def server_info(self, request):
        return web.json_response(
            {
                "model_path": self.name,
                "tokenizer_path": self.cfg.tokenizer_path,
                "served_model_name": self.name,
                "version": "fake-0",
                "max_total_num_tokens": self.engine.kv_capacity,
                "context_length": self.cfg.context_length,
                "internal_states": [{"avg_spec_accept_length": None}],
                "fake_worker": {"time_scale": self.cfg.time_scale, "gpu": self.cfg.gpu},
            }
        )

    async def model_info(self, request):
        return web.json_response(
            {
                "model_path": self.name,
                "tokenizer_path": self.cfg.tokenizer_path,
                "is_generation": True,
                "served_model_name": self.name,
            }
        )

    async def flush_cache(self, request):
        return web.Response(text="Cache flushed.\n")

    async def v1_loads(self, request):
        return web.json_response({"timestamp": time.time(), "version": "fake-0", "loads": [self.engine.loads()]})

    async def abort_request(self, request):
        try:
            body = await request.json()
        except ValueError:
            return _bad("body must be JSON with 'rid'")
        if body.get("abort_all"):
            for rid in list(self.engine.reqs):
                self.engine.abort(rid)
            return web.Response(status=200)
        if self.engine.abort(str(body.get("rid", ""))):
            self.aborts += 1
        return web.Response(status=200)

    async def tokenize(self, request):
        try:
            body = await request.json()
            p = body.get("prompt")
        except ValueError:
            return _bad("body must be JSON")
        if isinstance(p, list):
            toks = [ftok.encode(x, self.cfg.vocab) for x in p]
            return web.json_response({"tokens": toks, "count": [len(t) for t in toks], "max_model_len": 1 << 20})
        if not isinstance(p, str):
            return _bad("'prompt' must be a string or a list of strings")
        toks = ftok.encode(p, self.cfg.vocab)
        return web.json_response({"tokens": toks, "count": len(toks), "max_model_len": 1 << 20})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m sglang_cascade.testing.fake_worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", default="llama-3-8b", help="cost-model model name (core.specs)")
    ap.add_argument("--gpu", default="h100", help="cost-model GPU name (core.specs)")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--time-scale", type=float, default=1.0, help="multiply iteration times (0 = no sleep)")
    ap.add_argument("--max-running", type=int, default=1024)
    ap.add_argument("--served-model-name", default=None)
    ap.add_argument(
        "--tokenizer-path",
        default=None,
        help="directory reported as tokenizer_path; written with the fake vocabulary if missing",
    )
    ap.add_argument("--log-level", default="warning")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper())
    if a.tokenizer_path:
        import os

        if not os.path.exists(os.path.join(a.tokenizer_path, "tokenizer.json")):
            ftok.save_tokenizer_dir(a.tokenizer_path)
    cfg = FakeWorkerConfig(
        model=a.model,
        gpu=a.gpu,
        tp=a.tp,
        time_scale=a.time_scale,
        max_running=a.max_running,
        served_model_name=a.served_model_name,
        tokenizer_path=a.tokenizer_path,
    )
    web.run_app(FakeWorker(cfg).app, host=a.host, port=a.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
