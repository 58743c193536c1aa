"""Point-to-point KV link curves extracted from Vidur's measured send_recv profiles (H100).

Source: /work/shared/data/vidur_profiling/data/profiling/network/<cluster>/send_recv.csv (Vidur, MIT
licence; see sglang_cascade/data/SOURCES.md). Columns used: ``size`` (bytes), ``devices_per_node``
(2 = both ranks on one node -> NVLink; 1 = ranks on different nodes) and ``time_stats.send_recv.median``
(milliseconds). For each cluster and placement we grouped rows by size, took the median of the medians,
and kept 15 log-spaced sizes (each a median over its 7 nearest measured sizes). The full CSVs have 993
sizes per placement; :func:`extract_table` re-derives a table from them when the shared data is present
(tests compare it with the packaged one).

Curves: ``nvlink`` = h100_dgx, same node (~350 GB/s at 64 MiB); ``infiniband`` = h100_dgx, two nodes
(~35 GB/s); ``tcp`` = h100_pairwise_nvlink, two nodes (~2.4 GB/s: no RDMA between those hosts).
"""

from __future__ import annotations

import bisect
import csv
import math
import os
from dataclasses import dataclass

# (bytes, milliseconds)
SEND_RECV_MS: dict[str, tuple[tuple[int, float], ...]] = {
    "nvlink": (
        (2048, 0.0065),
        (10240, 0.007),
        (18432, 0.007),
        (34816, 0.008),
        (67584, 0.008),
        (133120, 0.008),
        (264192, 0.008),
        (526336, 0.009),
        (1048576, 0.01),
        (2097152, 0.013),
        (4194304, 0.019),
        (8388608, 0.03),
        (16777216, 0.0535),
        (33554432, 0.101),
        (67108864, 0.1925),
    ),
    "infiniband": (
        (2048, 0.018),
        (10240, 0.018),
        (18432, 0.0185),
        (34816, 0.019),
        (67584, 0.02),
        (133120, 0.024),
        (264192, 0.027),
        (526336, 0.029),
        (1048576, 0.054),
        (2097152, 0.075),
        (4194304, 0.129),
        (8388608, 0.246),
        (16777216, 0.479),
        (33554432, 0.947),
        (67108864, 1.922),
    ),
    "tcp": (
        (2048, 0.015),
        (10240, 0.016),
        (18432, 0.016),
        (34816, 0.021),
        (67584, 0.039),
        (133120, 0.03),
        (264192, 0.053),
        (526336, 0.07),
        (1048576, 0.143),
        (2097152, 0.278),
        (4194304, 0.855),
        (8388608, 3.359),
        (16777216, 7.249),
        (33554432, 16.276),
        (67108864, 28.3205),
    ),
}
SOURCES = {"nvlink": ("h100_dgx", 2), "infiniband": ("h100_dgx", 1), "tcp": ("h100_pairwise_nvlink", 1)}


@dataclass(frozen=True)
class LinkCurve:
    """Transfer time of one message of ``nbytes`` (piecewise log-log interpolation of measured points;
    beyond the largest size, linear at the last segment's bandwidth)."""

    name: str
    points: tuple[tuple[int, float], ...]  # (bytes, ms), increasing sizes

    def time_s(self, nbytes: float) -> float:
        if nbytes <= 0:
            return 0.0
        xs = [p[0] for p in self.points]
        if nbytes <= xs[0]:
            return self.points[0][1] / 1e3
        if nbytes >= xs[-1]:
            (s0, t0), (s1, t1) = self.points[-2], self.points[-1]
            bw = (s1 - s0) / max(1e-9, (t1 - t0))  # bytes per ms, marginal
            return (t1 + (nbytes - s1) / bw) / 1e3
        k = bisect.bisect_right(xs, nbytes)
        (s0, t0), (s1, t1) = self.points[k - 1], self.points[k]
        w = (math.log(nbytes) - math.log(s0)) / (math.log(s1) - math.log(s0))
        return math.exp(math.log(t0) + w * (math.log(t1) - math.log(t0))) / 1e3

    def bandwidth(self, nbytes: float) -> float:
        """Effective bytes/s for a message of that size."""
        return nbytes / max(1e-12, self.time_s(nbytes))


def link_curve(name: str) -> LinkCurve:
    if name not in SEND_RECV_MS:
        raise ValueError(f"unknown link {name!r}; choose one of {', '.join(SEND_RECV_MS)} (or 'spec')")
    pts, hi = [], 0.0
    for size, ms in SEND_RECV_MS[name]:  # measured medians are noisy at small sizes: make time monotone
        hi = max(hi, ms)
        pts.append((size, hi))
    return LinkCurve(name, tuple(pts))


def extract_table(profiling_root: str, name: str, points: int = 16) -> list[tuple[int, float]]:
    """Re-derive a curve from Vidur's CSV (same procedure as the packaged table)."""
    cluster, dpn = SOURCES[name]
    path = os.path.join(profiling_root, "network", cluster, "send_recv.csv")
    by_size: dict[int, list[float]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if int(row["devices_per_node"]) != dpn:
                continue
            by_size.setdefault(int(row["size"]), []).append(float(row["time_stats.send_recv.median"]))
    sizes = sorted(by_size)
    med = [
        sorted(v)[len(v) // 2] if len(v) % 2 else sum(sorted(v)[len(v) // 2 - 1 : len(v) // 2 + 1]) / 2
        for v in (by_size[s] for s in sizes)
    ]
    out: list[tuple[int, float]] = []
    lo, hi = math.log(sizes[0]), math.log(sizes[-1])
    for q in range(points):
        target = lo + (hi - lo) * q / (points - 1)
        i = min(range(len(sizes)), key=lambda k: abs(math.log(sizes[k]) - target))
        window = sorted(med[max(0, i - 3) : i + 4])
        m = (
            window[len(window) // 2]
            if len(window) % 2
            else (window[len(window) // 2 - 1] + window[len(window) // 2]) / 2
        )
        if not out or out[-1][0] != sizes[i]:
            out.append((sizes[i], round(m, 4)))
    return out
