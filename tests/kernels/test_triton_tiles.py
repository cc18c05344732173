"""Triton kernels at the production tiles (no block override) vs the float64 reference, on CPU (interpreter).

``test_attention_stats_triton.py`` forces 16x16 tiles on <= 24 tokens; here n in {63, 64, 65, 300} crosses the
real 64x64 (fp16/bf16) and 32x32 (fp32) tiles: several key blocks per row block (the online max/LSE across
blocks), the diagonal block, a window that starts inside a block (its lower bound rounded down to a block edge),
padding rows, a query offset that is not the default, GQA, softcap; also strided and fused-QKV views, and the
one-pass kernel given the row LSE.  bf16 runs with the interpreter's dot patched (``_triton_cases``); fp32 TF32
modes run their own tiles here, but the interpreter computes every dot in fp32, so their accuracy is a GPU test.
Tolerances: ``triton_impl.TOLERANCES`` (one table for CPU and GPU tests).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from _triton_cases import check, interpreter_bf16_dot, make_case

from interp.kernels.attention_stats._spec import validate
from interp.kernels.attention_stats.reference import reference_stats

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not importable", allow_module_level=True)
if torch.cuda.is_available():
    pytest.skip("interpreter tests (tests/gpu/ covers CUDA)", allow_module_level=True)

from interp.kernels.attention_stats import triton_impl as T  # noqa: E402

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
CASES = [  # dtype, n, d_head, features, (batch, head, kv_head), fp32 precision
    (F16, 63, 64, "plain", (1, 2, 1), None),
    (F16, 64, 64, "plain", (1, 2, 1), None),
    (F16, 65, 64, "plain", (1, 2, 1), None),
    (F16, 63, 64, "all", (2, 2, 1), None),
    (F16, 65, 64, "all", (2, 2, 1), None),
    (F16, 300, 64, "all", (2, 2, 1), None),
    (BF16, 64, 64, "all", (2, 2, 1), None),
    (BF16, 300, 64, "all", (1, 4, 2), None),
    (F32, 65, 64, "all", (2, 2, 1), None),
    (F32, 300, 64, "all", (1, 2, 1), None),
    (F16, 65, 80, "all", (1, 2, 1), None),  # d_head < BLOCK_D (masked head dimension)
    (F16, 65, 128, "all", (1, 2, 1), None),
    (BF16, 65, 256, "all", (1, 2, 1), None),  # one-stage 64x64 config
    (F32, 65, 128, "all", (1, 2, 1), "tf32x3"),  # 64x16 tiles
    (F32, 65, 256, "all", (1, 2, 1), "tf32x3"),  # 16x32 tiles
    (F32, 65, 64, "all", (1, 2, 1), "tf32"),  # 64x64 tiles
]


def _id(c):
    return f"{str(c[0])[6:]}{'-' + c[5] if c[5] else ''}-n{c[1]}-d{c[2]}-{c[3]}-b{c[4][0]}h{c[4][1]}kv{c[4][2]}"


def _run(q, k, kw, **opts):
    with interpreter_bf16_dot():
        return T.triton_stats(q, k, validate(q, k, **kw), **opts)


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_production_tiles_match_reference(case):
    dtype, n, d, features, (b, h, kv), prec = case
    q, k, kw = make_case(b, h, kv, n, d, dtype, features=features, seed=n + d)
    out = _run(q, k, kw, precision=prec)
    check(out, q, k, kw, T.tolerance(dtype))  # the interpreter's fp32 dot is exact whatever the precision


@pytest.mark.parametrize("dtype,n", [(F16, 300), (F32, 65)], ids=["fp16-n300", "fp32-n65"])
def test_given_row_lse_one_pass_at_production_tiles(dtype, n):
    q, k, kw = make_case(2, 2, 1, n, 64, dtype, seed=7)
    kw = dict(kw, stats=[s for s in kw["stats"] if s != "topk"])
    lse = reference_stats(q.double(), k.double(), validate(q.double(), k.double(), **dict(kw, stats=["lse"])))
    hint = torch.where(torch.isfinite(lse["lse"]), lse["lse"], 0.0).float()
    out = _run(q, k, dict(kw, row_lse=hint))
    check(out, q, k, kw, T.tolerance(dtype))


def _fused_qkv(b, h, kv, n, d, dtype, seed):
    """q, k as the head slices of one packed [batch, pos, (head + 2 kv_head) * d_head] projection."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, n, (h + 2 * kv) * d, generator=g).to(dtype).view(b, n, h + 2 * kv, d)
    return qkv[:, :, :h].transpose(1, 2), qkv[:, :, h : h + kv].transpose(1, 2)


