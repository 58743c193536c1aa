"""Reports of simulation grids: a markdown table and a latency-vs-load plot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

TABLE_COLUMNS = [
    ("router", "router", "{}"),
    ("scheduler", "scheduler", "{}"),
    ("load", "load", "{}"),
    ("completed", "done", "{}"),
    ("throughput_tok_s", "tok/s", "{:.0f}"),
    ("goodput_req_s", "goodput req/s", "{:.2f}"),
    ("slo_attainment", "SLO %", "{:.1%}"),
    ("ttft_p50", "TTFT p50", "{:.3f}"),
    ("ttft_p99", "TTFT p99", "{:.3f}"),
    ("tpot_p50", "TPOT p50", "{:.4f}"),
    ("tpot_p99", "TPOT p99", "{:.4f}"),
    ("e2e_mean", "E2E mean", "{:.2f}"),
    ("e2e_p99", "E2E p99", "{:.2f}"),
    ("preemptions", "preempt", "{}"),
    ("migrations", "migr", "{}"),
    ("kv_util_mean", "KV util", "{:.1%}"),
    ("sim_wall_s", "sim s", "{:.1f}"),
]


def _fmt(fmt: str, v: Any) -> str:
    if v is None:
        return "-"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    head = "| " + " | ".join(h for _, h, _ in TABLE_COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"
    lines = [head, sep]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(f, r.get(k)) for k, _, f in TABLE_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def plot_latency_vs_load(rows: Sequence[dict[str, Any]], path: str, load_label: str = "load") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault(f"{r['router']} / {r['scheduler']}", []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [("ttft_p99", "TTFT p99 (s)"), ("tpot_p99", "TPOT p99 (s)"), ("goodput_req_s", "goodput (req/s)")]
    for ax, (key, label) in zip(axes, panels):
        for name, pts in sorted(series.items()):
            pts = sorted(pts, key=lambda r: r["load"])
            xs = [p["load"] for p in pts if p.get(key) is not None]
            ys = [p[key] for p in pts if p.get(key) is not None]
            ax.plot(xs, ys, marker="o", label=name)
        ax.set_xlabel(load_label)
        ax.set_ylabel(label)
        if key != "goodput_req_s":
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
