"""Comparison helpers shared by the attention-stats tests."""

from __future__ import annotations

import torch

from interp.kernels.attention_stats._spec import validate
from interp.kernels.attention_stats.reference import reference_pattern, reference_stats


def make_inputs(batch, head, kv_head, query_pos, key_pos, d_head, dtype=torch.float32, seed=0, vocab=4):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, head, query_pos, d_head, generator=g).to(dtype)
    k = torch.randn(batch, kv_head, key_pos, d_head, generator=g).to(dtype)
    tok = torch.randint(0, vocab, (batch, key_pos), generator=g)
    key_set = torch.rand(batch, key_pos, generator=g) < 0.3
    return q, k, tok, key_set


def compare(out, q, k, kwargs, *, rtol, atol):
    """Check every output of an O(n) implementation against the float64 reference."""
    spec = validate(q, k, **kwargs)
    ref = reference_stats(q, k, spec)
    A = reference_pattern(q, k, spec)[0]
    assert set(out) == set(ref), (sorted(out), sorted(ref))
    key_pos = k.shape[2]
    for name, r in ref.items():
        o = out[name]
        assert o.shape == r.shape, (name, o.shape, r.shape)
        if name in ("argmax", "topk_idx"):
            assert o.dtype == torch.int64, name
            idx = o if name == "topk_idx" else o[..., None]
            ridx = r if name == "topk_idx" else r[..., None]
            assert torch.equal(idx < 0, ridx < 0), name
            # near-ties may legitimately pick another key: the chosen keys must carry the reference mass
            got = torch.where(idx >= 0, torch.gather(A, -1, idx.clamp(min=0)), 0.0)
            want = torch.where(ridx >= 0, torch.gather(A, -1, ridx.clamp(min=0)), 0.0)
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")
            continue
        o = o.double()
        a = atol * key_pos if name in ("attn_distance",) else atol
        torch.testing.assert_close(o, r, rtol=rtol, atol=a, msg=lambda m, n=name: f"{n}: {m}")
        assert not torch.isnan(o).any(), name
