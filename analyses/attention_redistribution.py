"""VAR on text: redistribute sink attention onto a marked span in the heads that attend to it.

Paper: Kang et al. 2025, "See What You Are Told: Visual Attention Sink in Large Multimodal Models" (ICLR).
VAR finds the heads that attend to the image (image-centric heads) and, in them, takes a fraction p of the
attention that sink tokens receive and gives it to the image tokens in proportion to their attention:

    a'_s = (1 − p) a_s (s ∈ S),   a'_t = a_t + p a_S · a_t / a_T (t ∈ T),   others unchanged

(``interp.attention_edits.Redistribute``). On text models the target set T is a marked span — here the passage
of the context-grounded QA set (``analyses._calibration_data``, ``context_qa``); for LLaVA-style models
``interp.attention_edits.image_keys`` gives the image-token positions for the same edit. Sinks S: the first
token (``sinks="first"``) or ACT's hidden sinks (``"hidden_sinks"``).

Head selection (the text analogue of VAR's image-centric heads): for the last prompt position, the span share
of the non-sink attention r_h = a_T / (1 − a_first), averaged over the calibration split; heads of layers ≥
``skip_layers`` with r_h ≥ ``rho`` are kept (at most ``max_heads``, largest r_h first).

Test split: answer accuracy (the passage's answer vs the world answer the model's prior holds) clean vs VAR on
the selected heads vs VAR on as many random heads (``n_random`` draws), with Wilson 95% intervals and the exact
McNemar test vs clean; the mean span mass of the selected heads before / after.

Score rows (analysis ``attention_redistribution``): head level ``var_span_share`` (every head), ``var_selected``;
model level ``var_n_heads``, ``var_span_mass_before`` / ``var_span_mass_after`` and the accuracy rows of
``_calibration_eval`` (task ``context_qa``). Tested in ``tests/unit/test_calibration_steering.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.params import Params, param


@dataclass(frozen=True)
class RedistributionParams(Params):
    """VAR on a marked span (``[params.attention_redistribution]``)."""

    p: float = param(0.6, "fraction of the sinks' attention moved to the span", ge=0, le=1)
    sinks: str = param("first", "sink keys", choices=("first", "hidden_sinks"))
    rho: float = param(0.3, "span share r_h a head needs to be selected", ge=0, le=1)
    max_heads: int = param(16, "most heads selected", ge=1)
    skip_layers: int = param(2, "first layers never selected (VAR skips the first two)", ge=0)
    n_calibration: int = param(32, "calibration items (head selection)", ge=1)
    n_test: int = param(32, "test items", ge=1)
    n_random: int = param(3, "random-head control draws", ge=0)
    batch_size: int = param(16, "prompts per forward pass", ge=1)
    chat: bool = param(False, "wrap prompts in the chat template")
    seed: int = param(0, "seed of the random-head draws")


def span_edits(model, heads, p: float, sinks: str = "first", chat: bool = False):
    """``per_batch(items, ids, mask)`` giving ``Redistribute`` on ``heads`` toward each item's span."""
    from interp.attention_edits import Redistribute
    from interp.choices import span_masks

    def per_batch(items, ids, mask):
        target = span_masks(model, items, ids, chat=chat)
        return [Redistribute(layer, head, p=p, target=target, sinks=sinks) for layer, head in heads]

    return per_batch if heads else None


def select_heads(share: torch.Tensor, rho: float, max_heads: int, skip_layers: int) -> list[tuple[int, int]]:
    """Heads (layer ≥ skip_layers) with ``share [layer, head]`` ≥ rho, largest first, at most ``max_heads``."""
    s = share.clone()
    s[:skip_layers] = -1
    order = s.flatten().argsort(descending=True)
    heads = [(int(i) // s.shape[1], int(i) % s.shape[1]) for i in order if s.flatten()[i] >= rho]
    return heads[:max_heads]


def run(model, params=None, out_dir=None) -> dict:
    """The ``attention_redistribution`` report entry: ``{"scores"}``."""
    from interp.choices import score_choices, span_masks
    from interp.scores import ScoreTable

    from ._calibration_data import load_items
    from ._calibration_eval import accuracy_rows, first_key_masks, last_query_mass, random_head_sets

    p = RedistributionParams.coerce(params)
    cal, test = load_items("context_qa", "calibration", p.n_calibration), load_items("context_qa", "test", p.n_test)
    kw = dict(batch_size=p.batch_size, chat=p.chat)
    span = lambda items, ids, mask: span_masks(model, items, ids, chat=p.chat)
    on_span = last_query_mass(model, cal, span, **kw)
    on_first = last_query_mass(model, cal, first_key_masks, **kw)
    share = on_span / (1 - on_first).clamp_min(1e-12)
    heads = select_heads(share, p.rho, p.max_heads, p.skip_layers)
    conds = {"clean": span_edits(model, [], p.p), "var_selected": span_edits(model, heads, p.p, p.sinks, p.chat)}
    for d, rh in enumerate(random_head_sets(model, len(heads), p.n_random, seed=p.seed, exclude=heads)):
        conds[f"random{d}"] = span_edits(model, rh, p.p, p.sinks, p.chat)
    scores = {name: score_choices(model, test, per_batch=pb, **kw) for name, pb in conds.items()}
    common = dict(model=model.name, analysis="attention_redistribution")
    rows = [accuracy_rows(scores, task="context_qa", **common),
            ScoreTable.from_matrix(share, score="var_span_share", n_samples=len(cal), **common),
            ScoreTable.scalar(len(heads), score="var_n_heads", n_samples=len(cal), **common)]
    if heads:
        sel = torch.zeros_like(share)
        for layer, h in heads:
            sel[layer, h] = 1
        before = last_query_mass(model, test, span, **kw)
        after = last_query_mass(model, test, span, per_batch=conds["var_selected"], **kw)
        pick = lambda m: float(sum(m[layer, h] for layer, h in heads) / len(heads))
        rows += [ScoreTable.from_matrix(sel, score="var_selected", n_samples=len(cal), **common),
                 ScoreTable.scalar(pick(before), score="var_span_mass_before", n_samples=len(test), **common),
                 ScoreTable.scalar(pick(after), score="var_span_mass_after", n_samples=len(test), **common)]
    return {"scores": ScoreTable.concat(rows)}


def data_files(params=None) -> list:
    from ._calibration_data import data_dir

    return [data_dir() / "context_qa.jsonl"]
