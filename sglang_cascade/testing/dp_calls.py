"""Tests: replace the stage DP's entry points (``plan_partition``, ``top_partitions``) wherever a
sglang_cascade module imported them, to see which side of a plan check runs the DP."""

from __future__ import annotations

import sys
from collections.abc import Callable

from ..policies import stage_dp


def wrap_dp(monkeypatch, wrap: Callable[[Callable], Callable]) -> None:
    """``monkeypatch.setattr`` every loaded sglang_cascade module's ``plan_partition`` / ``top_partitions``
    to ``wrap(original)``."""
    for fn in (stage_dp.plan_partition, stage_dp.top_partitions):
        new = wrap(fn)
        for mod in list(sys.modules.values()):
            if getattr(mod, "__name__", "").startswith("sglang_cascade") and getattr(mod, fn.__name__, None) is fn:
                monkeypatch.setattr(mod, fn.__name__, new)
