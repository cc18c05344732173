"""Dense float64 reference implementation: the executable spec (small sequences only, O(n^2) memory).

With ``abs_i = i + query_offset``, GQA group ``g = head // kv_head`` (query head h reads kv head h // g):

    s_ij = scale * q_i . k_j                    (then s_ij = softcap * tanh(s_ij / softcap) if softcap)
    allowed_ij = j <= abs_i  and  abs_i - j < window (if window)  and  pad_j  and  pad_{abs_i}
    A_ij = exp(s_ij - lse_i) on allowed keys, 0 elsewhere;   lse_i = log sum_{allowed j} exp(s_ij)

Row stats [batch, head, query_pos]:
    lse, max = max_{allowed} s_ij, entropy = -sum_j A_ij log A_ij, entropy_norm = entropy / log(n_keys_i)
    argmax = first j maximising A_ij; topk_idx / topk_prob = the top_k keys by A (ties: smaller j first,
    padded with -1 / 0); mass_first = sum_{j < sink_k} A_ij; mass_keyset = sum_{key_set_j} A_ij;
    mass_recent = sum_{abs_i - j < recent_w} A_ij; mass_self = A_{i, abs_i}; prev_token = A_{i, abs_i - 1};
    attn_distance = sum_j A_ij min(abs_i - j, distance_cap);
    duplicate = sum_{j < abs_i, tok_j = tok_{abs_i}} A_ij;
    induction = sum_{1 <= j <= abs_i, tok_{j-1} = tok_{abs_i}} A_ij
Column stats [batch, head, key_pos] (sums over valid rows):
    col_sum_j = sum_i A_ij; col_alpha_j = col_sum_j / n_rows_j; col_entropy_j = -sum_i p_ij log p_ij with
    p_ij = A_ij / col_sum_j (0 where col_sum_j = 0).
Padding rows: see ``_spec`` (zeros, lse/max -inf, indices -1).
"""

from __future__ import annotations

import math

import torch

from ._spec import StatsSpec, causal_mask, output_names


def allowed_mask(spec: StatsSpec, batch: int, query_pos: int, key_pos: int, device) -> torch.Tensor:
    """Bool [batch, 1, query_pos, key_pos]: key j allowed for valid query row i."""
    m = causal_mask(query_pos, key_pos, query_offset=spec.query_offset, window=spec.window, device=device)
    m = m[None].expand(batch, query_pos, key_pos)
    if spec.key_padding_mask is not None:
        pad = spec.key_padding_mask
        qpad = pad[:, spec.query_offset : spec.query_offset + query_pos]
        m = m & pad[:, None, :] & qpad[:, :, None]
    return m[:, None]


