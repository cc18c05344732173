"""Ablations beyond the basic set: ``PositionMean`` (each row's own mean over positions) and ``AttendToKey``
(all of a head's attention on one key, without a pattern).

- ``PositionMean(site, attention_mask)``: ``x_{b,i} ← Σ_j m_{bj} x_{b,j} / max(1, Σ_j m_{bj})`` (the mean
  ablation of Zhou et al. 2024, "On the Role of Attention Heads in LLM Safety", official code: each prompt's own
  mean over its real tokens).
- ``AttendToKey(layer, head, key_pos)``: ``z_h ← v_{g(h), key_pos}`` at every query position, which is exactly
  the output of a one-hot pattern on ``key_pos`` (Guo et al. 2024, "Active-Dormant Attention Heads", moving a
  head's attention to the sink token 0).

Both are ``interp.interventions.Intervention`` values (print, compare, JSON). Validated in
``tests/unit/test_variants.py`` against hand computations on tiny models (dense float64 one-hot pattern for
``AttendToKey``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .interventions import Intervention, _resolve
from .sites import Site


@dataclass(frozen=True, eq=False, repr=False)
class PositionMean(Intervention):
    """Replace the activation at ``site`` by its own mean over positions, row by row:
    ``x_{b,i} ← Σ_j m_{bj} x_{b,j} / max(1, Σ_j m_{bj})`` with ``m = attention_mask [batch, pos]`` (1 = real
    token; all ones when None, or when the forward's positions differ from the mask's, e.g. a KV-cache step).
    The mean ablation of the safety-head paper's code (each prompt's own mean, padding excluded)."""

    site: Site
    attention_mask: torch.Tensor | None = None
    query_head: int | None = None

    def __post_init__(self):
        m = self.attention_mask
        if m is not None and (not isinstance(m, torch.Tensor) or m.ndim != 2):
            raise ValueError(f"PositionMean: attention_mask must be a [batch, pos] tensor, got {m!r}")

    def compile(self, model):
        site = _resolve(self.site, self.query_head, model, repr(self))
        if site.component == "pattern":
            raise ValueError(f"{self!r}: a mean over positions of a pattern is meaningless; use Mean")
        mask = self.attention_mask

        def fn(x, s):  # [batch, pos, ...]
            if mask is not None and mask.shape[1] == x.shape[1]:
                if mask.shape[0] != x.shape[0]:
                    raise ValueError(f"{self!r}: attention_mask has {mask.shape[0]} rows but the forward has "
                                     f"{x.shape[0]}; give the mask of the rows it acts on (OnRows: its rows)")
                w = mask.to(x.device, x.dtype).reshape(*mask.shape, *([1] * (x.ndim - 2)))
            else:
                w = torch.ones(x.shape[0], x.shape[1], *([1] * (x.ndim - 2)), dtype=x.dtype, device=x.device)
            mean = (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp(min=1)
            return mean.expand_as(x).clone()

        return [(site, fn)]


@dataclass(frozen=True, eq=False, repr=False)
class AttendToKey(Intervention):
    """Move all attention of query head ``head`` at ``layer`` onto key position ``key_pos``, without a pattern:
    ``z_h ← v_{g(h), key_pos}`` at every query position (exactly the output of a one-hot pattern on that key;
    Guo et al. 2024's "dormant" edit with ``key_pos = 0``). Needs the whole sequence in one forward (no KV
    cache)."""

    layer: int
    head: int
    key_pos: int = 0

    def compile(self, model):
        shape = model.shape
        z_site = Site(self.layer, "z", self.head).validate(shape)
        kv = shape.kv_head_of(self.head)
        seen = {}

        def grab(v, s):  # [batch, pos, kv_head, d_head]
            if not -v.shape[1] <= self.key_pos < v.shape[1]:
                raise ValueError(f"{self!r}: key_pos {self.key_pos} is outside the {v.shape[1]} positions of "
                                 "this forward")
            seen["v"] = v[:, self.key_pos, kv].detach()

        def put(z, s):  # [batch, pos, d_head]
            return seen.pop("v").to(z.dtype)[:, None].expand_as(z).clone()

        return [(Site(self.layer, "v"), grab), (z_site, put)]
