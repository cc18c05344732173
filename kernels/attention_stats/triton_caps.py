"""Can the Triton statistics kernels (``triton_impl``) run on a device for a dtype?  Cheap, imports nothing
heavy, never raises: the dispatcher calls it before choosing the Triton path and falls back otherwise.

    ok, reason = triton_supported("cuda:1", torch.bfloat16)

Rules (Triton 3.x): triton importable; CUDA available with the device index present; compute capability
>= 7.5 (Turing) for fp16 and fp32 IEEE, >= 8.0 (Ampere) for bf16 tensor-core dots and TF32 precisions; ROCm
is untested and refused; on CPU only under ``TRITON_INTERPRET=1`` (the interpreter), which runs fp16/fp32 but
not bf16 (its ``tl.dot`` multiplies bf16 bit patterns, triton-lang/triton#11584).  float64 inputs are computed
in fp32.
"""

from __future__ import annotations

import os

import torch

_HALF = (torch.float16, torch.bfloat16)


def _triton_importable() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the environment
        return f"triton is not importable ({type(e).__name__}: {e})"
    return None


def _cuda_reason(dev: torch.device, dtype: torch.dtype, precision: str | None) -> str | None:
    if not torch.cuda.is_available():
        return "CUDA is not available"
    if torch.version.hip is not None:
        return "ROCm: the Triton statistics kernels are untested there"
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    if not 0 <= idx < torch.cuda.device_count():
        return f"device {dev} does not exist ({torch.cuda.device_count()} CUDA device(s))"
    major, minor = torch.cuda.get_device_capability(idx)
    cc = major * 10 + minor
    if cc < 75:
        return f"{torch.cuda.get_device_name(idx)} is sm_{cc}; the Triton kernels need sm_75 or newer"
    if cc < 80 and dtype == torch.bfloat16:
        return f"bfloat16 needs sm_80 or newer (tensor-core bf16 dot); {torch.cuda.get_device_name(idx)} is sm_{cc}"
    if cc < 80 and dtype not in _HALF and precision not in (None, "ieee"):
        return f"precision={precision!r} (TF32) needs sm_80 or newer; this device is sm_{cc}: use 'ieee'"
    return None


def triton_supported(device, dtype: torch.dtype, precision: str | None = None) -> tuple[bool, str]:
    """``(True, "")`` if ``triton_impl.triton_stats`` can run inputs of ``dtype`` on ``device``, else
    ``(False, reason)`` with one line saying why.  ``precision``: the fp32 dot precision that would be used."""
    reason = _triton_importable()
    if reason is None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            return False, f"not a device: {device!r} ({e})"
        if dtype not in (*_HALF, torch.float32, torch.float64):
            reason = f"dtype {dtype} is not a floating type the kernels take (fp16/bf16/fp32/fp64)"
        elif dev.type == "cuda":
            reason = _cuda_reason(dev, dtype, precision)
        elif dev.type != "cpu":
            reason = f"device type {dev.type!r} has no Triton path here"
        elif os.environ.get("TRITON_INTERPRET") != "1":
            reason = "CPU tensors run Triton only under TRITON_INTERPRET=1 (set before triton is imported)"
        elif dtype == torch.bfloat16:
            reason = "the Triton interpreter (CPU) computes bf16 dots wrongly (triton-lang/triton#11584); use fp16/fp32"
    return (reason is None), (reason or "")
