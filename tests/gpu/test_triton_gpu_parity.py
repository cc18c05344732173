"""Triton kernels on a CUDA GPU vs the float64 reference computed on the same GPU (marker ``gpu``).

Default (production) tiles, every statistic, n in {63, 64, 65, 300, 1000} for bf16 / fp16 / fp32 (IEEE) x
d_head 64 / 128 / 256, each with GQA (4 heads on 2 kv heads), left padding, a window that does not fall on tile
edges, softcap and a query offset that is not the default (``_triton_cases.make_case(features='all')``); the
fp32 TF32 modes; strided, fused-QKV and unaligned (data pointer not 16-byte aligned) inputs, which the JIT
compiles as other variants; the row LSE of the flash SDPA forward as the hint; a second device.
Tolerances: ``triton_impl.TOLERANCES``.
"""

from __future__ import annotations

import pytest
import torch
from _triton_cases import check, make_case

from interp.kernels.attention_stats._spec import validate
from interp.kernels.attention_stats.triton_impl import tolerance, triton_stats

pytestmark = pytest.mark.gpu
DEV = "cuda"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PARITY = [(dt, d, n) for dt in DTYPES for d in (64, 128, 256) for n in (63, 64, 65, 300, 1000)]


def _run(q, k, kw, **opts):
    return triton_stats(q, k, validate(q, k, **kw), **opts)


@pytest.mark.parametrize("dt,d,n", PARITY, ids=[f"{dt}-d{d}-n{n}" for dt, d, n in PARITY])
def test_parity_all_features(dt, d, n):
    q, k, kw = make_case(2, 4, 2, n, d, DTYPES[dt], seed=n + d, device=DEV)
    check(_run(q, k, kw), q, k, kw, tolerance(DTYPES[dt]))


@pytest.mark.parametrize("dt", list(DTYPES))
def test_parity_plain_causal_long_rows(dt):
    """No window or padding: every row block loops over all earlier key blocks (16 blocks at n = 1000)."""
    q, k, kw = make_case(1, 4, 1, 1000, 128, DTYPES[dt], features="plain", seed=1, device=DEV)
    check(_run(q, k, kw), q, k, kw, tolerance(DTYPES[dt]))


@pytest.mark.parametrize("prec", ["tf32x3", "tf32"])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_fp32_fast_precisions_meet_their_tolerance(prec, d):
    q, k, kw = make_case(2, 4, 2, 300, d, torch.float32, seed=d, device=DEV)
    check(_run(q, k, kw, precision=prec), q, k, kw, tolerance(torch.float32, prec))


def _views(layout, b, h, kv, n, d, dtype, qp, off):
    g = torch.Generator(device=DEV).manual_seed(11)
    if layout == "fused-qkv":  # head slices of one packed [batch, pos, (head + 2 kv) * d] projection
        qkv = torch.randn(b, n, (h + 2 * kv) * d, generator=g, device=DEV).to(dtype).view(b, n, h + 2 * kv, d)
        return qkv[:, :, :h].transpose(1, 2)[:, :, off : off + qp], qkv[:, :, h : h + kv].transpose(1, 2)
    if layout == "strided-d":
        q = torch.randn(b, h, qp, 2 * d, generator=g, device=DEV).to(dtype)[..., ::2]
        return q, torch.randn(b, n, kv, d, generator=g, device=DEV).to(dtype).permute(0, 2, 1, 3)
    # unaligned: data pointers 2 bytes past a 16-byte boundary (the JIT drops its divisibility hints)
    qb = torch.randn(b * h * qp * d + 1, generator=g, device=DEV).to(dtype)
    kb = torch.randn(b * kv * n * d + 1, generator=g, device=DEV).to(dtype)
    return qb[1:].view(b, h, qp, d), kb[1:].view(b, kv, n, d)


@pytest.mark.parametrize("layout", ["fused-qkv", "strided-d", "unaligned"])
def test_strided_fused_and_unaligned_inputs(layout):
    b, h, kv, n, d, dtype = 2, 4, 2, 300, 128, torch.bfloat16
    _, _, kw = make_case(b, h, kv, n, d, dtype, seed=2, device=DEV)
    q, k = _views(layout, b, h, kv, n, d, dtype, n - n // 3, kw["query_offset"])
    assert not (q.is_contiguous() and k.is_contiguous()) or q.data_ptr() % 16 != 0
    check(_run(q, k, kw), q.contiguous(), k.contiguous(), kw, tolerance(dtype))


@pytest.mark.parametrize("dt", ["bf16", "fp16"])
def test_flash_sdpa_row_lse_as_the_hint(dt):
    """The natural-log row LSE that the flash SDPA forward returns drives the one-pass row kernel."""
    dtype = DTYPES[dt]
    q, k, kw = make_case(1, 4, 4, 1000, 128, dtype, features="plain", seed=3, device=DEV)
    v = torch.randn_like(k)
    flash = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True, False, scale=kw["scale"])
    lse = flash[1]
    assert lse.shape == q.shape[:3] and lse.dtype == torch.float32
    kw = dict(kw, stats=[s for s in kw["stats"] if s != "topk"])
    out = _run(q, k, dict(kw, row_lse=lse))
    check(out, q, k, kw, tolerance(dtype))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_launches_on_the_tensors_device_not_the_current_one():
    q, k, kw = make_case(2, 4, 2, 300, 64, torch.bfloat16, seed=4, device="cuda:1")
    torch.cuda.set_device(0)
    out = _run(q, k, kw)
    assert all(v.device == torch.device("cuda:1") for v in out.values())
    check(out, q, k, kw, tolerance(torch.bfloat16))
