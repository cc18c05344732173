"""The attention row of the last query position of every layer, in O(key_pos) memory per head, also under
pattern edits.

``last_query_attention(model, ids, mask, interventions=...)`` returns ``A[last, :]`` ``[layer, batch, head,
key_pos]`` (float64): for each layer, with q_last the post-RoPE query of the last position and k the keys,

    A[last, j] = softmax_j(scale · q_last · k_j)      (softcap, sliding window and padding as the model attends)

computed by ``LastQueryCapture`` (an ``interp.capture.Capture``) from q, k inside the forward: one
``[batch, head, 1, key_pos]`` row per layer, never the ``[query_pos, key_pos]`` pattern, and the layer output keeps
its SDPA / flash route. Layers whose pattern an intervention edits (``interp.attention_edits``: ZeroTuning, ACT,
VAR, steering) already run the eager pattern for the edit; there the row is read off the edited pattern (a
read-only ``pattern`` handler inside the edit's context), so the row is the one the model really attends with.

Padding: inputs are left-padded (``interp.choices.batches``), so the last position is every row's last real
token. Validated against ``interp.testing.dense_patterns`` (float64, GQA, sliding windows, padding, with and
without edits) in ``tests/unit/test_query_attention.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .capture import Capture


class LastQueryCapture(Capture):
    """Records ``rows[layer]`` = the last query position's attention ``[batch, head, key_pos]`` (float32, CPU)."""

    def __init__(self, layers: Sequence[int]):
        super().__init__()
        self._layers = list(layers)
        self.rows: dict[int, torch.Tensor] = {}

    def layers(self, model):
        return self._layers

    def capture(self, layer, module, query, key, attention_mask, *, scaling, softcap, window, row_lse=None):
        from .hooks import eager_pattern

        mask = None if attention_mask is None else attention_mask[..., -1:, :]
        row = eager_pattern(query[:, :, -1:].detach(), key.detach(), mask, scaling, softcap, window)
        self.rows.setdefault(layer, row[:, :, 0].cpu())  # an edited layer's row came from its pattern first


def edited_layers(model, interventions: Sequence) -> list[int]:
    """Layers whose ``pattern`` site an intervention writes (those run the eager pattern anyway)."""
    from .interventions import compile_interventions

    return sorted({site.layer for site in compile_interventions(model, interventions) if site.component == "pattern"})


@torch.no_grad()
def last_query_attention(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                         interventions: Sequence = ()) -> torch.Tensor:
    """``[layer, batch, head, key_pos]`` float64: the attention of the last position of ``ids [batch, pos]``
    (left-padded, ``attention_mask [batch, pos]``) over the keys, in every layer, under ``interventions``."""
    from .sites import Site

    n_layers = model.shape.n_layers
    cap = LastQueryCapture(range(n_layers))

    def read(pattern, site):  # [batch, head, query_pos, key_pos] of a layer edited by an outer context
        cap.rows[site.layer] = pattern[:, :, -1].detach().float().cpu()

    reads = {Site(layer, "pattern"): read for layer in edited_layers(model, interventions)}
    from .attention import _no_logits

    with model.intervene(*interventions), model.hooks(reads, capture=cap):
        model.forward(ids, attention_mask, **_no_logits(model))
    return torch.stack([cap.rows[layer] for layer in range(n_layers)]).double()
