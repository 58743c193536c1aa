"""Where does the simulator's CPU-engine error come from? Controlled request patterns on one real pinned
CPU-engine server against the simulator with the same profile (issue 15, docs/fidelity.md).

    PYTHONPATH=. python scripts/diag_fidelity_gap.py --profile docs/results/fidelity_full3.profile.json \
        [--out docs/results/fidelity_gap.csv]

Patterns: requests sent together (the calibration's own lock-step decode batches), requests arriving one
by one (each arrival's prefill runs between the others' decode steps, as in a trace replay), and long
prompts alone (1,536 / 3,072 tokens, and the Mooncake slice's first 16 requests, one every 2 s). Prints and
writes mean TPOT and TTFT, real and simulated, per pattern.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import eval_fidelity as ev  # noqa: E402
from rows_csv import write_rows  # noqa: E402

from sglang_cascade.core.traces import TraceRequest  # noqa: E402
from sglang_cascade.replay import fidelity as fid  # noqa: E402
from sglang_cascade.replay.client import ReplayConfig, replay_trace  # noqa: E402
from sglang_cascade.replay.lengths import prompt_ids  # noqa: E402
from sglang_cascade.testing.server_fixture import ServerProcess, pin_process_group  # noqa: E402


def patterns() -> dict[str, list[TraceRequest]]:
    return {
        "together_8x256": [TraceRequest(f"r{i}", 0.0, 256, 48) for i in range(8)],
        "together_16x64": [TraceRequest(f"r{i}", 0.0, 64, 96) for i in range(16)],
        "one_by_one_0.25s": [TraceRequest(f"r{i}", 0.25 * i, 200, 60) for i in range(24)],
        "one_by_one_0.1s": [TraceRequest(f"r{i}", 0.1 * i, 100, 40) for i in range(40)],
        "one_by_one_1s": [TraceRequest(f"r{i}", 1.0 * i, 200, 60) for i in range(8)],
        # long prompts alone (the Mooncake slice's lengths): one every 2 s, short outputs
        "lone_1536": [TraceRequest(f"r{i}", 2.0 * i, 1536, 8) for i in range(6)],
        "lone_3072": [TraceRequest(f"r{i}", 2.0 * i, 3072, 8) for i in range(6)],
        "lone_mooncake": [
            replace(r, arrival=2.0 * i) for i, r in enumerate(ev.base_slice(_slice_args(), "mooncake")[:16])
        ],
    }


def _slice_args():
    return ev.parse_args(["--trace", "mooncake"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=None, help="cpu-engine profile JSON (default: the shipped one)")
    ap.add_argument("--core", type=int, default=0)
    ap.add_argument("--out", default=None, help="CSV of the rows")
    ap.add_argument("--pattern", action="append", default=None, help="only this pattern (repeatable)")
    a = ap.parse_args()
    if a.profile:
        ev.use_profile(a.profile)
    cfg = fid.FidelityConfig("sglang", 1, "round_robin", "sglang", 1.0)
    rows = []
    server = ServerProcess(["--threads", "1"]).start()
    try:
        server.wait_ready()
        pin_process_group(server.pid, {a.core})
        for name, tr in patterns().items():
            if a.pattern and name not in a.pattern:
                continue
            recs = asyncio.run(replay_trace(tr, prompt_ids(tr, ev.VOCAB, 1), ReplayConfig(server.base_url)))
            ok = [r for r in recs if r.ok]
            if len(ok) != len(tr):
                raise SystemExit(f"{name}: {len(tr) - len(ok)} requests failed")
            tpot = statistics.mean((r.finish_time - r.first_token_time) / max(1, r.output_len - 1) for r in ok)
            ttft = statistics.mean(r.first_token_time - r.arrival for r in ok)
            sim = fid.simulate_config(tr, cfg, ev.MODEL, ev.GPU, 2.0, 0.1)
            row = {"pattern": name, "real_tpot_s": tpot, "sim_tpot_s": sim["tpot_mean"], "real_ttft_s": ttft}
            row["sim_ttft_s"] = sim["ttft_mean"]
            rows.append(row)
            print(
                f"{name:18s} TPOT real {tpot * 1e3:6.2f} ms sim {sim['tpot_mean'] * 1e3:6.2f} ms "
                f"({sim['tpot_mean'] / tpot - 1:+.0%}) | TTFT real {ttft * 1e3:7.1f} ms sim "
                f"{sim['ttft_mean'] * 1e3:7.1f} ms ({sim['ttft_mean'] / ttft - 1:+.0%})",
                flush=True,
            )
    finally:
        server.stop()
    if a.out:
        write_rows(a.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
