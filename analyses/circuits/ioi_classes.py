"""IOI head classes by path patching (Wang et al. 2022, "Interpretability in the Wild: a Circuit for Indirect
Object Identification in GPT-2 small", §3), with the attention checks of the paper.

The classes are found backwards from the logits, each by path patching from the ABC corruption (senders'
outputs from the corrupt run, every other head and MLP frozen, i.e. the direct path ``interp.graph`` edge):

    name movers    h → logits                        (and attention END → IO > END → S)
    S-inhibition   h → q of the name movers
    induction /    h → v of the S-inhibition heads   (duplicate-token: S2 attends to S1;
    duplicate-token                                   induction: S2 attends to S1+1)
    prev-token     h → k of the induction heads      (S1+1 attends to S1)

    effect(S → R) = M(clean | edges S → R patched to corrupt) − M(clean),   M = logit(IO) − logit(S) at END

With frozen MLPs this is exactly the graph edge patch (``path_patching.py`` docstring), so the sweeps here run
one ``run_graph`` per sender; the h → logits sweep needs no forward at all: the final residual changes by
exactly ``out_h(corrupt) − out_h(clean)``, so only the final norm and unembedding are recomputed. GQA: the
k and v receivers are the **KV heads** of the receiver heads (their k/v are shared by the query heads of the
group), so a k/v effect also flows through the group's other query heads.

Validated in ``tests/unit/test_circuits_ioi_classes.py``: both sweeps equal the hook-based ``path_patch_heads``
on a tiny GQA llama; the position finder and the attention statistics against hand-built prompts / patterns.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from interp.graph import Graph, corrupt_outputs, run_graph
from interp.hooks import run_with_cache
from interp.sites import Site


def ioi_positions(clean: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor) -> dict[str, torch.Tensor]:
    """Token positions ``{"io", "s1", "s2", "end"}`` (each ``[batch]``) of IOI prompts ``clean [batch, pos]``:
    IO is the one occurrence of the ``answer`` token, S1/S2 the two occurrences of the ``wrong`` (subject) token,
    END the last position."""
    io, s1, s2 = [], [], []
    for b in range(clean.shape[0]):
        a_pos = (clean[b] == answer[b]).nonzero().flatten().tolist()
        s_pos = (clean[b] == wrong[b]).nonzero().flatten().tolist()
        if len(a_pos) != 1 or len(s_pos) != 2:
            raise ValueError(f"prompt {b}: expected the IO token once and the S token twice, found {len(a_pos)} "
                             f"and {len(s_pos)}; these are not IOI prompts (use ioi_task)")
        io.append(a_pos[0])
        s1.append(s_pos[0])
        s2.append(s_pos[1])
    n = clean.shape[0]
    return {"io": torch.tensor(io), "s1": torch.tensor(s1), "s2": torch.tensor(s2),
            "end": torch.full((n,), clean.shape[1] - 1)}


def attention_stats(patterns: torch.Tensor, pos: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """IOI attention statistics per head from ``patterns [layer, batch, head, query_pos, key_pos]``; each value
    ``[layer, head]`` (batch mean):

    ``end_io`` / ``end_s``: attention END → IO and END → S1 + S2; ``s2_s1`` (duplicate-token) and ``s2_s1p1``
    (induction: S2 → S1+1); ``s1p1_s1``: S1+1 → S1 (previous-token at the name); ``prev``: mean over query
    positions p ≥ 1 of the attention p → p−1 (previous-token in general).
    """
    b = torch.arange(patterns.shape[1])
    io, s1, s2, end = pos["io"], pos["s1"], pos["s2"], pos["end"]
    by_batch = patterns.permute(1, 3, 4, 0, 2)  # [batch, query_pos, key_pos, layer, head]

    def at(q, k):  # → [layer, head]
        return by_batch[b, q, k].mean(0)

    p = patterns.shape[-1]
    diag = torch.diagonal(patterns, offset=-1, dim1=-2, dim2=-1)  # [layer, batch, head, p−1]: p → p−1
    return {"end_io": at(end, io), "end_s": at(end, s1) + at(end, s2), "s2_s1": at(s2, s1),
            "s2_s1p1": at(s2, s1 + 1), "s1p1_s1": at(s1 + 1, s1),
            "prev": diag.mean((1, 3)) if p > 1 else torch.zeros(patterns.shape[0], patterns.shape[2])}


def head_patterns(model, ids: torch.Tensor) -> torch.Tensor:
    """Attention patterns ``[layer, batch, head, query_pos, key_pos]`` of token ids ``[batch, pos]``."""
    s = model.shape
    _, cache = run_with_cache(model, ids, [Site(l, "pattern") for l in range(s.n_layers)])
    return torch.stack([cache[Site(l, "pattern")].float() for l in range(s.n_layers)])


def direct_path_effects(model, clean: torch.Tensor, corrupt: torch.Tensor,
                        metric: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Path-patching effect of every head on the logits (direct path, others frozen) ``[layer, head]``
    float64; ``clean``/``corrupt`` ``[batch, pos]``; ``metric`` reads the last position of ``[batch, pos,
    d_vocab]`` logits (it is given ``[batch, 1, d_vocab]``)."""
    g = Graph.of(model)
    arch = model.arch
    with torch.no_grad():
        run = run_graph(model, clean, keep_streams=True)
        corr = corrupt_outputs(model, corrupt)
        f_in = run.streams[-1][:, -1]  # [batch, d_model]: the residual the logits read

        def logits_of(f):
            return arch.lm_head(arch.final_norm(f) if arch.final_norm is not None else f)[:, None]

        m_clean = float(metric(logits_of(f_in)))
        out = torch.zeros(g.n_layers, g.n_heads, dtype=torch.float64)
        for layer in range(g.n_layers):
            for head in range(g.n_heads):
                u = g.nodes.index(f"L{layer}H{head}")
                f = f_in + corr[u][:, -1] - run.outs[u][:, -1]
                out[layer, head] = float(metric(logits_of(f))) - m_clean
    return out


