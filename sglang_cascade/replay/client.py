"""Send a trace's requests to a real server at their (scaled) arrival times and time every token.

Each request is one streaming ``/generate`` call with ``input_ids`` (the trace's prompt length of random ids),
``max_new_tokens`` = the trace's output length and ``ignore_eos`` (so the server produces exactly that many
tokens, as the simulator assumes). Works against one SGLang server, ``python -m sglang_cascade.router`` or
``sglang_router``: all three speak SGLang's ``/generate``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field

import aiohttp

from ..core.traces import TraceRequest


class ReplayError(RuntimeError):
    """The server cannot be reached or answers something a replay cannot use (one-line reason)."""


@dataclass(slots=True)
class ReplayRecord:
    """One replayed request. Times are seconds since the replay started (client clock)."""

    rid: str
    prompt_len: int
    output_len: int  # tokens received (equals the trace's output length when the request succeeded)
    target_output: int  # max_new_tokens sent
    scheduled: float  # the trace's arrival (scaled, relative to the first request)
    arrival: float = 0.0  # when the request was sent
    first_token_time: float = 0.0
    finish_time: float = 0.0
    error: str = ""
    moves: list = field(default_factory=list)  # our router's record of the request's moves (meta_info.cascade)

    @property
    def ok(self) -> bool:
        return not self.error and self.finish_time > 0.0


@dataclass
class ServerInfo:
    context_length: int | None = None
    vocab_size: int | None = None
    model_path: str = ""
    source: dict[str, str] = field(default_factory=dict)  # where each value came from


@dataclass
class ReplayConfig:
    url: str
    temperature: float = 0.0
    timeout_s: float = 600.0  # per request
    endpoint: str = "/generate"


async def _get_json(s: aiohttp.ClientSession, url: str) -> dict | None:
    try:
        async with s.get(url) as r:
            if r.status != 200:
                return None
            return await r.json(content_type=None)
    except (aiohttp.ClientError, json.JSONDecodeError, asyncio.TimeoutError):
        return None


def _vocab_from_model_path(path: str) -> int | None:
    """``vocab_size`` of a model folder on this machine (e.g. the CPU engine's tiny model), else None."""
    cfg = os.path.join(path, "config.json") if path else ""
    if not cfg or not os.path.isfile(cfg):
        return None
    try:
        with open(cfg) as f:
            v = json.load(f).get("vocab_size")
    except (OSError, json.JSONDecodeError):
        return None
    return int(v) if isinstance(v, int) and v > 0 else None


async def probe_server(url: str, timeout_s: float = 10.0) -> ServerInfo:
    """Check the server answers and read its context length (``/get_server_info`` ``context_length``, else
    ``/v1/models`` ``max_model_len``) and model path. Raises :class:`ReplayError` when it is unreachable."""
    info = ServerInfo()
    tm = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=tm) as s:
        try:
            async with s.get(url + "/health") as r:
                if r.status != 200:
                    raise ReplayError(f"{url}/health answered HTTP {r.status}: the server is not ready")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise ReplayError(f"cannot reach {url} ({type(e).__name__}: {e or 'timeout'})") from None
        si = await _get_json(s, url + "/get_server_info") or {}
        if isinstance(si.get("context_length"), int):
            info.context_length, info.source["context_length"] = si["context_length"], "/get_server_info"
        models = await _get_json(s, url + "/v1/models") or {}
        data = models.get("data") or [{}]
        if info.context_length is None and isinstance(data[0].get("max_model_len"), int):
            info.context_length, info.source["context_length"] = data[0]["max_model_len"], "/v1/models"
        mi = await _get_json(s, url + "/get_model_info") or {}
        info.model_path = str(mi.get("model_path") or si.get("model_path") or "")
    info.vocab_size = _vocab_from_model_path(info.model_path)
    if info.vocab_size:
        info.source["vocab_size"] = f"{info.model_path}/config.json"
    return info


def _tokens_in(event: dict) -> int:
    meta = event.get("meta_info") or {}
    n = meta.get("completion_tokens")
    if isinstance(n, int):
        return n
    return len(event.get("output_ids") or [])


async def _one(s: aiohttp.ClientSession, cfg: ReplayConfig, rec: ReplayRecord, ids: list[int], t0: float) -> None:
    body = {
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": rec.target_output, "ignore_eos": True, "temperature": cfg.temperature},
        "stream": True,
    }
    rec.arrival = time.perf_counter() - t0
    got = 0
    try:
        async with s.post(cfg.url + cfg.endpoint, json=body) as r:
            if r.status != 200:
                text = (await r.text()).strip().replace("\n", " ")
                rec.error = f"HTTP {r.status}: {text[:200]}"
                return
            async for line in r.content:
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                ev = json.loads(data)
                if "error" in ev:
                    rec.error = f"server error: {str(ev['error'])[:200]}"
                    return
                meta = ev.get("meta_info") or {}
                if isinstance(meta.get("cascade"), dict):
                    rec.moves = list(meta["cascade"].get("moves") or [])
                reason = meta.get("finish_reason")
                if isinstance(reason, dict) and reason.get("type") == "abort":  # e.g. SGLang's input-length abort:
                    rec.error = f"aborted by the server: {str(reason.get('message'))[:200]}"  # not a fast success
                    return
                n = _tokens_in(ev)
                if n > got:
                    now = time.perf_counter() - t0
                    if got == 0:
                        rec.first_token_time = now
                    got = n
                    rec.finish_time = now
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, json.JSONDecodeError) as e:
        rec.error = f"{type(e).__name__}: {e or 'timeout'}"
        return
    rec.output_len = got
    if got < rec.target_output:
        rec.error = f"stream ended after {got} of {rec.target_output} tokens"


async def replay_trace(
    trace: list[TraceRequest], prompts: list[list[int]], cfg: ReplayConfig, progress: bool = False
) -> list[ReplayRecord]:
    """Send every request at its arrival time (relative to the first) and wait for all of them."""
    base = min((r.arrival for r in trace), default=0.0)
    recs = [ReplayRecord(r.rid, r.prompt_len, 0, r.output_len, r.arrival - base) for r in trace]
    order = sorted(range(len(trace)), key=lambda i: recs[i].scheduled)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(recs), desc="replay", unit="req")
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    tm = aiohttp.ClientTimeout(total=cfg.timeout_s)
    async with aiohttp.ClientSession(connector=conn, timeout=tm, read_bufsize=1 << 20) as s:
        t0 = time.perf_counter()
        tasks = []

        async def run(i: int) -> None:
            await _one(s, cfg, recs[i], prompts[i], t0)
            if bar is not None:
                bar.update(1)

        for i in order:
            delay = recs[i].scheduled - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(run(i)))
        await asyncio.gather(*tasks)
    if bar is not None:
        bar.close()
    return recs
