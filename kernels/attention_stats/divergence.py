"""Divergence between two runs' attention patterns, per query row, without building either pattern.

For the same positions, run 1 gives A = softmax(s¹) and run 2 gives B = softmax(s²) with s = scale·q·k (causal;
optional window and key padding, as in the statistics engine). Per query row i::

    KL(A‖B)_i = Σ_j A_ij (log A_ij − log B_ij)        log A_ij = s¹_ij − lse¹_i
    JS(A,B)_i = ½ KL(A‖M) + ½ KL(B‖M),  M = (A+B)/2   (natural log; 0 ≤ JS ≤ log 2)
    TV(A,B)_i = ½ Σ_j |A_ij − B_ij|

Pass 1 takes each run's row log-sum-exp from the engine (``compute_attention_stats(..., stats=["lse"])``);
pass 2 walks key tiles and reduces both tiles at once, so memory is O(query_tile × key_tile).
``divergence_reference`` is the dense float64 spec used by the tests.
"""

from __future__ import annotations

import math

import torch

from . import compute_attention_stats
from ._spec import causal_mask

DIVERGENCES = ("js", "kl", "kl_rev", "tv")


def _check(q1, k1, q2, k2, stats):
    for name, t in (("q1", q1), ("k1", k1), ("q2", q2), ("k2", k2)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            raise ValueError(f"{name} must be a 4-D tensor [batch, head|kv_head, pos, d_head], got "
                             f"{getattr(t, 'shape', type(t).__name__)}")
    if q1.shape[:3] != q2.shape[:3] or k1.shape[0] != k2.shape[0] or k1.shape[2] != k2.shape[2]:
        raise ValueError(f"the two runs must cover the same [batch, head, positions]: q1 {tuple(q1.shape)}, "
                         f"q2 {tuple(q2.shape)}, k1 {tuple(k1.shape)}, k2 {tuple(k2.shape)}")
    unknown = [s for s in stats if s not in DIVERGENCES]
    if unknown:
        raise ValueError(f"unknown divergence(s) {unknown}; choose from {DIVERGENCES}")


def _allowed(nq, nk, offset, window, kpm, device):
    ok = causal_mask(nq, nk, query_offset=offset, window=window, device=device)[None, None]  # [1, 1, query, key]
    if kpm is not None:
        ok = ok & kpm[:, None, None, :]
    return ok


def divergence_reference(q1, k1, q2, k2, *, scale1, scale2=None, stats=DIVERGENCES, window=None,
                         key_padding_mask=None) -> dict[str, torch.Tensor]:
    """Dense float64 spec. q: [batch, head, query_pos, d_head], k: [batch, kv_head, key_pos, d_head] per run.
    Returns each requested divergence as [batch, head, query_pos] (float64)."""
    _check(q1, k1, q2, k2, stats)
    scale2 = scale1 if scale2 is None else scale2
    nq, nk = q1.shape[2], k1.shape[2]
    ok = _allowed(nq, nk, nk - nq, window, key_padding_mask, q1.device)

    def pattern(q, k, scale):
        k = k.double().repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        s = (q.double() @ k.transpose(-1, -2)) * scale
        return torch.nan_to_num(torch.softmax(s.masked_fill(~ok, float("-inf")), -1))

    A, B = pattern(q1, k1, scale1), pattern(q2, k2, scale2)
    M = (A + B) / 2

    def kl(P, Q):
        return torch.where(P > 0, P * (torch.log(P.clamp_min(1e-300)) - torch.log(Q.clamp_min(1e-300))), 0).sum(-1)

    out = {"js": 0.5 * kl(A, M) + 0.5 * kl(B, M), "kl": kl(A, B), "kl_rev": kl(B, A), "tv": 0.5 * (A - B).abs().sum(-1)}
    return {s: out[s] for s in stats}


def pattern_divergence(q1, k1, q2, k2, *, scale1, scale2=None, stats=("js",), window=None, key_padding_mask=None,
                       memory_budget_mb: float = 128) -> dict[str, torch.Tensor]:
    """Chunked divergences between run 1's and run 2's attention (see module docstring).

    Args: q1, q2: [batch, head, query_pos, d_head]; k1, k2: [batch, kv_head, key_pos, d_head] (kv_head may differ
    between runs only if both divide head); key_padding_mask: [batch, key_pos] bool, True = real token.
    Returns each requested divergence as [batch, head, query_pos] float32 (float64 for float64 inputs);
    padding rows are 0.
    """
    _check(q1, k1, q2, k2, stats)
    scale2 = scale1 if scale2 is None else scale2
    want = set(stats)
    lse1 = compute_attention_stats(q1, k1, stats=["lse"], scale=scale1, window=window,
                                   key_padding_mask=key_padding_mask, impl="chunked")["lse"]
    lse2 = compute_attention_stats(q2, k2, stats=["lse"], scale=scale2, window=window,
                                   key_padding_mask=key_padding_mask, impl="chunked")["lse"]
    acc_dtype = torch.float64 if q1.dtype == torch.float64 else torch.float32
    B, H, nq, _ = q1.shape
    nk = k1.shape[2]
    offset = nk - nq
    budget = memory_budget_mb * 2**20 / (8 * H * B * (8 if acc_dtype == torch.float64 else 4))
    q_tile = max(16, min(nq, int(math.sqrt(budget))))
    k_tile = max(16, min(nk, int(budget // q_tile)))
    out = {s: torch.zeros(B, H, nq, dtype=acc_dtype, device=q1.device) for s in want}
    log2 = math.log(2.0)

    def grouped(q, k, q0, q1_, j0, j1, scale):
        g = q.shape[1] // k.shape[1]
        qq = q[:, :, q0:q1_].to(acc_dtype).reshape(B, k.shape[1], g, q1_ - q0, -1)
        s = torch.matmul(qq, k[:, :, None, j0:j1].to(acc_dtype).transpose(-1, -2)) * scale
        return s.reshape(B, H, q1_ - q0, j1 - j0)

    for q0 in range(0, nq, q_tile):
        qe = min(nq, q0 + q_tile)
        last_key = offset + qe  # exclusive: causal
        first_key = 0 if window is None else max(0, offset + q0 - window + 1)
        for j0 in range(first_key - first_key % k_tile, last_key, k_tile):
            j1 = min(last_key, j0 + k_tile)
            ok = _allowed(qe - q0, nk, offset + q0, window, key_padding_mask, q1.device)[..., j0:j1]
            la = (grouped(q1, k1, q0, qe, j0, j1, scale1) - lse1[:, :, q0:qe, None].to(acc_dtype))
            lb = (grouped(q2, k2, q0, qe, j0, j1, scale2) - lse2[:, :, q0:qe, None].to(acc_dtype))
            la, lb = la.masked_fill(~ok, float("-inf")), lb.masked_fill(~ok, float("-inf"))
            a, b = la.exp(), lb.exp()
            if "kl" in want:
                out["kl"][:, :, q0:qe] += torch.where(a > 0, a * (la - lb), 0).sum(-1)
            if "kl_rev" in want:
                out["kl_rev"][:, :, q0:qe] += torch.where(b > 0, b * (lb - la), 0).sum(-1)
            if "js" in want:
                lm = torch.logaddexp(la, lb) - log2  # log M
                js = torch.where(a > 0, a * (la - lm), 0) + torch.where(b > 0, b * (lb - lm), 0)
                out["js"][:, :, q0:qe] += 0.5 * js.sum(-1)
            if "tv" in want:
                out["tv"][:, :, q0:qe] += 0.5 * (a - b).abs().sum(-1)
    return {s: out[s] for s in stats}
