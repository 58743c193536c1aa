"""Generic test setup: markers and skip logic only (server fixtures live in
sglang_cascade/testing/server_fixture.py so every test module can import them)."""

from __future__ import annotations

import importlib.util
import os

import pytest


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config, items):
    gpu_items = [it for it in items if "gpu" in it.keywords]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for it in gpu_items:
            it.add_marker(skip)
    if importlib.util.find_spec("sglang") is None:
        skip = pytest.mark.skip(reason="needs sglang installed")
        for it in items:
            if "sglang" in it.keywords:
                it.add_marker(skip)
    if os.environ.get("SGLANG_CASCADE_SKIP_E2E") == "1":
        skip = pytest.mark.skip(reason="SGLANG_CASCADE_SKIP_E2E=1")
        for it in items:
            if "e2e" in it.keywords:
                it.add_marker(skip)
