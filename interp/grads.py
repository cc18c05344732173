"""Gradients of a scalar loss at hook sites: one forward with autograd on, one backward, no weight gradients.

``site_grads(model, ids, sites, loss_fn)`` runs ``model.forward(ids)`` with every requested whole site
(``Site(layer, component)``, no head index) kept as it flows through the graph, computes ``loss = loss_fn(logits,
ids)`` (a scalar) and returns ``∂loss/∂x`` at each site from a single ``torch.autograd.grad`` call.

The weights are frozen for the call (``requires_grad`` off, restored after) and the embedding output is made the
graph's leaf instead, so autograd saves only what the input-side gradients need (no weight gradients are formed);
this is the gradient at the site through *every* later path (later layers' q, k, v included). Sites that are not in
the autograd graph are refused: ``head_out`` (a read-only copy) and head-indexed sites (a head slice is a view
that nothing downstream consumes — take the whole site and index the head). A site the loss does not depend on
gets a zero gradient. An attention ``capture`` (``interp.capture.Capture``) may ride along on the same forward.

Shapes: every value and gradient has the shape of the site's tensor (``interp.sites``), e.g. ``z``
``[batch, pos, head, d_head]``; ``logits`` ``[batch, pos, d_vocab]``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .sites import Site


@dataclass
class SiteGrads:
    """``loss``: the loss value; ``values`` / ``grads``: ``{Site: tensor}`` (detached), the site's activation and
    ``∂loss/∂activation``, each shaped as the site's tensor."""

    loss: float
    values: dict
    grads: dict


@contextlib.contextmanager
def frozen_weights(model):
    """Turn ``requires_grad`` off on every parameter of ``model.hf`` for the block (restored on exit)."""
    params = [p for p in model.hf.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _check_sites(model, sites) -> list[Site]:
    sites = list(sites)
    for s in sites:
        if not isinstance(s, Site):
            raise TypeError(f"site_grads takes interp.Site values, got {s!r}")
        s.validate(model.shape)
        if s.head is not None:
            raise ValueError(f"{s}: site_grads takes whole sites; pass {s.whole()} and index head {s.head}")
        if s.component == "head_out":
            raise ValueError(f"{s} is a read-only copy outside the autograd graph; take the gradient at "
                             f"Site({s.layer}, 'z') (head_out = z @ W_O per head)")
    if len(set(sites)) != len(sites):
        raise ValueError("site_grads: a site is listed twice")
    return sites


def site_grads(model, ids: torch.Tensor, sites, loss_fn, *, capture=None) -> SiteGrads:
    """One forward + one backward of ``loss_fn(logits [batch, pos, d_vocab], ids [batch, pos]) -> scalar`` on
    ``ids [batch, pos]``; the gradient at each of ``sites`` (whole sites; see the module doc)."""
    sites = _check_sites(model, sites)
    kept: dict[Site, torch.Tensor] = {}

    def leaf(x, site):  # the embedding output becomes the graph's leaf (weights are frozen)
        x = x.detach().requires_grad_(True)
        if site in wanted:
            kept[site] = x
        return x

    def keep(x, site):
        kept[site] = x

    wanted = set(sites)
    embed = next((s for s in sites if s.component == "embed"), Site(0, "embed"))
    handlers = {s: keep for s in sites if s.component != "embed"}
    handlers[embed] = leaf
    with frozen_weights(model), torch.enable_grad(), model.hooks(handlers, capture=capture):
        logits = model.forward(ids).logits
        loss = loss_fn(logits, ids)
        if loss.ndim != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        missing = [s for s in sites if s not in kept]
        if missing:
            raise ValueError(f"site_grads: {', '.join(map(str, missing))} not reached by the forward")
        order = [kept[s] for s in sites]
        grads = torch.autograd.grad(loss, order, allow_unused=True)
    out = {s: torch.zeros_like(kept[s]) if g is None else g for s, g in zip(sites, grads, strict=True)}
    return SiteGrads(float(loss.detach()), {s: kept[s].detach() for s in sites}, out)
