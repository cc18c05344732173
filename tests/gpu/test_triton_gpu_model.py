"""A tiny bf16 model on CUDA: ``interp.attention_stats(..., impl="triton")`` runs the Triton kernels inside the
forward and equals the float64 reference of the same captured q, k (marker ``gpu``)."""

from __future__ import annotations

import pytest
import torch

from interp.kernels.attention_stats import triton_impl as T

pytestmark = pytest.mark.gpu
STATS = ["lse", "entropy", "mass_first", "col_alpha", "argmax", "induction", "attn_distance"]


@pytest.mark.parametrize("family", ["llama", "gemma3"])  # gemma3: sliding-window layers
def test_tiny_bf16_cuda_model_reaches_the_triton_path(family, monkeypatch):
    import interp
    from interp.testing import tiny_model

    model = tiny_model(family, n_layers=2, n_heads=4, n_kv_heads=2, d_head=64, dtype=torch.bfloat16)
    model.hf.to("cuda")
    ids = torch.randint(2, 64, (2, 150), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :9] = 0  # left padding on the second row
    seen = []
    plan = T.plan
    monkeypatch.setattr(T, "plan", lambda q, k, *a, **kw: seen.append((q.device.type, q.dtype)) or plan(q, k, *a, **kw))
    got = interp.attention_stats(model, ids, stats=STATS, attention_mask=mask, impl="triton")
    monkeypatch.undo()
    assert seen == [("cuda", torch.bfloat16)] * 2, seen  # one Triton launch plan per layer, bf16 on the GPU
    ref = interp.attention_stats(model, ids, stats=STATS, attention_mask=mask, impl="reference")
    rtol, atol = T.tolerance(torch.bfloat16)
    for name in STATS:
        g, r = got[name], ref[name]
        if name == "argmax":
            assert (g == r).float().mean() > 0.99, name  # bf16 logits: rare exact near-ties may differ
            continue
        a = atol * ids.shape[1] if name == "attn_distance" else atol
        torch.testing.assert_close(g.double(), r.double(), rtol=rtol, atol=a, msg=lambda m, x=name: f"{x}: {m}")
