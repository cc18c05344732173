"""O(n)-memory statistics of causal softmax attention, computed tile by tile without the [query, key] pattern.

For query row i (absolute position abs_i = i + query_offset) and key j:
    s_ij = scale * q_i . k_j   (softcap: s = softcap * tanh(s / softcap)),
    A_ij = softmax over allowed keys (j <= abs_i, abs_i - j < window, key not padding), in >= fp32.
Row stats ([batch, head, query_pos]) and column stats ([batch, head, key_pos]) are reductions of A; see
``reference.py`` for every formula and ``_spec.py`` for the padding convention.  Implementations:
``reference`` (dense float64 spec), ``chunked`` (torch ops only), ``fused`` (CPU default: torch matmul per
tile + a compiled C sweep per row, ``fused_cpu.py``), ``triton`` (FlashAttention-style kernels, GPU).
"""

from __future__ import annotations

import os

import torch

from ._spec import COL_STATS, IMPLS, ROW_STATS, VALID_STATS, StatsSpec, output_names, validate
from .chunked import chunked_stats
from .reference import reference_stats

__all__ = [
    "COL_STATS",
    "ROW_STATS",
    "VALID_STATS",
    "StatsSpec",
    "chunked_stats",
    "compute_attention_stats",
    "output_names",
    "reference_stats",
    "triton_available",
]


def triton_available() -> bool:
    """True if ``triton`` imports (it is imported lazily, never at package import)."""
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the environment
        return False
    return True


def compute_attention_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    stats,
    scale: float,
    token_ids=None,
    key_padding_mask=None,
    window=None,
    softcap=None,
    sink_k=4,
    recent_w=64,
    distance_cap=None,
    top_k=5,
    key_set=None,
    query_offset=None,
    impl="auto",
    memory_budget_mb=256,
    row_lse=None,
) -> dict[str, torch.Tensor]:
    """Compute the requested attention statistics.

    Args:
        q: [batch, head, query_pos, d_head] post-RoPE queries.
        k: [batch, kv_head, key_pos, d_head] post-RoPE keys; head % kv_head == 0 (query head h uses kv head
            h // (head // kv_head)).
        stats: iterable of names from ``VALID_STATS``; only those are computed.
        scale: logit scale (usually d_head ** -0.5).
        token_ids: [batch, key_pos] int64, needed by 'duplicate' / 'induction' (query tokens are the tokens at
            the queries' absolute positions).
        key_padding_mask: [batch, key_pos] bool, True = real token (left padding allowed).  Padding query rows
            give zeros (lse/max -inf, argmax/topk_idx -1) and do not contribute to column stats.
        window: sliding window, key j allowed iff abs_i - j < window.
        softcap: logit soft-capping.
        sink_k, recent_w, distance_cap, top_k, key_set: parameters of mass_first, mass_recent, attn_distance,
            topk and mass_keyset (key_set: [batch, key_pos] bool).
        query_offset: absolute position of query row 0; default key_pos - query_pos.
        impl: 'reference' | 'chunked' | 'fused' | 'triton' | 'auto' (triton on CUDA when importable; on CPU
            'fused' when its C kernel builds and covers the request (not float64, not topk), else 'chunked').
        memory_budget_mb: chunked-path working-set budget that sets the tile sizes.
        row_lse: optional [batch, head, query_pos] precomputed LSE; lets the chunked path skip its LSE pass
            when a row strip needs several key tiles (ignored when one tile covers the strip).

    Returns:
        dict with one entry per requested stat ('topk' gives 'topk_idx' and 'topk_prob'
        [batch, head, query_pos, top_k]); row stats [batch, head, query_pos], column stats
        [batch, head, key_pos].  Float32 values (float64 for float64 inputs and for impl='reference').
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {list(IMPLS)}, got {impl!r}")
    if not isinstance(memory_budget_mb, (int, float)) or not memory_budget_mb > 0:
        raise ValueError(f"memory_budget_mb must be a positive number, got {memory_budget_mb!r}")
    spec = validate(
        q,
        k,
        stats=stats,
        scale=scale,
        token_ids=token_ids,
        key_padding_mask=key_padding_mask,
        window=window,
        softcap=softcap,
        sink_k=sink_k,
        recent_w=recent_w,
        distance_cap=distance_cap,
        top_k=top_k,
        key_set=key_set,
        query_offset=query_offset,
        row_lse=row_lse,
    )
    if not spec.stats:
        return {}
    if impl == "auto":
        if q.is_cuda and triton_available():
            impl = "triton"
        else:
            from .fused_cpu import supports

            impl = "fused" if supports(q, k, spec) else "chunked"
    if impl == "reference":
        return reference_stats(q, k, spec)
    if impl == "chunked":
        return chunked_stats(q, k, spec, memory_budget_mb=memory_budget_mb)
    if impl == "fused":
        from .fused_cpu import SUPPORTED, fused_stats, load

        if q.device.type != "cpu":
            raise ValueError("impl='fused' is the CPU path; use impl='triton' (or 'auto') for CUDA tensors")
        if not spec.stats <= SUPPORTED:
            raise ValueError(f"impl='fused' does not compute {sorted(spec.stats - SUPPORTED)}; use impl='chunked'")
        if torch.float64 in (q.dtype, k.dtype):
            raise ValueError("impl='fused' computes in float32; use impl='chunked' for float64 inputs")
        load()  # raises RuntimeError saying why the kernel cannot be built
        # logits per tile: 16 MB by default; a smaller memory budget shrinks it (a tile takes ~1/16 of it)
        tile = min(2**22, max(2**12, int(memory_budget_mb * 2**20) // 64))
        return fused_stats(q, k, spec, tile_elems=tile)
    if not triton_available():
        raise ValueError("impl='triton' requested but triton is not importable")
    if not q.is_cuda:
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("impl='triton' on CPU tensors needs TRITON_INTERPRET=1 (set it before import)")
        if torch.bfloat16 in (q.dtype, k.dtype):
            raise ValueError("impl='triton' on CPU (TRITON_INTERPRET=1) takes fp16/fp32/fp64, not bfloat16")
    from .triton_impl import triton_stats

    return triton_stats(q, k, spec)
