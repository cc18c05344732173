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
    st, dev, off = spec.stats, q.device, spec.query_offset
    rz = lambda: torch.zeros(B, H, Q, dtype=cd, device=dev)  # noqa: E731
    need_ent = bool(st & {"entropy", "entropy_norm"})
    need_col = bool(st & {"col_sum", "col_alpha", "col_entropy"})
    need_cent = "col_entropy" in st
    need_top = bool(st & {"argmax", "topk", "max"})
    need_dist = bool(st & {"mass_recent", "attn_distance", "duplicate", "induction"})
    acc = {}
    for name in (
        "mass_first",
        "mass_keyset",
        "mass_recent",
        "mass_self",
        "prev_token",
        "attn_distance",
        "duplicate",
        "induction",
    ):
        if name in st:
            acc[name] = rz()
    ent = rz() if need_ent else None
    lse_out = torch.empty(B, H, Q, dtype=cd, device=dev)
    mx = torch.full((B, H, Q), -math.inf, dtype=cd, device=dev)
    amax_idx = torch.full((B, H, Q), -1, dtype=torch.int64, device=dev)
    kk = spec.top_k
    top_v = torch.full((B, H, Q, kk), -math.inf, dtype=cd, device=dev) if "topk" in st else None
    top_i = torch.full((B, H, Q, kk), -1, dtype=torch.int64, device=dev) if "topk" in st else None
    col = torch.zeros(B, H, N, dtype=cd, device=dev) if need_col else None
    calog = torch.zeros(B, H, N, dtype=cd, device=dev) if need_cent else None
    tok = spec.token_ids
    if tok is not None:
        ptok = torch.cat([torch.full_like(tok[:, :1], -1), tok[:, :-1]], 1)  # tok_{j-1}
    keyset = spec.key_set.to(cd) if spec.key_set is not None else None

    ones = torch.ones(q_tile, dtype=cd, device=dev)[None, None, None, :].expand(B, H, 1, q_tile)
    for q0 in range(0, Q, q_tile):
        T = min(q_tile, Q - q0)
        a0, a1 = q0 + off, q0 + off + T
        lo = 0 if spec.window is None else max(0, a0 - spec.window + 1)
        tiles = [(j, min(a1, j + k_tile)) for j in range(lo, a1, k_tile)]
        valid = tl.valid[:, q0 : q0 + T][:, None, :]  # [B, 1, T]
        all_valid = bool(valid.all())
        single = len(tiles) == 1
        if single:
            lse = None
        elif spec.row_lse is not None:
            lse = spec.row_lse[:, :, q0 : q0 + T].to(cd)
        else:  # pass 1: online LSE over key tiles
            lse = torch.full((B, H, T), -math.inf, dtype=cd, device=dev)
            for j0, j1 in tiles:
                _, _, lse_t = tl.softmax(tl.logits(q0, T, j0, j1))
                lse = torch.logaddexp(lse, lse_t)
        absi = torch.arange(a0, a1, device=dev)
        for j0, j1 in tiles:
            W = j1 - j0
            S = tl.logits(q0, T, j0, j1)
            m_raw = None
            if need_top:
                if "argmax" in st:
                    m_raw, i_raw = S.max(-1)
                    upd = m_raw > mx[..., q0 : q0 + T]
                    amax_idx[..., q0 : q0 + T] = torch.where(upd, i_raw + j0, amax_idx[..., q0 : q0 + T])
                else:
                    m_raw = S.amax(-1)
                mx[..., q0 : q0 + T] = torch.maximum(mx[..., q0 : q0 + T], m_raw)
                if "topk" in st:
                    v, i = _tile_topk(S, kk, j0)
                    if single:
                        top_v[..., q0 : q0 + T, : v.shape[-1]], top_i[..., q0 : q0 + T, : v.shape[-1]] = v, i
                    else:
                        top_v[..., q0 : q0 + T, :], top_i[..., q0 : q0 + T, :] = _merge_topk(
                            top_v[..., q0 : q0 + T, :], top_i[..., q0 : q0 + T, :], v, i, kk
                        )
            A, m, lse_t = tl.softmax(S, m_raw)  # S now holds S - m
            if single:
                lse = lse_t
            lse_eff = lse if all_valid else torch.where(valid, lse, BIG)
            if single and all_valid:
                fac = None
            else:
                fac = torch.exp(lse_t - lse_eff)
                A.mul_(fac[..., None])
            rowsum = (lambda m=m: torch.ones_like(m)) if fac is None else (lambda f=fac: f)
            if need_dist:
                jj = torch.arange(j0, j1, device=dev)
                dist = absi[:, None] - jj[None, :]  # [T, W]: abs_i - j
            if "mass_first" in st and j0 < spec.sink_k:
                acc["mass_first"][..., q0 : q0 + T] += A[..., : spec.sink_k - j0].sum(-1)
            if "mass_keyset" in st:
                acc["mass_keyset"][..., q0 : q0 + T] += (
                    A.reshape(B, H * T, W) @ keyset[:, j0:j1, None]
                ).view(B, H, T)
            if "mass_recent" in st:
                c0 = max(0, a0 - spec.recent_w + 1 - j0)
                if c0 < W:
                    acc["mass_recent"][..., q0 : q0 + T] += _vecdot(A[..., c0:], dist[:, c0:] < spec.recent_w)
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
                acc["attn_distance"][..., q0 : q0 + T] += _vecdot(A, d)
            if tok is not None and st & {"duplicate", "induction"}:
                qtok = tok[:, a0:a1, None]  # [B, T, 1]
                if "duplicate" in st:
                    w = (tok[:, None, j0:j1] == qtok) & (dist > 0)
                    acc["duplicate"][..., q0 : q0 + T] += _vecdot(A, w[:, None])
                if "induction" in st:
                    w = (ptok[:, None, j0:j1] == qtok) & (jj >= 1)
                    acc["induction"][..., q0 : q0 + T] += _vecdot(A, w[:, None])
            if need_col:
                col[..., j0:j1] += (ones[..., :T] @ A).squeeze(-2)
            if need_ent or need_cent:
                if need_cent:
                    calog[..., j0:j1] += ((m - lse_eff)[:, :, None, :] @ A).squeeze(-2)
                S.mul_(A)  # A (S - m), in place: S is not needed any more (no fresh allocation)
                if need_cent:
                    calog[..., j0:j1] += (ones[..., :T] @ S).squeeze(-2)
                ads = S.sum(-1) if need_ent else None
                if need_ent:
                    ent[..., q0 : q0 + T] -= ads + (m - lse_eff) * rowsum()
        lse_out[..., q0 : q0 + T] = lse
    out = dict(acc)
    valid_b = tl.valid[:, None, :]
    if "lse" in st:
        out["lse"] = torch.where(valid_b, lse_out, -math.inf)
    if "max" in st:
        out["max"] = torch.where(valid_b, mx, -math.inf)
    if "argmax" in st:
        out["argmax"] = torch.where(valid_b, amax_idx, -1)
    if "topk" in st:
        ok = valid_b[..., None] & (top_v > NEG / 2) & (top_i >= 0)
        lse_b = torch.where(valid_b, lse_out, 0.0)[..., None]
        out["topk_idx"] = torch.where(ok, top_i, -1)
        out["topk_prob"] = torch.where(ok, torch.exp(torch.where(ok, top_v - lse_b, 0.0)), 0.0)
    if need_ent:
        out["entropy" if "entropy" in st else "_entropy"] = torch.where(valid_b, ent, 0.0).clamp(min=0)
    if need_col:
        out["col_sum" if "col_sum" in st else "_col_sum"] = col
    if need_cent:
        out["_col_alogA"] = calog
    return finalize(out, spec, B, Q, N, dev)
