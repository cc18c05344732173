"""Shared evaluation of the attention-calibration analyses: accuracy of conditions on the same held-out items
with Wilson 95% intervals and the exact McNemar test against the clean run, random-head control sets, and the
per-head attention mass the final query puts on a key set.

- ``accuracy_rows``: model-level score rows ``{task}_accuracy_{condition}`` (ci_low/ci_high = Wilson 95%),
  ``{task}_mcnemar_p_{condition}`` (exact two-sided McNemar on the discordant items vs ``clean``) and
  ``{task}_accuracy_delta_{condition}``; random-head draws also get their mean accuracy (``…_random_mean``).
- ``last_query_mass``: ``[layer, head]`` mean over items of Σ_{j∈K} A[last, j], with K from
  ``key_masks(batch_items, ids, mask) -> bool [batch, key_pos]`` (e.g. a marked span), under interventions.

Statistics come from ``interp.stats`` (``wilson_interval``, ``mcnemar_exact_p``); random heads from
``interp.heads.random_heads``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch

from interp.heads import random_heads
from interp.scores import ScoreTable
from interp.stats import mcnemar_exact_p, wilson_interval


def accuracy_rows(scores: dict, *, model: str, analysis: str, task: str, baseline: str = "clean") -> pd.DataFrame:
    """Score rows for every condition of ``scores`` ({name: ChoiceScores on the same items})."""
    base = scores[baseline].correct
    n = int(base.shape[0])
    rows = []
    for name, sc in scores.items():
        k = int(sc.correct.sum())
        lo, hi = wilson_interval(k, n)
        common = dict(model=model, analysis=analysis, n_samples=n)
        rows.append(ScoreTable.scalar(k / n, score=f"{task}_accuracy_{name}", ci_low=lo, ci_high=hi, **common))
        if name != baseline:
            b = int((base & ~sc.correct).sum())
            c = int((~base & sc.correct).sum())
            rows.append(ScoreTable.scalar(mcnemar_exact_p(b, c), score=f"{task}_mcnemar_p_{name}", **common))
            rows.append(ScoreTable.scalar(k / n - float(base.double().mean()), score=f"{task}_accuracy_delta_{name}",
                                          **common))
    rand = [sc.accuracy for name, sc in scores.items() if name.startswith("random")]
    if rand:
        rows.append(ScoreTable.scalar(sum(rand) / len(rand), score=f"{task}_accuracy_random_mean", model=model,
                                      analysis=analysis, n_samples=n))
    return ScoreTable.concat(rows)


def random_head_sets(model, k: int, n_draws: int, *, seed: int = 0, exclude: Sequence = ()) -> list[list]:
    """``n_draws`` sets of ``k`` distinct random heads ``(layer, head)``, avoiding ``exclude``."""
    return [random_heads(model, k, seed=seed + d, exclude=exclude) for d in range(n_draws)] if k else []


@torch.no_grad()
def last_query_mass(model, items: Sequence[dict], key_masks: Callable, *, interventions: Sequence = (),
                    per_batch: Callable | None = None, batch_size: int = 16, chat: bool = False) -> torch.Tensor:
    """``[layer, head]`` (float64): mean over ``items`` of the attention the last prompt position puts on the
    keys of ``key_masks(batch_items, ids, mask)`` (bool ``[batch, key_pos]``), under ``interventions`` and
    ``per_batch(batch_items, ids, mask)``. Reads only the last query row of each layer
    (``interp.query_attention``), never the ``[query_pos, key_pos]`` pattern."""
    from interp.choices import batches
    from interp.query_attention import last_query_attention

    s = model.shape
    total = torch.zeros(s.n_layers, s.n_heads, dtype=torch.float64)
    for batch, ids, mask, _ in batches(model, items, batch_size, chat=chat):
        keys = key_masks(batch, ids, mask).double()  # [batch, key_pos]
        extra = list(per_batch(batch, ids, mask)) if per_batch is not None else []
        last = last_query_attention(model, ids, mask, interventions=[*interventions, *extra])  # [l, b, h, k]
        total += (last * keys[None, :, None, :]).sum((1, 3))
    return total / len(items)


def first_key_masks(batch, ids, mask) -> torch.Tensor:
    """Bool ``[batch, key_pos]``: each row's first real token (left padding)."""
    first = mask.long().argmax(-1)
    return torch.nn.functional.one_hot(first, ids.shape[1]).bool()


def heads_table(heads: Sequence, values, *, model: str, analysis: str, score: str, n: int) -> pd.DataFrame:
    """Head-level rows for a (possibly empty) list of heads."""
    if not len(heads):
        return ScoreTable.from_heads([], [], model=model, analysis=analysis, score=score, n_samples=n)
    return ScoreTable.from_heads(heads, values, model=model, analysis=analysis, score=score, n_samples=n)
