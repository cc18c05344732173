"""The metrics of patching, ablation and circuit methods, on logits ``[batch, pos, d_vocab]``: one definition
each, a per-row form (``[batch]``) and a mean form (a scalar, the mean of the per-row values) under distinct
names.

- ``logit_diff`` / ``mean_logit_diff``: logits[b, pos, answer_b] − logits[b, pos, wrong_b] (Wang et al. 2022)
- ``answer_prob`` / ``mean_answer_prob``: softmax(logits[b, pos])[answer_b]
- ``kl_to_clean`` / ``mean_kl_to_clean``: KL(p_clean ‖ p) at ``pos`` (``pos=None``: mean over positions)
- ``next_token_loss`` / ``mean_next_token_loss``: mean over t of −log p(ids[b, t+1] | ids[b, ≤t]) (padding
  targets masked out, targets after ``from_pos``); ``next_token_loss_per_token``: ``[batch, pos − 1]``, entry t
  the loss of predicting ``ids[b, t + 1]``; ``summed_next_token_loss``: the scalar Σ over the batch and every
  target, in position chunks under activation checkpointing (one chunk's float64 log-softmax over the vocabulary
  alive at a time, forward and backward: the loss of long-context gradient methods)

``kl_div(log_p, log_q)`` is the KL divergence itself, ``Σ_v p_v (log p_v − log q_v)`` along the last axis of
log-probabilities ``[..., d_vocab]``, in float64 and clamped at 0 (rounding can make the KL of two nearly equal
distributions a tiny negative number); ``kl_to_clean`` is ``kl_div`` of the log-softmaxed logits (the official
Ships direction, ``kl_divergence(base, ablated)``).

Precision: KL and the loss are computed in float64 (log-softmax of the float64 logits); the logit difference and
the probability in the logits' own precision, at least float32 (half precision is upcast). Answer ids may be an
int (same for every row), a list/tensor ``[batch]``, or ``[batch, n]`` (several answers: their logits are summed
for ``logit_diff`` / probabilities for ``answer_prob``). Every function is differentiable (EAP uses them).
Validated in ``tests/unit/test_metrics.py`` against float64 computations written out element by element.
"""

from __future__ import annotations

import operator

import torch


def _check_logits(logits):
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
        raise ValueError(f"logits must be a tensor [batch, pos, d_vocab], got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")


def _ids(ids, batch: int, name: str) -> torch.Tensor:
    """Answer ids as ``[batch, n]`` long."""
    t = torch.as_tensor(ids, dtype=torch.long)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.ndim == 1:
        if t.shape[0] != batch:
            raise ValueError(f"{name} has {t.shape[0]} ids but the logits have {batch} batch rows: give one id per "
                             "row, an int for all rows, or [batch, n] for several answers per row")
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] != batch:
        raise ValueError(f"{name} must be an int, a list of {batch} ids (one per batch row) or [batch, n]; "
                         f"got shape {tuple(t.shape)}")
    return t


def _at(logits, pos):
    if pos is None:
        return logits
    try:
        i = operator.index(pos)
    except TypeError:
        i = None
    if i is None or not -logits.shape[1] <= i < logits.shape[1]:
        raise ValueError(f"pos={pos!r} is not one of the {logits.shape[1]} positions of the logits")
    return logits[:, i]


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


# --- logit difference and answer probability -----------------------------------------------------------------------

def logit_diff(logits: torch.Tensor, answer_ids, wrong_ids, pos: int = -1) -> torch.Tensor:
    """Logit difference ``[batch]`` between the answer and the wrong token(s) at position ``pos``."""
    _check_logits(logits)
    x = _at_least_float32(_at(logits, pos))  # [batch, d_vocab]
    a = _ids(answer_ids, x.shape[0], "answer_ids").to(x.device)
    w = _ids(wrong_ids, x.shape[0], "wrong_ids").to(x.device)
    return x.gather(1, a).sum(1) - x.gather(1, w).sum(1)


def mean_logit_diff(logits: torch.Tensor, answer_ids, wrong_ids, pos: int = -1) -> torch.Tensor:
    """Mean over the batch of ``logit_diff`` (a scalar tensor)."""
    return logit_diff(logits, answer_ids, wrong_ids, pos).mean()


def answer_prob(logits: torch.Tensor, answer_ids, pos: int = -1) -> torch.Tensor:
    """Probability ``[batch]`` of the answer token(s) at position ``pos``."""
    _check_logits(logits)
    p = torch.softmax(_at_least_float32(_at(logits, pos)), dim=-1)
    a = _ids(answer_ids, p.shape[0], "answer_ids").to(p.device)
    return p.gather(1, a).sum(1)


def mean_answer_prob(logits: torch.Tensor, answer_ids, pos: int = -1) -> torch.Tensor:
    """Mean over the batch of ``answer_prob`` (a scalar tensor)."""
    return answer_prob(logits, answer_ids, pos).mean()


# --- KL divergence ---------------------------------------------------------------------------------------------

