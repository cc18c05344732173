"""ZeroTuning: per-head scaling of the initial token's attention, head selection and γ calibration.

Paper: Han et al. 2025, "ZeroTuning: Unlocking the Initial Token's Power to Enhance Large Language Models
Without Training". In a chosen head the attention on the first token is scaled by γ and the row renormalised,

    a'_0 = γ a_0 / D,   a'_j = a_j / D,   D = (γ − 1) a_0 + 1      (= logit bias log γ on key 0)

(``interp.attention_edits.ScaleKeyAttention``). Steps, on the shipped classification sets
(``analyses._calibration_data``):

1. candidates: the ``n_candidates`` heads with the largest a_0 (1 − a_0), a_0 = first-token attention of the last
   prompt position (mean over the calibration split): the mass γ moves, d a'_0 / d log γ at γ = 1. (Ranking by
   a_0 alone picks heads with a_0 ≈ 1, where γ ∈ [0.5, 4] moves almost nothing: measured on the default model,
   |Δ| < 2e-3 nats for its six a_0 > 0.97 heads.)
2. per-head sweep: for every candidate and γ in ``sweep``, Δ_h(γ) = m(γ) − m(1), m = mean log-probability of the
   label among the choices on the calibration split;
3. head selection: a head is kept when its effect has a consistent sign — ``up`` (s_h = +1) if Δ_h(γ) > 0 for
   every γ > 1 and Δ_h(γ) < 0 for every γ < 1, ``down`` (s_h = −1) for the reverse; others are dropped;
4. calibration of one γ for all kept heads (up heads get γ, down heads 1/γ), over ``grid`` ∪ {1}:
   supervised — the highest validation accuracy (ties: smallest |log γ|); unsupervised — the lowest mean
   entropy of the answer distribution over the choices on the validation prompts (labels unused);
5. test split: clean vs supervised vs unsupervised vs the supervised γ on as many random heads (``n_random``
   draws, same up/down counts), accuracy with Wilson 95% intervals and the exact McNemar test vs clean.

Score rows (analysis ``zerotuning``): head level ``{task}_zt_delta_g{γ}`` (Δ_h(γ)), ``{task}_zt_sign``
(+1 / −1 / 0), ``{task}_zt_first_mass`` (a_0); model level ``{task}_zt_gamma_supervised`` /
``{task}_zt_gamma_unsupervised``, ``{task}_zt_n_heads``, the accuracy rows of ``_calibration_eval``. Extra
tables: ``sweep`` (task, layer, head, gamma, delta) and ``calibration`` (task, gamma, val_accuracy,
val_entropy) — the γ-sweep curves of the notebook. Tested in ``tests/unit/test_calibration_analyses.py``
(planted signs on a tiny model, the selection and calibration rules by hand).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from interp.params import ParamError, Params, param

from ._calibration_data import TASKS


@dataclass(frozen=True)
class ZeroTuningParams(Params):
    """ZeroTuning (``[params.zerotuning]``)."""

    tasks: tuple[str, ...] = param(("sentiment", "category"), "evaluation sets", choices=TASKS)
    n_candidates: int = param(12, "heads swept (largest a_0 (1 − a_0), a_0 = first-token attention)", ge=1)
    sweep: tuple[float, ...] = param((0.5, 2.0), "per-head γ values (need one < 1 and one > 1)", gt=0)
    grid: tuple[float, ...] = param((0.25, 0.5, 0.75, 1.5, 2.0, 4.0), "calibration γ values", gt=0)
    n_calibration: int = param(48, "calibration items per task (sweep)", ge=2)
    n_validation: int = param(50, "validation items per task (γ calibration)", ge=2)
    n_test: int = param(100, "test items per task", ge=2)
    n_random: int = param(3, "random-head control draws", ge=0)
    batch_size: int = param(25, "prompts per forward pass", ge=1)
    chat: bool = param(False, "wrap prompts in the chat template")
    seed: int = param(0, "seed of the random-head draws")

    def check(self, where):
        if not (min(self.sweep) < 1 < max(self.sweep)):
            raise ParamError(f"{where}.sweep = {list(self.sweep)}: needs a value below 1 and one above 1 to "
                             "tell up heads from down heads")

    def check_model(self, model, where=""):
        if self.n_candidates > model.shape.n_layers * model.shape.n_heads:
            raise ParamError(f"{where}.n_candidates = {self.n_candidates}: the model has only "
                             f"{model.shape.n_layers * model.shape.n_heads} heads")


def head_signs(deltas: dict[float, torch.Tensor]) -> torch.Tensor:
    """``[head]`` of +1 (up), −1 (down), 0 (inconsistent) from ``{γ: Δ [head]}`` (rule 3 of the docstring)."""
    up = torch.ones_like(next(iter(deltas.values())), dtype=torch.bool)
    down = up.clone()
    for g, d in deltas.items():
        up &= (d > 0) if g > 1 else (d < 0) if g < 1 else torch.ones_like(up)
        down &= (d < 0) if g > 1 else (d > 0) if g < 1 else torch.ones_like(up)
    return up.long() - down.long()


def edits(heads, signs, gamma: float) -> list:
    """``ScaleKeyAttention`` on key 0 for every head with sign ±1 (γ for up heads, 1/γ for down heads)."""
    from interp.attention_edits import ScaleKeyAttention

    return [ScaleKeyAttention(layer, head, gamma=gamma if s > 0 else 1 / gamma)
            for (layer, head), s in zip(heads, signs) if s != 0]


def pick_gammas(table: pd.DataFrame) -> tuple[float, float]:
    """(supervised γ, unsupervised γ) from a calibration table (gamma, val_accuracy, val_entropy)."""
    t = table.assign(dist=table["gamma"].map(lambda g: abs(math.log(g))))
    sup = t.sort_values(["val_accuracy", "dist"], ascending=[False, True]).iloc[0]["gamma"]
    uns = t.sort_values(["val_entropy", "dist"], ascending=[True, True]).iloc[0]["gamma"]
    return float(sup), float(uns)


def run_task(model, task: str, p: ZeroTuningParams):
    """(score rows, sweep rows, calibration rows) for one task."""
    from interp.choices import mean_label_logprob, score_choices
    from interp.scores import ScoreTable

    from ._calibration_data import load_items
    from ._calibration_eval import accuracy_rows, first_key_masks, last_query_mass, random_head_sets

    cal, val = load_items(task, "calibration", p.n_calibration), load_items(task, "validation", p.n_validation)
    test = load_items(task, "test", p.n_test)
    kw = dict(batch_size=p.batch_size, chat=p.chat)
    first = last_query_mass(model, cal, first_key_masks, **kw)  # [layer, head]
    order = (first * (1 - first)).flatten().argsort(descending=True)[:p.n_candidates]
    heads = [(int(i) // model.shape.n_heads, int(i) % model.shape.n_heads) for i in order]
    base = mean_label_logprob(score_choices(model, cal, **kw))
    deltas = {g: torch.tensor([mean_label_logprob(score_choices(model, cal, interventions=edits([h], [1], g), **kw))
                               - base for h in heads]) for g in p.sweep}
    signs = head_signs(deltas)
    calib = []
    for g in sorted({*p.grid, 1.0}):
        sc = score_choices(model, val, interventions=edits(heads, signs, g), **kw)
        calib.append({"task": task, "gamma": g, "val_accuracy": sc.accuracy, "val_entropy": float(sc.entropy.mean())})
    calib = pd.DataFrame(calib)
    g_sup, g_uns = pick_gammas(calib)
    kept = [h for h, s in zip(heads, signs) if s != 0]
    conds = {"clean": [], "zerotuning_supervised": edits(heads, signs, g_sup),
             "zerotuning_unsupervised": edits(heads, signs, g_uns)}
    kept_signs = [int(s) for s in signs if s != 0]
    for d, rh in enumerate(random_head_sets(model, len(kept), p.n_random, seed=p.seed, exclude=kept)):
        conds[f"random{d}"] = edits(rh, kept_signs, g_sup)
    scores = {name: score_choices(model, test, interventions=items, **kw) for name, items in conds.items()}
    common = dict(model=model.name, analysis="zerotuning")
    rows = [accuracy_rows(scores, task=task, **common),
            ScoreTable.from_heads(heads, signs.double(), score=f"{task}_zt_sign", n_samples=len(cal), **common),
            ScoreTable.from_heads(heads, first.flatten()[order], score=f"{task}_zt_first_mass", n_samples=len(cal),
                                  **common),
            ScoreTable.scalar(g_sup, score=f"{task}_zt_gamma_supervised", n_samples=len(val), **common),
            ScoreTable.scalar(g_uns, score=f"{task}_zt_gamma_unsupervised", n_samples=len(val), **common),
            ScoreTable.scalar(len(kept), score=f"{task}_zt_n_heads", n_samples=len(cal), **common)]
    rows += [ScoreTable.from_heads(heads, d, score=f"{task}_zt_delta_g{g:g}", n_samples=len(cal), **common)
             for g, d in deltas.items()]
    sweep = pd.DataFrame([{"task": task, "layer": h[0], "head": h[1], "gamma": g, "delta": float(d[i])}
                          for g, d in deltas.items() for i, h in enumerate(heads)])
    return ScoreTable.concat(rows), sweep, calib


def run(model, params=None, out_dir=None) -> dict:
    """The ``zerotuning`` report entry: ``{"scores", "sweep", "calibration"}``."""
    from interp.scores import ScoreTable

    p = ZeroTuningParams.coerce(params)
    parts = [run_task(model, task, p) for task in p.tasks]
    return {"scores": ScoreTable.concat([x[0] for x in parts]),
            "sweep": pd.concat([x[1] for x in parts], ignore_index=True),
            "calibration": pd.concat([x[2] for x in parts], ignore_index=True)}


def data_files(params=None) -> list:
    from ._calibration_data import data_dir

    p = ZeroTuningParams.coerce(params)
    return [data_dir() / f"{t}.jsonl" for t in p.tasks]
