"""Context attention with and without the chat template, and steering selected heads toward the context.

Paper: "On the Loss of Context-awareness in General Instruction Fine-tuning" (Wang et al. 2024): once the chat
template is applied, instruction-tuned models attend less to user-provided context, visible in the attention
allocation; steering attention heads toward the context restores it. Here, per head (l, h), with the marked
passage T of the context-grounded QA set (``analyses._calibration_data``, ``context_qa``) and the last prompt
position as query:

    m_plain(l, h) = mean over items of Σ_{j∈T} A[last, j]          (raw prompt)
    m_chat(l, h)  = the same with the prompt wrapped as a user turn (chat template)
    drop(l, h)    = m_plain − m_chat

Steering: the ``n_heads`` heads with the largest drop (layers ≥ ``skip_layers``) get the attention on the span
multiplied by γ and renormalised, a'_j = γ^[j∈T] a_j / ((γ − 1) a_T + 1) — a logit bias log γ on the span
(``interp.attention_edits.ScaleKeyAttention`` with the span as key set); γ is picked from ``grid`` by the
calibration split's mean log-probability of the passage answer (supervised), in chat mode.

Test split (chat mode): answer accuracy — the passage's answer vs the world answer of the model's prior — clean
vs steered vs the same γ on as many random heads (``n_random`` draws), Wilson 95% intervals and the exact McNemar
test vs clean; plain-prompt accuracy for reference (its Wilson interval, and McNemar vs the clean chat run);
the span mass of the selected heads before / after.

Score rows (analysis ``context_attention``): head level ``span_mass_plain``, ``span_mass_chat``,
``span_mass_drop``, ``steer_selected``; model level ``steer_gamma``, ``steer_span_mass_before`` /
``steer_span_mass_after`` and the accuracy rows of ``_calibration_eval`` (conditions clean, steered, random{k}
and plain: ``context_qa_accuracy_plain`` with ci_low/ci_high, ``context_qa_mcnemar_p_plain``, ``…_delta_plain``).
Needs a model with a chat template. Tested in ``tests/unit/test_calibration_steering.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.params import ParamError, Params, param


@dataclass(frozen=True)
class ContextAttentionParams(Params):
    """Context attention and steering (``[params.context_attention]``)."""

    n_heads: int = param(8, "heads steered (largest plain − chat drop)", ge=1)
    grid: tuple[float, ...] = param((1.5, 2.0, 4.0), "steering γ values (> 0; 1 is always tried)", gt=0)
    skip_layers: int = param(0, "first layers never steered", ge=0)
    n_calibration: int = param(32, "calibration items (head selection, γ)", ge=1)
    n_test: int = param(32, "test items", ge=1)
    n_random: int = param(3, "random-head control draws", ge=0)
    batch_size: int = param(16, "prompts per forward pass", ge=1)
    seed: int = param(0, "seed of the random-head draws")

    def check_model(self, model, where=""):
        if not getattr(model.tokenizer, "chat_template", None):
            raise ParamError(f"{where or 'context_attention'}: model {model.name!r} has no chat template; the "
                             "with/without-template comparison needs an instruct model")
        s = model.shape
        if self.skip_layers >= s.n_layers or self.n_heads > (s.n_layers - self.skip_layers) * s.n_heads:
            raise ParamError(f"{where}.n_heads = {self.n_heads} / skip_layers = {self.skip_layers}: the model has "
                             f"{s.n_layers} layers of {s.n_heads} heads")


def steer_edits(model, heads, gamma: float, chat: bool = True):
    """``per_batch(items, ids, mask)`` giving ``ScaleKeyAttention`` on ``heads`` with each item's span as keys."""
    from interp.attention_edits import ScaleKeyAttention
    from interp.choices import span_masks

    def per_batch(items, ids, mask):
        keys = span_masks(model, items, ids, chat=chat)
        return [ScaleKeyAttention(layer, head, gamma=gamma, keys=keys) for layer, head in heads]

    return per_batch if heads and gamma != 1 else None


def run(model, params=None, out_dir=None) -> dict:
    """The ``context_attention`` report entry: ``{"scores"}``."""
    from interp.choices import mean_label_logprob, score_choices, span_masks
    from interp.scores import ScoreTable

    from ._calibration_data import load_items
    from ._calibration_eval import accuracy_rows, last_query_mass, random_head_sets

    p = ContextAttentionParams.coerce(params)
    p.check_model(model)
    cal, test = load_items("context_qa", "calibration", p.n_calibration), load_items("context_qa", "test", p.n_test)
    span = lambda chat: (lambda items, ids, mask: span_masks(model, items, ids, chat=chat))
    plain = last_query_mass(model, cal, span(False), batch_size=p.batch_size)
    chat = last_query_mass(model, cal, span(True), batch_size=p.batch_size, chat=True)
    drop = plain - chat
    d = drop.clone()
    d[:p.skip_layers] = -float("inf")
    order = d.flatten().argsort(descending=True)[:p.n_heads]
    heads = [(int(i) // model.shape.n_heads, int(i) % model.shape.n_heads) for i in order]
    kw = dict(batch_size=p.batch_size, chat=True)
    fit = {g: mean_label_logprob(score_choices(model, cal, per_batch=steer_edits(model, heads, g), **kw))
           for g in sorted({*p.grid, 1.0})}
    gamma = max(fit, key=lambda g: (fit[g], -abs(g - 1)))
    conds = {"clean": None, "steered": steer_edits(model, heads, gamma)}
    for k, rh in enumerate(random_head_sets(model, len(heads), p.n_random, seed=p.seed, exclude=heads)):
        conds[f"random{k}"] = steer_edits(model, rh, gamma)
    scores = {name: score_choices(model, test, per_batch=pb, **kw) for name, pb in conds.items()}
    plain_acc = score_choices(model, test, batch_size=p.batch_size)
    before = last_query_mass(model, test, span(True), **kw)
    after = last_query_mass(model, test, span(True), per_batch=conds["steered"], **kw)
    pick = lambda m: float(sum(m[layer, h] for layer, h in heads) / len(heads))
    sel = torch.zeros_like(drop)
    for layer, h in heads:
        sel[layer, h] = 1
    common = dict(model=model.name, analysis="context_attention")
    n_cal, n_test = len(cal), len(test)
    return {"scores": ScoreTable.concat([
        accuracy_rows({**scores, "plain": plain_acc}, task="context_qa", **common),  # plain: + Wilson, McNemar
        ScoreTable.from_matrix(plain, score="span_mass_plain", n_samples=n_cal, **common),
        ScoreTable.from_matrix(chat, score="span_mass_chat", n_samples=n_cal, **common),
        ScoreTable.from_matrix(drop, score="span_mass_drop", n_samples=n_cal, **common),
        ScoreTable.from_matrix(sel, score="steer_selected", n_samples=n_cal, **common),
        ScoreTable.scalar(gamma, score="steer_gamma", n_samples=n_cal, **common),
        ScoreTable.scalar(pick(before), score="steer_span_mass_before", n_samples=n_test, **common),
        ScoreTable.scalar(pick(after), score="steer_span_mass_after", n_samples=n_test, **common)])}


def data_files(params=None) -> list:
    from ._calibration_data import data_dir

    return [data_dir() / "context_qa.jsonl"]
