"""`sglang-cascade router ...` / `python -m sglang_cascade.router ...`: parse sglang_router-compatible flags
and serve until interrupted."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from .args import parse_args


def _setup_logging(level: str, log_dir: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(log_dir, "sglang_cascade_router.log")))
    logging.basicConfig(
        level=level.upper(), handlers=handlers, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def main_argv(argv: list[str]) -> int:
    try:
        args = parse_args(list(argv))
    except SystemExit as e:  # argparse printed the reason
        return int(e.code or 0)
    _setup_logging(args.log_level, None)
    from .server import serve

    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    except (ValueError, OSError) as e:
        print(f"sglang-cascade router: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main_argv(sys.argv[1:]))
