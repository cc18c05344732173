"""Triton kernels vs the float64 reference (TRITON_INTERPRET=1 on CPU, set in conftest; tiny shapes only)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from _attn_helpers import compare, make_inputs

from interp.kernels.attention_stats import VALID_STATS, compute_attention_stats
from interp.kernels.attention_stats._spec import validate
from interp.kernels.attention_stats.reference import reference_stats

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not importable", allow_module_level=True)

from interp.kernels.attention_stats.triton_impl import triton_stats  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3)}

CASES = [
    # batch, head, kv_head, query_pos, key_pos, d_head, dtype, extra kwargs
    (1, 2, 1, 24, 24, 16, torch.float32, dict(window=9, softcap=5.0, distance_cap=4)),
    (2, 3, 3, 5, 21, 32, torch.float16, dict(query_offset=10)),  # decode-like, no GQA
    (2, 4, 2, 20, 20, 16, torch.float32, dict(pad=(0, 6))),  # left padding on batch row 1
    (1, 2, 1, 1, 18, 64, torch.float32, dict()),  # single decode query
]


@pytest.mark.parametrize("case", CASES, ids=[f"n{c[4]}-d{c[5]}-{str(c[6])[6:]}" for c in CASES])
def test_triton_matches_reference(case):
    batch, head, kv_head, query_pos, key_pos, d_head, dtype, extra = case
    q, k, tok, key_set = make_inputs(batch, head, kv_head, query_pos, key_pos, d_head, dtype, seed=key_pos)
    kw = dict(stats=VALID_STATS, scale=d_head**-0.5, token_ids=tok, key_set=key_set, top_k=3, recent_w=5)
    extra = dict(extra)
    if "pad" in extra:
        pad = torch.ones(batch, key_pos, dtype=torch.bool)
        for b, n in enumerate(extra.pop("pad")):
            pad[b, :n] = False
        kw["key_padding_mask"] = pad
    kw.update(extra)
    q, k = q.to(DEV), k.to(DEV)
    kw = {n: v.to(DEV) if isinstance(v, torch.Tensor) else v for n, v in kw.items()}
    out = triton_stats(q, k, validate(q, k, **kw), block_m=16, block_n=16)
    rtol, atol = TOL[dtype]
    compare(
        {n: v.cpu() for n, v in out.items()},
        q.cpu(),
        k.cpu(),
        {n: v.cpu() if isinstance(v, torch.Tensor) else v for n, v in kw.items()},
        rtol=rtol,
        atol=atol,
    )


def test_triton_via_public_entry_point_subset():
    q, k, _, _ = make_inputs(1, 2, 1, 16, 16, 16, seed=5)
    q, k = q.to(DEV), k.to(DEV)
    out = compute_attention_stats(q, k, stats=["lse", "argmax", "col_alpha"], scale=0.25, impl="triton")
    ref = compute_attention_stats(
        q.cpu(), k.cpu(), stats=["lse", "argmax", "col_alpha"], scale=0.25, impl="reference"
    )
    assert sorted(out) == ["argmax", "col_alpha", "lse"]
    torch.testing.assert_close(out["lse"].cpu().double(), ref["lse"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["col_alpha"].cpu().double(), ref["col_alpha"], rtol=1e-5, atol=1e-5)
    assert torch.equal(out["argmax"].cpu(), ref["argmax"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only error path")
def test_triton_rejects_bf16_on_cpu():
    q, k, _, _ = make_inputs(1, 2, 1, 16, 16, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="not bfloat16"):
        compute_attention_stats(q, k, stats=["lse"], scale=0.25, impl="triton")


@pytest.mark.parametrize("case", CASES[:3], ids=["window-softcap", "decode-fp16", "left-pad"])
def test_triton_given_row_lse_matches_reference(case):
    """With the row LSE given (as the flash forward returns it) the row kernel skips its first pass."""
    batch, head, kv_head, query_pos, key_pos, d_head, dtype, extra = case
    q, k, tok, key_set = make_inputs(batch, head, kv_head, query_pos, key_pos, d_head, dtype, seed=key_pos + 1)
    stats = [s for s in VALID_STATS if s != "topk"]
    kw = dict(stats=stats, scale=d_head**-0.5, token_ids=tok, key_set=key_set, recent_w=5, **extra)
    if "pad" in kw:
        pad = torch.ones(batch, key_pos, dtype=torch.bool)
        for b, n in enumerate(kw.pop("pad")):
            pad[b, :n] = False
        kw["key_padding_mask"] = pad
    spec64 = validate(q.double(), k.double(), **dict(kw, stats=["lse"]))
    lse = reference_stats(q.double(), k.double(), spec64)["lse"].float()
    hint = torch.where(torch.isfinite(lse), lse, 0.0)  # padding rows: any finite value, the kernel masks them
    dev_kw = {n: v.to(DEV) if isinstance(v, torch.Tensor) else v for n, v in kw.items()}
    spec = validate(q.to(DEV), k.to(DEV), **dev_kw, row_lse=hint.to(DEV))
    out = triton_stats(q.to(DEV), k.to(DEV), spec, block_m=16, block_n=16)
    rtol, atol = TOL[dtype]
    compare({n: v.cpu() for n, v in out.items()}, q, k, kw, rtol=rtol, atol=atol)
    # the hint is really used: a wrong LSE gives wrong masses
    bad = validate(q.to(DEV), k.to(DEV), **dev_kw, row_lse=(hint + 1.0).to(DEV))
    wrong = triton_stats(q.to(DEV), k.to(DEV), bad, block_m=16, block_n=16)
    assert not torch.allclose(wrong["col_sum"].cpu(), out["col_sum"].cpu(), atol=1e-3)
