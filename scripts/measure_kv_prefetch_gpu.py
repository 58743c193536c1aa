"""Measure GPU-to-GPU KV prefetch bandwidth (plugin/kv_prefetch.py) and write a CSV. Needs CUDA.

For each sequence length and method it fills a source paged KV pool (FlashInfer NHD layout, fp16) on
cuda:0, copies one request's pages into a destination pool on cuda:1 (cuda:0 when only one GPU: a
device-local copy, reported as such), verifies the copy token by token, and records the median of
``--repeats`` timed copies.

    python scripts/measure_kv_prefetch_gpu.py --out docs/results/kv_prefetch_h100.csv
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from rows_csv import write_rows

from sglang_cascade.plugin.kv_prefetch import PagedKVLayout, copy_request_kv, gather_tokens, pages_needed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/results/kv_prefetch_gpu.csv")
    ap.add_argument("--seq-lens", default="256,1024,4096,16384")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--methods", default="pages,flashinfer")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured", file=sys.stderr)
        return 2
    src_dev = torch.device("cuda:0")
    dst_dev = torch.device("cuda:1" if torch.cuda.device_count() > 1 else "cuda:0")
    lay = PagedKVLayout(args.page_size, args.kv_heads, args.head_dim, "NHD")
    seq_lens = [int(x) for x in args.seq_lens.split(",")]
    max_pages = pages_needed(max(seq_lens), lay.page_size) + 8
    src = [torch.randn(lay.cache_shape(max_pages), dtype=torch.half, device=src_dev) for _ in range(args.layers)]
    dst = [torch.zeros(lay.cache_shape(max_pages), dtype=torch.half, device=dst_dev) for _ in range(args.layers)]
    rows = []
    for seq_len in seq_lens:
        n = pages_needed(seq_len, lay.page_size)
        src_pages = list(range(3, 3 + n))
        dst_pages = list(range(max_pages - 1, max_pages - 1 - n, -1))
        for method in args.methods.split(","):
            copy_request_kv(src, lay, src_pages, dst, lay, dst_pages, seq_len, method=method)  # warm-up
            for s, d in zip(src, dst):
                ks, vs = gather_tokens(s, lay, src_pages, seq_len)
                kd, vd = gather_tokens(d, lay, dst_pages, seq_len)
                if not (torch.equal(ks.to(dst_dev), kd) and torch.equal(vs.to(dst_dev), vd)):
                    raise SystemExit(f"copy mismatch: seq_len={seq_len} method={method}")
            res = [
                copy_request_kv(src, lay, src_pages, dst, lay, dst_pages, seq_len, method=method)
                for _ in range(args.repeats)
            ]
            sec = statistics.median(r.seconds for r in res)
            row = {
                "gpu": torch.cuda.get_device_name(src_dev),
                "src": str(src_dev),
                "dst": str(dst_dev),
                "method": method,
                "seq_len": seq_len,
                "layers": args.layers,
                "kv_heads": args.kv_heads,
                "head_dim": args.head_dim,
                "page_size": args.page_size,
                "bytes": res[0].bytes,
                "seconds": f"{sec:.6f}",
                "gbps": f"{res[0].bytes / sec / 1e9:.2f}",
            }
            rows.append(row)
            print(row)
    write_rows(args.out, rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
