#!/usr/bin/env python3
"""Silences in SGLang server logs: every gap of at least ``--min-gap`` seconds between two batch lines while the
server had requests queued or running with KV (``replay.step_log.stalls``; logs written with
``--decode-log-interval 1``, as eval_fidelity's servers are). Plain or gzipped logs.

    python scripts/find_stalls.py docs/results/fidelity_mooncake3_logs/*.log.gz [--min-gap 5]
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sglang_cascade.replay.step_log import STALL_S, read_log_lines, stalls


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="+")
    ap.add_argument("--min-gap", type=float, default=STALL_S, help="seconds")
    a = ap.parse_args(argv)
    for path in a.logs:
        found = stalls(read_log_lines(path), a.min_gap)
        spans = ", ".join(f"{datetime.datetime.fromtimestamp(t):%H:%M:%S.%f}"[:-3] + f" +{g:.2f} s" for t, g in found)
        print(
            f"{path}: {len(found)} silence(s) of >= {a.min_gap:g} s with work in hand" + (f": {spans}" if spans else "")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
