"""GPU tests (marker ``gpu``; tests/conftest.py skips them without CUDA). They reuse the kernel-test helpers
(``tests/kernels/_attn_helpers.py``, ``_triton_cases.py``), put on the import path here."""

from __future__ import annotations

import sys
from pathlib import Path

_KERNEL_TESTS = str(Path(__file__).resolve().parents[1] / "kernels")
if _KERNEL_TESTS not in sys.path:
    sys.path.insert(0, _KERNEL_TESTS)
