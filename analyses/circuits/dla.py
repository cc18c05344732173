"""Direct logit attribution per head (Elhage et al. 2021; Wang et al. 2022 for the IOI use).

The direct effect of head ``L{l}H{h}`` on the logit difference at the final position, with the final norm's
scale frozen from the clean run (so the map from the residual stream to logits is linear)::

    dla[l, h] = mean_b  (z_h W_O^h)[b, −1] ⊙ s[b, −1] · (W_U[answer_b] − W_U[wrong_b])

where ``s`` is the final RMSNorm as a per-element factor (1/rms · gain) and ``z_h W_O^h`` is the head's output
(for Gemma also through the post-attention norm at its run's scale, see ``interp.graph``). Final-logit
softcapping is ignored. Validated in ``tests/unit/test_circuits_dla.py``: summed over every node (input,
heads, MLPs) it equals the model's logit difference (bias-free models).
"""

from __future__ import annotations

import torch

from interp.graph import Graph, run_graph


def dla_nodes(model, ids: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """Direct logit-difference attribution ``[n_nodes]`` of every graph node (``Graph.nodes`` order).

    ``ids [batch, pos]``; ``answer``/``wrong`` ``[batch]`` token ids.
    """
    if answer.shape != (ids.shape[0],) or wrong.shape != (ids.shape[0],):
        raise ValueError(f"answer {tuple(answer.shape)} and wrong {tuple(wrong.shape)} must be [batch] = "
                         f"[{ids.shape[0]}] token ids")
    with torch.no_grad():
        run = run_graph(model, ids)
        outs = torch.stack(run.outs)[:, :, -1].float()  # [n_nodes, batch, d_model]
        scale = (run.final_scale[:, -1] if run.final_scale is not None else torch.ones_like(outs[0]))
        w_u = model.arch.lm_head.weight.float()
        direction = w_u[answer.to(w_u.device)] - w_u[wrong.to(w_u.device)]  # [batch, d_model]
        return torch.einsum("nbm,bm,bm->nb", outs, scale.float(), direction).mean(1)


def dla(model, ids: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """``[layer, head]`` direct logit attribution of every attention head (see module docstring)."""
    per_node = dla_nodes(model, ids, answer, wrong)
    g = Graph.of(model)
    rows = [per_node[g.n_upstream_attn(l): g.n_upstream_attn(l) + g.n_heads] for l in range(g.n_layers)]
    return torch.stack(rows)
