"""Measured hardware profiles: one JSON per device under ``data/calibration/hardware/`` (``<name>.json``).

A profile makes ``--gpu <name>`` a device the cost model knows, with every number of the cost model's form
measured on that device (``scripts/calibrate_cpu_engine.py`` writes ``cpu-engine.json``, the SGLang CPU
engine serving the tiny model):

* ``gpu``: the :class:`~sglang_cascade.core.specs.GpuSpec` fields. ``peak_flops`` and ``hbm_bandwidth`` are
  the *effective* rates the fit found (attention efficiencies are then 1.0), not datasheet figures.
* ``engine``: the engine overheads (:class:`~sglang_cascade.core.profiles.EngineParams` fields), used when the
  calibration asks for the default ``sglang`` engine (the profile's engine is registered as ``sglang@<name>``).
* ``attention``: the attention parameters (``core/calibration.py`` form) of this device.
* ``linear``: per-layer linear-layer times per ``<model vidur_name>/tp<tp>`` (``linear_ops.json`` form).
* ``kv_capacity_tokens``: the KV pool in tokens (the server's ``--max-total-tokens``), replacing the GPU-memory
  rule; ``chunked_prefill_size``: the server's chunk (what ``--max-prefill-tokens`` should be in the simulator).
* ``fit`` / ``rows``: the fitted coefficients and the measured rows (``sglang-cascade costmodel --validate``).

This module only reads files (no imports from the rest of the package, so ``specs`` and ``profiles`` can
consult it).
"""

from __future__ import annotations

import json
import os
from functools import cache
from importlib import resources
from pathlib import Path

HARDWARE_DIR = Path(str(resources.files("sglang_cascade.data") / "calibration" / "hardware"))
HARDWARE_DIR_ENV = "SGLANG_CASCADE_HARDWARE_DIR"  # a directory of this machine's own profiles: same JSON form,
# read after the shipped ones, so a profile of the same name replaces the shipped one (a CPU engine's speed is
# the host's: calibrate it where it runs, scripts/eval_fidelity.py --calibrate). Read once per process.
ENGINE_SEPARATOR = "@"  # engine profile "sglang@cpu-engine" = the engine block of hardware profile cpu-engine


@cache
def hardware_profiles() -> dict[str, dict]:
    """Every profile in :data:`HARDWARE_DIR`, then in ``$SGLANG_CASCADE_HARDWARE_DIR``, by device name (lower
    case)."""
    out = {}
    extra = os.environ.get(HARDWARE_DIR_ENV)
    for d in (HARDWARE_DIR, *([Path(extra)] if extra else [])):
        if d.is_dir():
            for p in sorted(d.glob("*.json")):
                body = json.loads(p.read_text())
                out[str(body.get("name", p.stem)).lower()] = body
    return out


def hardware_profile(name: str) -> dict | None:
    return hardware_profiles().get(name.lower())


def hardware_engine_name(gpu: str, engine: str) -> str:
    """The engine profile a cost model on ``gpu`` uses: the device's own measured engine replaces ``sglang``."""
    if engine == "sglang" and hardware_profile(gpu) is not None and "engine" in hardware_profile(gpu):
        return f"{engine}{ENGINE_SEPARATOR}{gpu.lower()}"
    return engine


def hardware_engine(name: str) -> dict | None:
    """The engine block named ``<engine>@<device>``, or None."""
    if ENGINE_SEPARATOR not in name:
        return None
    _, dev = name.split(ENGINE_SEPARATOR, 1)
    prof = hardware_profile(dev)
    return None if prof is None else prof.get("engine")


def hardware_linear(gpu: str, vidur_name: str, tp: int) -> dict | None:
    prof = hardware_profile(gpu)
    return None if prof is None else (prof.get("linear") or {}).get(f"{vidur_name}/tp{tp}")


def hardware_kv_capacity(gpu: str) -> int | None:
    prof = hardware_profile(gpu)
    v = None if prof is None else prof.get("kv_capacity_tokens")
    return int(v) if v else None
