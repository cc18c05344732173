"""Multiple-choice / classification scoring by next-token log-probabilities, under interventions.

An item is a dict with ``prompt`` (str), ``choices`` (strings whose first tokens differ, e.g. " positive" /
" negative") and ``label`` (index of the right choice); ``span`` (optional, ``[start, end)`` character offsets
of a marked passage in ``prompt``). The score of choice c is

    s_c = log softmax(logits[last prompt position])[first token of c]

(when the choices share leading tokens, e.g. a space under a byte tokenizer, those are appended to the prompt
and the first differing token is scored)
(log-probability over the whole vocabulary); the prediction is argmax_c s_c. ``entropy`` is the entropy of the
distribution renormalised over the choices, H = −Σ_c p_c log p_c with p = softmax(s) — the unsupervised
objective of ZeroTuning's calibration. Prompts are left-padded in batches (``interp.batching.pad_batch``);
``chat=True`` wraps each prompt as a user turn with the chat template. ``span_masks`` maps every item's span to a
bool ``[batch, key_pos]`` mask of the padded batch (for ``interp.attention_edits`` key sets).
``encode_items`` / ``batches`` give the same padded batches to other measurements (attention mass).

Validated in ``tests/unit/test_choices.py`` against one-prompt-at-a-time log-softmax by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class ChoiceScores:
    """``logprobs [item, choice]`` (float64), ``labels [item]``; accuracy / entropy derived."""

    logprobs: torch.Tensor
    labels: torch.Tensor

    @property
    def correct(self) -> torch.Tensor:
        """Bool ``[item]``: the highest-scoring choice is the label."""
        return self.logprobs.argmax(-1) == self.labels

    @property
    def accuracy(self) -> float:
        return float(self.correct.double().mean())

    @property
    def entropy(self) -> torch.Tensor:
        """``[item]``: entropy (nats) of the distribution renormalised over the choices."""
        logp = torch.log_softmax(self.logprobs, -1)
        return -(logp.exp() * logp).sum(-1)

    @property
    def label_prob(self) -> torch.Tensor:
        """``[item]``: probability of the label among the choices."""
        return torch.softmax(self.logprobs, -1).gather(-1, self.labels[:, None])[:, 0]

    @property
    def mean_label_logprob(self) -> float:
        """Mean over items of log p(label) among the choices: the calibration objective of ZeroTuning, ACT and
        context steering (floored at 1e-300 so one impossible label does not make it -inf)."""
        return float(torch.log(self.label_prob.clamp_min(1e-300)).mean())


def mean_label_logprob(scores: ChoiceScores) -> float:
    """``scores.mean_label_logprob`` as a function (for ``max``/``map`` over conditions)."""
    return scores.mean_label_logprob


def _common_prefix(rows: list[list[int]]) -> int:
    n = 0
    while all(len(r) > n for r in rows) and len({r[n] for r in rows}) == 1:
        n += 1
    return n


def encode_items(model, items: Sequence[dict], *, chat: bool = False) -> list[tuple[list[int], list[int]]]:
    """``[(prompt ids, choice ids)]``: when the choices share leading tokens (e.g. a space under a byte
    tokenizer) those are appended to the prompt and each choice is scored by its first differing token.
    One clear error for a malformed item."""
    from .batching import tokenize

    if not items:
        raise ValueError("no items to score: give at least one {prompt, choices, label} item")
    out = []
    for i, it in enumerate(items):
        for key in ("prompt", "choices", "label"):
            if key not in it:
                raise ValueError(f"item {i} ({it.get('id', '?')}) has no {key!r}; items need prompt, choices, label")
        rows = [list(model.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in it["choices"]]
        n = _common_prefix(rows)
        if len(rows) < 2 or any(len(r) <= n for r in rows):
            raise ValueError(f"item {i}: choices {it['choices']!r} need at least two, none a token prefix of "
                             "another; reword them so the next-token scores tell them apart")
        if not 0 <= int(it["label"]) < len(rows):
            raise ValueError(f"item {i}: label {it['label']!r} is not an index into its {len(rows)} choices")
        out.append((tokenize(model, it["prompt"], chat=chat) + rows[0][:n], [r[n] for r in rows]))
    return out


def check_items(model, items: Sequence[dict]) -> list[list[int]]:
    """The scored token id of every choice of every item (``encode_items``)."""
    return [c for _, c in encode_items(model, items)]


def _text(model, prompt: str, chat: bool) -> tuple[str, int, bool]:
    """(text to tokenise, char offset of ``prompt`` inside it, add_special_tokens)."""
    if not chat:
        return prompt, 0, True
    full = model.apply_chat_template(prompt)
    return full, full.index(prompt), False


def span_masks(model, items: Sequence[dict], ids: torch.Tensor, *, chat: bool = False) -> torch.Tensor:
    """Bool ``[batch, key_pos]``: the tokens of each item's ``span`` in the left-padded batch ``ids`` built by
    ``score_choices`` (the prompt's tokens, then any shared choice prefix)."""
    from .attention_edits import span_keys

    rows = []
    for it, (row, _) in zip(items, encode_items(model, items, chat=chat)):
        if "span" not in it:
            raise ValueError(f"item {it.get('id', '?')} has no 'span' (character offsets of the marked passage)")
        text, off, special = _text(model, it["prompt"], chat)
        m = span_keys(model, text, off + it["span"][0], off + it["span"][1], add_special_tokens=special)
        tail = torch.zeros(len(row) - m.shape[0], dtype=torch.bool)
        rows.append(torch.cat([torch.zeros(ids.shape[1] - len(row), dtype=torch.bool), m, tail]))
    return torch.stack(rows)


def batches(model, items: Sequence[dict], batch_size: int, *, chat: bool = False):
    """Yield ``(batch items, ids [batch, pos], attention_mask [batch, pos], choice ids [batch, choice])``,
    left-padded, in order."""
    from .batching import pad_batch

    enc = encode_items(model, items, chat=chat)
    n_choices = {len(c) for _, c in enc}
    if len(n_choices) != 1:
        raise ValueError(f"items have different numbers of choices {sorted(n_choices)}; score them separately")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    for start in range(0, len(items), batch_size):
        part = enc[start:start + batch_size]
        ids, mask = pad_batch(model, [row for row, _ in part])
        yield list(items[start:start + batch_size]), ids, mask, torch.tensor([c for _, c in part])


@torch.no_grad()
def score_choices(model, items: Sequence[dict], *, interventions: Sequence = (), batch_size: int = 16,
                  chat: bool = False, per_batch: Callable | None = None) -> ChoiceScores:
    """Score ``items`` under ``interventions`` (applied to every batch) and ``per_batch(items, ids, mask)``
    (interventions built for one batch, e.g. from ``span_masks(model, items, ids)``). Returns ``ChoiceScores``."""
    out = []
    for batch, ids, mask, choice_ids in batches(model, items, batch_size, chat=chat):
        extra = list(per_batch(batch, ids, mask)) if per_batch is not None else []
        with model.intervene(*interventions, *extra):
            logits = model.forward(ids, mask, logits_to_keep=1).logits[:, -1].double()  # lm_head at the last pos only
        out.append(torch.log_softmax(logits, -1).gather(-1, choice_ids))
        del logits
    labels = torch.tensor([int(it["label"]) for it in items])
    return ChoiceScores(torch.cat(out), labels)
