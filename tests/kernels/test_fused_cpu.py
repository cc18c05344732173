"""Fused CPU path (torch matmul per tile + compiled C sweep) vs the float64 reference.

Same hypothesis shapes as the chunked test (n up to 300, d_head 16-256, GQA groups, left padding, windows,
softcap, query offsets, forced tiny tiles so that rows span several key tiles), with and without the row LSE
hint that SDPA provides inside a forward pass; ties, fallback and bad-input behaviour.
"""

from __future__ import annotations

import os

import pytest
import torch
from _attn_helpers import compare, make_inputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_attention_stats_chunked import cases

from interp.kernels.attention_stats import VALID_STATS, compute_attention_stats, fused_cpu
from interp.kernels.attention_stats._spec import validate
from interp.kernels.attention_stats.reference import reference_pattern, reference_stats

if os.environ.get("INTERP_REQUIRE_FUSED") == "1":  # set by .ci/run: there a failed build is an error, not a skip
    fused_cpu.load()
pytestmark = pytest.mark.skipif(not fused_cpu.available(), reason="no C compiler: the fused CPU kernel cannot build")

# the fused path computes in fp32 for fp32/fp16/bf16 inputs, like chunked (float64 falls back to chunked)
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-3, 2e-3)}
SUPPORTED = sorted(fused_cpu.SUPPORTED)


def _supported(kw):
    kw = dict(kw)
    stats = set(kw["stats"]) & fused_cpu.SUPPORTED
    kw["stats"] = sorted(stats or {"entropy"})
    return kw


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), st.booleans(), st.booleans())
def test_fused_matches_reference(case, use_hint, with_v):
    q, k, kw, (q_tile, k_tile) = case
    if q.dtype == torch.float64:
        q, k = q.float(), k.float()
    kw = _supported(kw)
    v = torch.randn(k.shape, generator=torch.Generator().manual_seed(7)).to(k.dtype) if with_v else None
    if use_hint:  # the LSE that the flash SDPA kernel returns inside a forward pass
        spec0 = validate(q.double(), k.double(), **dict(kw, stats=["lse"]))
        lse = reference_stats(q.double(), k.double(), spec0)["lse"].float()
        kw["row_lse"] = torch.where(torch.isfinite(lse), lse, 0.0)
    spec = validate(q, k, **kw)
    out = fused_cpu.fused_stats(q, k, spec, q_tile=q_tile, k_tile=k_tile, v=v)
    rtol, atol = TOL[q.dtype]
    kw.pop("row_lse", None)
    if v is not None:  # the attention output from the same tiles: A @ v with the float64 pattern
        out, o = out[1], out[0]
        spec64 = validate(q.double(), k.double(), **dict(kw, stats=["lse"]))
        A = reference_pattern(q.double(), k.double(), spec64)[0]
        want = A @ v.double().repeat_interleave(q.shape[1] // k.shape[1], 1)
        torch.testing.assert_close(o.double(), want, rtol=rtol, atol=atol)
    compare(out, q, k, kw, rtol=rtol, atol=atol)


@settings(max_examples=10, deadline=None)
@given(cases(max_n=64))
def test_tiny_tiles_and_online_lse(case):
    """tile_elems so small that every row spans several key tiles: the online-LSE pass runs first."""
    q, k, kw, _ = case
    q, k = q.float(), k.float()
    kw = _supported(kw)
    spec = validate(q, k, **kw)
    out = fused_cpu.fused_stats(q, k, spec, tile_elems=1)
    compare(out, q, k, kw, rtol=1e-5, atol=1e-5)


def test_auto_uses_fused_on_cpu_and_agrees_with_chunked():
    q, k, tok, key_set = make_inputs(2, 6, 2, 200, 200, 64, seed=5, vocab=4)
    kw = dict(stats=SUPPORTED, scale=0.125, token_ids=tok, key_set=key_set, distance_cap=32, window=150)
    a = compute_attention_stats(q, k, impl="auto", **kw)
    b = compute_attention_stats(q, k, impl="chunked", **kw)
    for name in a:
        torch.testing.assert_close(a[name].double(), b[name].double(), rtol=1e-5, atol=32e-5, msg=name)


@pytest.mark.parametrize("tiles", [(None, None), (2, 3), (1, 1)])
def test_exact_ties_pick_smallest_index(tiles):
    k = torch.zeros(1, 1, 8, 4)
    k[0, 0, [0, 2, 5, 6], 0] = 1.0
    k[0, 0, [1, 3], 0] = 0.5
    q = torch.zeros(1, 2, 8, 4)
    q[..., 0] = 1.0
    spec = validate(q, k, stats=["argmax", "max"], scale=1.0)
    out = fused_cpu.fused_stats(q, k, spec, q_tile=tiles[0], k_tile=tiles[1])
    assert out["argmax"][0, 0].tolist() == [0] * 8
    assert out["max"][0, 1].tolist() == [1.0] * 8


def test_fallbacks_and_errors(monkeypatch):
    q, k, _, _ = make_inputs(1, 2, 1, 6, 6, 16, seed=1)
    spec = validate(q, k, stats=["topk"], scale=0.25)
    assert not fused_cpu.supports(q, k, spec)  # top-k -> chunked
    assert not fused_cpu.supports(q.double(), k.double(), validate(q.double(), k.double(), stats=["lse"],
                                                                   scale=0.25))
    with pytest.raises(ValueError, match="does not compute"):
        compute_attention_stats(q, k, stats=["topk"], scale=0.25, impl="fused")
    with pytest.raises(ValueError, match="float64"):
        compute_attention_stats(q.double(), k.double(), stats=["lse"], scale=0.25, impl="fused")
    # auto with topk still works (chunked)
    out = compute_attention_stats(q, k, stats=["topk", "entropy"], scale=0.25)
    assert out["topk_idx"].shape == (1, 2, 6, 5)


def test_disabled_kernel_says_why(monkeypatch):
    monkeypatch.setattr(fused_cpu, "_LIB", None)
    monkeypatch.setenv("INTERP_FUSED_CPU", "0")
    assert not fused_cpu.available()
    q, k, _, _ = make_inputs(1, 2, 1, 6, 6, 16, seed=1)
    with pytest.raises(RuntimeError, match="INTERP_FUSED_CPU=0"):
        compute_attention_stats(q, k, stats=["lse"], scale=0.25, impl="fused")
    out = compute_attention_stats(q, k, stats=["entropy"], scale=0.25)  # auto falls back to chunked
    ref = compute_attention_stats(q, k, stats=["entropy"], scale=0.25, impl="reference")
    torch.testing.assert_close(out["entropy"].double(), ref["entropy"], rtol=1e-5, atol=1e-5)


def test_build_failure_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(fused_cpu, "_LIB", None)
    monkeypatch.setattr(fused_cpu, "_ERROR", None)
    monkeypatch.setenv("INTERP_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.raises(RuntimeError, match="fused CPU kernel unavailable"):
        fused_cpu.load()
    assert not list(tmp_path.rglob("*.so"))  # nothing half-written left behind
    monkeypatch.setattr(fused_cpu, "_ERROR", None)


def test_valid_stats_cover_everything_but_topk():
    assert set(VALID_STATS) - fused_cpu.SUPPORTED == {"topk"}
