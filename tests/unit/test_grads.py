"""interp.grads.site_grads: gradients at sites equal a finite difference of the loss, weights are restored, bad
sites are refused with one line."""

from __future__ import annotations

import pytest
import torch

from interp.analyses.attention_saliency import summed_loss
from interp.grads import site_grads
from interp.sites import Site
from interp.testing import tiny_model


def test_grad_at_z_and_v_equals_finite_difference():
    m = tiny_model("llama", dtype=torch.float64)
    ids = torch.randint(2, 64, (1, 12), generator=torch.Generator().manual_seed(0))
    sites = [Site(0, "z"), Site(0, "v"), Site(1, "z")]
    res = site_grads(m, ids, sites, summed_loss)
    assert all(p.requires_grad for p in m.hf.parameters())  # restored
    for site, idx in ((Site(0, "z"), (0, 5, 1, 3)), (Site(0, "v"), (0, 2, 1, 0)), (Site(1, "z"), (0, 7, 3, 2))):
        h = 1e-3  # HF norms compute in fp32 even in a float64 model: the loss has ~1e-8 noise

        def bump(x, s, eps=0.0, idx=idx):
            x = x.clone()
            x[idx] += eps
            return x

        losses = []
        for eps in (h, -h):
            with torch.no_grad(), m.hooks({site: lambda x, s, eps=eps: bump(x, s, eps)}):
                losses.append(float(summed_loss(m.forward(ids).logits, ids)))
        fd = (losses[0] - losses[1]) / (2 * h)
        assert float(res.grads[site][idx]) == pytest.approx(fd, rel=1e-3, abs=1e-6), site
    assert float(res.grads[Site(1, "z")][0, -1].abs().max()) == 0  # the last row predicts nothing


def test_bad_sites_are_refused():
    m = tiny_model("llama")
    ids = torch.randint(2, 64, (1, 8))
    with pytest.raises(ValueError, match="whole sites"):
        site_grads(m, ids, [Site(0, "z", 1)], summed_loss)
    with pytest.raises(ValueError, match="read-only"):
        site_grads(m, ids, [Site(0, "head_out")], summed_loss)
    with pytest.raises(ValueError, match="scalar"):
        site_grads(m, ids, [Site(0, "z")], lambda logits, ids: logits.sum(-1))
