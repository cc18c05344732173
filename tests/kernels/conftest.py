"""Test setup for interp.kernels.

* Makes ``interp.kernels`` importable from a plain checkout (setuptools maps ``kernels/`` to
  ``interp.kernels``; without an install we register the package by path).
* Without CUDA, Triton kernels run in the interpreter: ``TRITON_INTERPRET=1`` must be set before triton is
  first imported, so it is set here at collection time.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import interp.kernels  # noqa: F401
except ModuleNotFoundError:  # not installed: register kernels/ as interp.kernels
    _root = pathlib.Path(__file__).resolve().parents[2]
    import interp

    _spec = importlib.util.spec_from_file_location(
        "interp.kernels",
        _root / "kernels" / "__init__.py",
        submodule_search_locations=[str(_root / "kernels")],
    )
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["interp.kernels"] = _mod
    _spec.loader.exec_module(_mod)
    interp.kernels = _mod
