"""Engine-agnostic core: views, decisions, policy interfaces, model/GPU specs, cost model, traces."""

from .costmodel import Calibration, CostModel, prefill_attn_work
from .decisions import IterationPlan, Migration, MigrationMode, PrefillChunk
from .interfaces import InstanceScheduler, RouterPolicy
from .specs import GPUS, MODELS, GpuSpec, ModelSpec, get_gpu, get_model
from .views import ClusterView, InstanceLoad, InstanceView, Phase, RequestView

__all__ = [
    "Calibration",
    "CostModel",
    "prefill_attn_work",
    "IterationPlan",
    "Migration",
    "MigrationMode",
    "PrefillChunk",
    "InstanceScheduler",
    "RouterPolicy",
    "GPUS",
    "MODELS",
    "GpuSpec",
    "ModelSpec",
    "get_gpu",
    "get_model",
    "ClusterView",
    "InstanceLoad",
    "InstanceView",
    "Phase",
    "RequestView",
]
