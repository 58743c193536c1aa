"""`sglang-cascade replay`: a trace on a real server -> the JSON metrics `sglang-cascade simulate` writes."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict

from ..core.traces import TraceError, TraceRequest
from ..sim.cli_simulate import add_trace_arguments, trace_from_args
from ..sim.metrics import latency_metrics
from .client import ReplayConfig, ReplayError, ReplayRecord, ServerInfo, probe_server, replay_trace
from .lengths import clip_to_context, prompt_ids

DEFAULT_VOCAB = 1000  # ids below 1000 are valid for every Llama-family tokenizer and the CPU engine's tiny model


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_trace_arguments(p)
    p.add_argument("--url", required=True, help="server, router or sglang_router base URL (http://host:port)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rate-scale", type=float, default=None, help="multiply the trace's arrival rate")
    g.add_argument("--rate", type=float, default=None, help="mean arrival rate (requests/s)")
    p.add_argument("--seed", type=int, default=0, help="length-table sampling and prompt token ids")
    p.add_argument("--slo-ttft", type=float, default=2.0, help="TTFT SLO (s) for goodput")
    p.add_argument("--slo-tpot", type=float, default=0.1, help="TPOT SLO (s) for goodput")
    p.add_argument("--context-length", type=int, default=None, help="override the server's context length")
    p.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help=f"prompt ids are drawn below this (default: the model's config.json if local, else {DEFAULT_VOCAB})",
    )
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout (s)")
    p.add_argument("--save-requests", action="store_true", help="add every request's timings to the JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", default=None, help="output JSON file (default: stdout)")


def fit_trace(trace: list[TraceRequest], info: ServerInfo, context_length: int | None) -> tuple[list, int, int]:
    """(requests clipped to the context window, how many changed, the context length used)."""
    ctx = context_length or info.context_length
    if ctx is None:
        raise ReplayError("the server reports no context length (/get_server_info, /v1/models); pass --context-length")
    clipped, changed = clip_to_context(trace, ctx)
    if changed:
        print(
            f"replay: {changed} of {len(trace)} requests clipped to the context length {ctx} "
            f"(prompt <= {ctx - 1}, prompt + output <= {ctx})",
            file=sys.stderr,
        )
    return clipped, changed, ctx


def replay_metrics(recs: list[ReplayRecord], slo_ttft: float, slo_tpot: float) -> dict:
    ok = [r for r in recs if r.ok]
    m = {
        "requests": len(recs),
        "admitted": len(recs),
        "completed": len(ok),
        "rejected": 0,
        "failed": len(recs) - len(ok),
    }
    m.update(latency_metrics(ok, slo_ttft, slo_tpot))
    lags = [r.arrival - r.scheduled for r in recs]
    m["send_lag_max_s"] = max(lags, default=0.0)  # how late the client sent a request (its own load)
    return m


def run(args) -> int:
    try:
        trace = trace_from_args(args, rate=args.rate, rate_scale=args.rate_scale)
        info = asyncio.run(probe_server(args.url.rstrip("/")))
        trace, changed, ctx = fit_trace(trace, info, args.context_length)
        vocab = args.vocab_size or info.vocab_size or DEFAULT_VOCAB
        prompts = prompt_ids(trace, vocab, args.seed)
        cfg = ReplayConfig(args.url.rstrip("/"), temperature=args.temperature, timeout_s=args.timeout)
        recs = asyncio.run(replay_trace(trace, prompts, cfg, progress=not args.quiet))
    except (TraceError, ReplayError, ValueError) as e:
        print(f"sglang-cascade replay: error: {e}", file=sys.stderr)
        return 1
    m = replay_metrics(recs, args.slo_ttft, args.slo_tpot)
    m.update(trace=args.trace, rate_scale=args.rate_scale, rate=args.rate, url=args.url)
    m.update(context_length=ctx, clipped=changed, vocab_size=vocab)
    if args.save_requests:
        m["per_request"] = [asdict(r) for r in recs]
    text = json.dumps(m, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    failed = [r for r in recs if not r.ok]
    if failed:
        print(
            f"sglang-cascade replay: error: {len(failed)} of {len(recs)} requests failed (first: {failed[0].error})",
            file=sys.stderr,
        )
        return 1
    return 0
