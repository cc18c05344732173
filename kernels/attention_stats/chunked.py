"""Chunked O(n)-memory CPU implementation (torch only), same formulas as ``reference``.

Queries are processed in row strips of ``q_tile`` rows; each strip only visits the causal (and windowed) key
range ``[lo, abs_last]``.  When a strip fits in one key tile (the common case, sized from
``memory_budget_mb``)
everything is done in ONE pass over the logits tile:

    S = (scale q) k^T  [batch, kv_head, group * q_tile, key_tile]  (GQA: q viewed as [b, kv, group, q, d])
    m = max_j S,  P = softmax(S - m),  lse = m - log(max_j P)          (exact: max_j P = exp(m - lse))
    A = P * exp(lse_tile - lse)        (= P in the single-tile case; 0 for padding rows)
    entropy = -sum_j A (S - m) - (m - lse) sum_j A                     (shifted, no cancellation)
    col_sum += sum_i A,   sum_i A log A += sum_i A (S - m) + (m - lse)^T A

When the key range needs several tiles, pass 1 computes the row LSE online (lse = logaddexp over tiles;
skipped if ``row_lse`` is given) and pass 2 recomputes each logits tile and reduces all stats from it.
Running argmax keeps
the earliest index on ties; running top-k merges tile top-k sorted by (value desc, index asc).
Compute dtype is fp32 (fp64 for fp64 inputs); masked logits use -1e30 (finite, so 0 * log 0 never makes NaN).
Performance: ~10 torch ops per tile; on an oversubscribed CPU (load > cores) OpenMP barriers dominate and
``torch.set_num_threads(1)`` is several times faster (see benchmarks/attention_stats_kernels.py --threads).
"""

from __future__ import annotations

import math

import torch

from ._spec import StatsSpec, finalize, row_valid

NEG = -1.0e30  # masked logit
BIG = 1.0e30  # lse used for padding rows: A = exp(s - BIG) = 0
_STRIP_ELEMS = 6 * 2**20  # preferred logits per row strip


