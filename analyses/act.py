"""ACT: attention calibration of hidden sinks, with greedy head selection on a calibration set.

Paper: Yu et al. 2024, "Unveiling and Harnessing Hidden Attention Sinks: Enhancing Large Language Models
without Training through Attention Calibration" (ICML). Per head and input, hidden sinks are the keys j other
than the first with

    α_j = Σ_{i ≥ j} A_ij / (n − j) > threshold (0.1)

and calibration multiplies their attention by β (0.4) and gives the removed mass to the other keys of each row
in proportion to their attention (``interp.attention_edits.HiddenSinkCalibration``; not a logit bias).

Steps, on the shipped classification sets (``analyses._calibration_data``):

1. candidates: the ``n_candidates`` heads whose last prompt position puts the most attention on hidden sinks
   (mean over the calibration split);
2. greedy selection (the paper's search, on the calibration split): start from no head; visit the candidates
   in decreasing hidden-sink mass and keep head h when calibrating S ∪ {h} raises the mean log-probability of
   the label among the choices over that of S (strictly);
3. test split: clean vs ACT on the selected heads vs ACT on every candidate (no selection) vs ACT on as many
   random heads (``n_random`` draws): accuracy with Wilson 95% intervals, exact McNemar vs clean.

Score rows (analysis ``act``): head level ``{task}_act_sink_mass`` (candidates), ``{task}_act_gain`` (the
calibration-set gain of adding each visited head), ``{task}_act_selected`` (1 = kept); model level
``{task}_act_n_heads`` and the accuracy rows of ``_calibration_eval``. Tested in
``tests/unit/test_calibration_analyses.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.params import Params, param

from ._calibration_data import TASKS


@dataclass(frozen=True)
class ActParams(Params):
    """ACT (``[params.act]``)."""

    tasks: tuple[str, ...] = param(("sentiment", "category"), "evaluation sets", choices=TASKS)
    n_candidates: int = param(12, "heads visited by the greedy search (most hidden-sink attention)", ge=1)
    beta: float = param(0.4, "factor on the hidden sinks' attention", gt=0, le=1)
    threshold: float = param(0.1, "α above which a key is a hidden sink", gt=0, lt=1)
    n_calibration: int = param(48, "calibration items per task (greedy search)", ge=2)
    n_test: int = param(100, "test items per task", ge=2)
    n_random: int = param(3, "random-head control draws", ge=0)
    batch_size: int = param(25, "prompts per forward pass", ge=1)
    chat: bool = param(False, "wrap prompts in the chat template")
    seed: int = param(0, "seed of the random-head draws")


def edits(heads, p: ActParams) -> list:
    from interp.attention_edits import HiddenSinkCalibration

    return [HiddenSinkCalibration(layer, head, beta=p.beta, threshold=p.threshold) for layer, head in heads]


def hidden_sink_mass(model, items, p: ActParams) -> torch.Tensor:
    """``[layer, head]``: mean attention of the last prompt position on the hidden sinks of each head. The sinks
    come from the statistics engine's column sums (``col_sum``, O(n)) through ACT's rule
    (``hidden_sinks_from_columns``), the last row from ``interp.query_attention``: no ``[query_pos, key_pos]``
    pattern is built."""
    from interp.attention import attention_stats
    from interp.attention_edits import hidden_sinks_from_columns
    from interp.choices import batches
    from interp.query_attention import last_query_attention

    s = model.shape
    total = torch.zeros(s.n_layers, s.n_heads, dtype=torch.float64)
    for _, ids, mask, _ in batches(model, items, p.batch_size, chat=p.chat):
        col = attention_stats(model, ids, ["col_sum"], attention_mask=mask)["col_sum"]  # [layer, batch, head, key]
        real = mask.bool()[None, :, None, :].expand(col.shape)
        sinks = hidden_sinks_from_columns(col, real, threshold=p.threshold).double()
        last = last_query_attention(model, ids, mask)  # [layer, batch, head, key_pos]
        total += (last * sinks).sum((1, 3))
    return total / len(items)


def greedy(candidates, objective) -> tuple[list, list[float]]:
    """(kept heads, gain of each visited head): keep h when objective(kept + [h]) > objective(kept)."""
    kept, gains = [], []
    best = objective([])
    for h in candidates:
        value = objective(kept + [h])
        gains.append(value - best)
        if value > best:
            kept, best = kept + [h], value
    return kept, gains


def run_task(model, task: str, p: ActParams):
    from interp.choices import score_choices
    from interp.scores import ScoreTable

    from ._calibration_data import load_items
    from ._calibration_eval import accuracy_rows, random_head_sets

    cal, test = load_items(task, "calibration", p.n_calibration), load_items(task, "test", p.n_test)
    kw = dict(batch_size=p.batch_size, chat=p.chat)
    mass = hidden_sink_mass(model, cal, p)
    order = mass.flatten().argsort(descending=True)[:p.n_candidates]
    heads = [(int(i) // model.shape.n_heads, int(i) % model.shape.n_heads) for i in order]

    def objective(hs):
        sc = score_choices(model, cal, interventions=edits(hs, p), **kw)
        return sc.mean_label_logprob

    kept, gains = greedy(heads, objective)
    conds = {"clean": [], "act_selected": edits(kept, p), "act_all_candidates": edits(heads, p)}
    for d, rh in enumerate(random_head_sets(model, len(kept), p.n_random, seed=p.seed, exclude=kept)):
        conds[f"random{d}"] = edits(rh, p)
    scores = {name: score_choices(model, test, interventions=items, **kw) for name, items in conds.items()}
    common = dict(model=model.name, analysis="act")
    return ScoreTable.concat([
        accuracy_rows(scores, task=task, **common),
        ScoreTable.from_heads(heads, mass.flatten()[order], score=f"{task}_act_sink_mass", n_samples=len(cal),
                              **common),
        ScoreTable.from_heads(heads, gains, score=f"{task}_act_gain", n_samples=len(cal), **common),
        ScoreTable.from_heads(heads, [float(h in kept) for h in heads], score=f"{task}_act_selected",
                              n_samples=len(cal), **common),
        ScoreTable.scalar(len(kept), score=f"{task}_act_n_heads", n_samples=len(cal), **common)])


def run(model, params=None, out_dir=None) -> dict:
    """The ``act`` report entry: ``{"scores"}``."""
    from interp.scores import ScoreTable

    p = ActParams.coerce(params)
    return {"scores": ScoreTable.concat([run_task(model, t, p) for t in p.tasks])}


def data_files(params=None) -> list:
    from ._calibration_data import data_dir

    return [data_dir() / f"{t}.jsonl" for t in ActParams.coerce(params).tasks]