def reference_pattern(q: torch.Tensor, k: torch.Tensor, spec: StatsSpec):
    """Dense float64 pattern (small n only).

    q: [batch, head, query_pos, d_head]; k: [batch, kv_head, key_pos, d_head].
    Returns (A [batch, head, query_pos, key_pos], masked logits (-inf where not allowed, same shape),
    allowed bool [batch, 1, query_pos, key_pos]); padding rows have A = 0.
    """
    batch, head, query_pos, _ = q.shape
    kv_head, key_pos = k.shape[1], k.shape[2]
    f64 = torch.float64
    kf = k.to(f64).repeat_interleave(head // kv_head, dim=1)
    s = spec.scale * torch.matmul(q.to(f64), kf.transpose(-1, -2))  # [batch, head, query_pos, key_pos]
    if spec.softcap is not None:
        s = spec.softcap * torch.tanh(s / spec.softcap)
    allowed = allowed_mask(spec, batch, query_pos, key_pos, q.device)
    sm = s.masked_fill(~allowed, -math.inf)
    lse = torch.logsumexp(sm, -1, keepdim=True)
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    A = torch.where(allowed, torch.exp(sm - lse), torch.zeros_like(sm))
    return A, sm, allowed


def _ref_mass(A, dist, spec: StatsSpec, st) -> dict:
    """Row masses over key sets: first keys, a key set, recent window, self, previous token, distance."""
    out = {}
    if "mass_first" in st:
        out["mass_first"] = A[..., : spec.sink_k].sum(-1)
    if "mass_keyset" in st:
        out["mass_keyset"] = (A * spec.key_set[:, None, None, :]).sum(-1)
    if "mass_recent" in st:
        out["mass_recent"] = (A * (dist < spec.recent_w)).sum(-1)
    if "mass_self" in st:
        out["mass_self"] = (A * (dist == 0)).sum(-1)
    if "prev_token" in st:
        out["prev_token"] = (A * (dist == 1)).sum(-1)
    if "attn_distance" in st:
        d = dist.clamp(min=0)
        if spec.distance_cap is not None:
            d = d.clamp(max=spec.distance_cap)
        out["attn_distance"] = (A * d).sum(-1)
    return out


def _ref_topk(A, sm, allowed, spec: StatsSpec) -> dict:
    """argmax and the top-k keys per row (ties: smaller key_pos first; -1 where fewer keys are allowed)."""
    batch, head, query_pos, key_pos = sm.shape
    order = torch.sort(sm, dim=-1, descending=True, stable=True).indices
    ok = torch.gather(allowed.expand_as(sm), -1, order)
    order_idx = torch.where(ok, order, torch.full_like(order, -1))
    kk = spec.top_k
    idx = torch.full((batch, head, query_pos, kk), -1, dtype=torch.int64, device=sm.device)
    idx[..., : min(kk, key_pos)] = order_idx[..., :kk]
    prob = torch.where(idx >= 0, torch.gather(A, -1, idx.clamp(min=0)),
                       torch.zeros(1, dtype=torch.float64, device=sm.device))
    return {"argmax": order_idx[..., 0], "topk_idx": idx, "topk_prob": prob}


def _ref_tokens(A, spec: StatsSpec, absi, j) -> dict:
    """Duplicate-token and induction mass: keys holding the query's token / following an earlier copy of it."""
    tok = spec.token_ids
    qtok = tok[:, spec.query_offset : spec.query_offset + A.shape[2]]  # [batch, query_pos]
    dup = (tok[:, None, :] == qtok[:, :, None]) & (j[None, None, :] < absi[None, :, None])
    prev = torch.cat([torch.zeros_like(tok[:, :1]), tok[:, :-1]], dim=1)  # tok_{j-1}
    ind = (prev[:, None, :] == qtok[:, :, None]) & (j >= 1)[None, None, :] & (j[None, None, :] <= absi[None, :, None])
    return {"duplicate": (A * dup[:, None]).sum(-1), "induction": (A * ind[:, None]).sum(-1)}


def _ref_columns(A, allowed) -> dict:
    """Column sums, the mean attention a key receives (col_alpha) and the column entropy."""
    cs = A.sum(-2)
    n = allowed.sum(-2)
    out = {"col_sum": cs, "col_alpha": torch.where(n > 0, cs / n.clamp(min=1).to(torch.float64), torch.zeros_like(cs))}
    safe = torch.where(cs > 0, cs, torch.ones_like(cs))
    p = A / safe[..., None, :]
    plogp = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p))
    out["col_entropy"] = -plogp.sum(-2)
    return out


def _ref_entropy(A, allowed) -> dict:
    logA = torch.where(A > 0, torch.log(torch.where(A > 0, A, torch.ones_like(A))), torch.zeros_like(A))
    ent = -(A * logA).sum(-1)
    n = allowed.sum(-1)
    norm = torch.where(n > 1, ent / torch.log(n.clamp(min=2).to(torch.float64)), torch.zeros_like(ent))
    return {"entropy": ent, "entropy_norm": norm}


def reference_stats(q: torch.Tensor, k: torch.Tensor, spec: StatsSpec) -> dict[str, torch.Tensor]:
    """Dense float64 stats.

    q: [batch, head, query_pos, d_head]; k: [batch, kv_head, key_pos, d_head].
    Returns row stats [batch, head, query_pos] (topk_* [batch, head, query_pos, top_k]) and column stats
    [batch, head, key_pos]; float64 values, int64 indices.
    """
    query_pos, key_pos, dev, st = q.shape[2], k.shape[2], q.device, spec.stats
    A, sm, allowed = reference_pattern(q, k, spec)
    absi = torch.arange(query_pos, device=dev) + spec.query_offset
    j = torch.arange(key_pos, device=dev)
    dist = (absi[:, None] - j[None, :]).to(torch.float64)  # abs_i - j
    out: dict[str, torch.Tensor] = {"lse": torch.logsumexp(sm, -1), "max": sm.amax(-1)}
    if st & {"entropy", "entropy_norm"}:
        out.update(_ref_entropy(A, allowed))
    if st & {"argmax", "topk"}:
        out.update(_ref_topk(A, sm, allowed, spec))
    out.update(_ref_mass(A, dist, spec, st))
    if st & {"duplicate", "induction"}:
        out.update(_ref_tokens(A, spec, absi, j))
    if st & {"col_sum", "col_alpha", "col_entropy"}:
        out.update(_ref_columns(A, allowed))
    inv = ~allowed.any(-1)  # [batch, 1, query_pos]: rows with no allowed key
    if inv.any():
        for name in ("lse", "max"):
            out[name] = out[name].masked_fill(inv, -math.inf)
    return {name: out[name] for name in output_names(st)}
