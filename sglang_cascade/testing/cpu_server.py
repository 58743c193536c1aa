"""Start the real ``sglang.launch_server`` on CPU with the tiny model and the CPU engine on.

Usage::

    python -m sglang_cascade.testing.cpu_server --host 127.0.0.1 --port 30000 [sglang args...]

Own options: ``--model-dir D`` (tiny model folder), ``--threads N`` (sets ``OMP_NUM_THREADS``, i.e.
torch's intra-op threads in every server process; default: ``$OMP_NUM_THREADS`` if set, else 1),
``--print-command``. Every other argument is passed to ``sglang.launch_server``.
Defaults added when not given: ``--model-path <tiny model>`` (written first if missing),
``--device cpu``, ``--dtype float32``, ``--max-total-tokens 16384``, ``--host 127.0.0.1``,
``--port 30000``, ``--sleep-on-idle`` (an idle scheduler otherwise busy-polls a core).
The process ``exec``s into SGLang, so its PID is the server's PID.
"""

from __future__ import annotations

import argparse
import os
import sys

from sglang_cascade.testing.cpu_engine import child_env
from sglang_cascade.testing.tiny_model import ensure_tiny_model

DEFAULTS: dict[str, str] = {
    "--host": "127.0.0.1",
    "--port": "30000",
    "--device": "cpu",
    "--dtype": "float32",
    "--max-total-tokens": "16384",
}
# torch intra-op threads per server process unless --threads or OMP_NUM_THREADS says otherwise.
# Measured on 2 shared cores (docs/cpu_engine.md): 1 thread gave 9x (1 request) and 26x
# (32 concurrent) the decode throughput of torch's default, because OpenMP threads spin-wait
# when cores are oversubscribed; the tiny model gains little from more threads anyway.
DEFAULT_THREADS = "1"
# Boolean flags added when absent. Without --sleep-on-idle an idle scheduler busy-polls one core.
DEFAULT_SWITCHES: tuple[str, ...] = ("--sleep-on-idle",)


def _given(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def build_command(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Return ``(argv for execve, environment)`` for the SGLang server."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--print-command", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ours, rest = ap.parse_known_args(argv)
    if "--help" in rest or "-h" in rest:
        print(__doc__)
        raise SystemExit(0)
    extra: list[str] = []
    if not _given(rest, "--model-path") and not _given(rest, "--model"):
        extra += ["--model-path", str(ensure_tiny_model(ours.model_dir))]
    for flag, value in DEFAULTS.items():
        if not _given(rest, flag):
            extra += [flag, value]
    extra += [flag for flag in DEFAULT_SWITCHES if flag not in rest]
    cmd = [sys.executable, "-m", "sglang.launch_server", *extra, *rest]
    env = child_env()
    if ours.threads is not None:
        if ours.threads < 1:
            raise SystemExit("--threads must be >= 1")
        env["OMP_NUM_THREADS"] = str(ours.threads)
    else:
        env.setdefault("OMP_NUM_THREADS", DEFAULT_THREADS)
    return cmd, env


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    cmd, env = build_command(argv)
    if "--print-command" in argv:
        print(" ".join(cmd))
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
