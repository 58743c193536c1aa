#!/usr/bin/env python3
"""Measure FlashInfer paged attention on this GPU and refit the cost model's attention calibration.

Decode: BatchDecodeWithPagedKVCacheWrapper on EQUAL vs MIXED KV lengths at the same total KV, for several
batch sizes, mean lengths and spread shapes. Prefill: BatchPrefillWithPagedKVCacheWrapper (causal) for chunk
sizes over cached prefixes. One kernel call = one layer. Writes a CSV, then fits (core/calibration.py):

    decode       fit_decode        on the equal-length rows   -> hbm_efficiency, fixed_s, per_request_s
    heterogeneity fit_heterogeneity on the mixed rows          -> beta, lanes
    prefill      fit_prefill       on the prefill rows        -> fixed_s, per_token_s, prefix/causal efficiency

and replaces that GPU's entry in the attention calibration JSON.

    python scripts/calibrate_attention_gpu.py --dry-run                 # CPU: check the sweep plan + fit code
    python scripts/calibrate_attention_gpu.py --gpu-name h100 \\
        --csv docs/results/attention_h100.csv                            # GPU: measure, fit, write
    python scripts/calibrate_attention_gpu.py --gpu-name h100 --fit-only docs/results/attention_h100.csv

Import-safe without torch/flashinfer/GPU (they are imported inside :func:`measure`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sglang_cascade.core.calibration import (  # noqa: E402
    AttentionCalibration,
    DecodeParams,
    HeterogeneityParams,
    PrefillParams,
    default_path,
    fit_decode,
    fit_heterogeneity,
    fit_prefill,
    heterogeneity_factor,
    load_attention,
    rel_errors,
    save_attention,
)
from sglang_cascade.core.specs import get_gpu, get_model  # noqa: E402

CSV_FIELDS = ["kind", "spread", "batch", "kv_sum", "kv_max", "kv_min", "chunk", "kv_before", "ms"]
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MEAN_KV = (256, 1024, 4096, 16384)
SPREADS = ("equal", "bimodal4", "bimodal16", "bimodal64", "lognormal0.5", "lognormal1.0", "one_long")
PREFILL_CHUNKS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
PREFILL_KV = (0, 1024, 4096, 16384)


@dataclass(frozen=True)
class Shape:
    num_qo_heads: int  # per GPU
    num_kv_heads: int  # per GPU
    head_dim: int

    @classmethod
    def of(cls, model: str, tp: int) -> Shape:
        m = get_model(model)
        return cls(m.heads // tp, max(1, m.kv_heads // tp), m.head_dim)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.num_kv_heads * self.head_dim * dtype_bytes

    def flops_per_pair(self) -> float:
        return 4.0 * self.num_qo_heads * self.head_dim


def spread_lengths(spread: str, batch: int, mean: int, rng: random.Random) -> list[int]:
    """KV lengths with total exactly ``batch * mean`` (>= 1 each) and the named spread shape."""
    total = batch * mean
    if batch == 1 or spread == "equal":
        return [mean] * batch
    if spread.startswith("bimodal"):  # 1/8 of requests (>= 1) are r times longer than the rest
        r = float(spread[len("bimodal") :])
        n_long = max(1, batch // 8)
        short = total / (n_long * r + (batch - n_long))
        lens = [short * r] * n_long + [short] * (batch - n_long)
    elif spread.startswith("lognormal"):
        s = float(spread[len("lognormal") :])
        lens = [rng.lognormvariate(0.0, s) for _ in range(batch)]
    elif spread == "one_long":  # one request holds half the KV
        lens = [total / 2] + [total / 2 / (batch - 1)] * (batch - 1)
    else:
        raise ValueError(f"unknown spread {spread!r}")
    scale = total / sum(lens)
    out = [max(1, int(round(x * scale))) for x in lens]
    out[out.index(max(out))] += total - sum(out)  # exact total
    if min(out) < 1:
        raise ValueError(f"spread {spread} batch {batch} mean {mean}: cannot keep every length >= 1")
    return out


def sweep_plan(max_total_kv: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    plan: list[dict] = []
    for b in BATCHES:
        for mean in MEAN_KV:
            if b * mean > max_total_kv:
                continue
            for sp in SPREADS:
                if b == 1 and sp != "equal":
                    continue
                plan.append({"kind": "decode", "spread": sp, "lens": spread_lengths(sp, b, mean, rng)})
    for c in PREFILL_CHUNKS:
        for k in PREFILL_KV:
            if c + k <= max_total_kv:
                plan.append({"kind": "prefill", "spread": "", "chunk": c, "kv_before": k})
    return plan


def check_plan(plan: list[dict]) -> dict:
    """Sanity checks a dry run can do on CPU; raises on a broken plan."""
    groups: dict[tuple[int, int], set[str]] = {}
    for p in plan:
        if p["kind"] != "decode":
            continue
        lens = p["lens"]
        if min(lens) < 1:
            raise ValueError(f"plan entry with KV length < 1: {p['spread']}")
        key = (len(lens), sum(lens))
        groups.setdefault(key, set()).add(p["spread"])
    missing_equal = [k for k, v in groups.items() if "equal" not in v]
    if missing_equal:
        raise ValueError(f"mixed batches without an equal-length twin at the same total KV: {missing_equal[:5]}")
    n_dec = sum(p["kind"] == "decode" for p in plan)
    return {"decode_configs": n_dec, "prefill_configs": len(plan) - n_dec, "equal_length_groups": len(groups)}


# ------------------------------------------------------------------------------------------ measurement
def sglang_uses_tensor_cores(shape: Shape) -> bool:
    """SGLang 0.5.23 flashinfer_backend.should_use_tensor_core for bf16 KV: GQA group size >= 4."""
    return shape.num_qo_heads // shape.num_kv_heads >= 4


def measure(
    plan: list[dict],
    shape: Shape,
    page_size: int,
    repeats: int,
    warmup: int,
    cuda_graph_plan: bool = True,
    tensor_cores: bool | None = None,
) -> list[dict]:
    """Time each plan entry. ``cuda_graph_plan`` builds decode wrappers with ``use_cuda_graph=True`` (one per
    batch size, as SGLang's CUDA-graph decode does), which makes FlashInfer always use split-KV; the kernels
    themselves run eagerly and are timed with CUDA events."""
    import flashinfer
    import torch

    dev, dt = "cuda", torch.bfloat16
    use_tc = sglang_uses_tensor_cores(shape) if tensor_cores is None else tensor_cores
    max_tokens = max(sum(p["lens"]) if p["kind"] == "decode" else p["chunk"] + p["kv_before"] for p in plan)
    max_pages = max_tokens // page_size + len(BATCHES) * max(BATCHES) + 8
    kv = torch.randn(max_pages, 2, page_size, shape.num_kv_heads, shape.head_dim, dtype=dt, device=dev)
    ws = torch.zeros(256 * 1024 * 1024, dtype=torch.uint8, device=dev)
    eager_dec = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=use_tc)
    graph_dec: dict[int, object] = {}
    pre = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD")

    def dec_wrapper(b: int):
        if not cuda_graph_plan:
            return eager_dec
        if b not in graph_dec:
            graph_dec[b] = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                ws,
                "NHD",
                use_cuda_graph=True,
                use_tensor_cores=use_tc,
                paged_kv_indptr_buffer=torch.empty(b + 1, dtype=torch.int32, device=dev),
                paged_kv_indices_buffer=torch.empty(max_pages, dtype=torch.int32, device=dev),
                paged_kv_last_page_len_buffer=torch.empty(b, dtype=torch.int32, device=dev),
            )
        return graph_dec[b]

    def paged(lens: list[int]) -> tuple:
        pages = [math.ceil(n / page_size) for n in lens]
        indptr = [0]
        for p in pages:
            indptr.append(indptr[-1] + p)
        last = [n - (p - 1) * page_size for n, p in zip(lens, pages)]
        return (
            torch.tensor(indptr, dtype=torch.int32, device=dev),
            torch.arange(indptr[-1], dtype=torch.int32, device=dev),
            torch.tensor(last, dtype=torch.int32, device=dev),
        )

    def timed(fn) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        return statistics.median(times)

    rows = []
    for p in plan:
        if p["kind"] == "decode":
            lens = p["lens"]
            indptr, idx, last = paged(lens)
            dec = dec_wrapper(len(lens))
            dec.plan(
                indptr,
                idx,
                last,
                shape.num_qo_heads,
                shape.num_kv_heads,
                shape.head_dim,
                page_size,
                pos_encoding_mode="NONE",
                q_data_type=dt,
                kv_data_type=dt,
            )
            q = torch.randn(len(lens), shape.num_qo_heads, shape.head_dim, dtype=dt, device=dev)
            ms = timed(lambda: dec.run(q, kv))  # noqa: B023
            rows.append(
                {
                    "kind": "decode",
                    "spread": p["spread"],
                    "batch": len(lens),
                    "kv_sum": sum(lens),
                    "kv_max": max(lens),
                    "kv_min": min(lens),
                    "chunk": 0,
                    "kv_before": 0,
                    "ms": ms,
                }
            )
        else:
            c, k = p["chunk"], p["kv_before"]
            indptr, idx, last = paged([c + k])
            qo = torch.tensor([0, c], dtype=torch.int32, device=dev)
            pre.plan(
                qo,
                indptr,
                idx,
                last,
                shape.num_qo_heads,
                shape.num_kv_heads,
                shape.head_dim,
                page_size,
                causal=True,
                q_data_type=dt,
                kv_data_type=dt,
            )
            q = torch.randn(c, shape.num_qo_heads, shape.head_dim, dtype=dt, device=dev)
            ms = timed(lambda q=q: pre.run(q, kv))
            rows.append(
                {
                    "kind": "prefill",
                    "spread": "",
                    "batch": 1,
                    "kv_sum": c + k,
                    "kv_max": c + k,
                    "kv_min": c + k,
                    "chunk": c,
                    "kv_before": k,
                    "ms": ms,
                }
            )
        print(
            f"{rows[-1]['kind']:7} {rows[-1]['spread']:13} B={rows[-1]['batch']:4} kv_sum={rows[-1]['kv_sum']:8} "
            f"chunk={rows[-1]['chunk']:5} {rows[-1]['ms']:.4f} ms",
            flush=True,
        )
    return rows


# ------------------------------------------------------------------------------------------ CSV + fit
def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in CSV_FIELDS})


def read_csv(path: Path) -> list[dict]:
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    if not rows or set(CSV_FIELDS) - set(rows[0]):
        raise ValueError(f"{path}: expected columns {CSV_FIELDS}")
    out = []
    for r in rows:
        d = {k: (r[k] if k in ("kind", "spread") else float(r[k])) for k in CSV_FIELDS}
        for k in ("batch", "kv_sum", "kv_max", "kv_min", "chunk", "kv_before"):
            d[k] = int(d[k])
        out.append(d)
    return out


def fit_rows(rows: list[dict], gpu: str, shape: Shape) -> tuple[AttentionCalibration, dict]:
    g = get_gpu(gpu)
    kvb = shape.kv_bytes_per_token()
    eq = [(r["batch"], r["kv_sum"], r["ms"] * 1e-3) for r in rows if r["kind"] == "decode" and r["spread"] == "equal"]
    mixed = [
        (r["batch"], r["kv_sum"], r["kv_max"], r["ms"] * 1e-3)
        for r in rows
        if r["kind"] == "decode" and r["spread"] != "equal"
    ]
    pre = [(r["chunk"], r["kv_before"], r["ms"] * 1e-3) for r in rows if r["kind"] == "prefill"]
    if len(eq) < 3 or len(pre) < 4:
        raise ValueError(f"too few rows to fit: {len(eq)} equal-length decode, {len(pre)} prefill")
    d = fit_decode(eq, kvb, g.hbm_bandwidth)
    h = fit_heterogeneity(mixed, d, kvb, g.hbm_bandwidth, shape.num_kv_heads) if mixed else HeterogeneityParams()
    p = fit_prefill(pre, shape.flops_per_pair(), g.peak_flops)
    cal = AttentionCalibration(
        gpu,
        d,
        p,
        h,
        source=f"measured with scripts/calibrate_attention_gpu.py "
        f"(FlashInfer, {shape.num_qo_heads}/{shape.num_kv_heads} heads x {shape.head_dim})",
    )
    # fit errors (in-sample) per part, and the measured mixed/equal ratios
    unit = kvb / (g.hbm_bandwidth * d.hbm_efficiency)
    pd_ = [d.fixed_s + d.per_request_s * b + s * unit for b, s, _ in eq]
    pm = [
        d.fixed_s + d.per_request_s * b + s * unit * heterogeneity_factor(b, s, m, shape.num_kv_heads, h)
        for b, s, m, _ in mixed
    ]
    pp = [
        p.fixed_s
        + p.per_token_s * c
        + shape.flops_per_pair() * (c * k / p.prefix_efficiency + c * c / 2 / p.causal_efficiency) / g.peak_flops
        for c, k, _ in pre
    ]
    eq_t = {(b, s): t for b, s, t in eq}
    ratios = [t / eq_t[(b, s)] for b, s, _, t in mixed if (b, s) in eq_t]

    def med(x):
        return round(float(statistics.median(x)), 4) if len(x) else None

    report = {
        "decode_equal_median_rel_err": med(rel_errors(pd_, [t for *_, t in eq])),
        "decode_mixed_median_rel_err": med(rel_errors(pm, [t for *_, t in mixed])) if mixed else None,
        "prefill_median_rel_err": med(rel_errors(pp, [t for *_, t in pre])),
        "mixed_over_equal_ratio": {"min": round(min(ratios), 3), "median": med(ratios), "max": round(max(ratios), 3)}
        if ratios
        else None,
    }
    return cal, report


def synthetic_rows(
    plan: list[dict], cal: AttentionCalibration, shape: Shape, gpu: str, noise: float = 0.0, seed: int = 0
) -> list[dict]:
    """Rows a GPU following the model with ``cal`` exactly would produce (for tests and --dry-run)."""
    g, rng = get_gpu(gpu), random.Random(seed)
    d, p, h = cal.decode, cal.prefill, cal.heterogeneity
    unit = shape.kv_bytes_per_token() / (g.hbm_bandwidth * d.hbm_efficiency)
    rows = []
    for e in plan:
        if e["kind"] == "decode":
            lens = e["lens"]
            b, s, m = len(lens), sum(lens), max(lens)
            t = d.fixed_s + d.per_request_s * b + s * unit * heterogeneity_factor(b, s, m, shape.num_kv_heads, h)
            r = {
                "kind": "decode",
                "spread": e["spread"],
                "batch": b,
                "kv_sum": s,
                "kv_max": m,
                "kv_min": min(lens),
                "chunk": 0,
                "kv_before": 0,
            }
        else:
            c, k = e["chunk"], e["kv_before"]
            t = (
                p.fixed_s
                + p.per_token_s * c
                + shape.flops_per_pair()
                * (c * k / p.prefix_efficiency + c * c / 2 / p.causal_efficiency)
                / g.peak_flops
            )
            r = {
                "kind": "prefill",
                "spread": "",
                "batch": 1,
                "kv_sum": c + k,
                "kv_max": c + k,
                "kv_min": c + k,
                "chunk": c,
                "kv_before": k,
            }
        r["ms"] = t * 1e3 * (1.0 + rng.gauss(0.0, noise) if noise else 1.0)
        rows.append(r)
    return rows


def write_calibration(cal: AttentionCalibration, path: Path, backend: str = "flashinfer") -> None:
    """FlashInfer (the kernel this script measures): replace the GPU's entry, keeping the other backends'
    heterogeneity parameters. Another backend (rows measured elsewhere, ``--fit-only``): replace only that
    backend's heterogeneity parameters (docs/costmodel.md, "Attention backends")."""
    cals = load_attention(path) if path.exists() else {}
    old = cals.get(cal.gpu)
    if backend == "flashinfer":
        if old is not None:
            cal.heterogeneity_backends = dict(old.heterogeneity_backends)
        cals[cal.gpu] = cal
    else:
        if old is None:
            raise SystemExit(f"{path} has no {cal.gpu} entry to add {backend} heterogeneity parameters to")
        old.heterogeneity_backends[backend] = cal.heterogeneity
    save_attention(cals, path, note="attention calibration; entries say where each comes from (source)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu-name", default="h100", help="key in the calibration file (h100, a100)")
    ap.add_argument("--model", default="llama-3-8b", help="attention shape to measure")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--page-size", type=int, default=1, help="SGLang's default page size is 1")
    ap.add_argument("--max-total-kv", type=int, default=262_144, help="largest batch KV (tokens) in the sweep")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--csv", type=Path, default=None, help="CSV to write (default docs/results/attention_<gpu>.csv)")
    ap.add_argument("--calibration-out", type=Path, default=None, help="JSON to update (default: the package's)")
    ap.add_argument("--fit-only", type=Path, default=None, help="fit an existing CSV, measure nothing")
    ap.add_argument("--dry-run", action="store_true", help="check the plan and the fit on synthetic rows (CPU)")
    ap.add_argument(
        "--eager-plan",
        action="store_true",
        help="plan decode without use_cuda_graph (FlashInfer may then skip split-KV); default mirrors "
        "SGLang's CUDA-graph decode",
    )
    ap.add_argument(
        "--tensor-cores",
        choices=("auto", "on", "off"),
        default="auto",
        help="decode with tensor cores; auto = SGLang's rule (GQA group >= 4)",
    )
    ap.add_argument(
        "--backend",
        choices=("flashinfer", "fa3", "triton"),
        default="flashinfer",
        help="SGLang attention backend the rows come from; fa3/triton: --fit-only on rows measured with that "
        "kernel, updates only that backend's heterogeneity (beta, lanes)",
    )
    a = ap.parse_args(argv)
    if a.backend != "flashinfer" and not (a.fit_only or a.dry_run):
        raise SystemExit(f"this script measures FlashInfer only; fit {a.backend} rows with --fit-only CSV")
    shape = Shape.of(a.model, a.tp)
    plan = sweep_plan(a.max_total_kv)
    info = check_plan(plan)
    if a.dry_run:
        truth = AttentionCalibration(
            a.gpu_name,
            DecodeParams(0.7, 1.0e-5, 2e-8),
            PrefillParams(1.2e-5, 5e-8, 0.6, 0.4),
            HeterogeneityParams(0.6, 256),
        )
        cal, rep = fit_rows(synthetic_rows(plan, truth, shape, a.gpu_name, noise=0.02), a.gpu_name, shape)
        print(
            json.dumps(
                {
                    "plan": info,
                    "shape": shape.__dict__,
                    "synthetic_truth": truth.to_dict(),
                    "recovered": cal.to_dict(),
                    "fit_report": rep,
                },
                indent=1,
            )
        )
        return 0
    if a.fit_only:
        rows = read_csv(a.fit_only)
    else:
        tc = None if a.tensor_cores == "auto" else a.tensor_cores == "on"
        rows = measure(plan, shape, a.page_size, a.repeats, a.warmup, cuda_graph_plan=not a.eager_plan, tensor_cores=tc)
        csv_path = a.csv or REPO / "docs" / "results" / f"attention_{a.gpu_name}.csv"
        write_csv(rows, csv_path)
        print(f"wrote {csv_path} ({len(rows)} rows)")
    cal, rep = fit_rows(rows, a.gpu_name, shape)
    out = a.calibration_out or default_path()
    write_calibration(cal, out, a.backend)
    print(json.dumps({"calibration": cal.to_dict(), "fit_report": rep, "written": str(out)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
