#!/usr/bin/env python3
"""Extract the compact cost-model tables shipped in ``sglang_cascade/data/calibration/``.

Reads the public measurement files under ``/work/shared/data`` (see its SOURCES.md) and writes:

* ``linear_ops.json``  per (gpu, Vidur model folder, tp): num_tokens -> summed per-layer median time (ms) of
  input_layernorm, attn_pre_proj, attn_rope, attn_post_proj, post_attention_layernorm, mlp_up_proj,
  mlp_act, mlp_down_proj and add (add counted twice: two residual adds per layer), plus the emb time.
* ``allreduce.json``   per (gpu, tp): an alpha-beta fit ``t = alpha + bytes / bw`` of Vidur's NCCL
  all_reduce medians on one DGX node (used for the two all-reduces per layer under tensor parallelism).
* ``validation/splitwise_llama2_70b.csv``  median prompt_time / token_time (ms) per configuration of
  splitwise-sim's perf_model.csv (llama2-70b on a100-80gb and h100-80gb; the power-capped rows are left out).
* ``validation/attention_a100_tp2.csv``  Vidur's historical A100 attention kernel medians (ms per layer):
  decode rows (batch, kv) and prefill rows (chunk, kv).

Usage: python scripts/extract_vidur_profiles.py [--data /work/shared/data] [--out sglang_cascade/data/calibration]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

LAYER_OPS = (
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)
ADD_PER_LAYER = 2  # two residual adds per decoder layer; Vidur profiles one "add"


def _f(row: dict, op: str) -> float:
    return float(row[f"time_stats.{op}.median"])


def extract_linear(data: Path) -> dict:
    root = data / "vidur_profiling/data/profiling/compute"
    profiles: dict[str, dict] = {}
    for path in sorted(root.glob("*/meta-llama/*/mlp.csv")):
        gpu, model = path.parts[-4], path.parts[-2]
        rows: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
        with path.open() as fh:
            for r in csv.DictReader(fh):
                layer = sum(_f(r, op) * (ADD_PER_LAYER if op == "add" else 1) for op in LAYER_OPS)
                rows[(int(r["num_tensor_parallel_workers"]), int(r["num_tokens"]))].append((layer, _f(r, "emb")))
        by_tp: dict[int, list[tuple[int, float, float]]] = defaultdict(list)
        for (tp, n), vals in rows.items():
            by_tp[tp].append((n, statistics.median(v[0] for v in vals), statistics.median(v[1] for v in vals)))
        for tp, pts in sorted(by_tp.items()):
            pts.sort()
            profiles[f"{gpu}/{model}/tp{tp}"] = {
                "tokens": [p[0] for p in pts],
                "layer_ms": [round(p[1], 5) for p in pts],
                "emb_ms": [round(p[2], 5) for p in pts],
            }
    return {
        "source": "microsoft/vidur data/profiling/compute/<gpu>/meta-llama/<model>/mlp.csv (median columns)",
        "layer_ops": list(LAYER_OPS),
        "add_per_layer": ADD_PER_LAYER,
        "units": "ms",
        "profiles": profiles,
    }


def _alpha_beta(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares of t = a + s*b over (size_bytes, t_ms) minimizing relative error; returns (a_s, bytes/s)."""
    # weighted normal equations with weight 1/t^2 (relative error)
    sw = swx = swy = swxx = swxy = 0.0
    for x, y in points:
        w = 1.0 / max(y, 1e-6) ** 2
        sw += w
        swx += w * x
        swy += w * y
        swxx += w * x * x
        swxy += w * x * y
    det = sw * swxx - swx * swx
    b = (sw * swxy - swx * swy) / det
    a = (swy - b * swx) / sw
    a = max(a, 0.0)
    return a * 1e-3, 1.0 / (b * 1e-3)


def extract_allreduce(data: Path) -> dict:
    out: dict[str, dict] = {}
    for gpu in ("h100", "a100"):
        path = data / f"vidur_profiling/data/profiling/network/{gpu}_dgx/all_reduce.csv"
        by: dict[tuple[int, int], list[float]] = defaultdict(list)
        with path.open() as fh:
            for r in csv.DictReader(fh):
                n, dpn = int(r["num_workers"]), int(r["devices_per_node"])
                if n != dpn:  # keep single-node (NVLink) runs only
                    continue
                by[(n, int(r["size"]))].append(float(r["time_stats.all_reduce.median"]))
        for tp in sorted({k[0] for k in by}):
            pts = [(size, statistics.median(v)) for (n, size), v in by.items() if n == tp]
            alpha, bw = _alpha_beta(pts)
            out[f"{gpu}/tp{tp}"] = {"alpha_s": round(alpha, 9), "bytes_per_s": round(bw, 1), "points": len(pts)}
    return {
        "source": "microsoft/vidur data/profiling/network/<gpu>_dgx/all_reduce.csv (median, single node)",
        "model": "t = alpha_s + bytes / bytes_per_s",
        "fits": out,
    }


def extract_splitwise(data: Path, out: Path) -> int:
    by: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    with (data / "splitwise_sim/perf_model.csv").open() as fh:
        for r in csv.DictReader(fh):
            if r["model"] != "llama2-70b" or r["hardware"] not in ("a100-80gb", "h100-80gb"):
                continue
            key = (
                r["hardware"].split("-")[0],
                int(r["tensor_parallel"]),
                int(r["batch_size"]),
                int(r["prompt_size"]),
                int(r["token_size"]),
            )
            by[key].append((float(r["prompt_time"]), float(r["token_time"])))
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["gpu", "tp", "batch_size", "prompt_size", "token_size", "prompt_ms", "token_ms", "repeats"])
        for k in sorted(by):
            v = by[k]
            w.writerow(
                [*k, round(statistics.median(x[0] for x in v), 4), round(statistics.median(x[1] for x in v), 4), len(v)]
            )
    return len(by)


def extract_attention(data: Path, out: Path) -> int:
    n = 0
    with (
        (data / "vidur_profiling/historical_e2d00e9/data/profiling/a100/attention.csv").open() as fh,
        out.open("w", newline="") as fo,
    ):
        w = csv.writer(fo)
        w.writerow(["kind", "batch_size", "chunk", "kv", "ms"])
        for r in csv.DictReader(fh):
            if r["is_prefill"] == "True":
                w.writerow(
                    [
                        "prefill",
                        r["batch_size"],
                        r["prefill_chunk_size"],
                        r["kv_cache_size"],
                        r["time_stats.attn_prefill.median"],
                    ]
                )
            else:
                w.writerow(["decode", r["batch_size"], 0, r["kv_cache_size"], r["time_stats.attn_decode.median"]])
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "sglang_cascade/data/calibration")
    a = ap.parse_args()
    (a.out / "validation").mkdir(parents=True, exist_ok=True)
    lin = extract_linear(a.data)
    (a.out / "linear_ops.json").write_text(json.dumps(lin, separators=(",", ":")))
    ar = extract_allreduce(a.data)
    (a.out / "allreduce.json").write_text(json.dumps(ar, indent=1))
    ns = extract_splitwise(a.data, a.out / "validation/splitwise_llama2_70b.csv")
    na = extract_attention(a.data, a.out / "validation/attention_a100_tp2.csv")
    print(
        f"linear profiles: {len(lin['profiles'])}; all-reduce fits: {len(ar['fits'])}; "
        f"splitwise configs: {ns}; attention rows: {na}"
    )


if __name__ == "__main__":
    main()
