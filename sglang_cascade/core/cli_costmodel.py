"""`sglang-cascade costmodel`: query the batch-time cost model, or print its validation errors.

Examples:
    sglang-cascade costmodel --model llama-3-8b --gpu h100 --tp 1 --prefill 512 --decode-kv 1000x64
    sglang-cascade costmodel --model llama-2-70b --gpu a100 --tp 4 --batch p2048@4096,d500x32,d8000 --json
    sglang-cascade costmodel --validate --json
    sglang-cascade costmodel --model llama-3-8b --gpu h100 --speed
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .costmodel import Calibration, CostModel
from .specs import GPUS, MODELS


def parse_prefill(spec: str) -> list[tuple[int, int]]:
    """``N`` or ``N@KV`` (chunk of N new tokens over KV cached), optionally ``xR`` repeats: ``512@1000x4``."""
    s, reps = spec, 1
    if "x" in s:
        s, r = s.split("x", 1)
        reps = _pos_int(r, spec)
    n, kv = (s.split("@", 1) + ["0"])[:2] if "@" in s else (s, "0")
    chunk, before = _pos_int(n, spec), _nonneg_int(kv, spec)
    return [(chunk, before)] * reps


def parse_decode(spec: str) -> list[int]:
    """``KVxB`` (B requests at KV tokens each) or a comma list of KV lengths: ``1000x64``, ``100,2000,30``."""
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "x" in part:
            kv, b = part.split("x", 1)
            out += [_pos_int(kv, spec)] * _pos_int(b, spec)
        else:
            out.append(_pos_int(part, spec))
    return out


def parse_batch(spec: str) -> tuple[list[tuple[int, int]], list[int]]:
    """Comma list of ``pN[@KV][xR]`` (prefill chunks) and ``dKV[xB]`` (decoding requests)."""
    pre: list[tuple[int, int]] = []
    dec: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if part[0] == "p":
            pre += parse_prefill(part[1:])
        elif part[0] == "d":
            dec += parse_decode(part[1:])
        else:
            raise ValueError(f"--batch item {part!r}: start with p (prefill) or d (decode)")
    return pre, dec


def _pos_int(s: str, spec: str) -> int:
    v = _nonneg_int(s, spec)
    if v <= 0:
        raise ValueError(f"{spec!r}: {s!r} must be a positive integer")
    return v


def _nonneg_int(s: str, spec: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise ValueError(f"{spec!r}: {s!r} is not an integer") from None
    if v < 0:
        raise ValueError(f"{spec!r}: {s!r} must be >= 0")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="llama-3-8b", help=f"one of {', '.join(MODELS)}")
    p.add_argument("--gpu", default="h100", help=f"one of {', '.join(GPUS)}")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    p.add_argument("--engine", default="sglang", help="engine overhead profile in data/calibration/engine.json")
    p.add_argument("--attention-file", default=None, help="attention calibration JSON (default: the shipped one)")
    p.add_argument(
        "--attention-backend",
        default="flashinfer",
        choices=("flashinfer", "fa3", "triton"),
        help="SGLang attention backend: sets the decode heterogeneity penalty (docs/costmodel.md)",
    )
    p.add_argument(
        "--prefill",
        action="append",
        default=[],
        metavar="N[@KV][xR]",
        help="prefill chunk of N new tokens over KV cached tokens (repeatable)",
    )
    p.add_argument(
        "--decode-kv",
        action="append",
        default=[],
        metavar="KVxB|KV,KV,..",
        help="decoding requests by KV length (repeatable)",
    )
    p.add_argument("--batch", default=None, metavar="p512,d1000x64", help="whole batch in one string")
    p.add_argument("--validate", action="store_true", help="print held-out validation errors per dataset")
    p.add_argument("--speed", action="store_true", help="measure iteration_time calls per second")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _speed(cm: CostModel, n: int = 200_000) -> dict:
    import random

    rnd = random.Random(0)
    args = [(rnd.choice((0, 0, 0, 256, 2048)), 0.0, rnd.randint(1, 256), 0, 0) for _ in range(1000)]
    args = [(p, p * p / 2.0, b, b * 700, 4000) for p, _, b, _, _ in args]
    f = cm.iteration_time
    t0 = time.perf_counter()
    for i in range(n):
        a = args[i % 1000]
        f(a[0], a[1], a[2], a[3], a[4])
    dt = time.perf_counter() - t0
    return {"calls": n, "seconds": round(dt, 3), "calls_per_s": round(n / dt)}


def run(args: argparse.Namespace) -> int:
    try:
        if args.validate:
            from .validation import validate_all

            res = validate_all()
            if args.json:
                print(json.dumps(res))
            else:
                print(f"{'dataset':34} {'median':>8} {'p90':>8} {'points':>7}  split")
                for k, v in res.items():
                    print(
                        f"{k:34} {v['median_rel_err']:8.3f} {v['p90_rel_err']:8.3f} {v['points']:7d}  {v.get('split', '')}"
                    )
            return 0
        cm = CostModel.for_names(
            args.model,
            args.gpu,
            args.tp,
            Calibration(
                engine=args.engine, attention_file=args.attention_file, attention_backend=args.attention_backend
            ),
        )
        pre = [c for s in args.prefill for c in parse_prefill(s)]
        dec = [k for s in args.decode_kv for k in parse_decode(s)]
        if args.batch:
            bp, bd = parse_batch(args.batch)
            pre, dec = pre + bp, dec + bd
    except ValueError as e:
        print(f"sglang-cascade costmodel: {e}", file=sys.stderr)
        return 2
    out: dict = {
        "model": cm.model.name,
        "gpu": cm.gpu.name,
        "tp": cm.tp,
        "engine": args.engine,
        "linear_source": cm.linear_source,
        "kv_bytes_per_token": cm.kv_bytes_per_token,
    }
    try:
        out["kv_capacity_tokens"] = cm.kv_capacity_tokens()
    except ValueError as e:
        out["kv_capacity_tokens"] = None
        out["kv_capacity_error"] = str(e)
    out["kv_capacity"] = {k: round(v, 4) for k, v in cm.kv_capacity_breakdown().items()}
    if pre or dec:
        bd = cm.breakdown(pre, dec)
        out["batch"] = {
            "prefill_chunks": len(pre),
            "prefill_tokens": sum(n for n, _ in pre),
            "decode_requests": len(dec),
            "decode_kv_sum": sum(dec),
            "decode_kv_max": max(dec, default=0),
        }
        out["iteration_ms"] = round(bd["total"] * 1e3, 4)
        out["breakdown_ms"] = {k: round(v * 1e3, 4) for k, v in bd.items() if k != "total"}
        if dec:
            out["decode_heterogeneity_factor"] = round(cm.decode_heterogeneity(len(dec), sum(dec), max(dec)), 4)
    if args.speed:
        out["speed"] = _speed(cm)
    if args.json:
        print(json.dumps(out))
        return 0
    print(
        f"{out['model']} on {out['gpu']} tp={out['tp']} (engine profile {out['engine']}); linear layers: {out['linear_source']}"
    )
    cap = out["kv_capacity"]
    if out["kv_capacity_tokens"] is None:
        print(f"KV capacity: none -- {out['kv_capacity_error']}")
    else:
        print(
            f"KV capacity: {out['kv_capacity_tokens']:,} tokens ({cap['kv_bytes'] / 1e9:.1f} GB at "
            f"{out['kv_bytes_per_token']:,} B/token; mem_fraction_static={cap['mem_fraction_static']}, "
            f"weights {cap['weight_bytes'] / 1e9:.1f} GB)"
        )
    if "iteration_ms" in out:
        b = out["batch"]
        print(
            f"batch: {b['prefill_chunks']} prefill chunks ({b['prefill_tokens']} tokens), {b['decode_requests']} decoding "
            f"(KV sum {b['decode_kv_sum']}, max {b['decode_kv_max']})"
        )
        print(f"iteration time: {out['iteration_ms']:.3f} ms")
        for k, v in out["breakdown_ms"].items():
            print(f"  {k:18} {v:9.3f} ms")
        if "decode_heterogeneity_factor" in out:
            print(f"  decode heterogeneity factor: {out['decode_heterogeneity_factor']:.3f}")
    if "speed" in out:
        s = out["speed"]
        print(f"iteration_time: {s['calls_per_s']:,} calls/s ({s['calls']} calls in {s['seconds']} s)")
    return 0
