"""Model shapes and GPU specs (public figures; the cost model reads them)."""

from __future__ import annotations

from dataclasses import dataclass

from .hardware import hardware_profile, hardware_profiles


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    max_context: int
    params: float  # total parameters
    dtype_bytes: int = 2  # bf16/fp16 weights and KV
    vidur_name: str = ""  # folder name under vidur_profiling/.../<gpu>/meta-llama/

    def kv_bytes_per_token(self, tp: int = 1) -> int:
        """KV bytes one token occupies on one GPU (K and V, all layers, this GPU's share of KV heads)."""
        kv_heads_per_gpu = max(1, self.kv_heads // tp)
        return 2 * self.layers * kv_heads_per_gpu * self.head_dim * self.dtype_bytes

    def weight_bytes(self, tp: int = 1) -> float:
        return self.params * self.dtype_bytes / tp


@dataclass(frozen=True, slots=True)
class GpuSpec:
    name: str
    memory_bytes: float
    hbm_bandwidth: float  # bytes/s
    peak_flops: float  # dense bf16 FLOP/s
    nvlink_bandwidth: float  # bytes/s, one direction, GPU to GPU
    pcie_bandwidth: float  # bytes/s, host <-> device, one direction (achievable, pinned memory)
    sm_count: int


MODELS: dict[str, ModelSpec] = {
    "llama-2-7b": ModelSpec(
        "llama-2-7b", 32, 4096, 32, 32, 128, 11008, 32000, 4096, 6.74e9, vidur_name="Llama-2-7b-hf"
    ),
    "llama-2-70b": ModelSpec(
        "llama-2-70b", 80, 8192, 64, 8, 128, 28672, 32000, 4096, 68.98e9, vidur_name="Llama-2-70b-hf"
    ),
    "llama-3-8b": ModelSpec(
        "llama-3-8b", 32, 4096, 32, 8, 128, 14336, 128256, 8192, 8.03e9, vidur_name="Meta-Llama-3-8B"
    ),
    "llama-3.1-8b": ModelSpec(
        "llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256, 131072, 8.03e9, vidur_name="Meta-Llama-3-8B"
    ),
    "llama-3-70b": ModelSpec(
        "llama-3-70b", 80, 8192, 64, 8, 128, 28672, 128256, 8192, 70.55e9, vidur_name="Meta-Llama-3-70B"
    ),
    # Llama-3.1-70B: Llama-3-70B's shapes with a 128K context (RoPE scaling only; same linear-layer profile)
    "llama-3.1-70b": ModelSpec(
        "llama-3.1-70b", 80, 8192, 64, 8, 128, 28672, 128256, 131072, 70.55e9, vidur_name="Meta-Llama-3-70B"
    ),
    # the CPU engine's tiny Llama (sglang_cascade/testing/tiny_model.py), float32; its times come from the
    # measured hardware profile data/calibration/hardware/cpu-engine.json (--gpu cpu-engine)
    "tiny-llama": ModelSpec(
        "tiny-llama", 4, 256, 4, 2, 64, 688, 1024, 4096, 3.43e6, dtype_bytes=4, vidur_name="tiny-llama"
    ),
}

GPUS: dict[str, GpuSpec] = {
    # memory_bytes: device total as nvidia-smi reports it (H100 80GB HBM3: 81559 MiB; A100-SXM4-80GB: 81920 MiB);
    # SGLang's mem_fraction_static heuristic works on this figure (get_device_memory_capacity, MiB).
    # H100 SXM5 80GB: 3.35 TB/s HBM3, ~989 TFLOP/s dense bf16, NVLink4 450 GB/s per direction, PCIe gen5.
    "h100": GpuSpec("h100", 81559 * 2**20, 3.35e12, 989e12, 450e9, 50e9, 132),
    # A100 SXM4 80GB: 2.04 TB/s HBM2e, 312 TFLOP/s dense bf16, NVLink3 300 GB/s per direction, PCIe gen4.
    "a100": GpuSpec("a100", 81920 * 2**20, 2.04e12, 312e12, 300e9, 25e9, 108),
}

ALIASES = {
    "llama2-7b": "llama-2-7b",
    "llama2-70b": "llama-2-70b",
    "llama3-8b": "llama-3-8b",
    "llama3-70b": "llama-3-70b",
    "llama3.1-8b": "llama-3.1-8b",
    "llama-3-8b-128k": "llama-3.1-8b",
    "llama3.1-70b": "llama-3.1-70b",
    "llama-3-70b-128k": "llama-3.1-70b",
    "h100-80gb": "h100",
    "a100-80gb": "a100",
}


def get_model(name: str) -> ModelSpec:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[key]


def get_gpu(name: str) -> GpuSpec:
    """A datasheet GPU (:data:`GPUS`) or a measured device (``data/calibration/hardware/<name>.json``)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key in GPUS:
        return GPUS[key]
    prof = hardware_profile(key)
    if prof is not None:
        g = prof["gpu"]
        return GpuSpec(
            key,
            float(g["memory_bytes"]),
            float(g["hbm_bandwidth"]),
            float(g["peak_flops"]),
            float(g["nvlink_bandwidth"]),
            float(g["pcie_bandwidth"]),
            int(g["sm_count"]),
        )
    known = sorted(GPUS) + sorted(hardware_profiles())
    raise ValueError(f"unknown GPU {name!r}; known: {', '.join(known)}")
