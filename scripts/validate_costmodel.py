#!/usr/bin/env python3
"""Refit the cost model's fitted parameters and print held-out validation errors.

python scripts/validate_costmodel.py --fit     # rewrite attention.json (A100 fit, H100 prior) and the
                                               # splitwise-* engine profiles in engine.json, then validate
python scripts/validate_costmodel.py           # validate only (same as `sglang-cascade costmodel --validate`)
"""

from __future__ import annotations

import argparse
import json

from sglang_cascade.core.validation import refit_files, validate_all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="refit and rewrite the calibration files first")
    a = ap.parse_args()
    if a.fit:
        print(json.dumps(refit_files(), indent=1))
    print(json.dumps(validate_all(), indent=1))


if __name__ == "__main__":
    main()
