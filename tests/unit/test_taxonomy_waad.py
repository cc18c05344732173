"""WAAD / FAI (Li et al. 2025) against a dense float64 recomputation from the eager pattern."""

from __future__ import annotations

import math

import pytest
import torch

from interp.analyses import waad_fai
from interp.hooks import run_with_cache
from interp.sites import Site
from interp.testing import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("gemma3", n_layers=2, seed=2)  # includes a sliding-window layer (window 8)


@pytest.mark.parametrize("window", [1, 3, 50])
def test_waad_fai_dense(model, window):
    ids = torch.randint(2, 64, (2, 18), generator=torch.Generator().manual_seed(window))
    sites = [Site(layer, "pattern") for layer in range(2)]
    _, cache = run_with_cache(model, ids, sites)
    A = torch.stack([cache[s].double() for s in sites])  # [layer, batch, head, query, key]
    T = 18
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    dist = (i - j).clamp(min=0).clamp(max=window).double()
    waad_ref = (A * dist).sum(-1)
    below = (i > j).double()  # future queries of key j
    fai_ref = (A * below).sum(-2) / (T - 1 - torch.arange(T)).clamp(min=1).double()
    got = waad_fai.waad_fai(model, ids, window=window)
    torch.testing.assert_close(got["waad"], waad_ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got["fai"][..., :-1], fai_ref[..., :-1], atol=2e-6, rtol=1e-5)
    assert bool(torch.isnan(got["fai"][..., -1]).all())


def test_split_and_tables(model):
    w = torch.tensor([[1.0, 5.0], [3.0, 2.0]])[:, None, :, None].expand(2, 1, 2, 4)
    assert waad_fai.local_heads(w).tolist() == [[True, False], [False, True]]  # median 2.5
    ids = torch.randint(2, 64, (1, 12), generator=torch.Generator().manual_seed(0))
    s, tok = waad_fai.waad_fai_scores(model, ids, window=4)
    r = waad_fai.waad_fai(model, ids, window=4)
    loc = waad_fai.local_heads(r["waad"])
    assert s[s.score == "local_head"].value.sum() == int(loc.sum())
    want = float(r["waad"][..., 5][loc[:, None, :].expand(2, 1, 4)].mean())
    got = tok[(tok.score == "waad_local") & (tok.position == 5)].value.item()
    assert got == pytest.approx(want)
    assert math.isnan(tok[(tok.score == "fai_global") & (tok.position == 11)].value.item())
    with pytest.raises(ValueError, match="window"):
        waad_fai.waad_fai(model, ids, window=0)
