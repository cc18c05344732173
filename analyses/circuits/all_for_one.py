"""The All-for-One staged intervention (Mamidanna et al. 2025, "All for One: LLMs Solve Mental Math at the
Last Token With Information Transferred From Other Tokens").

Three stages over the layers, split at ℓ1 ≤ ℓ2 (``n_layers`` means "never"):

1. layers < ℓ1 — **CAMA** (context-aware mean ablation): the residual stream entering layer ℓ1 is replaced at
   every position by its mean over the reference prompts with the same token at that position
   (``ablations.cama_means``), so no input-specific computation from these layers survives (replacing the
   residual after each early layer gives the same input to layer ℓ1, because every later replacement
   overwrites the earlier ones);
2. ℓ1 ≤ layer < ℓ2 — **ABP** (attention-based peeking): the last query row keeps its causal attention, every
   other query row attends only to itself;
3. layer ≥ ℓ2 — **last token only**: every query row attends only to itself, so the last token computes alone.

Attention routes are removed with ``interp.interventions.Knockout`` (blocked logits → −∞, i.e. the pattern
renormalised over the allowed keys): allowed[layer, q, k] is

    k ≤ q                       layer < ℓ1
    k = q  or  q = last         ℓ1 ≤ layer < ℓ2      (k ≤ q still)
    k = q                       layer ≥ ℓ2

The grid reports, per (ℓ1, ℓ2), the task metric (logit difference) and the top-1 accuracy at the last position.

Validated in ``tests/unit/test_circuits_all_for_one.py``: the stage masks against dense masks built by loops;
with every stage switched off the metric equals the clean one; with ℓ1 = ℓ2 = 0 (last token alone from layer 0)
the last-position logits equal the model run on the last token by itself (RoPE scores at distance 0 are
position-free); under ABP every non-last position equals its single-token run; captured patterns are zero on
blocked routes and rows sum to 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from interp.hooks import run_with_cache
from interp.interventions import Knockout, Patch
from interp.kernels.attention_stats import causal_mask
from interp.sites import Site

from .ablations import cama_means


def stage_masks(n_layers: int, n_pos: int, l1: int, l2: int, *, abp: bool = True,
                last_only: bool = True) -> torch.Tensor:
    """Allowed attention routes ``[layer, query_pos, key_pos]`` (bool) of the staged intervention."""
    if not (isinstance(l1, int) and isinstance(l2, int) and 0 <= l1 <= l2 <= n_layers):
        raise ValueError(f"need 0 ≤ l1 ≤ l2 ≤ n_layers = {n_layers}, got l1={l1!r}, l2={l2!r}")
    causal = causal_mask(n_pos, n_pos)
    diag = torch.eye(n_pos, dtype=torch.bool)
    peek = diag.clone()
    peek[-1] = causal[-1]
    allowed = causal.expand(n_layers, -1, -1).clone()
    if abp:
        allowed[l1:l2] = peek
    if last_only:
        allowed[l2:] = diag
    return allowed


def all_for_one_interventions(model, ids: torch.Tensor, l1: int, l2: int, *, reference_ids=None,
                              cama: bool = True, abp: bool = True, last_only: bool = True,
                              min_count: int = 2) -> list:
    """The interventions (``Patch`` of the CAMA residual, ``Knockout``s) of the stages for ``ids [batch, pos]``.

    ``reference_ids [n_ref, pos]`` (default ``ids``) is the set CAMA averages over."""
    s = model.shape
    n_pos = ids.shape[1]
    allowed = stage_masks(s.n_layers, n_pos, l1, l2, abp=abp, last_only=last_only)
    causal = causal_mask(n_pos, n_pos)
    items = []
    if cama and l1 > 0:
        ref = ids if reference_ids is None else reference_ids
        site = Site(l1 - 1, "resid_post")
        _, cache = run_with_cache(model, ref, [site])
        value = cama_means(cache[site][None], ref, ids, min_count=min_count)[0]  # [batch, pos, d_model]
        items.append(Patch(site, value))
    for layer in range(s.n_layers):
        if not torch.equal(allowed[layer], causal):
            items.append(Knockout(layer, None, ~allowed[layer]))
    return items


def all_for_one(model, task, l1: int, l2: int, *, metric: Callable | None = None, reference_ids=None,
                cama: bool = True, abp: bool = True, last_only: bool = True) -> dict:
    """``{"metric", "accuracy"}`` of ``task`` (``TaskTokens`` or ``Task``) under the staged intervention.

    ``metric(logits [batch, pos, d_vocab])`` defaults to ``task.metric``; accuracy is the fraction of prompts
    whose last-position argmax is the answer token.
    """
    if hasattr(task, "tokens") and not hasattr(task, "metric"):
        task = task.tokens(model)
    metric = task.metric if metric is None else metric
    items = all_for_one_interventions(model, task.clean, l1, l2, reference_ids=reference_ids, cama=cama,
                                      abp=abp, last_only=last_only)
    with torch.no_grad(), model.intervene(*items):
        logits = model.forward(task.clean).logits
    acc = (logits[:, -1].argmax(-1).cpu() == task.answer.cpu()).double().mean()
    return {"metric": float(metric(logits)), "accuracy": float(acc)}


def all_for_one_grid(model, task, l1s=None, l2s=None, *, metric: Callable | None = None, reference_ids=None,
                     cama: bool = True, abp: bool = True, last_only: bool = True):
    """DataFrame ``l1, l2, metric, accuracy`` over all pairs l1 ≤ l2 of ``l1s`` × ``l2s`` (default: every layer
    boundary 0..n_layers), plus a ``clean`` row pair as l1 = l2 = -1."""
    import pandas as pd

    if hasattr(task, "tokens") and not hasattr(task, "metric"):
        task = task.tokens(model)
    n = model.shape.n_layers
    l1s = list(range(n + 1)) if l1s is None else list(l1s)
    l2s = list(range(n + 1)) if l2s is None else list(l2s)
    rows = []
    clean = all_for_one(model, task, 0, n, metric=metric, cama=False, abp=False, last_only=False)
    rows.append({"l1": -1, "l2": -1, **clean})
    for a in l1s:
        for b in l2s:
            if a <= b:
                r = all_for_one(model, task, a, b, metric=metric, reference_ids=reference_ids, cama=cama, abp=abp,
                                last_only=last_only)
                rows.append({"l1": a, "l2": b, **r})
    return pd.DataFrame(rows)
