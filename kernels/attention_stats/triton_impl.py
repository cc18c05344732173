"""FlashAttention-style Triton kernels for attention statistics (same formulas as ``reference``).

Row kernel, one program per (batch*head, query block); GQA: kv head = head // (head // kv_head):
    loop 1 over causal/windowed key blocks:  m_new = max(m, max_j s_ij),
             l = l exp(m - m_new) + sum_j exp(s_ij - m_new)
             (argmax: first j reaching the running max, strict '>' across blocks keeps the smallest index)
    lse = m + log l  (BIG for padding rows so that A = 0)
    loop 2: A_ij = exp(s_ij - lse_i); accumulate sum_j A_ij f_ij for every requested row stat
             (entropy: f = -(s - lse); masses: indicators; distance: min(abs_i - j, cap); dup/induction:
             token matches).
    Given the row LSE (``spec.row_lse``, e.g. the flash forward's), loop 1 is skipped and loop 2 also keeps
    the running max / argmax: one pass over the keys.
Column kernel, one program per (batch*head, key block): loops over the query blocks that may attend the block,
recomputes A from the row LSE and accumulates col_sum_j = sum_i A_ij and sum_i A_ij (s_ij - lse_i).
'topk' falls back to the chunked torch path.

What only a GPU run would show, handled here (tests in tests/gpu/):
* offsets: every base offset (batch * stride_b, head * stride_h, first row of a block * stride_m, the output
  slot stride batch * head * query_pos) is formed in int64, as Triton's fused-attention tutorial (06) does;
  offsets inside a tile stay int32 (a tile spans at most 64 rows, and ``triton_stats`` refuses strides for which
  that could overflow).  Tensors may hold >= 2**31 elements.
* grid: (batch * head, blocks).  CUDA allows 2**31 - 1 programs on axis 0 but 65535 on axis 1, so batch * head
  sits on axis 0; axis 1 (query or key blocks) caps the sequence at 65535 blocks (4.19M tokens at 64-row
  tiles; refused beyond).  Query blocks run last-first: the causal row blocks with the most keys start first.
* device: launches run under ``torch.cuda.device(q.device)`` (Triton launches on the *current* device).
* precision: fp16/bf16 inputs use tensor cores (fp32 accumulation); fp32 inputs take the exact IEEE fp32 dot by
  default (no tensor cores; ``precision="tf32x3"`` (3 TF32 products, ~fp32 accuracy) or ``"tf32"`` (10-bit
  mantissa inputs) are faster); float64 inputs are computed in fp32.  ``TOLERANCES`` states the accuracy of
  each against the float64 reference; the tests hold the kernels to it.
* capability: ``triton_supported(device, dtype)`` (``triton_caps.py``) says whether this path can run there.

Triton is imported with this module; on CPU tensors it needs TRITON_INTERPRET=1 (fp16/fp32 only: the
interpreter's ``tl.dot`` multiplies bf16 bit patterns, triton-lang/triton#11584).  The interpreter does not run
the compiler: ``triton_aot`` compiles each launch as the JIT would for sm_80/sm_90 without a GPU and reports
registers, spills and shared memory (on a GPU it reads them from the launched kernels).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from ._spec import StatsSpec, finalize, row_valid
from .triton_caps import triton_supported  # noqa: F401  (re-exported for the dispatcher)

BIG = tl.constexpr(1.0e30)  # a jit function may read only constexpr globals (the interpreter does not check)
ROW_SLOTS = (
    "ent", "mass_first", "mass_keyset", "mass_recent", "mass_self", "prev_token", "attn_distance",
    "duplicate", "induction",
)
PRECISIONS = ("ieee", "tf32x3", "tf32")  # fp32 inputs only
PRECISION_ENV = "INTERP_TRITON_FP32_PRECISION"
# (rtol, atol) of every output against the float64 reference of the same (rounded) inputs ('attn_distance':
# atol * key_pos). fp16/bf16 products are exact in fp32; the error is fp32 accumulation and exp/log.
TOLERANCES = {
    "fp32-ieee": (1e-5, 1e-5),
    "fp32-tf32x3": (5e-5, 5e-5),
    "fp32-tf32": (5e-3, 5e-3),  # inputs rounded to 10-bit mantissas: |ds| ~ 1e-3 at unit-scale logits
    "fp16": (1e-4, 1e-4),
    "bf16": (1e-4, 1e-4),
}
MAX_BLOCKS = 65535  # CUDA's limit on grid axis 1
_DTYPE_NAME = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def tolerance(dtype: torch.dtype, precision: str | None = None) -> tuple[float, float]:
    """(rtol, atol) that ``triton_stats`` meets for inputs of ``dtype`` (fp32: with ``precision``)."""
    name = _DTYPE_NAME.get(dtype, "fp32")
    return TOLERANCES[f"fp32-{precision or 'ieee'}" if name == "fp32" else name]


@triton.jit
def _logits(q, k_base, start, rn, offs_d, s_kn, s_kd, N, D: tl.constexpr, scale, softcap,
            SOFTCAP: tl.constexpr, PREC: tl.constexpr):
    """Scaled (softcapped) logits [BLOCK_M, BLOCK_N] of q against keys start + rn (int64 block offset)."""
    k = tl.load(
        k_base + tl.cast(start, tl.int64) * s_kn + rn[:, None] * s_kn + offs_d[None, :] * s_kd,
        mask=(rn[:, None] < N - start) & (offs_d[None, :] < D),
        other=0.0,
    )
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
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
def _load_q(q_ptr, b, h, m0, s_qb, s_qh, s_qm, s_qd, Q, D: tl.constexpr, BLOCK_M: tl.constexpr,
            BLOCK_D: tl.constexpr):
    """The [BLOCK_M, BLOCK_D] query tile of rows m0.. of (b, h); the base offset in int64."""
    rm = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    base = q_ptr + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh + tl.cast(m0, tl.int64) * s_qm
    return tl.load(base + rm[:, None] * s_qm + offs_d[None, :] * s_qd,
                   mask=(rm[:, None] < Q - m0) & (offs_d[None, :] < D), other=0.0)


@triton.jit
def _tile_max(s, ok, offs_n, m_i, am, ARGMAX: tl.constexpr):
    """Masked logits and the running max / first argmax updated with this tile."""
    sm = tl.where(ok, s, -1.0e30)
    bm = tl.max(sm, 1)
    if ARGMAX:
        cand = tl.where(sm == bm[:, None], offs_n[None, :], 2147483647)
        am = tl.where(bm > m_i, tl.min(cand, 1).to(tl.int64), am)
    return sm, tl.maximum(m_i, bm), am


@triton.jit
def _masses(p, la, ok, dist, offs_n, ks_base, N, sink_k, recent_w, cap, a_ent, a_first, a_ks, a_rec, a_self,
            a_prev, a_dist, S_ENT: tl.constexpr, S_FIRST: tl.constexpr, S_KEYSET: tl.constexpr,
            S_RECENT: tl.constexpr, S_SELF: tl.constexpr, S_PREV: tl.constexpr, S_DIST: tl.constexpr):
    """Add this tile's sum_j A_ij f_ij to each requested row accumulator (slot index < 0: not requested)."""
    if S_ENT >= 0:
        a_ent -= tl.sum(tl.where(ok, p * la, 0.0), 1)
    if S_FIRST >= 0:
        a_first += tl.sum(tl.where(offs_n[None, :] < sink_k, p, 0.0), 1)
    if S_KEYSET >= 0:
        ks = tl.load(ks_base + offs_n, mask=offs_n < N, other=0)
        a_ks += tl.sum(tl.where(ks[None, :] != 0, p, 0.0), 1)
    if S_RECENT >= 0:
        a_rec += tl.sum(tl.where(dist < recent_w, p, 0.0), 1)
    if S_SELF >= 0:
        a_self += tl.sum(tl.where(dist == 0, p, 0.0), 1)
    if S_PREV >= 0:
        a_prev += tl.sum(tl.where(dist == 1, p, 0.0), 1)
    if S_DIST >= 0:
        a_dist += tl.sum(p * tl.minimum(tl.maximum(dist, 0), cap).to(tl.float32), 1)
    return a_ent, a_first, a_ks, a_rec, a_self, a_prev, a_dist


