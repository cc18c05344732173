"""Head sets and the "top-k heads vs k random heads" causal check: ``top_heads``, ``random_heads``,
``causal_check``.

The check every head-scoring paper runs to show a score is causal (retrieval heads, Wu et al. 2024; safety heads,
Zhou et al. 2024; sink and induction heads): ablate the ``k`` best-scoring heads together, then ``n`` sets of
``k`` random heads, and compare the change of a metric ``m`` (e.g. the next-token loss):

    Δ(S)   = m(f | ablate S) − m(f)
    S*     = top-k heads by score;  R_1 … R_n  = k distinct heads each, drawn uniformly (seeded) from the heads
             not excluded
    ratio  = Δ(S*) / mean_i Δ(R_i)
    CI     = mean_i Δ(R_i) ± t_{0.975, n−1} · sd_i Δ(R_i) / √n        (n ≥ 2; Student t)
    ratio_ci = Δ(S*) / CI (bounds swapped), when the whole CI is > 0; else (−inf, inf) when the CI contains 0

All ``n + 2`` conditions run as variants of one ``interp.variants.run_variants`` call (packed in the batch).

Validated in ``tests/unit/test_heads.py``: ``top_heads`` recovers planted scores (ties by layer then head),
``random_heads`` draws are uniform and seeded, and ``causal_check`` on a tiny model whose planted heads carry
the signal finds them, with Δ equal to separate forwards under ``model.intervene``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Student t quantiles t_{0.975, df} for df = 1 … 30 (larger df: the normal 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045,
         2.042)


def _matrix(scores, score: str | None) -> np.ndarray:
    """``[layer, head]`` float array from a tensor/array or a tidy score table (rows of ``score``)."""
    if hasattr(scores, "columns"):  # a score table (pandas.DataFrame)
        if score is None:
            raise ValueError("scores is a score table: name the score to rank by (score='...')")
        sub = scores[(scores["score"] == score) & (scores["layer"] >= 0) & (scores["head"] >= 0)]
        if sub.empty:
            raise ValueError(f"score {score!r} has no head rows in the table; it has {sorted(set(scores['score']))}")
        m = np.full((int(sub["layer"].max()) + 1, int(sub["head"].max()) + 1), np.nan)
        m[sub["layer"].astype(int), sub["head"].astype(int)] = sub["value"].astype(float)
        return m
    m = scores.detach().double().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores, float)
    if m.ndim != 2:
        raise ValueError(f"scores must be [layer, head], got shape {m.shape}")
    return m


def top_heads(scores, k: int | None = None, *, threshold: float | None = None,
              score: str | None = None) -> list[tuple[int, int]]:
    """Heads ``(layer, head)`` by descending score, best first (ties: lower layer, then lower head; NaN last and
    never above a threshold): the top ``k`` (all if None) of those above ``threshold`` (if given).

    ``scores``: ``[layer, head]`` (tensor or array) or a tidy score table with ``score=`` naming the rows."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0):
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    s = np.nan_to_num(_matrix(scores, score), nan=-np.inf)
    order = np.argsort(-s, axis=None, kind="stable")
    heads = [tuple(int(x) for x in np.unravel_index(i, s.shape)) for i in order]
    if threshold is not None:
        heads = [(layer, h) for layer, h in heads if s[layer, h] > threshold]
    return heads[:k] if k is not None else heads


def all_heads(shape) -> list[tuple[int, int]]:
    """Every ``(layer, head)`` of a model shape (``model.shape``), layer-major."""
    return [(layer, h) for layer in range(shape.n_layers) for h in range(shape.n_heads)]


def random_heads(model_or_shape, k: int, *, exclude: Sequence[tuple[int, int]] = (), seed: int = 0,
                 rng: random.Random | None = None) -> list[tuple[int, int]]:
    """``k`` distinct heads drawn uniformly from the heads not in ``exclude``, sorted (a control set).

    ``rng``: a ``random.Random`` to draw several sets in sequence (else ``random.Random(seed)``: a set depends
    on its seed only)."""
    shape = getattr(model_or_shape, "shape", model_or_shape)
    excluded = {(int(a), int(b)) for a, b in exclude}
    pool = [lh for lh in all_heads(shape) if lh not in excluded]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 < k <= len(pool):
        raise ValueError(f"k = {k!r} random heads: choose 1 ≤ k ≤ {len(pool)} (the heads left after excluding "
                         f"{len(excluded)})")
    return sorted((rng or random.Random(seed)).sample(pool, int(k)))


