"""CPU engine: run the real SGLang server on a machine without a GPU.

SGLang's CPU path (``SGLANG_USE_CPU_ENGINE=1`` + ``--device cpu``) imports a handful of
``*_cpu`` helpers from ``sgl_kernel`` at module load, but the PyPI ``sgl_kernel`` wheel needs
``libcuda`` and cannot be imported without a GPU driver. When the switch ``SGLANG_CASCADE_CPU_ENGINE=1``
is set, :func:`install` puts a meta-path finder in front of the import system that serves our
pure-Python replacement (:mod:`.replacement`) as ``sgl_kernel``. The finder must be in place in
*every* process before SGLang is imported (the scheduler and detokenizer are spawned and import
``sgl_kernel`` while unpickling), so :func:`child_env` puts ``site/sitecustomize.py`` on
``PYTHONPATH``; that file calls :func:`install` at interpreter start-up when the switch is on.

This module imports nothing heavy (no torch) so the start-up hook stays cheap.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

ENV_VAR = "SGLANG_CASCADE_CPU_ENGINE"
SITE_DIR = str(Path(__file__).resolve().parent / "site")

# Names SGLang 0.5.23 imports from sgl_kernel at module load under `if _is_cpu:`.
CPU_PATH_NAMES = (
    "assign_req_to_token_pool_cpu",
    "copy_all_layer_kv_cache_cpu",
    "assign_draft_cache_locs_contiguous_cpu",
    "assign_extend_cache_locs_cpu",
    "build_tree_kernel_efficient_cpu",
    "verify_tree_greedy_cpu",
    "fill_accept_out_cache_loc_cpu",
    "fill_bonus_tokens_cpu",
    "rotate_input_ids_cpu",
)


def is_enabled(environ: dict[str, str] | None = None) -> bool:
    """True when the switch is on (the variable equals ``"1"``)."""
    env = os.environ if environ is None else environ
    return env.get(ENV_VAR, "0") == "1"


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a process tree that runs SGLang on the CPU engine.

    Sets the switch, SGLang's own CPU switch, prepends the sitecustomize folder to
    ``PYTHONPATH`` and hides GPUs so every SGLang code path agrees on "CPU".
    """
    env = dict(os.environ if base is None else base)
    env[ENV_VAR] = "1"
    env["SGLANG_USE_CPU_ENGINE"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != SITE_DIR]
    env["PYTHONPATH"] = os.pathsep.join([SITE_DIR, *parts])
    return env


def real_sgl_kernel_dir() -> Path | None:
    """Folder of the installed sgl_kernel wheel, found without importing it."""
    for entry in sys.path:
        cand = Path(entry or ".") / "sgl_kernel" / "__init__.py"
        if cand.is_file():
            return cand.parent
    return None


def _cuda_available() -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - broken CUDA install
        return False


class _Finder(importlib.abc.MetaPathFinder):
    """Serves ``sgl_kernel`` (our replacement) and ``sgl_kernel.scalar_type`` (the real file)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "sgl_kernel" and not fullname.startswith("sgl_kernel."):
            return None
        if _cuda_available():
            # A GPU is visible: leave the real sgl_kernel alone.
            return None
        if fullname == "sgl_kernel":
            origin = str(Path(__file__).resolve().parent / "replacement.py")
            spec = importlib.util.spec_from_file_location("sgl_kernel", origin, submodule_search_locations=[])
            return spec
        if fullname == "sgl_kernel.scalar_type":
            real = real_sgl_kernel_dir()
            if real is not None and (real / "scalar_type.py").is_file():
                return importlib.util.spec_from_file_location(fullname, str(real / "scalar_type.py"))
        raise ModuleNotFoundError(
            f"{fullname} is not provided by the sglang-cascade CPU engine "
            f"({ENV_VAR}=1 replaces sgl_kernel with pure-torch CPU helpers; only "
            "sgl_kernel.scalar_type and the *_cpu ops SGLang imports on its CPU path exist)",
            name=fullname,
        )


_FINDER = _Finder()


def install() -> bool:
    """Put the finder first on ``sys.meta_path`` (idempotent). Returns True if installed now."""
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, _FINDER)
    return True


def uninstall() -> None:
    """Remove the finder (the already imported module stays in ``sys.modules``)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]
