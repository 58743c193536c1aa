"""`sglang-cascade simulate`: one configuration on one trace -> one JSON object."""

from __future__ import annotations

import argparse
import json
import sys

from ..core.options import parse_options_text
from ..core.traces import TraceError, load_trace
from ..policies.sglang_order import SCHEDULE_POLICIES
from .config import SimConfig, SimError


def add_trace_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trace", required=True, help="trace file or built-in name (azure_conv, azure_code, sharegpt, arxiv)"
    )
    p.add_argument("--format", default=None, help="trace format override (azure, vidur, lengths, mooncake, generic)")
    p.add_argument("--max-requests", type=int, default=None, help="keep the first K requests of a timed trace")
    p.add_argument("--num-requests", type=int, default=None, help="requests sampled from a length table")
    p.add_argument("--duration", type=float, default=None, help="drop arrivals after this many seconds")
    p.add_argument("--arrival", default="poisson", choices=["poisson", "gamma"], help="arrivals for length tables")
    p.add_argument("--cv", type=float, default=1.0, help="coefficient of variation of gamma arrivals")
    p.add_argument("--max-output", type=int, default=None, help="clamp output lengths")
    p.add_argument("--max-context", type=int, default=None, help="drop requests longer than this")


def add_deployment_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--gpu", default="h100")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument(
        "--attention-backend",
        default="flashinfer",
        choices=("flashinfer", "fa3", "triton"),
        help="SGLang attention backend the cost model times (decode heterogeneity penalty, docs/costmodel.md)",
    )
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slo-ttft", type=float, default=2.0, help="TTFT SLO (s) for goodput")
    p.add_argument(
        "--slo-ttft-scale",
        type=float,
        default=0.0,
        help="> 0: each request's TTFT SLO is max(--slo-ttft, this x its isolated prefill time)",
    )
    p.add_argument("--slo-tpot", type=float, default=0.1, help="TPOT SLO (s) for goodput")
    p.add_argument("--publish-interval", type=float, default=0.05, help="load publication period (s)")
    p.add_argument(
        "--rebalance-interval",
        type=float,
        default=None,
        help="router rebalance period (s); default: the router's own (Llumnix 0.05) else 0.5",
    )
    p.add_argument("--max-prefill-tokens", type=int, default=8192, help="chunked-prefill budget per iteration")
    p.add_argument("--host-kv-tokens", type=int, default=0, help="host KV pool per instance (tokens)")
    p.add_argument(
        "--mixed-chunk",
        action="store_true",
        help="engines run with SGLang's --enable-mixed-chunk (prefill chunks and decode in one forward); "
        "default: a prefill batch runs alone, as SGLang's default",
    )
    p.add_argument(
        "--prefix-cache-block",
        type=int,
        default=512,
        help="SGLang's radix cache on traces with prefix-block hashes (Mooncake's hash_ids): tokens per block "
        "(Mooncake: 512); 0 = no prefix reuse (--disable-radix-cache, or prompts of random tokens)",
    )
    p.add_argument(
        "--schedule-policy",
        default="fcfs",
        choices=SCHEDULE_POLICIES,
        help="SGLang's --schedule-policy on every engine (the waiting queue's order; the `sglang` scheduler "
        "follows it, the `cascade` one orders new arrivals by it)",
    )
    p.add_argument(
        "--paired-prefetch",
        action="store_true",
        help="pair instances (0-1, 2-3, ...): host<->GPU KV moves use both GPUs' PCIe links + NVLink",
    )
    p.add_argument("--kv-capacity", type=int, default=None, help="override GPU KV tokens per instance")
    p.add_argument("--max-new-tokens", type=int, default=None, help="max_new_tokens every request carries")
    p.add_argument(
        "--max-new-from-trace",
        action="store_true",
        help="each request carries its trace output length as max_new_tokens (what `replay` sends)",
    )
    p.add_argument("--router-opt", action="append", default=[], metavar="K=V", help="router option (repeatable)")
    p.add_argument("--scheduler-opt", action="append", default=[], metavar="K=V", help="scheduler option")
    p.add_argument("--progress", action="store_true", help="show a progress bar")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_trace_arguments(p)
    add_deployment_arguments(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rate-scale", type=float, default=None, help="multiply the trace's arrival rate")
    g.add_argument("--rate", type=float, default=None, help="mean arrival rate (requests/s)")
    p.add_argument("--router", default="round_robin")
    p.add_argument("--scheduler", default="sglang")
    p.add_argument("--out", default=None, help="output JSON file (default: stdout)")


def _opts(items: list[str], flag: str) -> dict:
    return parse_options_text(",".join(items), what=flag)


def option_flags(args) -> tuple[dict, dict]:
    """(router options, scheduler options) of ``--router-opt`` / ``--scheduler-opt``."""
    return _opts(args.router_opt, "--router-opt"), _opts(args.scheduler_opt, "--scheduler-opt")


def trace_from_args(args, rate: float | None = None, rate_scale: float | None = None):
    return load_trace(
        args.trace,
        args.format,
        num_requests=args.num_requests or args.max_requests,
        rate=rate,
        rate_scale=rate_scale,
        duration=args.duration,
        arrival_process=args.arrival,
        burstiness_cv=args.cv,
        seed=args.seed,
        max_output=args.max_output,
        max_context=args.max_context,
    )


def config_from_args(args, router: str, scheduler: str) -> SimConfig:
    router_options, scheduler_options = option_flags(args)
    return SimConfig(
        model=args.model,
        gpu=args.gpu,
        tp=args.tp,
        attention_backend=args.attention_backend,
        instances=args.instances,
        router=router,
        scheduler=scheduler,
        slo_ttft=args.slo_ttft,
        slo_ttft_scale=args.slo_ttft_scale,
        slo_tpot=args.slo_tpot,
        seed=args.seed,
        publish_interval=args.publish_interval,
        rebalance_interval=args.rebalance_interval,
        max_prefill_tokens=args.max_prefill_tokens,
        host_kv_tokens=args.host_kv_tokens,
        mixed_chunk=args.mixed_chunk,
        prefix_cache_block=args.prefix_cache_block,
        schedule_policy=args.schedule_policy,
        paired_prefetch=args.paired_prefetch,
        kv_capacity=args.kv_capacity,
        max_new_tokens=args.max_new_tokens,
        max_new_tokens_from_trace=args.max_new_from_trace,
        router_options=router_options,
        scheduler_options=scheduler_options,
    )


def run(args) -> int:
    from .cluster import simulate

    try:
        trace = trace_from_args(args, rate=args.rate, rate_scale=args.rate_scale)
        cfg = config_from_args(args, args.router, args.scheduler)
        res = simulate(trace, cfg, progress=args.progress)
    except (TraceError, SimError, ValueError, KeyError) as e:
        print(f"sglang-cascade simulate: error: {e}", file=sys.stderr)
        return 2
    m = dict(res.metrics)
    m["trace"] = args.trace
    m["rate_scale"] = args.rate_scale
    m["rate"] = args.rate
    text = json.dumps(m, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0
