"""scripts/diag_pool_dispatch.py: one line per instance that ran, and the finished counts add up to the run's."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import diag_pool_dispatch as dp


def test_per_instance_lines_account_for_every_request():
    lines = dp.run(8, 1.0, 0, "cascade:prefill_pool=6")
    head, rows = lines[0], lines[1:]
    assert head.startswith("cascade:prefill_pool=6 x 8") and "attained" in head
    assert len(rows) == 8  # every instance ran: six pool members, two decoding
    finished = [int(re.search(r"finished\s+(\d+)", r).group(1)) for r in rows]
    assert sum(finished) >= 990  # the grid's requests (seed 0's slice holds 999), each finished once
    decode_side = [r for r in rows if re.search(r"instance\s+[01]:", r)]
    assert all("median step" in r and "ms" in r for r in decode_side)
    assert sum(finished[:2]) > sum(finished[2:])  # moved requests finish on the decode side