@dataclass
class CausalCheck:
    """Result of ``causal_check``: metric without ablation (``base``), Δ for the top heads and each random draw,
    their ratio and 95% intervals (see the module docstring)."""

    base: float
    top: list[tuple[int, int]]
    d_top: float
    random_sets: list[list[tuple[int, int]]]
    d_random_draws: list[float]

    @property
    def d_random(self) -> float:
        return float(np.mean(self.d_random_draws))

    @property
    def ratio(self) -> float:
        return self.d_top / self.d_random if self.d_random > 0 else float("inf")

    @property
    def d_random_ci(self) -> tuple[float, float]:
        n = len(self.d_random_draws)
        if n < 2:
            return (float("nan"), float("nan"))
        t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
        half = t * float(np.std(self.d_random_draws, ddof=1)) / math.sqrt(n)
        return (self.d_random - half, self.d_random + half)

    @property
    def ratio_ci(self) -> tuple[float, float]:
        lo, hi = self.d_random_ci
        if math.isnan(lo):
            return (float("nan"), float("nan"))
        if lo <= 0:
            return (-float("inf"), float("inf"))
        a, b = self.d_top / hi, self.d_top / lo
        return (min(a, b), max(a, b))

    def to_dict(self) -> dict:
        """The flat dict the analyses report (heads as ``L{layer}H{head}``)."""
        return {"base_loss": self.base, "top_heads": [f"L{a}H{b}" for a, b in self.top], "dloss_top": self.d_top,
                "dloss_random": self.d_random, "dloss_random_draws": list(self.d_random_draws),
                "ratio": self.ratio, "dloss_random_ci": list(self.d_random_ci), "ratio_ci": list(self.ratio_ci)}


def causal_check(model, ids: torch.Tensor, scores, ablate: Callable, readout: Callable, *, k: int = 5,
                 n_random: int = 5, seed: int = 0, exclude: Sequence[tuple[int, int]] = (),
                 exclude_top: bool = False, attention_mask: torch.Tensor | None = None,
                 memory_budget_mb: float = 1024.0) -> CausalCheck:
    """Ablate the top-``k`` heads of ``scores [layer, head]`` vs ``n_random`` sets of ``k`` random heads.

    ``ids``/``attention_mask``: ``[batch, pos]``. ``ablate(layer, head)``: the intervention(s) removing one head
    (e.g. ``lambda l, h: Zero(Site(l, "z", h))``). ``readout(VariantOutput)``: the metric as a scalar tensor
    (e.g. ``lambda o: mean_next_token_loss(o.logits, o.ids)``). Random sets avoid ``exclude`` (and the top
    heads when ``exclude_top``); they come from one ``random.Random(seed)`` in sequence."""
    from .variants import run_variants

    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 1:
        raise ValueError(f"n_random must be a positive int, got {n_random!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    top = top_heads(scores, k)
    rng = random.Random(seed)
    skip = list(exclude) + (top if exclude_top else [])
    sets = [random_heads(model, k, exclude=skip, rng=rng) for _ in range(n_random)]
    variants = [[]] + [[it for lh in hs for it in _as_list(ablate(*lh))] for hs in [top] + sets]
    values = run_variants(model, ids, variants, readout, attention_mask=attention_mask,
                          memory_budget_mb=memory_budget_mb).double().reshape(len(variants), -1)
    if values.shape[1] != 1:
        raise ValueError(f"readout must return one number per variant, got {values.shape[1]}")
    v = values[:, 0].tolist()
    return CausalCheck(base=v[0], top=top, d_top=v[1] - v[0], random_sets=sets,
                       d_random_draws=[x - v[0] for x in v[2:]])


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]