@pytest.mark.parametrize("layout", ["fused-qkv", "strided-d"])
def test_strided_and_fused_views(layout):
    b, h, kv, n, d = 2, 4, 2, 65, 64
    _, _, kw = make_case(b, h, kv, n, d, F16, seed=3)
    if layout == "fused-qkv":
        q, k = _fused_qkv(b, h, kv, n, d, F16, seed=4)
        off = kw["query_offset"]
        q = q[:, :, off : off + n - n // 3]  # make_case's query rows (a view: strides kept)
    else:  # every other element along d_head (stride 2), k in [batch, pos, kv_head, d] order
        g = torch.Generator().manual_seed(5)
        q = torch.randn(b, h, n - n // 3, 2 * d, generator=g).to(F16)[..., ::2]
        k = torch.randn(b, n, kv, d, generator=g).to(F16).permute(0, 2, 1, 3)
    assert not q.is_contiguous() and not k.is_contiguous()
    out = _run(q, k, kw)
    check(out, q.contiguous(), k.contiguous(), kw, T.tolerance(F16))


def test_bf16_dot_patch_is_needed_and_exact():
    """Without the patch the interpreter's bf16 dot is wrong (so bf16 results above are the patch's); with it,
    a bf16 tile product equals the float64 product of the same values."""
    q, k, kw = make_case(1, 1, 1, 16, 16, BF16, features="plain")
    kw = dict(kw, stats=["max"])
    ref = reference_stats(q, k, validate(q, k, **kw))["max"].float()
    patched = _run(q, k, kw, block_m=16, block_n=16)["max"]
    torch.testing.assert_close(patched, ref, rtol=1e-6, atol=1e-6)
    raw = T.triton_stats(q, k, validate(q, k, **kw), block_m=16, block_n=16)["max"]
    assert not torch.allclose(raw, ref, atol=1e-2)


def test_fp32_precision_choice_and_errors(monkeypatch):
    assert T.fp32_precision(None) == "ieee"
    monkeypatch.setenv(T.PRECISION_ENV, "tf32x3")
    assert T.fp32_precision(None) == "tf32x3"
    assert T.fp32_precision("tf32") == "tf32"
    with pytest.raises(ValueError, match="'fp8'.*ieee"):
        T.fp32_precision("fp8")
    monkeypatch.setenv(T.PRECISION_ENV, "half")
    with pytest.raises(ValueError, match=T.PRECISION_ENV):
        T.fp32_precision(None)
    assert T.tolerance(F32, "tf32") == T.TOLERANCES["fp32-tf32"] and T.tolerance(BF16) == T.TOLERANCES["bf16"]


def _meta(b, h, kv, n, d, q_rows=None):
    q = torch.empty(b, h, q_rows or n, d, dtype=F16, device="meta")
    k = torch.empty(b, kv, n, d, dtype=F16, device="meta")
    return q, k, validate(q, k, stats=["lse", "col_sum"], scale=0.1)


def test_launch_grid_puts_batch_heads_on_axis_0():
    q, k, spec = _meta(3, 70000, 10000, 130, 64)
    row, col, buf = T.plan(q, k, spec)
    assert row.grid == (3 * 70000, 3) and col.grid == (3 * 70000, 3)  # 64-row / 64-key blocks on axis 1
    assert buf["out"].shape == (2, 3, 70000, 130)


def test_launch_refuses_what_offsets_or_grid_cannot_address():
    q, k, spec = _meta(1, 1, 1, T.MAX_BLOCKS * 64 + 1, 16)
    with pytest.raises(ValueError, match="65535 blocks"):
        T.plan(q, k, spec)
    q, k, spec = _meta(1, 1, 1, 64, 16)
    q = q.as_strided(q.shape, (0, 0, 2**26, 1))  # a 64-row tile spans 63 * 2**26 >= 2**31 elements
    with pytest.raises(ValueError, match=r"q has strides .* pass q.contiguous\(\)"):
        T.plan(q, k, spec)


def test_triton_supported_reasons(monkeypatch):
    assert T.triton_supported("cpu", F16) == (True, "")
    assert T.triton_supported("cpu", F32) == (True, "")
    ok, why = T.triton_supported("cpu", BF16)
    assert not ok and "11584" in why
    ok, why = T.triton_supported("cuda", F16)
    assert not ok and "CUDA is not available" in why
    ok, why = T.triton_supported("cpu", torch.int32)
    assert not ok and "int32" in why
    ok, why = T.triton_supported("nonsense", F16)
    assert not ok and "not a device" in why
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ok, why = T.triton_supported("cpu", F16)
    assert not ok and "TRITON_INTERPRET=1" in why
