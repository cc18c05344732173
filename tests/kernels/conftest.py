"""Test setup for interp.kernels: without CUDA, Triton kernels run in the interpreter, so
``TRITON_INTERPRET=1`` is set here, before triton is first imported (it is only imported lazily)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