@triton.jit
def _matches(p, dist, offs_n, tok_base, tok_i, N, a_dup, a_ind, S_DUP: tl.constexpr, S_IND: tl.constexpr):
    """Duplicate-token (same token earlier) and induction (token after an earlier copy) masses of this tile."""
    if S_DUP >= 0:
        tok_j = tl.load(tok_base + offs_n, mask=offs_n < N, other=-2)
        a_dup += tl.sum(tl.where((tok_j[None, :] == tok_i[:, None]) & (dist > 0), p, 0.0), 1)
    if S_IND >= 0:
        ptok = tl.load(tok_base + offs_n - 1, mask=(offs_n >= 1) & (offs_n < N), other=-2)
        a_ind += tl.sum(tl.where((ptok[None, :] == tok_i[:, None]) & (offs_n[None, :] >= 1), p, 0.0), 1)
    return a_dup, a_ind


@triton.jit
def _store_slot(base, slot, acc, msk, S: tl.constexpr):
    if S >= 0:
        tl.store(base + S * slot, acc, mask=msk)


@triton.jit
def _row_kernel(
    q_ptr, k_ptr, pad_ptr, tok_ptr, ks_ptr, lse_in_ptr, out_ptr, amax_ptr,
    s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd,
    H, G, Q, N, off, scale, softcap, window, sink_k, recent_w, cap,
    D: tl.constexpr, SOFTCAP: tl.constexpr, HAS_PAD: tl.constexpr, HAS_WIN: tl.constexpr, PREC: tl.constexpr,
    ARGMAX: tl.constexpr, S_ENT: tl.constexpr, S_FIRST: tl.constexpr, S_KEYSET: tl.constexpr,
    S_RECENT: tl.constexpr, S_SELF: tl.constexpr, S_PREV: tl.constexpr, S_DIST: tl.constexpr,
    S_DUP: tl.constexpr, S_IND: tl.constexpr, PASS2: tl.constexpr, PASS1: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    bh = tl.program_id(0)
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)  # longest causal rows first
    b = bh // H
    h = bh % H
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    abs_i = offs_m + off
    msk = offs_m < Q
    q = _load_q(q_ptr, b, h, m0, s_qb, s_qh, s_qm, s_qd, Q, D, BLOCK_M, BLOCK_D)
    k_base = k_ptr + b.to(tl.int64) * s_kb + (h // G).to(tl.int64) * s_kh
    pad_base = pad_ptr + b.to(tl.int64) * N
    tok_base = tok_ptr + b.to(tl.int64) * N
    hi = tl.minimum(off + m0 + BLOCK_M, N)
    lo = 0
    if HAS_WIN:
        lo = (tl.maximum(off + m0 - window + 1, 0) // BLOCK_N) * BLOCK_N
    row_ok = msk
    if HAS_PAD:
        row_ok = row_ok & (tl.load(pad_base + abs_i, mask=msk, other=0) != 0)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    am = tl.full([BLOCK_M], -1, tl.int64)
    row_base = bh.to(tl.int64) * Q + offs_m  # offset of (bh, row) in a [batch * head, query_pos] slot
    if PASS1:
        for start in range(lo, hi, BLOCK_N):
            s = _logits(q, k_base, start, rn, offs_d, s_kn, s_kd, N, D, scale, softcap, SOFTCAP, PREC)
            ok = _allowed(abs_i, start + rn, pad_base, N, window, HAS_PAD, HAS_WIN)
            sm, m_new, am = _tile_max(s, ok, start + rn, m_i, am, ARGMAX)
            l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.where(ok, tl.exp(sm - m_new[:, None]), 0.0), 1)
            m_i = m_new
        lse = tl.where(row_ok, m_i + tl.log(tl.maximum(l_i, 1e-30)), BIG)
    else:  # the row LSE was given (e.g. returned by the flash forward): one pass over the keys instead of two
        lse = tl.where(row_ok, tl.load(lse_in_ptr + row_base, mask=msk, other=0.0), BIG)
    slot = tl.num_programs(0).to(tl.int64) * Q  # stride between output slots = batch * head * query_pos
    base = out_ptr + row_base
    tl.store(base, lse, mask=msk)
    if PASS2:
        tok_i = tl.load(tok_base + abs_i, mask=msk, other=-1)
        a_ent = tl.zeros([BLOCK_M], tl.float32)
        a_first = tl.zeros([BLOCK_M], tl.float32)
        a_ks = tl.zeros([BLOCK_M], tl.float32)
        a_rec = tl.zeros([BLOCK_M], tl.float32)
        a_self = tl.zeros([BLOCK_M], tl.float32)
        a_prev = tl.zeros([BLOCK_M], tl.float32)
        a_dist = tl.zeros([BLOCK_M], tl.float32)
        a_dup = tl.zeros([BLOCK_M], tl.float32)
        a_ind = tl.zeros([BLOCK_M], tl.float32)
        for start in range(lo, hi, BLOCK_N):
            offs_n = start + rn
            s = _logits(q, k_base, start, rn, offs_d, s_kn, s_kd, N, D, scale, softcap, SOFTCAP, PREC)
            ok = _allowed(abs_i, offs_n, pad_base, N, window, HAS_PAD, HAS_WIN)
            if not PASS1:  # the max and argmax, which pass 1 would have given, from the same tiles
                _, m_i, am = _tile_max(s, ok, offs_n, m_i, am, ARGMAX)
            la = s - lse[:, None]
            p = tl.where(ok, tl.exp(la), 0.0)
            dist = abs_i[:, None] - offs_n[None, :]
            a_ent, a_first, a_ks, a_rec, a_self, a_prev, a_dist = _masses(
                p, la, ok, dist, offs_n, ks_ptr + b.to(tl.int64) * N, N, sink_k, recent_w, cap, a_ent, a_first,
                a_ks, a_rec, a_self, a_prev, a_dist, S_ENT, S_FIRST, S_KEYSET, S_RECENT, S_SELF, S_PREV, S_DIST)
            a_dup, a_ind = _matches(p, dist, offs_n, tok_base, tok_i, N, a_dup, a_ind, S_DUP, S_IND)
        _store_slot(base, slot, a_ent, msk, S_ENT)
        _store_slot(base, slot, a_first, msk, S_FIRST)
        _store_slot(base, slot, a_ks, msk, S_KEYSET)
        _store_slot(base, slot, a_rec, msk, S_RECENT)
        _store_slot(base, slot, a_self, msk, S_SELF)
        _store_slot(base, slot, a_prev, msk, S_PREV)
        _store_slot(base, slot, a_dist, msk, S_DIST)
        _store_slot(base, slot, a_dup, msk, S_DUP)
        _store_slot(base, slot, a_ind, msk, S_IND)
    tl.store(base + slot, m_i, mask=msk)
    if ARGMAX:
        tl.store(amax_ptr + row_base, am, mask=msk)


@triton.jit
def _col_kernel(
    q_ptr, k_ptr, pad_ptr, lse_ptr, col_ptr, s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, H, G, Q, N,
    off, scale, softcap, window,
    D: tl.constexpr, SOFTCAP: tl.constexpr, HAS_PAD: tl.constexpr, HAS_WIN: tl.constexpr, PREC: tl.constexpr,
    ALOGA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    bh = tl.program_id(0)
    pid_n = tl.program_id(1)  # key blocks near the start are attended by the most queries: they start first
    b = bh // H
    h = bh % H
    n0 = pid_n * BLOCK_N
    rn = tl.arange(0, BLOCK_N)
    offs_n = n0 + rn
    offs_d = tl.arange(0, BLOCK_D)
    k_base = k_ptr + b.to(tl.int64) * s_kb + (h // G).to(tl.int64) * s_kh
    pad_base = pad_ptr + b.to(tl.int64) * N
    lse_base = lse_ptr + bh.to(tl.int64) * Q
    lo = (tl.maximum(n0 - off, 0) // BLOCK_M) * BLOCK_M
    hi = Q
    if HAS_WIN:
        hi = tl.minimum(Q, n0 + BLOCK_N - 1 + window - off)
    acc = tl.zeros([BLOCK_N], tl.float32)
    acc_l = tl.zeros([BLOCK_N], tl.float32)
    for start in range(lo, hi, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        q = _load_q(q_ptr, b, h, start, s_qb, s_qh, s_qm, s_qd, Q, D, BLOCK_M, BLOCK_D)
        s = _logits(q, k_base, n0, rn, offs_d, s_kn, s_kd, N, D, scale, softcap, SOFTCAP, PREC)
        ok = _allowed(offs_m + off, offs_n, pad_base, N, window, HAS_PAD, HAS_WIN) & (offs_m[:, None] < Q)
        lse = tl.load(lse_base + offs_m, mask=offs_m < Q, other=BIG)
        la = s - lse[:, None]
        p = tl.where(ok, tl.exp(la), 0.0)
        acc += tl.sum(p, 0)
        if ALOGA:
            acc_l += tl.sum(tl.where(ok, p * la, 0.0), 0)
    col_base = col_ptr + bh.to(tl.int64) * N + offs_n
    tl.store(col_base, acc, mask=offs_n < N)
    if ALOGA:
        tl.store(col_base + tl.num_programs(0).to(tl.int64) * N, acc_l, mask=offs_n < N)


def launch_config(d_head: int, precision: str | None, kernel: str = "row") -> tuple[int, int, int, int, int]:
    """(BLOCK_D, BLOCK_M, BLOCK_N, num_warps, num_stages) for a head size and kernel ('row' | 'col').

    ``precision``: None for fp16/bf16 inputs, else the fp32 dot precision ('ieee' | 'tf32x3' | 'tf32').
    Chosen with ``triton_aot`` (the JIT's specialisation of a model-shaped launch, sm_80 and sm_90) as the largest
    tiles that compile without register spills: fp16/bf16 64x64 with 8 warps (one pipeline stage at d_head 256);
    fp32 IEEE (FMA, no tensor cores) 32x32 with 8 warps, the column kernel unpipelined (2 stages spill 200+ B
    at d_head >= 128); TF32 like half inputs (32x32, 4 warps at 256); TF32x3 (three dots, twice the operand
    registers) 64x32 / 64x16 / 16x32 at d_head 64 / 128 / 256, still spilling ~100-200 B in the row kernel
    at 256.  ``reports/bench/triton_kernel_resources.json`` lists registers, spills and shared memory of each.
    """
    bd = max(16, triton.next_power_of_2(d_head))
    if precision == "ieee":
        return bd, 32, 32, 8, 1 if kernel == "col" else 2
    if precision == "tf32x3":
        return (bd, 64, 32, 8, 1) if bd <= 64 else (bd, 64, 16, 8, 1) if bd <= 128 else (bd, 16, 32, 4, 1)
    if precision == "tf32" and bd > 128:
        return bd, 32, 32, 4, 2
    return (bd, 64, 64, 8, 2) if bd <= 128 else (bd, 64, 64, 8, 1)


def fp32_precision(precision: str | None) -> str:
    """The fp32 dot precision: the argument, else ``$INTERP_TRITON_FP32_PRECISION``, else 'ieee'."""
    p = precision or os.environ.get(PRECISION_ENV) or "ieee"
    if p not in PRECISIONS:
        src = "precision" if precision else PRECISION_ENV
        raise ValueError(f"{src}={p!r} is not a Triton fp32 precision; use one of {list(PRECISIONS)}")
    return p


@dataclass
class Launch:
    """One kernel launch as ``triton_stats`` makes it: ``kernel[grid](*args, **kwargs)`` (``triton_aot``
    replays the same arguments through the JIT's specialisation without a GPU)."""

    kernel: object
    grid: tuple
    args: list
    kwargs: dict


def _aux(q, k, spec: StatsSpec):
    """int8 padding mask, int64 tokens, int8 key set: [batch, key_pos], contiguous, on q's device."""
    B, N, dev = q.shape[0], k.shape[2], q.device
    pad = spec.key_padding_mask
    pad_t = (pad if pad is not None else torch.ones(B, N, dtype=torch.bool, device=dev)).to(torch.int8)
    tok = spec.token_ids if spec.token_ids is not None else torch.zeros(B, N, dtype=torch.int64, device=dev)
    ks = (spec.key_set if spec.key_set is not None else pad_t).to(torch.int8).contiguous()
    return pad_t.contiguous(), tok.contiguous(), ks


def _check_shape(q, k, bm, bn, bd):
    """Refuse what the int32 in-tile offsets or the CUDA grid cannot address (base offsets are int64)."""
    B, H, Q, _ = q.shape
    N = k.shape[2]
    for name, t, rows in (("q", q, bm), ("k", k, bn)):
        s_pos, s_d = t.stride(2), t.stride(3)
        if s_pos < 2**31 and s_d < 2**31 and (rows - 1) * s_pos + (bd - 1) * s_d >= 2**31:
            raise ValueError(f"{name} has strides {t.stride()}: a {rows}-row tile spans >= 2**31 elements "
                             f"(int32 offsets inside a tile); pass {name}.contiguous()")
    if max(triton.cdiv(Q, bm), triton.cdiv(N, bn)) > MAX_BLOCKS:
        raise ValueError(f"key_pos={N} needs more than {MAX_BLOCKS} blocks of {min(bm, bn)} rows (CUDA grid "
                         "limit); split the sequence")
    if B * H >= 2**31:
        raise ValueError(f"batch * head = {B * H} exceeds the CUDA grid limit 2**31 - 1; split the batch")


def plan(q, k, spec: StatsSpec, *, block_m=None, block_n=None, precision=None):
    """The row (and column) launches for these inputs and the output buffers they write.

    Returns ``(row, col, buffers)``: ``Launch`` objects (``col`` None when no column stat is requested) and a
    dict with ``out`` [slots, batch, head, query_pos] float32 (slot 0 lse, 1 max, then ``slots``), ``amax``
    [batch, head, query_pos] int64, ``col`` [1 or 2, batch, head, key_pos] float32 and ``slots``.
    """
    B, H, Q, D = q.shape
    KV, N = k.shape[1], k.shape[2]
    st, dev = spec.stats, q.device
    prec = None if q.dtype in (torch.float16, torch.bfloat16) else fp32_precision(precision)
    BD, bm, bn, warps, stages = launch_config(D, prec, "row")
    bm, bn = block_m or bm, block_n or bn
    _check_shape(q, k, bm, bn, BD)
    wanted = {"ent": bool(st & {"entropy", "entropy_norm"}), **{n: n in st for n in ROW_SLOTS[1:]}}
    slots, nxt = {}, 2  # slot 0: lse, slot 1: max
    for n in ROW_SLOTS:
        slots[n], nxt = (nxt, nxt + 1) if wanted[n] else (-1, nxt)
    buf = dict(out=torch.empty(nxt, B, H, Q, dtype=torch.float32, device=dev), slots=slots,
               amax=torch.empty(B, H, Q, dtype=torch.int64, device=dev))
    pad_t, tok, ks = _aux(q, k, spec)
    softcap, window = spec.softcap or 1.0, spec.window or N + 1
    cap = spec.distance_cap if spec.distance_cap is not None else N + 1
    common = dict(D=D, SOFTCAP=spec.softcap is not None, HAS_PAD=spec.key_padding_mask is not None,
                  HAS_WIN=spec.window is not None, PREC=prec, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=BD,
                  num_warps=warps)
    pass1 = spec.row_lse is None
    out = buf["out"]
    lse_in = out[0] if pass1 else spec.row_lse.to(device=dev, dtype=torch.float32).contiguous()
    qs, kst, sc = q.stride(), k.stride(), (H, H // KV, Q, N, spec.query_offset, spec.scale, softcap, window)
    row = Launch(_row_kernel, (B * H, triton.cdiv(Q, bm)),
                 [q, k, pad_t, tok, ks, lse_in, out, buf["amax"], *qs, *kst, *sc, spec.sink_k, spec.recent_w, cap],
                 dict(ARGMAX="argmax" in st, S_ENT=slots["ent"], S_FIRST=slots["mass_first"],
                      S_KEYSET=slots["mass_keyset"], S_RECENT=slots["mass_recent"], S_SELF=slots["mass_self"],
                      S_PREV=slots["prev_token"], S_DIST=slots["attn_distance"], S_DUP=slots["duplicate"],
                      S_IND=slots["induction"], PASS2=nxt > 2 or not pass1, PASS1=pass1, num_stages=stages,
                      **common))
    col = None
    if st & {"col_sum", "col_alpha", "col_entropy"}:
        aloga = "col_entropy" in st
        buf["col"] = torch.empty(2 if aloga else 1, B, H, N, dtype=torch.float32, device=dev)
        col = Launch(_col_kernel, (B * H, triton.cdiv(N, bn)), [q, k, pad_t, out[0], buf["col"], *qs, *kst, *sc],
                     dict(ALOGA=aloga, num_stages=launch_config(D, prec, "col")[4], **common))
    return row, col, buf


def _device(q):
    return torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext()


def _collect(spec: StatsSpec, buf: dict, B: int, Q: int, dev) -> dict:
    st, out, slots = spec.stats, buf["out"], buf["slots"]
    valid = row_valid(spec, B, Q, dev)[:, None, :]
    res = {}
    if "lse" in st:
        res["lse"] = torch.where(valid, out[0], -math.inf)
    if "max" in st:
        res["max"] = torch.where(valid, out[1], -math.inf)
    if "argmax" in st:
        res["argmax"] = torch.where(valid, buf["amax"], -1)
    for n in ROW_SLOTS[1:]:
        if slots[n] >= 0:
            res[n] = out[slots[n]]
    if slots["ent"] >= 0:
        res["entropy" if "entropy" in st else "_entropy"] = out[slots["ent"]].clamp(min=0)
    if "col" in buf:
        res["col_sum" if "col_sum" in st else "_col_sum"] = buf["col"][0]
        if buf["col"].shape[0] == 2:
            res["_col_alogA"] = buf["col"][1]
    return res


@torch.no_grad()
def triton_stats(
    q: torch.Tensor, k: torch.Tensor, spec: StatsSpec, *, block_m: int | None = None, block_n: int | None = None,
    precision: str | None = None, launched: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Triton stats; q: [batch, head, query_pos, d_head], k: [batch, kv_head, key_pos, d_head] (any strides).

    Returns float32 row stats [batch, head, query_pos] and column stats [batch, head, key_pos] (int64
    indices); with ``spec.row_lse`` [batch, head, query_pos] (e.g. the flash forward's) the row kernel makes one
    pass over the keys instead of two (max and argmax then come from that pass); 'topk' is computed by the
    chunked path.  block_m / block_n (powers of two >= 16) override the tiles.  ``precision``: the fp32 dot
    ('ieee' default, 'tf32x3', 'tf32'; see ``TOLERANCES``; ``$INTERP_TRITON_FP32_PRECISION`` sets the default),
    ignored for fp16/bf16.  ``launched``: if a dict, receives the compiled kernels ('row', 'col') that ran
    (``triton_aot.launched_resources`` reads their registers on a GPU).
    """
    if q.dtype == torch.float64 or k.dtype == torch.float64:
        q, k = q.float(), k.float()
    B, _, Q, _ = q.shape
    N, dev = k.shape[2], q.device
    row, col, buf = plan(q, k, spec, block_m=block_m, block_n=block_n, precision=precision)
    with _device(q):
        kr = row.kernel[row.grid](*row.args, **row.kwargs)
        kc = col.kernel[col.grid](*col.args, **col.kwargs) if col is not None else None
    if launched is not None:
        launched.update(row=kr, **({"col": kc} if kc is not None else {}))
    res = _collect(spec, buf, B, Q, dev)
    if "topk" in spec.stats:  # fallback: chunked torch path
        from .chunked import chunked_stats

        res.update(chunked_stats(q, k, replace(spec, stats=frozenset({"topk"}))))
    return finalize(res, spec, B, Q, N, dev)