def tile_sizes(batch, head, query_pos, key_pos, window, elem_bytes, memory_budget_mb, n_buffers=4):
    """(q_tile, k_tile) so that ~n_buffers logits-sized buffers fit in memory_budget_mb."""
    max_elems = max(1, int(memory_budget_mb * 2**20) // (elem_bytes * n_buffers))

    def width(t):
        return key_pos if window is None else min(key_pos, window + t - 1)

    # ~6M logits per strip: big enough to amortise per-op overhead, small enough to stay cache friendly
    t = 16
    while t < query_pos and batch * head * (2 * t) * width(2 * t) <= _STRIP_ELEMS:
        t *= 2
    t = min(query_pos, t)
    while t > 1 and batch * head * t * width(t) > max_elems:
        t //= 2
    if batch * head * t * width(t) <= max_elems:
        return t, width(t)
    return 1, max(1, max_elems // (batch * head))


def _vecdot(a, w):
    """sum_j a[..., j] * w[..., j] (w broadcastable)."""
    return torch.linalg.vecdot(a, w.to(a.dtype))


class _Tiler:
    def __init__(self, q, k, spec: StatsSpec, q_tile, k_tile):
        self.spec = spec
        self.B, self.H, self.Q, self.D = q.shape
        self.KV, self.N = k.shape[1], k.shape[2]
        self.G = self.H // self.KV
        self.dev = q.device
        self.cd = torch.float64 if torch.float64 in (q.dtype, k.dtype) else torch.float32
        pre = spec.scale / spec.softcap if spec.softcap is not None else spec.scale
        self.qg = (q.to(self.cd) * pre).view(self.B, self.KV, self.G, self.Q, self.D)
        self.kT = k.to(self.cd).transpose(-1, -2).contiguous()  # [batch, kv_head, d_head, key_pos]
        self.qt, self.kt = q_tile, k_tile
        n = self.B * self.H * q_tile * k_tile
        self.buf_s = torch.empty(n, dtype=self.cd, device=self.dev)
        self.buf_p = torch.empty(n, dtype=self.cd, device=self.dev)
        self.pad = spec.key_padding_mask
        self.valid = row_valid(spec, self.B, self.Q, self.dev)
        self._sm_out = getattr(torch.ops.aten._softmax, "out", None)

    # ---- logits of one (query strip, key tile) ------------------------------------------------------------
    def logits(self, q0, T, j0, j1):
        """Masked logits [batch, head, T, j1 - j0] for rows q0..q0+T-1 and keys j0..j1-1."""
        B, KV, G, W, sp = self.B, self.KV, self.G, j1 - j0, self.spec
        qt = self.qg[:, :, :, q0 : q0 + T].reshape(B, KV, G * T, self.D)
        S = self.buf_s[: B * KV * G * T * W].view(B, KV, G * T, W)
        torch.matmul(qt, self.kT[..., j0:j1], out=S)
        S = S.view(B, self.H, T, W)
        if sp.softcap is not None:
            S.tanh_().mul_(sp.softcap)
        a0 = q0 + sp.query_offset
        c0 = max(0, a0 - j0 + 1)  # first column that is causally masked for some row
        if c0 < W:
            c = torch.arange(c0, W, device=self.dev)
            t = torch.arange(T, device=self.dev)
            S[..., c0:].masked_fill_(c[None, :] > (a0 - j0 + t)[:, None], NEG)
        if sp.window is not None:
            c1 = min(W, a0 + T - 1 - sp.window - j0 + 1)  # columns < c1 are out of window for some row
            if c1 > 0:
                c = torch.arange(c1, device=self.dev)
                t = torch.arange(T, device=self.dev)
                S[..., :c1].masked_fill_(c[None, :] <= (a0 - j0 + t - sp.window)[:, None], NEG)
        if self.pad is not None:
            p = self.pad[:, j0:j1]
            if not bool(p.all()):
                S.masked_fill_(~p[:, None, None, :], NEG)
        return S

    def softmax(self, S, m=None):
        """In place S -= m (m = row max, computed if None); returns (P = softmax(S) in buf_p, m, lse_tile)."""
        if m is None:
            m = S.amax(-1)
        S.sub_(m[..., None])
        P = self.buf_p[: S.numel()].view(S.shape)
        if self._sm_out is not None:
            self._sm_out(S, -1, False, out=P)
        else:
            P.copy_(torch.softmax(S, -1))
        lse_t = m - torch.log(P.amax(-1))
        return P, m, lse_t


def _tile_topk(S, kk, j0):
    """Top-kk of S along the last dim, sorted by (value desc, index asc). Returns (values, global indices)."""
    W = S.shape[-1]
    kk = min(kk, W)
    thr = S.topk(kk, dim=-1).values[..., -1:]
    gt = S > thr
    eq = S == thr
    need = kk - gt.sum(-1, keepdim=True)
    sel = gt | (eq & (eq.to(torch.int32).cumsum(-1, dtype=torch.int32) <= need))
    pos = torch.where(sel, torch.arange(W, device=S.device), W)
    cols = pos.topk(kk, dim=-1, largest=False, sorted=True).values  # selected columns, ascending
    vals = torch.gather(S, -1, cols)
    order = torch.sort(vals, dim=-1, descending=True, stable=True).indices
    return torch.gather(vals, -1, order), torch.gather(cols, -1, order) + j0


def _merge_topk(v1, i1, v2, i2, kk):
    v, i = torch.cat([v1, v2], -1), torch.cat([i1, i2], -1)
    o = torch.sort(i, dim=-1, stable=True).indices
    v, i = torch.gather(v, -1, o), torch.gather(i, -1, o)
    o = torch.sort(v, dim=-1, descending=True, stable=True).indices[..., :kk]
    return torch.gather(v, -1, o), torch.gather(i, -1, o)


_MASS_STATS = ("mass_first", "mass_keyset", "mass_recent", "mass_self", "prev_token", "attn_distance", "duplicate",
               "induction")


class _State:
    """The accumulators of one ``chunked_stats`` call: row buffers [batch, head, query_pos], column buffers
    [batch, head, key_pos], running max / argmax / top-k."""

    def __init__(self, spec: StatsSpec, B, H, Q, N, cd, dev):
        st, kk = spec.stats, spec.top_k
        self.need_ent = bool(st & {"entropy", "entropy_norm"})
        self.need_col = bool(st & {"col_sum", "col_alpha", "col_entropy"})
        self.need_cent = "col_entropy" in st
        self.need_top = bool(st & {"argmax", "topk", "max"})
        self.need_dist = bool(st & {"mass_recent", "attn_distance", "duplicate", "induction"})
        rz = lambda: torch.zeros(B, H, Q, dtype=cd, device=dev)  # noqa: E731
        self.acc = {name: rz() for name in _MASS_STATS if name in st}
        self.ent = rz() if self.need_ent else None
        self.lse = torch.empty(B, H, Q, dtype=cd, device=dev)
        self.mx = torch.full((B, H, Q), -math.inf, dtype=cd, device=dev)
        self.amax_idx = torch.full((B, H, Q), -1, dtype=torch.int64, device=dev)
        self.top_v = torch.full((B, H, Q, kk), -math.inf, dtype=cd, device=dev) if "topk" in st else None
        self.top_i = torch.full((B, H, Q, kk), -1, dtype=torch.int64, device=dev) if "topk" in st else None
        self.col = torch.zeros(B, H, N, dtype=cd, device=dev) if self.need_col else None
        self.calog = torch.zeros(B, H, N, dtype=cd, device=dev) if self.need_cent else None
        tok = spec.token_ids
        self.ptok = None if tok is None else torch.cat([torch.full_like(tok[:, :1], -1), tok[:, :-1]], 1)
        self.keyset = spec.key_set.to(cd) if spec.key_set is not None else None
        self.ones = torch.ones(Q, dtype=cd, device=dev)[None, None, None, :].expand(B, H, 1, Q)


def _strip_lse(tl: _Tiler, q0, T, tiles):
    """Row LSE [batch, head, T] of one strip: None (single tile: computed in pass 2), given, or online."""
    if len(tiles) == 1:
        return None
    if tl.spec.row_lse is not None:
        return tl.spec.row_lse[:, :, q0 : q0 + T].to(tl.cd)
    lse = torch.full((tl.B, tl.H, T), -math.inf, dtype=tl.cd, device=tl.dev)
    for j0, j1 in tiles:  # pass 1: online LSE over key tiles
        _, _, lse_t = tl.softmax(tl.logits(q0, T, j0, j1))
        lse = torch.logaddexp(lse, lse_t)
    return lse


def _update_max_topk(s: _State, st, kk, S, q0, T, j0, single):
    """Running max / argmax (earliest index on ties) / top-k of the raw logits; returns the row max or None."""
    if not s.need_top:
        return None
    r = slice(q0, q0 + T)
    if "argmax" in st:
        m_raw, i_raw = S.max(-1)
        s.amax_idx[..., r] = torch.where(m_raw > s.mx[..., r], i_raw + j0, s.amax_idx[..., r])
    else:
        m_raw = S.amax(-1)
    s.mx[..., r] = torch.maximum(s.mx[..., r], m_raw)
    if "topk" in st:
        v, i = _tile_topk(S, kk, j0)
        if single:
            s.top_v[..., r, : v.shape[-1]], s.top_i[..., r, : v.shape[-1]] = v, i
        else:
            s.top_v[..., r, :], s.top_i[..., r, :] = _merge_topk(s.top_v[..., r, :], s.top_i[..., r, :], v, i, kk)
    return m_raw


def _add_masses(s: _State, spec: StatsSpec, A, q0, a0, j0, dist):
    """Row masses of the tile ``A`` [batch, head, T, W]: first keys, key set, recent window, self, previous."""
    st, acc, (T, W) = spec.stats, s.acc, A.shape[-2:]
    r = slice(q0, q0 + T)
    if "mass_first" in st and j0 < spec.sink_k:
        acc["mass_first"][..., r] += A[..., : spec.sink_k - j0].sum(-1)
    if "mass_keyset" in st:
        B, H = A.shape[:2]
        acc["mass_keyset"][..., r] += (A.reshape(B, H * T, W) @ s.keyset[:, j0 : j0 + W, None]).view(B, H, T)
    if "mass_recent" in st:
        c0 = max(0, a0 - spec.recent_w + 1 - j0)
        if c0 < W:
            acc["mass_recent"][..., r] += _vecdot(A[..., c0:], dist[:, c0:] < spec.recent_w)
    for name, shift in (("mass_self", 0), ("prev_token", 1)):
        if name in st:
            o = a0 - shift - j0  # column of row t is t + o
            t0, t1 = max(0, -o), min(T, W - o)
            if t1 > t0:
                acc[name][..., q0 + t0 : q0 + t1] += torch.diagonal(A, offset=o, dim1=-2, dim2=-1)
    if "attn_distance" in st:
        d = dist.clamp(min=0)
        if spec.distance_cap is not None:
            d = d.clamp(max=spec.distance_cap)
        acc["attn_distance"][..., r] += _vecdot(A, d)


def _add_tokens(s: _State, spec: StatsSpec, A, q0, a0, j0, dist):
    """Duplicate-token and induction mass of the tile (keys holding / following the query's token)."""
    st, tok, (T, W) = spec.stats, spec.token_ids, A.shape[-2:]
    if tok is None or not st & {"duplicate", "induction"}:
        return
    qtok = tok[:, a0 : a0 + T, None]  # [B, T, 1]
    if "duplicate" in st:
        w = (tok[:, None, j0 : j0 + W] == qtok) & (dist > 0)
        s.acc["duplicate"][..., q0 : q0 + T] += _vecdot(A, w[:, None])
    if "induction" in st:
        w = (s.ptok[:, None, j0 : j0 + W] == qtok) & (torch.arange(j0, j0 + W, device=A.device) >= 1)
        s.acc["induction"][..., q0 : q0 + T] += _vecdot(A, w[:, None])


def _add_columns_entropy(s: _State, A, S, m, lse_eff, fac, q0, j0):
    """Column sums, sum_i A log A per column and row entropy (S holds S - m; overwritten in place)."""
    T, W = A.shape[-2:]
    ones = s.ones[..., :T]
    if s.need_col:
        s.col[..., j0 : j0 + W] += (ones @ A).squeeze(-2)
    if not (s.need_ent or s.need_cent):
        return
    if s.need_cent:
        s.calog[..., j0 : j0 + W] += ((m - lse_eff)[:, :, None, :] @ A).squeeze(-2)
    S.mul_(A)  # A (S - m), in place: S is not needed any more (no fresh allocation)
    if s.need_cent:
        s.calog[..., j0 : j0 + W] += (ones @ S).squeeze(-2)
    if s.need_ent:
        rowsum = torch.ones_like(m) if fac is None else fac
        s.ent[..., q0 : q0 + T] -= S.sum(-1) + (m - lse_eff) * rowsum


def _strip(tl: _Tiler, s: _State, q0, T, k_tile):
    """Every statistic of the query rows q0..q0+T-1, from their causal (and windowed) key tiles."""
    spec = tl.spec
    a0, a1 = q0 + spec.query_offset, q0 + spec.query_offset + T
    lo = 0 if spec.window is None else max(0, a0 - spec.window + 1)
    tiles = [(j, min(a1, j + k_tile)) for j in range(lo, a1, k_tile)]
    valid = tl.valid[:, q0 : q0 + T][:, None, :]  # [B, 1, T]
    all_valid, single = bool(valid.all()), len(tiles) == 1
    lse = _strip_lse(tl, q0, T, tiles)
    absi = torch.arange(a0, a1, device=tl.dev)
    for j0, j1 in tiles:
        S = tl.logits(q0, T, j0, j1)
        m_raw = _update_max_topk(s, spec.stats, spec.top_k, S, q0, T, j0, single)
        A, m, lse_t = tl.softmax(S, m_raw)  # S now holds S - m
        if single:
            lse = lse_t
        lse_eff = lse if all_valid else torch.where(valid, lse, BIG)
        fac = None if single and all_valid else torch.exp(lse_t - lse_eff)
        if fac is not None:
            A.mul_(fac[..., None])
        dist = absi[:, None] - torch.arange(j0, j1, device=tl.dev)[None, :] if s.need_dist else None  # abs_i - j
        _add_masses(s, spec, A, q0, a0, j0, dist)
        _add_tokens(s, spec, A, q0, a0, j0, dist)
        _add_columns_entropy(s, A, S, m, lse_eff, fac, q0, j0)
    s.lse[..., q0 : q0 + T] = lse


def _outputs(s: _State, tl: _Tiler) -> dict:
    st, valid_b = tl.spec.stats, tl.valid[:, None, :]
    out = dict(s.acc)
    if "lse" in st:
        out["lse"] = torch.where(valid_b, s.lse, -math.inf)
    if "max" in st:
        out["max"] = torch.where(valid_b, s.mx, -math.inf)
    if "argmax" in st:
        out["argmax"] = torch.where(valid_b, s.amax_idx, -1)
    if "topk" in st:
        ok = valid_b[..., None] & (s.top_v > NEG / 2) & (s.top_i >= 0)
        lse_b = torch.where(valid_b, s.lse, 0.0)[..., None]
        out["topk_idx"] = torch.where(ok, s.top_i, -1)
        out["topk_prob"] = torch.where(ok, torch.exp(torch.where(ok, s.top_v - lse_b, 0.0)), 0.0)
    if s.need_ent:
        out["entropy" if "entropy" in st else "_entropy"] = torch.where(valid_b, s.ent, 0.0).clamp(min=0)
    if s.need_col:
        out["col_sum" if "col_sum" in st else "_col_sum"] = s.col
    if s.need_cent:
        out["_col_alogA"] = s.calog
    return out


@torch.no_grad()
def chunked_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    spec: StatsSpec,
    *,
    memory_budget_mb: float = 256,
    q_tile: int | None = None,
    k_tile: int | None = None,
) -> dict[str, torch.Tensor]:
    """Tiled stats without materialising [query_pos, key_pos].

    q: [batch, head, query_pos, d_head]; k: [batch, kv_head, key_pos, d_head].
    Returns row stats [batch, head, query_pos] (topk_* [batch, head, query_pos, top_k]) and column stats
    [batch, head, key_pos], float32 (float64 for float64 input); ``q_tile``/``k_tile`` override the budget.
    """
    B, H, Q, _ = q.shape
    N = k.shape[2]
    cd = torch.float64 if torch.float64 in (q.dtype, k.dtype) else torch.float32
    qt_auto, kt_auto = tile_sizes(B, H, Q, N, spec.window, cd.itemsize, memory_budget_mb)
    q_tile = min(Q, q_tile or qt_auto)
    k_tile = k_tile or kt_auto
    tl = _Tiler(q, k, spec, q_tile, k_tile)
    s = _State(spec, B, H, Q, N, cd, q.device)
    for q0 in range(0, Q, q_tile):
        _strip(tl, s, q0, min(q_tile, Q - q0), k_tile)
    return finalize(_outputs(s, tl), spec, B, Q, N, q.device)