def edge_path_effects(model, clean: torch.Tensor, corrupt: torch.Tensor, receivers: list[tuple[str, str]],
                      metric: Callable[[torch.Tensor], torch.Tensor], *, senders: list | None = None,
                      progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Path-patching effect ``[layer, head]`` (float64) of every head, one sender at a time, on the receiver
    inputs ``receivers`` (graph inputs such as ``("L20H3", "q")``, ``("L12KV1", "v")``): all edges sender →
    receiver patched to the corrupt run. Heads upstream of no receiver are 0 without a forward. With
    ``senders`` (a list of ``(layer, head)``) only those are measured and every other entry is NaN."""
    g = Graph.of(model)
    cols = []
    for r in receivers:
        if tuple(r) not in g.inputs:
            raise ValueError(f"unknown receiver {r!r}: use graph inputs like ('L3H1', 'q'), ('L3KV0', 'k'|'v')")
        cols.append(g.inputs.index(tuple(r)))
    corr = corrupt_outputs(model, corrupt)
    with torch.no_grad():
        m_clean = float(metric(run_graph(model, clean).logits))
    out = torch.zeros(g.n_layers, g.n_heads, dtype=torch.float64)
    todo = [(layer, head) for layer in range(g.n_layers) for head in range(g.n_heads)
            if any(g.nodes.index(f"L{layer}H{head}") < g.n_upstream_of_col(c) for c in cols)]
    if senders is not None:
        chosen = {tuple(x) for x in senders}
        out[:] = float("nan")
        for layer, head in chosen:
            if (layer, head) not in todo:
                out[layer, head] = 0.0
        todo = [x for x in todo if x in chosen]
    for i, (layer, head) in enumerate(todo):
        u = g.nodes.index(f"L{layer}H{head}")
        removed = torch.zeros(g.n_nodes, g.n_inputs, dtype=torch.bool)
        for c in cols:
            if u < g.n_upstream_of_col(c):
                removed[u, c] = True
        with torch.no_grad():
            out[layer, head] = float(metric(run_graph(model, clean, corrupt=corr, removed=removed).logits)) - m_clean
        if progress is not None:
            progress(i + 1, len(todo))
    return out
