"""`sglang-cascade <command>`: each command lives in its own module exposing
``add_arguments(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("sglang_cascade.sim.cli_simulate", "simulate one configuration on a trace"),
    "compare": ("sglang_cascade.sim.cli_compare", "compare routers/schedulers/loads on one trace"),
    "costmodel": ("sglang_cascade.core.cli_costmodel", "query and validate the batch-time cost model"),
    "plan": ("sglang_cascade.planning.cli_plan", "DP stage partition for a trace (JSON; --check: the checked plan)"),
    "optimal": ("sglang_cascade.optimal.cli_optimal", "optimal single-instance schedule (CP-SAT)"),
    "analyze": ("sglang_cascade.optimal.cli_analyze", "scheduler-analysis report vs the optimum"),
    "router": ("sglang_cascade.router.cli", "sglang_router-compatible HTTP router"),
    "replay": ("sglang_cascade.replay.cli_replay", "replay a trace on a real server; the metrics simulate writes"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {k:<10} {v[1]}" for k, v in COMMANDS.items()]
        msg = "usage: sglang-cascade <command> [options]\n\ncommands:\n" + "\n".join(lines)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"sglang-cascade: unknown command {argv[0]!r}\n\n{msg}", file=sys.stderr)
            return 2
        print(msg)
        return 0
    name, rest = argv[0], argv[1:]
    mod = importlib.import_module(COMMANDS[name][0])
    if hasattr(mod, "main_argv"):  # commands that own their whole argv (the router)
        return int(mod.main_argv(rest) or 0)
    parser = argparse.ArgumentParser(prog=f"sglang-cascade {name}", description=COMMANDS[name][1])
    mod.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(mod.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
