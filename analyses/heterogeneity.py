"""Semantic heterogeneity of heads (Task-KV): each head's output distance from its layer's semantic centre.

Paper: He et al., "Task-KV: Task-aware KV Cache Optimization via Semantic Differentiation of Attention Heads"
(2025). Heads whose output lies far from the layer's semantic centre carry distinct information
("heterogeneous heads") and keep a full KV cache; the rest are compressed.

For layer l, head h and the answer position t of a prompt (see below), with ``o_h = z_h W_O[h]`` ``[d_model]``
the head's write to the residual stream (``interp.arch.head_outputs``)::

    c_l        = (1 / H) Σ_h o_h                          the semantic centre (= attention output / H, no bias)
    hetero_l2  = mean over prompts of ‖o_h − c_l‖₂ / ((1/H) Σ_h' ‖o_h'‖₂)      (primary score)
    hetero_cos = mean over prompts of 1 − cos(o_h, c_l)
    hetero_rank = rank of hetero_l2 within the layer (0 = most distant = most heterogeneous)

Choices and why. Distance: Euclidean, as Task-KV measures it in the residual space the heads write to, but
divided by the layer's mean head-output norm so layers with larger outputs (late layers) are comparable and the
score reads "distance in units of a typical head"; the cosine form is reported beside it because a large but
aligned head is not semantically distinct. Position: the last prompt token, whose next-token prediction is the
answer (the prompts end with "Answer:"), so the heads are compared where the model assembles the answer; the
prompts are the retrieval-head needle QA prompts (a haystack with a needle, then the question), i.e. a task that
needs the context.

Validated in ``tests/unit/test_heterogeneity.py``: the per-head outputs against the ``head_out`` site and their
sum against ``attn_out``, the distances by hand from those, and a planted head whose output is scaled up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from interp.params import Params, param
from interp.scores import ScoreTable
from interp.sites import Site


@dataclass(frozen=True)
class HeterogeneityParams(Params):
    """Parameters of ``heterogeneity`` (Task-KV semantic distance at the answer position)."""

    context_tokens: int = param(300, "haystack tokens of each needle prompt (trimmed to fit the context)", ge=1)
    depth: float = param(0.5, "needle depth in the context (0 = start, 1 = end)", ge=0, le=1)


@torch.no_grad()
def head_outputs_at(model, ids: torch.Tensor, position: int = -1) -> torch.Tensor:
    """Per-head writes at one position: ids ``[batch, pos]`` → ``[layer, batch, head, d_model]`` (float64)."""
    from interp.arch import head_outputs

    s = model.shape
    kept: dict[int, torch.Tensor] = {}

    def keep(z, site):
        kept[site.layer] = z[:, position].detach().double()  # [batch, head, d_head]

    with model.hooks({Site(layer, "z"): keep for layer in range(s.n_layers)}):
        model.forward(ids)
    return torch.stack([head_outputs(kept[layer], model.w_o(layer, torch.float64)) for layer in range(s.n_layers)])


def distances(o: torch.Tensor) -> dict[str, torch.Tensor]:
    """o ``[..., head, d_model]`` → ``l2`` (relative to the mean head norm), ``cos``: ``[..., head]``."""
    c = o.mean(-2, keepdim=True)
    l2 = (o - c).norm(dim=-1) / o.norm(dim=-1).mean(-1, keepdim=True).clamp_min(1e-300)
    cos = 1 - torch.nn.functional.cosine_similarity(o, c.expand_as(o), dim=-1, eps=1e-300)
    return {"l2": l2, "cos": cos}


def heterogeneity_scores(model, prompts: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """``hetero_l2``, ``hetero_cos``, ``hetero_rank``: ``[layer, head]`` over prompts (each ids ``[1, pos]``,
    the answer position last)."""
    if not prompts:
        raise ValueError("heterogeneity needs at least one prompt")
    d = [distances(head_outputs_at(model, ids)) for ids in prompts]  # each [layer, 1, head]
    l2 = torch.cat([x["l2"] for x in d], 1).mean(1).numpy()
    cos = torch.cat([x["cos"] for x in d], 1).mean(1).numpy()
    rank = (-l2).argsort(-1).argsort(-1).astype(float)
    return {"hetero_l2": l2, "hetero_cos": cos, "hetero_rank": rank}


def run(model, params: HeterogeneityParams | dict | None = None, out_dir=None):
    """Report entry: Task-KV distances on the needle QA prompts at the answer position."""
    from interp.analyses.head_divergence import needle_samples

    p = HeterogeneityParams.coerce(params, where="heterogeneity")
    tok = model.tokenizer
    prompts = []
    for context, question in needle_samples(model, context_tokens=p.context_tokens, depth=p.depth):
        ids = list(tok(context, add_special_tokens=True)["input_ids"]) + \
            list(tok(question, add_special_tokens=False)["input_ids"])
        if model.shape.n_ctx and len(ids) > model.shape.n_ctx:
            ids = ids[len(ids) - model.shape.n_ctx:]
        prompts.append(torch.tensor([ids]))
    sc = heterogeneity_scores(model, prompts)
    common = dict(model=model.name, analysis="heterogeneity", n_samples=len(prompts))
    return {"scores": ScoreTable.concat([ScoreTable.from_matrix(v, score=k, **common) for k, v in sc.items()])}
