"""One CSV writer for the scripts' result rows (a list of dicts with the same keys, the first row's order)."""

from __future__ import annotations

import csv
import os


def write_rows(path: str, rows: list[dict], append: bool = False) -> None:
    """Write ``rows`` to ``path`` (its folder made if missing); ``append``: add them to an existing file, the
    header only when the file is new."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    new = not (append and os.path.exists(path))
    with open(path, "w" if new else "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)
