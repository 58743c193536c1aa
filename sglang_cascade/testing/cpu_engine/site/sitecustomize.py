"""Start-up hook of the sglang-cascade CPU engine (on PYTHONPATH only for CPU-engine servers).

Does nothing unless SGLANG_CASCADE_CPU_ENGINE=1. Then installs the sgl_kernel replacement
before any SGLang import, in this process and (through the inherited environment) in every
spawned child. Any other sitecustomize further down sys.path is still run.
"""

import os
import sys


def _run_next_sitecustomize() -> None:
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)


if os.environ.get("SGLANG_CASCADE_CPU_ENGINE", "0") == "1":
    try:
        from sglang_cascade.testing.cpu_engine import install
    except ImportError as exc:  # keep the interpreter usable, but say why sgl_kernel will fail
        sys.stderr.write(
            "sglang-cascade CPU engine: SGLANG_CASCADE_CPU_ENGINE=1 but sglang_cascade cannot be "
            f"imported ({exc}); sgl_kernel is NOT replaced in this process\n"
        )
    else:
        install()

_run_next_sitecustomize()
