"""Inputs and checks shared by the Triton tests on CPU (interpreter) and GPU (tests/gpu/).

Every case is checked against the dense float64 reference of the same (rounded) inputs at the tolerance the
kernels state (``triton_impl.TOLERANCES``), through ``_attn_helpers.compare`` (every output, argmax by the mass
of the chosen key).
"""

from __future__ import annotations

import contextlib

import torch
from _attn_helpers import compare

from interp.kernels.attention_stats import VALID_STATS


def make_case(batch, head, kv_head, n, d_head, dtype, *, features="all", seed=0, device="cpu", query_pos=None):
    """(q [batch, head, query_pos, d_head], k [batch, kv_head, n, d_head], kwargs of compute_attention_stats).

    features 'plain': query_pos = n, every statistic, no padding/window/softcap.
    features 'all': also left padding of 5 keys on the last batch row, a window that is not a multiple of the
    tiles (37 up to n = 65, then n // 3), softcap 5 on logits scaled x2 (so the cap bends them), and
    query_pos = n - n // 3 rows starting at query_offset = n // 6 (not the default last rows).
    """
    g = torch.Generator().manual_seed(seed)
    qp = query_pos or (n if features == "plain" else max(1, n - n // 3))
    q = torch.randn(batch, head, qp, d_head, generator=g)
    k = torch.randn(batch, kv_head, n, d_head, generator=g)
    tok = torch.randint(0, 4, (batch, n), generator=g)
    key_set = torch.rand(batch, n, generator=g) < 0.3
    kw = dict(stats=VALID_STATS, scale=d_head**-0.5, token_ids=tok, key_set=key_set, top_k=3, recent_w=5,
              distance_cap=7)
    if features == "all":
        q = 2 * q
        pad = torch.ones(batch, n, dtype=torch.bool)
        pad[-1, : min(5, n - 1)] = False
        kw.update(key_padding_mask=pad, window=37 if n <= 65 else n // 3, softcap=5.0,
                  query_offset=min(n // 6, n - qp))
    elif features != "plain":
        raise ValueError(f"features must be 'plain' or 'all', got {features!r}")
    kw = {name: v.to(device) if isinstance(v, torch.Tensor) else v for name, v in kw.items()}
    return q.to(device=device, dtype=dtype), k.to(device=device, dtype=dtype), kw


def check(out, q, k, kw, tol):
    """Every output of ``out`` equals the float64 reference of (q, k, kw) within tol = (rtol, atol)."""
    compare(out, q, k, kw, rtol=tol[0], atol=tol[1])


def _bf16_as_fp32(h):
    import numpy as np
    import triton.language as tl
    from triton.runtime.interpreter import TensorHandle

    if h.dtype.scalar != tl.bfloat16:
        return h
    bits = h.data.astype(np.uint32) << np.uint32(16)  # bf16 is the top half of an fp32
    return TensorHandle(bits.view(np.float32), tl.float32)


@contextlib.contextmanager
def interpreter_bf16_dot():
    """Under TRITON_INTERPRET=1, make ``tl.dot`` on bf16 operands compute with their values.

    Triton 3.9's interpreter stores bf16 as uint16 and its ``create_dot`` converts only 8-bit float operands,
    so a bf16 dot multiplies bit patterns (triton-lang/triton#11584, "not supported yet"). The kernels use bf16
    only in loads and ``tl.dot`` (everything after is fp32), so converting the dot's operands to fp32 (exact)
    lets the interpreter run the bf16 kernels as compiled code would: bf16 loads, exact products, fp32 sums.
    """
    from triton.runtime import interpreter as I

    b = I.interpreter_builder
    orig = b.create_dot

    def create_dot(a, bb, d, input_precision, max_num_imprecise_acc):
        return orig(_bf16_as_fp32(a), _bf16_as_fp32(bb), d, input_precision, max_num_imprecise_acc)

    b.create_dot = create_dot
    try:
        yield
    finally:
        b.create_dot = orig
