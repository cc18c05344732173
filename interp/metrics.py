"""Patching / ablation metrics on logits ``[batch, pos, d_vocab]``, each returning one value per example ``[batch]``.

- ``logit_diff``:  logits[b, pos, answer_b] − logits[b, pos, wrong_b]      (Wang et al. 2022, IOI)
- ``answer_prob``: softmax(logits[b, pos])[answer_b]
- ``kl_to_clean``: KL(p_clean ‖ p) = Σ_v p_clean,v (log p_clean,v − log p_v) at ``pos`` (or averaged over positions)
- ``loss``:        mean next-token cross-entropy −log p(ids[b, t+1] | ids[b, ≤t]) over the (masked) tokens of row b

Averaging over the batch (``.mean()``) is left to the caller; ``interp.patching.patch_sweep`` averages over the
original batch like TransformerLens. Answer ids may be an int (same for every row), a list/tensor ``[batch]``,
or ``[batch, n]`` (several answers: their logits are summed for ``logit_diff`` / probabilities for
``answer_prob``). Validated in ``tests/unit/test_patching.py`` against float64 computations by hand.
"""

from __future__ import annotations

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
    if not -logits.shape[1] <= pos < logits.shape[1]:
        raise ValueError(f"pos={pos} is outside the {logits.shape[1]} positions of the logits")
    return logits[:, pos]


def logit_diff(logits: torch.Tensor, answer_ids, wrong_ids, pos: int = -1) -> torch.Tensor:
    """Logit difference ``[batch]`` between the answer and the wrong token at position ``pos``."""
    _check_logits(logits)
    x = _at(logits, pos).float()  # [batch, d_vocab]
    a, w = _ids(answer_ids, x.shape[0], "answer_ids").to(x.device), _ids(wrong_ids, x.shape[0], "wrong_ids").to(
        x.device)
    return x.gather(1, a).sum(1) - x.gather(1, w).sum(1)


def answer_prob(logits: torch.Tensor, answer_ids, pos: int = -1) -> torch.Tensor:
    """Probability ``[batch]`` of the answer token(s) at position ``pos``."""
    _check_logits(logits)
    p = torch.softmax(_at(logits, pos).float(), dim=-1)
    a = _ids(answer_ids, p.shape[0], "answer_ids").to(p.device)
    return p.gather(1, a).sum(1)


def kl_to_clean(logits: torch.Tensor, clean_logits: torch.Tensor, pos: int | None = -1) -> torch.Tensor:
    """KL(p_clean ‖ p) ``[batch]`` at position ``pos`` (``pos=None``: mean over positions)."""
    _check_logits(logits)
    _check_logits(clean_logits)
    if logits.shape[0] != clean_logits.shape[0] or logits.shape[2] != clean_logits.shape[2] or (
            pos is None and logits.shape != clean_logits.shape):
        raise ValueError(f"logits {tuple(logits.shape)} and clean_logits {tuple(clean_logits.shape)} do not match")
    lp = torch.log_softmax(_at(logits, pos).float(), dim=-1)
    lc = torch.log_softmax(_at(clean_logits.to(logits.device), pos).float(), dim=-1)
    kl = (lc.exp() * (lc - lp)).sum(-1)
    return kl if pos is not None else kl.mean(-1)


def loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None, *,
         per_token: bool = False) -> torch.Tensor:
    """Next-token cross-entropy: ``[batch]`` (mean over the row's predicted tokens), or ``[batch, pos - 1]`` with
    ``per_token=True`` (entry t is the loss of predicting ``ids[:, t + 1]``).

    ``mask [batch, pos]`` (1 = real token) drops predictions of padding targets from the mean.
    """
    _check_logits(logits)
    if ids.shape != logits.shape[:2]:
        raise ValueError(f"ids {tuple(ids.shape)} must be [batch, pos] matching logits {tuple(logits.shape)}")
    if ids.shape[1] < 2:
        raise ValueError("loss needs at least 2 positions (it predicts token t + 1 from t)")
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tgt = ids[:, 1:].to(lp.device).long()
    nll = -lp.gather(-1, tgt[..., None])[..., 0]  # [batch, pos - 1]
    if per_token:
        return nll
    if mask is None:
        return nll.mean(1)
    m = mask[:, 1:].to(nll.device).float()
    return (nll * m).sum(1) / m.sum(1).clamp_min(1.0)