def kl_div(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p ‖ q)`` along the last axis of log-probabilities ``[..., d_vocab]``: float64, shape ``[...]``, ≥ 0."""
    if log_p.shape[-1] != log_q.shape[-1]:
        raise ValueError(f"log_p {tuple(log_p.shape)} and log_q {tuple(log_q.shape)} differ in their last axis")
    log_p, log_q = log_p.double(), log_q.double()
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp(min=0)


def kl_to_clean(logits: torch.Tensor, clean_logits: torch.Tensor, pos: int | None = -1) -> torch.Tensor:
    """KL(p_clean ‖ p) ``[batch]`` of the next-token distributions at position ``pos`` (``pos=None``: the mean
    over positions). ``logits``, ``clean_logits``: ``[batch, pos, d_vocab]``."""
    _check_logits(logits)
    _check_logits(clean_logits)
    if logits.shape[0] != clean_logits.shape[0] or logits.shape[2] != clean_logits.shape[2] or (
            pos is None and logits.shape != clean_logits.shape):
        raise ValueError(f"logits {tuple(logits.shape)} and clean_logits {tuple(clean_logits.shape)} do not match")
    lp = torch.log_softmax(_at(logits, pos).double(), dim=-1)
    lc = torch.log_softmax(_at(clean_logits.to(logits.device), pos).double(), dim=-1)
    kl = kl_div(lc, lp)
    return kl if pos is not None else kl.mean(-1)


def mean_kl_to_clean(logits: torch.Tensor, clean_logits: torch.Tensor, pos: int | None = -1) -> torch.Tensor:
    """Mean over the batch of ``kl_to_clean`` (a scalar float64 tensor)."""
    return kl_to_clean(logits, clean_logits, pos).mean()


# --- next-token loss -------------------------------------------------------------------------------------------------

def _check_next_token(logits, ids) -> None:
    _check_logits(logits)
    if not isinstance(ids, torch.Tensor) or ids.shape != logits.shape[:2]:
        raise ValueError(f"ids {tuple(getattr(ids, 'shape', ()))} must be [batch, pos] matching logits "
                         f"{tuple(logits.shape)}")
    if ids.shape[1] < 2:
        raise ValueError("the next-token loss needs at least 2 positions (it predicts token t + 1 from t)")


def next_token_loss_per_token(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``[batch, pos − 1]`` float64: entry t is −log p(``ids[b, t + 1]`` | ``ids[b, ≤ t]``)."""
    _check_next_token(logits, ids)
    lp = torch.log_softmax(logits[:, :-1].double(), -1)
    return -lp.gather(-1, ids[:, 1:, None].to(lp.device).long()).squeeze(-1)


def summed_next_token_loss(logits: torch.Tensor, ids: torch.Tensor, *, chunk: int = 512) -> torch.Tensor:
    """Scalar float64: Σ over ``b`` and ``t`` of −log p(``ids[b, t + 1]`` | ``ids[b, ≤ t]``), the sum of
    ``next_token_loss_per_token``, computed over ``chunk`` target positions at a time. When ``logits`` needs a
    gradient each chunk runs under ``torch.utils.checkpoint`` (the float64 log-softmax is recomputed in the
    backward), so beyond ``logits`` and its gradient the memory is O(batch · chunk · d_vocab), not
    O(batch · pos · d_vocab) (at 8192 tokens and a 49K vocabulary the unchunked form holds ~10 GB of float64).
    ``logits [batch, pos, d_vocab]``, ``ids [batch, pos]``."""
    from torch.utils.checkpoint import checkpoint

    _check_next_token(logits, ids)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int (target positions per chunk), got {chunk!r}")
    pred, targets = logits[:, :-1], ids[:, 1:].to(logits.device).long()

    def part(lg, tg):
        return -torch.log_softmax(lg.double(), -1).gather(-1, tg[..., None]).sum()

    total = torch.zeros((), dtype=torch.float64, device=logits.device)
    for s in range(0, targets.shape[1], chunk):
        lg, tg = pred[:, s:s + chunk], targets[:, s:s + chunk]
        total = total + (checkpoint(part, lg, tg, use_reentrant=False) if lg.requires_grad else part(lg, tg))
    return total


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor, *, mask: torch.Tensor | None = None,
                    from_pos: int = 0) -> torch.Tensor:
    """Mean next-token loss ``[batch]`` over the row's predictions of targets after position ``from_pos``.

    ``mask [batch, pos]`` (1 = real token) drops predictions of padding targets from the mean.
    """
    _check_logits(logits)
    if isinstance(ids, torch.Tensor) and ids.ndim == 2 and 0 < from_pos and ids.shape[1] - 1 - from_pos <= 0:
        raise ValueError(f"from_pos={from_pos} leaves no target among the {ids.shape[1]} positions")
    if isinstance(ids, torch.Tensor) and ids.shape == logits.shape[:2] and from_pos > 0:
        # row-wise log-softmax: the predictions before from_pos are never formed (same values, less work)
        logits, ids = logits[:, from_pos:], ids[:, from_pos:]
        mask = None if mask is None else mask[:, from_pos:]
        from_pos = 0
    nll = next_token_loss_per_token(logits, ids)[:, from_pos:]  # [batch, pos - 1 - from_pos]
    if nll.shape[1] == 0:
        raise ValueError(f"from_pos={from_pos} leaves no target among the {ids.shape[1]} positions")
    if mask is None:
        return nll.mean(-1)
    m = mask[:, 1:][:, from_pos:].to(nll.device).double()
    return (nll * m).sum(1) / m.sum(1).clamp_min(1.0)


def mean_next_token_loss(logits: torch.Tensor, ids: torch.Tensor, *, mask: torch.Tensor | None = None,
                         from_pos: int = 0) -> torch.Tensor:
    """Mean over the batch of ``next_token_loss`` (a scalar float64 tensor)."""
    return next_token_loss(logits, ids, mask=mask, from_pos=from_pos).mean()
