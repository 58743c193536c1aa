"""Replay a trace on a real server (SGLang, our router or sglang_router) and measure what the simulator
predicts: ``sglang-cascade replay`` (docs/simulator.md, "Fidelity")."""

from .client import ReplayConfig, ReplayError, ReplayRecord, ServerInfo, probe_server, replay_trace
from .lengths import clip_to_context

__all__ = [
    "ReplayConfig",
    "ReplayError",
    "ReplayRecord",
    "ServerInfo",
    "clip_to_context",
    "probe_server",
    "replay_trace",
]
