"""Ablation types for circuit evaluation: what an edge outside the circuit is patched to.

``interp.graph.run_graph(ids, corrupt=A, removed=...)`` replaces a removed edge u → v by ``A_u``; this module
builds ``A [n_nodes, batch, pos, d_model]`` (node outputs, ``interp.graph`` order) for each ablation type:

- ``"resample"``: A_u = out_u(x'_b), the node outputs of the paired corrupt prompt (Wang et al. 2022; Chan et
  al. 2022, causal scrubbing) — what ``run_graph(corrupt=corrupt_outputs(model, corrupt_ids))`` does.
- ``"mean"``: A_u[b, p] = mean_{r ∈ R} out_u(x_r)[p], the mean over a reference set R (default: the corrupt
  prompts), per position (Wang et al. 2022).
- ``"zero"``: A_u = 0 (zero ablation).
- ``"cama"``: context-aware mean ablation (Mamidanna et al. 2025, "All for One: LLMs Solve Mental Math at the
  Last Token With Information Transferred From Other Tokens"): the mean over the reference prompts that have
  the *same token* at that position,
      A_u[b, p] = mean_{r ∈ R: x_r[p] = x_b[p]} out_u(x_r)[p],
  falling back to the plain position mean when fewer than ``min_count`` (default 2) reference prompts share
  the token (a group of one would be the prompt's own activation, i.e. no ablation). Default R: the clean
  prompts, so the token-specific but context-free part of each activation is kept.

``faithfulness_by_ablation`` evaluates one circuit under several types with
``faithfulness = (M(C) − M(∅)) / (M(clean) − M(∅))`` where M(∅) has every edge removed under the same ablation.

Validated in ``tests/unit/test_circuits_all_for_one.py``: CAMA against a by-hand dictionary group-by, mean and
zero against explicit computations, resample against ``corrupt_outputs``, and the fully removed graph under
"mean" against an explicit forward from the mean outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from interp.graph import Graph, corrupt_outputs, run_graph

ABLATIONS = ("resample", "mean", "zero", "cama")


def position_means(outs: torch.Tensor) -> torch.Tensor:
    """``outs [n_nodes, batch, pos, d_model]`` → per-position means over the batch ``[n_nodes, pos, d_model]``."""
    return outs.mean(1)


def cama_means(outs: torch.Tensor, ref_ids: torch.Tensor, ids: torch.Tensor, *, min_count: int = 2) -> torch.Tensor:
    """Context-aware means for ``ids [batch, pos]`` from reference node outputs ``outs [n_nodes, n_ref, pos,
    d_model]`` of ``ref_ids [n_ref, pos]``: ``[n_nodes, batch, pos, d_model]``.

    Entry ``[:, b, p]`` is the mean of ``outs[:, r, p]`` over the references with ``ref_ids[r, p] == ids[b, p]``
    if at least ``min_count`` of them exist, else the plain position mean ``outs[:, :, p].mean``.
    """
    if outs.ndim != 4 or outs.shape[1:3] != ref_ids.shape:
        raise ValueError(f"reference outputs {tuple(outs.shape)} must be [n_nodes, n_ref, pos, d_model] with "
                         f"[n_ref, pos] = {tuple(ref_ids.shape)} (the reference token ids)")
    if ids.shape[1] != ref_ids.shape[1]:
        raise ValueError(f"prompts have {ids.shape[1]} positions but the reference set {ref_ids.shape[1]}; CAMA "
                         "needs references of the same token length")
    ref_ids, ids = ref_ids.to(outs.device), ids.to(outs.device)
    same = ids[:, None, :] == ref_ids[None, :, :]  # [batch, n_ref, pos]
    count = same.sum(1)  # [batch, pos]
    w = same.to(outs.dtype) / count.clamp(min=1).to(outs.dtype)[:, None, :]
    grouped = torch.einsum("brp,nrpm->nbpm", w, outs)
    plain = outs.mean(1, keepdim=True).expand_as(grouped)
    use = (count >= min_count)[None, :, :, None]
    return torch.where(use, grouped, plain)


def ablation_outputs(model, clean_ids: torch.Tensor, kind: str, *, corrupt_ids: torch.Tensor | None = None,
                     reference_ids: torch.Tensor | None = None, min_count: int = 2) -> torch.Tensor:
    """Node outputs ``[n_nodes, batch, pos, d_model]`` to pass as ``corrupt=`` to ``run_graph`` so that removed
    edges are ablated by ``kind`` (one of ``"resample"``, ``"mean"``, ``"zero"``, ``"cama"``).

    ``clean_ids [batch, pos]``; ``corrupt_ids [batch, pos]`` for resample (and the default mean reference);
    ``reference_ids [n_ref, pos]`` overrides the reference set of mean (default corrupt, else clean) and cama
    (default clean).
    """
    if kind not in ABLATIONS:
        raise ValueError(f"unknown ablation {kind!r}; choose one of {', '.join(ABLATIONS)}")
    g = Graph.of(model)
    b, p = clean_ids.shape
    if kind == "resample":
        if corrupt_ids is None:
            raise ValueError("resample ablation needs corrupt_ids [batch, pos] (the paired corrupt prompts)")
        if corrupt_ids.shape != clean_ids.shape:
            raise ValueError(f"corrupt_ids {tuple(corrupt_ids.shape)} must match clean_ids {tuple(clean_ids.shape)}")
        return corrupt_outputs(model, corrupt_ids)
    if kind == "zero":
        return torch.zeros(g.n_nodes, b, p, model.shape.d_model, dtype=model.dtype, device=model.device)
    if kind == "mean":
        ref = reference_ids if reference_ids is not None else (corrupt_ids if corrupt_ids is not None else clean_ids)
        if ref.shape[1] != p:
            raise ValueError(f"reference prompts have {ref.shape[1]} positions, the prompts {p}; mean ablation is "
                             "per position, so they must have the same token length")
        return position_means(corrupt_outputs(model, ref))[:, None].expand(-1, b, -1, -1).contiguous()
    ref = clean_ids if reference_ids is None else reference_ids
    return cama_means(corrupt_outputs(model, ref), ref, clean_ids, min_count=min_count)


def faithfulness_by_ablation(model, task, circuit, types=ABLATIONS, *, metric: Callable | None = None,
                             reference_ids: torch.Tensor | None = None):
    """DataFrame (one row per ablation type: ``ablation, faithfulness, m_circuit, m_empty, m_clean, n_edges``)
    of the same ``circuit`` (a ``Circuit`` or a bool ``[n_nodes, n_inputs]`` keep mask) evaluated with every
    edge outside it ablated by that type.

    ``task``: ``TaskTokens`` (or a ``Task``, tokenised for ``model``); ``metric`` defaults to ``task.metric``.
    """
    import pandas as pd

    if hasattr(task, "tokens") and not hasattr(task, "metric"):
        task = task.tokens(model)
    metric = task.metric if metric is None else metric
    g = Graph.of(model)
    keep = circuit if isinstance(circuit, torch.Tensor) else circuit.mask(g)
    if tuple(keep.shape) != (g.n_nodes, g.n_inputs):
        raise ValueError(f"circuit mask must be [n_nodes, n_inputs] = {(g.n_nodes, g.n_inputs)}, "
                         f"got {tuple(keep.shape)}")
    types = [types] if isinstance(types, str) else list(types)
    removed = (g.valid & ~keep.bool()).to(model.dtype)
    with torch.no_grad():
        m_clean = float(metric(run_graph(model, task.clean).logits))
    rows = []
    for kind in types:
        abl = ablation_outputs(model, task.clean, kind, corrupt_ids=task.corrupt, reference_ids=reference_ids)
        with torch.no_grad():
            m_c = float(metric(run_graph(model, task.clean, corrupt=abl, removed=removed).logits))
            m_0 = float(metric(run_graph(model, task.clean, corrupt=abl, removed=g.valid.to(model.dtype)).logits))
        den = m_clean - m_0
        rows.append({"ablation": kind, "faithfulness": (m_c - m_0) / den if abs(den) > 1e-12 else float("nan"),
                     "m_circuit": m_c, "m_empty": m_0, "m_clean": m_clean, "n_edges": int(keep.sum())})
    return pd.DataFrame(rows)
