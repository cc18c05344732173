"""O(n)-memory statistics of causal softmax attention, computed tile by tile without the [query, key] pattern.

For query row i (absolute position abs_i = i + query_offset) and key j:
    s_ij = scale * q_i . k_j   (softcap: s = softcap * tanh(s / softcap)),
    A_ij = softmax over allowed keys (j <= abs_i, abs_i - j < window, key not padding), in >= fp32.
Row stats ([batch, head, query_pos]) and column stats ([batch, head, key_pos]) are reductions of A; see
``reference.py`` for every formula and ``_spec.py`` for the padding convention.  Implementations:
``reference`` (dense float64 spec), ``chunked`` (torch ops only), ``fused`` (CPU default: torch matmul per
tile + a compiled C sweep per row, ``fused_cpu.py``), ``triton`` (FlashAttention-style kernels, GPU); which one
runs is decided by ``dispatch.plan`` alone (``INTERP_ATTN_IMPL`` forces a path).
"""

from __future__ import annotations

import warnings

import torch

from ._spec import COL_STATS, ROW_STATS, VALID_STATS, StatsSpec, causal_mask, output_names, validate
from .chunked import chunked_stats
from .dispatch import Plan, Request, check_impl, plan
from .reference import reference_stats

__all__ = [
    "COL_STATS",
    "ROW_STATS",
    "VALID_STATS",
    "StatsSpec",
    "causal_mask",
    "chunked_stats",
    "compute_attention_stats",
    "output_names",
    "reference_stats",
    "run_plan",
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
    value=None,
):
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
        impl: 'reference' | 'chunked' | 'fused' | 'triton' | 'auto', chosen by ``dispatch.plan`` (auto: triton on
            CUDA, falling back to chunked with a warning where it cannot run; on CPU 'fused' when its C kernel
            builds and covers the request (not float64, not topk), else 'chunked'; ``INTERP_ATTN_IMPL`` replaces
            'auto').
        memory_budget_mb: chunked-path working-set budget that sets the tile sizes (and the fused path's tile).
        row_lse: optional [batch, head, query_pos] precomputed LSE; lets the chunked path skip its LSE pass
            when a row strip needs several key tiles (ignored when one tile covers the strip).
        value: optional [batch, kv_head, key_pos, d_head]: also return the attention output ``A @ v``
            [batch, head, query_pos, d_head] (float32) from the statistics' own tiles — the fused CPU path only
            (plain causal, no padding, no softcap); raises ``ValueError`` where the plan cannot do that.

    Returns:
        dict with one entry per requested stat ('topk' gives 'topk_idx' and 'topk_prob'
        [batch, head, query_pos, min(top_k, key_pos)]: k is clamped to the number of keys, rows with fewer
        keys padded with -1 / 0); row stats [batch, head, query_pos], column stats
        [batch, head, key_pos].  Float32 values (float64 for float64 inputs and for impl='reference').
        With ``value``: ``(out, dict)``.
    """
    check_impl(impl)
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
    if not spec.stats and value is None:
        return {}
    p = plan(Request.of(q, k, stats=spec.stats, impl=impl, want_output=value is not None,
                        row_lse=spec.row_lse is not None, padding=spec.key_padding_mask is not None,
                        window=spec.window, softcap=spec.softcap))
    if value is not None and not p.fused_output:
        raise ValueError(f"the layer output comes from the statistics kernel only on the fused CPU path "
                         f"(plain causal, no padding or softcap); this call runs {p.impl} ({p.reason})")
    return run_plan(p, q, k, spec, value=value, memory_budget_mb=memory_budget_mb)


def run_plan(p: Plan, q, k, spec: StatsSpec, *, value=None, memory_budget_mb=256):
    """Run the kernel ``p.impl`` (``p.fallback`` with a one-line warning if it fails to compile)."""
    if p.warning:
        warnings.warn(p.warning, RuntimeWarning, stacklevel=3)
    try:
        return _KERNELS[p.impl](q, k, spec, value, memory_budget_mb)
    except _compile_errors(p) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        warnings.warn(f"attention statistics: the {p.impl} kernel failed to compile ({type(e).__name__}: "
                      f"{first}); falling back to the {p.fallback} path", RuntimeWarning, stacklevel=3)
        return _KERNELS[p.fallback](q, k, spec, value, memory_budget_mb)


def _compile_errors(p: Plan) -> tuple:
    """Exceptions that mean "this kernel cannot be built here" (only caught when the plan has a fallback)."""
    if p.fallback is None or p.impl != "triton":
        return ()
    from triton.compiler.errors import TritonError

    return (TritonError,)


def _reference(q, k, spec, value, memory_budget_mb):
    return reference_stats(q, k, spec)


def _chunked(q, k, spec, value, memory_budget_mb):
    return chunked_stats(q, k, spec, memory_budget_mb=memory_budget_mb)


def _fused(q, k, spec, value, memory_budget_mb):
    from .fused_cpu import fused_stats

    # logits per tile: 16 MB by default; a smaller memory budget shrinks it (a tile takes ~1/16 of it)
    tile = min(2**22, max(2**12, int(memory_budget_mb * 2**20) // 64))
    return fused_stats(q, k, spec, tile_elems=tile, v=value)


def _triton(q, k, spec, value, memory_budget_mb):
    from .triton_impl import triton_stats

    return triton_stats(q, k, spec)


_KERNELS = {"reference": _reference, "chunked": _chunked, "fused": _fused, "triton": _triton}
