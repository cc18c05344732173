"""Compatibility with the environment around interp.

``import_hub_kernels``: transformers ≥ 5 imports the Hugging Face hub package ``kernels`` whenever it is installed
(``from kernels import CUDAProperties`` at model load). This repository's ``kernels/`` folder is installed as
``interp.kernels``, but wherever the repository root is on ``sys.path`` — ``python -m interp.cli`` or a notebook
started in the checkout, ``python -m pytest`` — a bare ``import kernels`` finds the folder instead, and every model
load fails with an ImportError. Called before each model load (never at import time): it imports the real package
with the repository root off the path, so later imports reuse it. Nothing happens where it is not installed.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _ours() -> Path:
    return (Path(__file__).resolve().parents[1] / "kernels").resolve()


def import_hub_kernels() -> None:
    """Make ``sys.modules["kernels"]`` the hub package (if installed), not this repository's ``kernels/``."""
    ours = _ours()
    mod = sys.modules.get("kernels")
    if mod is not None:
        where = getattr(mod, "__file__", None)
        if where is None or Path(where).resolve().parent != ours:
            return  # the hub package (or a stand-in a test put there) is already imported
        del sys.modules["kernels"]  # our folder was imported under the hub package's name: drop it
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if (Path(p or ".").resolve() / "kernels") != ours]
    try:
        import kernels  # noqa: F401
    except ImportError:
        pass
    finally:
        sys.path[:] = saved
