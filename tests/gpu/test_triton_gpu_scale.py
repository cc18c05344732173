"""Triton kernels on a CUDA GPU at scale (marker ``gpu``): 8K-32K tokens against the chunked path in float64
on the GPU, tensors of >= 2**31 elements (int64 offsets), batch x heads > 65535 (grid axis 0), bitwise
determinism, and the AOT resource table equal to the kernels that launch."""

from __future__ import annotations

import os

import pytest
import torch
from _triton_cases import check, make_case

from interp.kernels.attention_stats import VALID_STATS, compute_attention_stats
from interp.kernels.attention_stats._spec import validate
from interp.kernels.attention_stats.triton_impl import tolerance, triton_stats

pytestmark = pytest.mark.gpu
DEV = "cuda"
NO_TOPK = [s for s in VALID_STATS if s != "topk"]


def _long_case(n, d, dtype, window):
    g = torch.Generator(device=DEV).manual_seed(n)
    q = torch.randn(1, 4, n, d, generator=g, device=DEV).to(dtype)
    k = torch.randn(1, 1, n, d, generator=g, device=DEV).to(dtype)
    tok = torch.randint(0, 50, (1, n), generator=g, device=DEV)
    pad = torch.ones(1, n, dtype=torch.bool, device=DEV)
    pad[0, :7] = False
    kw = dict(stats=NO_TOPK, scale=d**-0.5, token_ids=tok, key_set=torch.rand(1, n, generator=g, device=DEV) < 0.1,
              key_padding_mask=pad, window=window, softcap=20.0, distance_cap=1000)
    return q, k, kw


def _logit_at(q, k, spec, idx):
    """float64 logit s_{i, idx_i} [batch, head, query_pos] (softcapped like the kernels)."""
    kk = k.double().repeat_interleave(q.shape[1] // k.shape[1], 1)
    kg = torch.gather(kk, 2, idx.clamp(min=0)[..., None].expand(-1, -1, -1, k.shape[-1]))
    s = spec.scale * (q.double() * kg).sum(-1)
    return spec.softcap * torch.tanh(s / spec.softcap) if spec.softcap else s


@pytest.mark.parametrize("n,d,dtype,window", [(8192, 64, torch.float16, 3000), (32768, 128, torch.bfloat16, None)],
                         ids=["8k-fp16-d64-window", "32k-bf16-d128"])
def test_long_sequences_match_chunked_float64(n, d, dtype, window):
    q, k, kw = _long_case(n, d, dtype, window)
    out = compute_attention_stats(q, k, impl="triton", **kw)
    ref = compute_attention_stats(q.double(), k.double(), impl="chunked", memory_budget_mb=4096, **kw)
    rtol, atol = tolerance(dtype)
    for name, r in ref.items():
        o = out[name]
        if name == "argmax":  # near-ties may pick another key: its float64 logit must be the max
            spec = validate(q, k, **kw)
            ok = r >= 0
            assert torch.equal(o >= 0, ok)
            torch.testing.assert_close(_logit_at(q, k, spec, o)[ok], ref["max"][ok], rtol=rtol, atol=atol)
            continue
        a = atol * n if name == "attn_distance" else atol
        torch.testing.assert_close(o.double(), r, rtol=rtol, atol=a, msg=lambda m, x=name: f"{x}: {m}")


def _sampled_heads_match(q, k, kw, out, heads):
    """Outputs of (batch, head) pairs ``heads`` equal the float64 reference of those heads alone."""
    G = q.shape[1] // k.shape[1]
    for b, h in heads:
        sub = {n: (v[b : b + 1] if isinstance(v, torch.Tensor) and v.shape[0] == q.shape[0] else v)
               for n, v in kw.items()}
        qs, ks = q[b : b + 1, h : h + 1], k[b : b + 1, h // G : h // G + 1]
        check({n: v[b : b + 1, h : h + 1] for n, v in out.items()}, qs, ks, sub, tolerance(q.dtype))


def _many_heads(b, h, kv, n, d, dtype, stats, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g, device=DEV, dtype=dtype)
    k = torch.randn(b, kv, n, d, generator=g, device=DEV, dtype=dtype)
    tok = torch.randint(0, 4, (b, n), generator=g, device=DEV)
    pad = torch.ones(b, n, dtype=torch.bool, device=DEV)
    pad[-1, :3] = False
    kw = dict(stats=stats, scale=d**-0.5, token_ids=tok, key_set=pad & (tok == 0), key_padding_mask=pad, window=40,
              recent_w=5, distance_cap=9)
    return q, k, kw


def test_batch_times_heads_above_65535():
    q, k, kw = _many_heads(2, 40000, 10000, 100, 64, torch.bfloat16, NO_TOPK)
    out = triton_stats(q, k, validate(q, k, **kw))
    _sampled_heads_match(q, k, kw, out, [(0, 0), (0, 39999), (1, 12345), (1, 39999)])


def test_tensors_of_2_31_elements_and_more():
    """q and k hold 2**32 elements each (batch stride 2**30: batch 2 and 3 start past 2**31), the row output
    2.95e9 (slot stride batch * head * query_pos = 2**28, the 10th slot starts at 2.7e9); batch x heads = 2**22."""
    need = 50 * 2**30
    if torch.cuda.get_device_properties(0).total_memory < need:
        pytest.skip("needs ~50 GB of GPU memory")
    b, h, n, d = 4, 2**20, 64, 16
    q, k, kw = _many_heads(b, h, h, n, d, torch.bfloat16, NO_TOPK)
    assert q.numel() >= 2**31 and k.numel() >= 2**31
    out = triton_stats(q, k, validate(q, k, **kw))
    torch.cuda.synchronize()
    _sampled_heads_match(q, k, kw, out, [(0, 0), (2, 0), (3, 2**19 + 7), (3, h - 1)])
    del out, q, k
    torch.cuda.empty_cache()


def test_two_runs_are_bitwise_equal():
    q, k, kw = make_case(2, 8, 2, 1000, 128, torch.bfloat16, seed=9, device=DEV)
    kw = dict(kw, stats=NO_TOPK)
    a = triton_stats(q, k, validate(q, k, **kw))
    b = triton_stats(q, k, validate(q, k, **kw))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("kernel,dtype,d,prec", [("row", "bf16", 128, None), ("row+lse", "bf16", 128, None),
                                                 ("col", "bf16", 128, None), ("col", "fp32", 128, "ieee"),
                                                 ("row", "fp16", 64, None)])
def test_aot_resources_equal_the_launched_kernels(kernel, dtype, d, prec):
    """``triton_aot`` (JIT specialisation replayed without a GPU) describes the kernel that runs."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("TRITON_INTERPRET is set")
    from interp.kernels.attention_stats import triton_aot as A

    cc = torch.cuda.get_device_capability()
    ran = A.launched_resources(kernel, dtype, d, precision=prec)
    aot = A.compile_kernel(kernel, dtype, d, cc[0] * 10 + cc[1], precision=prec)
    for key in ("regs", "stack_bytes", "dyn_shared", "block_m", "block_n", "num_warps"):
        assert ran[key] == aot[key], (key, ran, aot)
