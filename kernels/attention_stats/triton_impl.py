"""FlashAttention-style Triton kernels for attention statistics (same formulas as ``reference``).

Row kernel, one program per (query block, batch*head); GQA: kv head = head // (head // kv_head):
    loop 1 over causal/windowed key blocks:  m_new = max(m, max_j s_ij),
             l = l exp(m - m_new) + sum_j exp(s_ij - m_new)
             (argmax: first j reaching the running max, strict '>' across blocks keeps the smallest index)
    lse = m + log l  (BIG for padding rows so that A = 0)
    loop 2: A_ij = exp(s_ij - lse_i); accumulate sum_j A_ij f_ij for every requested row stat
             (entropy: f = -(s - lse); masses: indicators; distance: min(abs_i - j, cap); dup/induction:
             token matches).
    Given the row LSE (``spec.row_lse``, e.g. the flash forward's), loop 1 is skipped and loop 2 also keeps
    the running max / argmax: one pass over the keys.
Column kernel, one program per (key block, batch*head): loops over the query blocks that may attend the block,
recomputes A from the row LSE and accumulates col_sum_j = sum_i A_ij and sum_i A_ij (s_ij - lse_i).
'topk' falls back to the chunked torch path.  Triton is imported lazily (inside this module only); on CPU
tensors it needs TRITON_INTERPRET=1 (fp32/fp16 only there).  The interpreter does not run the compiler:
``triton_aot`` compiles every launch configuration for sm_80/sm_90 without a GPU and reports registers and
spills (``reports/bench/triton_kernel_resources.json``).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._spec import StatsSpec, finalize, row_valid

BIG = tl.constexpr(1.0e30)  # a jit function may read only constexpr globals (the interpreter does not check)
ROW_SLOTS = (
    "ent", "mass_first", "mass_keyset", "mass_recent", "mass_self", "prev_token", "attn_distance",
    "duplicate", "induction",
)


@triton.jit
def _logits(
    q, k_base, offs_n, offs_d, s_kn, s_kd, N, D, scale, softcap, SOFTCAP: tl.constexpr, IEEE: tl.constexpr
):
    k = tl.load(
        k_base + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd,
        mask=(offs_n[:, None] < N) & (offs_d[None, :] < D),
        other=0.0,
    )
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = s * scale
    if SOFTCAP:
        s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * s / softcap) + 1.0))
    return s


@triton.jit
def _allowed(abs_i, offs_n, pad_base, N, window, HAS_PAD: tl.constexpr, HAS_WIN: tl.constexpr):
    ok = (offs_n[None, :] <= abs_i[:, None]) & (offs_n[None, :] < N)
    if HAS_WIN:
        ok = ok & (abs_i[:, None] - offs_n[None, :] < window)
    if HAS_PAD:
        p = tl.load(pad_base + offs_n, mask=offs_n < N, other=0)
        ok = ok & (p[None, :] != 0)
    return ok


@triton.jit
def _row_kernel(
    q_ptr, k_ptr, pad_ptr, tok_ptr, ks_ptr, lse_in_ptr, out_ptr, amax_ptr,
    s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd,
    H, G, Q, N, D, off, scale, softcap, window, sink_k, recent_w, cap,
    SOFTCAP: tl.constexpr, HAS_PAD: tl.constexpr, HAS_WIN: tl.constexpr, IEEE: tl.constexpr,
    ARGMAX: tl.constexpr, S_ENT: tl.constexpr, S_FIRST: tl.constexpr, S_KEYSET: tl.constexpr,
    S_RECENT: tl.constexpr, S_SELF: tl.constexpr, S_PREV: tl.constexpr, S_DIST: tl.constexpr,
    S_DUP: tl.constexpr, S_IND: tl.constexpr, PASS2: tl.constexpr, PASS1: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    abs_i = offs_m + off
    q = tl.load(
        q_ptr + b * s_qb + h * s_qh + offs_m[:, None] * s_qm + offs_d[None, :] * s_qd,
        mask=(offs_m[:, None] < Q) & (offs_d[None, :] < D),
        other=0.0,
    )
    k_base = k_ptr + b * s_kb + (h // G) * s_kh
    pad_base = pad_ptr + b * N
    hi = tl.minimum(off + (pid_m + 1) * BLOCK_M, N)
    lo = 0
    if HAS_WIN:
        lo = tl.maximum(off + pid_m * BLOCK_M - window + 1, 0)
        lo = (lo // BLOCK_N) * BLOCK_N
    row_ok = offs_m < Q
    if HAS_PAD:
        row_ok = row_ok & (tl.load(pad_base + abs_i, mask=offs_m < Q, other=0) != 0)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    am = tl.full([BLOCK_M], -1, tl.int64)
    if PASS1:
        for start in range(lo, hi, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            s = _logits(q, k_base, offs_n, offs_d, s_kn, s_kd, N, D, scale, softcap, SOFTCAP, IEEE)
            ok = _allowed(abs_i, offs_n, pad_base, N, window, HAS_PAD, HAS_WIN)
            s = tl.where(ok, s, -1.0e30)
            bm = tl.max(s, 1)
            if ARGMAX:
                cand = tl.where(s == bm[:, None], offs_n[None, :], 2147483647)
                bi = tl.min(cand, 1).to(tl.int64)
                am = tl.where(bm > m_i, bi, am)
            m_new = tl.maximum(m_i, bm)
            l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.where(ok, tl.exp(s - m_new[:, None]), 0.0), 1)
            m_i = m_new
        lse = tl.where(row_ok, m_i + tl.log(tl.maximum(l_i, 1e-30)), BIG)
    else:  # the row LSE was given (e.g. returned by the flash forward): one pass over the keys instead of two
        lse = tl.where(row_ok, tl.load(lse_in_ptr + bh * Q + offs_m, mask=offs_m < Q, other=0.0), BIG)
    base = out_ptr + bh * Q + offs_m
    slot = tl.num_programs(1) * Q  # stride between output slots = batch * head * query_pos
    tl.store(base, lse, mask=offs_m < Q)
    if PASS2:
        tok_i = tl.load(tok_ptr + b * N + abs_i, mask=offs_m < Q, other=-1)
        acc_ent = tl.zeros([BLOCK_M], tl.float32)
        acc_first = tl.zeros([BLOCK_M], tl.float32)
        acc_ks = tl.zeros([BLOCK_M], tl.float32)
        acc_rec = tl.zeros([BLOCK_M], tl.float32)
        acc_self = tl.zeros([BLOCK_M], tl.float32)
        acc_prev = tl.zeros([BLOCK_M], tl.float32)
        acc_dist = tl.zeros([BLOCK_M], tl.float32)
        acc_dup = tl.zeros([BLOCK_M], tl.float32)
        acc_ind = tl.zeros([BLOCK_M], tl.float32)
        for start in range(lo, hi, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            s = _logits(q, k_base, offs_n, offs_d, s_kn, s_kd, N, D, scale, softcap, SOFTCAP, IEEE)
            ok = _allowed(abs_i, offs_n, pad_base, N, window, HAS_PAD, HAS_WIN)
            if not PASS1:  # the max and argmax, which pass 1 would have given, from the same tiles
                sm = tl.where(ok, s, -1.0e30)
                bmx = tl.max(sm, 1)
                if ARGMAX:
                    cand = tl.where(sm == bmx[:, None], offs_n[None, :], 2147483647)
                    am = tl.where(bmx > m_i, tl.min(cand, 1).to(tl.int64), am)
                m_i = tl.maximum(m_i, bmx)
            la = s - lse[:, None]
            p = tl.where(ok, tl.exp(la), 0.0)
            dist = abs_i[:, None] - offs_n[None, :]
            if S_ENT >= 0:
                acc_ent -= tl.sum(tl.where(ok, p * la, 0.0), 1)
            if S_FIRST >= 0:
                acc_first += tl.sum(tl.where(offs_n[None, :] < sink_k, p, 0.0), 1)
            if S_KEYSET >= 0:
                ks = tl.load(ks_ptr + b * N + offs_n, mask=offs_n < N, other=0)
                acc_ks += tl.sum(tl.where(ks[None, :] != 0, p, 0.0), 1)
            if S_RECENT >= 0:
                acc_rec += tl.sum(tl.where(dist < recent_w, p, 0.0), 1)
            if S_SELF >= 0:
                acc_self += tl.sum(tl.where(dist == 0, p, 0.0), 1)
            if S_PREV >= 0:
                acc_prev += tl.sum(tl.where(dist == 1, p, 0.0), 1)
            if S_DIST >= 0:
                acc_dist += tl.sum(p * tl.minimum(tl.maximum(dist, 0), cap).to(tl.float32), 1)
            if S_DUP >= 0:
                tok_j = tl.load(tok_ptr + b * N + offs_n, mask=offs_n < N, other=-2)
                acc_dup += tl.sum(tl.where((tok_j[None, :] == tok_i[:, None]) & (dist > 0), p, 0.0), 1)
            if S_IND >= 0:
                ptok = tl.load(tok_ptr + b * N + offs_n - 1, mask=(offs_n >= 1) & (offs_n < N), other=-2)
                hit = (ptok[None, :] == tok_i[:, None]) & (offs_n[None, :] >= 1)
                acc_ind += tl.sum(tl.where(hit, p, 0.0), 1)
        msk = offs_m < Q
        if S_ENT >= 0:
            tl.store(base + S_ENT * slot, acc_ent, mask=msk)
        if S_FIRST >= 0:
            tl.store(base + S_FIRST * slot, acc_first, mask=msk)
        if S_KEYSET >= 0:
            tl.store(base + S_KEYSET * slot, acc_ks, mask=msk)
        if S_RECENT >= 0:
            tl.store(base + S_RECENT * slot, acc_rec, mask=msk)
        if S_SELF >= 0:
            tl.store(base + S_SELF * slot, acc_self, mask=msk)
        if S_PREV >= 0:
            tl.store(base + S_PREV * slot, acc_prev, mask=msk)
        if S_DIST >= 0:
            tl.store(base + S_DIST * slot, acc_dist, mask=msk)
        if S_DUP >= 0:
            tl.store(base + S_DUP * slot, acc_dup, mask=msk)
        if S_IND >= 0:
            tl.store(base + S_IND * slot, acc_ind, mask=msk)
    tl.store(base + slot, m_i, mask=offs_m < Q)
    if ARGMAX:
        tl.store(amax_ptr + bh * Q + offs_m, am, mask=offs_m < Q)


@triton.jit
def _col_kernel(
    q_ptr, k_ptr, pad_ptr, lse_ptr, col_ptr, s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, H, G, Q, N, D,
    off, scale, softcap, window,
    SOFTCAP: tl.constexpr, HAS_PAD: tl.constexpr, HAS_WIN: tl.constexpr, IEEE: tl.constexpr,
    ALOGA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k_base = k_ptr + b * s_kb + (h // G) * s_kh
    pad_base = pad_ptr + b * N
    lo = tl.maximum(pid_n * BLOCK_N - off, 0)
    lo = (lo // BLOCK_M) * BLOCK_M
    hi = Q
    if HAS_WIN:
        hi = tl.minimum(Q, (pid_n + 1) * BLOCK_N - 1 + window - off)
    acc = tl.zeros([BLOCK_N], tl.float32)
    acc_l = tl.zeros([BLOCK_N], tl.float32)
    for start in range(lo, hi, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        abs_i = offs_m + off
        q = tl.load(
            q_ptr + b * s_qb + h * s_qh + offs_m[:, None] * s_qm + offs_d[None, :] * s_qd,
            mask=(offs_m[:, None] < Q) & (offs_d[None, :] < D),
            other=0.0,
        )
        s = _logits(q, k_base, offs_n, offs_d, s_kn, s_kd, N, D, scale, softcap, SOFTCAP, IEEE)
        ok = _allowed(abs_i, offs_n, pad_base, N, window, HAS_PAD, HAS_WIN) & (offs_m[:, None] < Q)
        lse = tl.load(lse_ptr + bh * Q + offs_m, mask=offs_m < Q, other=BIG)
        la = s - lse[:, None]
        p = tl.where(ok, tl.exp(la), 0.0)
        acc += tl.sum(p, 0)
        if ALOGA:
            acc_l += tl.sum(tl.where(ok, p * la, 0.0), 0)
    tl.store(col_ptr + bh * N + offs_n, acc, mask=offs_n < N)
    if ALOGA:
        tl.store(col_ptr + tl.num_programs(1) * N + bh * N + offs_n, acc_l, mask=offs_n < N)


def launch_config(d_head: int, ieee: bool) -> tuple[int, int, int, int, int]:
    """(BLOCK_D, BLOCK_M, BLOCK_N, num_warps, num_stages) for a head size; ``ieee``: fp32 inputs, exact dot.

    Chosen so that the bf16/fp16 kernels compile for sm_80/sm_90 without register spills up to d_head 128,
    every feature on (``triton_aot`` checks this without a GPU; a test asserts it): 64×64 tiles with 8 warps;
    32×32 with 4 warps at d_head 256 (the two-pass row kernel spills 32 bytes there). fp32 inputs use the
    exact IEEE dot, which has no tensor-core path: 32×32 tiles, 8 warps; its column kernel still spills at
    d_head ≥ 128 (the precise path, not the fast one).
    """
    bd = max(16, triton.next_power_of_2(d_head))
    if ieee:
        return bd, 32, 32, 8, 2
    return (bd, 64, 64, 8, 2) if bd <= 128 else (bd, 32, 32, 4, 2)


@torch.no_grad()
def triton_stats(
    q: torch.Tensor, k: torch.Tensor, spec: StatsSpec, *, block_m: int | None = None, block_n: int | None =
    None,
) -> dict[str, torch.Tensor]:
    """Triton stats; q: [batch, head, query_pos, d_head], k: [batch, kv_head, key_pos, d_head].

    Returns float32 row stats [batch, head, query_pos] and column stats [batch, head, key_pos] (int64
    indices); with ``spec.row_lse`` [batch, head, query_pos] (e.g. the flash forward's) the row kernel makes one
    pass over the keys instead of two (max and argmax then come from that pass);
    'topk' is computed by the chunked path.  block_m / block_n (powers of two >= 16) override the tiles.
    """
    from .chunked import chunked_stats

    B, H, Q, D = q.shape
    KV, N = k.shape[1], k.shape[2]
    st, dev = spec.stats, q.device
    if q.dtype == torch.float64 or k.dtype == torch.float64:
        q, k = q.float(), k.float()
    ieee = q.dtype == torch.float32
    BD, bm, bn, warps, stages = launch_config(D, ieee)
    bm, bn = block_m or bm, block_n or bn
    need_ent = bool(st & {"entropy", "entropy_norm"})
    wanted = {"ent": need_ent, **{n: n in st for n in ROW_SLOTS[1:]}}
    slots, nxt = {}, 2  # slot 0: lse, slot 1: max
    for n in ROW_SLOTS:
        slots[n], nxt = (nxt, nxt + 1) if wanted[n] else (-1, nxt)
    out = torch.empty(nxt, B, H, Q, dtype=torch.float32, device=dev)
    amax = torch.empty(B, H, Q, dtype=torch.int64, device=dev)
    pad = spec.key_padding_mask
    pad_t = (
        (pad if pad is not None else torch.ones(B, N, dtype=torch.bool, device=dev))
        .to(torch.int8)
        .contiguous()
    )
    tok = (
        spec.token_ids.contiguous()
        if spec.token_ids is not None
        else torch.zeros(B, N, dtype=torch.int64, device=dev)
    )
    ks = (spec.key_set if spec.key_set is not None else pad_t).to(torch.int8).contiguous()
    softcap = spec.softcap or 1.0
    window = spec.window or N + 1
    cap = spec.distance_cap if spec.distance_cap is not None else N + 1
    common = dict(
        SOFTCAP=spec.softcap is not None, HAS_PAD=pad is not None, HAS_WIN=spec.window is not None, IEEE=ieee,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=BD, num_warps=warps, num_stages=stages,
    )
    pass1 = spec.row_lse is None
    lse_in = out[0] if pass1 else spec.row_lse.to(device=dev, dtype=torch.float32).contiguous()
    qs, kst = q.stride(), k.stride()
    _row_kernel[(triton.cdiv(Q, bm), B * H)](
        q, k, pad_t, tok, ks, lse_in, out, amax, *qs, *kst, H, H // KV, Q, N, D, spec.query_offset, spec.scale,
        softcap, window, spec.sink_k, spec.recent_w, cap, ARGMAX="argmax" in st, S_ENT=slots["ent"],
        S_FIRST=slots["mass_first"], S_KEYSET=slots["mass_keyset"], S_RECENT=slots["mass_recent"],
        S_SELF=slots["mass_self"], S_PREV=slots["prev_token"], S_DIST=slots["attn_distance"],
        S_DUP=slots["duplicate"], S_IND=slots["induction"], PASS2=nxt > 2 or not pass1, PASS1=pass1, **common,
    )
    valid = row_valid(spec, B, Q, dev)[:, None, :]
    res = {}
    if "lse" in st:
        res["lse"] = torch.where(valid, out[0], -math.inf)
    if "max" in st:
        res["max"] = torch.where(valid, out[1], -math.inf)
    if "argmax" in st:
        res["argmax"] = torch.where(valid, amax, -1)
    for n in ROW_SLOTS[1:]:
        if wanted[n]:
            res[n] = out[slots[n]]
    if need_ent:
        res["entropy" if "entropy" in st else "_entropy"] = out[slots["ent"]].clamp(min=0)
    if st & {"col_sum", "col_alpha", "col_entropy"}:
        aloga = "col_entropy" in st
        col = torch.empty(2 if aloga else 1, B, H, N, dtype=torch.float32, device=dev)
        lse_eff = out[0].contiguous()
        _col_kernel[(triton.cdiv(N, bn), B * H)](
            q, k, pad_t, lse_eff, col, *qs, *kst, H, H // KV, Q, N, D, spec.query_offset, spec.scale, softcap,
            window, ALOGA=aloga, **common,
        )
        res["col_sum" if "col_sum" in st else "_col_sum"] = col[0]
        if aloga:
            res["_col_alogA"] = col[1]
    if "topk" in st:  # fallback: chunked torch path
        from dataclasses import replace

        res.update(chunked_stats(q, k, replace(spec, stats=frozenset({"topk"}))))
    return finalize(res, spec, B, Q, N, dev)
