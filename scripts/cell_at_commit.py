#!/usr/bin/env python3
"""One evaluation-grid cell (``eval_cascade.run_one``) simulated by the code of each given commit: each commit is
exported with ``git archive`` into a temporary directory and run there in a child process, with that commit's own
``sglang_cascade`` and ``scripts/eval_cascade.py``. Used to find which commit moved a cell (a manual bisection:
docs/results/cascade_eval.md, "The short-prompt traces on the current code").

    python scripts/cell_at_commit.py af8ea87 a0331db 12372b3 HEAD --trace arxiv --model llama-3.1-8b \\
        --instances 16 --router cascade --rate 123.0177514945687 --requests 4920 --seed 0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

_CHILD = """
import json, sys
root = sys.argv[1]
sys.path[:0] = [root, root + "/scripts"]
import sglang_cascade
assert sglang_cascade.__file__.startswith(root), sglang_cascade.__file__
import eval_cascade as ev
a = json.loads(sys.argv[2])
r = ev.run_one(a["trace"], a["model"], a["instances"], a["router"], a["rate"], a["requests"], a["seed"], {})
print(json.dumps({k: r[k] for k in ("e2e_mean", "e2e_p99", "migrations", "slo_attainment")}))
"""


def run_at(commit: str, repo: Path, cell: dict) -> dict:
    sha = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", commit], check=True, capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "src.tar"
        subprocess.run(["git", "-C", str(repo), "archive", "-o", str(archive), sha], check=True)
        root = Path(tmp) / "src"
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(root), json.dumps(cell)],
            check=True,
            capture_output=True,
            text=True,
            cwd=tmp,
        ).stdout
    return {"commit": sha, **json.loads(out.strip().splitlines()[-1])}


def add_cell_args(ap: argparse.ArgumentParser) -> None:
    """The options naming one grid cell (also scripts/diag_cell_tail.py's)."""
    ap.add_argument("--trace", required=True)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--instances", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True, help="req/s")
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("commits", nargs="+")
    ap.add_argument("--router", default="cascade")
    add_cell_args(ap)
    a = ap.parse_args(argv)
    repo = Path(__file__).resolve().parent.parent
    cell = {k: getattr(a, k) for k in ("trace", "model", "instances", "router", "rate", "requests", "seed")}
    for c in a.commits:
        r = run_at(c, repo, cell)
        print(
            f"{r['commit']}: E2E mean / p99 {r['e2e_mean']:.2f} / {r['e2e_p99']:.2f} s, "
            f"migrations {r['migrations']}, SLO attainment {r['slo_attainment']:.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
