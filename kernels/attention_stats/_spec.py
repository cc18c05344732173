"""Shared definitions for the attention-statistics engine: stat names, input validation, masks (``causal_mask``),
counts.

Notation (all implementations follow it exactly):

* ``abs_i = i + query_offset`` is the absolute key position of query row ``i``.
* Key ``j`` is *allowed* for row ``i`` iff ``j <= abs_i``, ``abs_i - j < window`` (when a window is given)
  and ``key_padding_mask[b, j]`` (when given).
* Row ``i`` is *valid* iff its own token is not padding, ``key_padding_mask[b, abs_i]``.  A valid row always
  has at least one allowed key (itself).  Invalid (padding) rows get ``A = 0``: every mass / entropy /
  distance stat is 0, ``lse`` and ``max`` are ``-inf``, ``argmax`` and ``topk_idx`` are -1, and they
  contribute nothing to the column statistics.  Nothing is NaN.
* ``n_keys_i`` = number of allowed keys of row i; ``n_rows_j`` = number of valid rows that may attend key j.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

ROW_STATS = (
    "lse",
    "max",
    "entropy",
    "entropy_norm",
    "argmax",
    "topk",
    "mass_first",
    "mass_keyset",
    "mass_recent",
    "mass_self",
    "attn_distance",
    "prev_token",
    "duplicate",
    "induction",
)
COL_STATS = ("col_sum", "col_alpha", "col_entropy")
VALID_STATS = ROW_STATS + COL_STATS
TOKEN_STATS = frozenset({"duplicate", "induction"})
IMPLS = ("auto", "reference", "chunked", "fused", "triton")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class StatsSpec:
    """Validated, normalised arguments of :func:`compute_attention_stats`."""

    stats: frozenset
    scale: float
    softcap: float | None
    window: int | None
    sink_k: int
    recent_w: int
    distance_cap: int | None
    top_k: int
    query_offset: int
    token_ids: torch.Tensor | None  # [batch, key_pos] int64
    key_padding_mask: torch.Tensor | None  # [batch, key_pos] bool, True = real token
    key_set: torch.Tensor | None  # [batch, key_pos] bool
    row_lse: torch.Tensor | None  # [batch, head, query_pos]


def _check_mask(name: str, t, batch: int, key_pos: int, device) -> torch.Tensor | None:
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [batch, key_pos], got {type(t).__name__}")
    if tuple(t.shape) != (batch, key_pos):
        raise ValueError(
            f"{name} must have shape [batch, key_pos] = {(batch, key_pos)}, got {tuple(t.shape)}"
        )
    if t.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor, got dtype {t.dtype}")
    return t.to(device)


def _check_qk(q, k) -> tuple[int, int, int, int, int]:
    """q [batch, head, query_pos, d_head], k [batch, kv_head, key_pos, d_head]; returns
    ``(batch, head, kv_head, query_pos, key_pos)``."""
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(
                f"{name} must be 4-D ([batch, heads, pos, d_head]), got ndim={t.ndim} shape={tuple(t.shape)}"
            )
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be a floating tensor (fp16/bf16/fp32/fp64), got {t.dtype}")
    batch, head, query_pos, d_head = q.shape
    kb, kv_head, key_pos, kd = k.shape
    if kb != batch:
        raise ValueError(f"batch mismatch: q has batch={batch}, k has batch={kb}")
    if kd != d_head:
        raise ValueError(f"d_head mismatch: q has d_head={d_head}, k has d_head={kd}")
    if kv_head < 1 or head % kv_head != 0:
        raise ValueError(f"head={head} must be divisible by kv_head={kv_head}")
    if query_pos < 1 or key_pos < 1:
        raise ValueError(
            f"need query_pos >= 1 and key_pos >= 1, got query_pos={query_pos}, key_pos={key_pos}"
        )
    if query_pos > key_pos:
        raise ValueError(f"query_pos={query_pos} > key_pos={key_pos}: keys must include every query position")
    if q.device != k.device:
        raise ValueError(f"q and k must be on the same device, got {q.device} and {k.device}")
    return batch, head, kv_head, query_pos, key_pos


def _check_stats(stats) -> frozenset:
    if isinstance(stats, str):
        stats = (stats,)
    if not isinstance(stats, Iterable):
        raise ValueError(f"stats must be an iterable of stat names, got {type(stats).__name__}")
    stats = frozenset(stats)
    unknown = sorted(str(s) for s in stats if s not in VALID_STATS)
    if unknown:
        raise ValueError(f"unknown stat name(s) {unknown}; valid names are {list(VALID_STATS)}")
    return stats


def _check_scalars(scale, softcap, window, distance_cap, sink_k, recent_w, top_k) -> None:
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0:
        raise ValueError(f"scale must be a positive float, got {scale!r}")
    if softcap is not None and not (isinstance(softcap, (int, float)) and softcap > 0):
        raise ValueError(f"softcap must be None or a positive float, got {softcap!r}")
    for name, val, lo in (("window", window, 1), ("distance_cap", distance_cap, 0)):
        if val is not None and (not isinstance(val, int) or isinstance(val, bool) or val < lo):
            raise ValueError(f"{name} must be None or an int >= {lo}, got {val!r}")
    for name, val, lo in (("sink_k", sink_k, 0), ("recent_w", recent_w, 1), ("top_k", top_k, 1)):
        if not isinstance(val, int) or isinstance(val, bool) or val < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {val!r}")


def _check_query_offset(query_offset, query_pos: int, key_pos: int) -> int:
    if query_offset is None:
        query_offset = key_pos - query_pos
    if not isinstance(query_offset, int) or not 0 <= query_offset <= key_pos - query_pos:
        raise ValueError(
            f"query_offset must be an int in [0, key_pos - query_pos] = [0, {key_pos - query_pos}],"
            f" got {query_offset!r}"
        )
    return query_offset


def _check_token_ids(token_ids, stats, batch: int, key_pos: int, dev):
    if token_ids is None:
        if stats & TOKEN_STATS:
            raise ValueError(
                f"stats {sorted(stats & TOKEN_STATS)} need token_ids (int64 [batch, key_pos]); got token_ids=None"
            )
        return None
    if not isinstance(token_ids, torch.Tensor) or tuple(token_ids.shape) != (batch, key_pos):
        shape = tuple(token_ids.shape) if isinstance(token_ids, torch.Tensor) else type(token_ids).__name__
        raise ValueError(
            f"token_ids must be an integer tensor of shape [batch, key_pos] = {(batch, key_pos)}, got {shape}"
        )
    if token_ids.dtype.is_floating_point or token_ids.dtype == torch.bool:
        raise ValueError(f"token_ids must be an integer tensor, got dtype {token_ids.dtype}")
    return token_ids.to(device=dev, dtype=torch.int64)


def _check_row_lse(row_lse, batch: int, head: int, query_pos: int, dev):
    if row_lse is None:
        return None
    if not isinstance(row_lse, torch.Tensor) or tuple(row_lse.shape) != (batch, head, query_pos):
        shape = tuple(row_lse.shape) if isinstance(row_lse, torch.Tensor) else type(row_lse).__name__
        raise ValueError(
            f"row_lse must have shape [batch, head, query_pos] = {(batch, head, query_pos)}, got {shape}"
        )
    return row_lse.to(dev)


def validate(
    q,
    k,
    *,
    stats,
    scale,
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
    row_lse=None,
) -> StatsSpec:
    """Check every argument up front; raise ``ValueError`` naming the offending value."""
    batch, head, _, query_pos, key_pos = _check_qk(q, k)
    stats = _check_stats(stats)
    _check_scalars(scale, softcap, window, distance_cap, sink_k, recent_w, top_k)
    top_k = min(top_k, key_pos)  # no row has more keys: buffers [batch, head, query_pos, top_k] stay O(n)
    query_offset = _check_query_offset(query_offset, query_pos, key_pos)
    dev = q.device
    key_padding_mask = _check_mask("key_padding_mask", key_padding_mask, batch, key_pos, dev)
    key_set = _check_mask("key_set", key_set, batch, key_pos, dev)
    if "mass_keyset" in stats and key_set is None:
        raise ValueError("stat 'mass_keyset' needs key_set (bool [batch, key_pos])")
    token_ids = _check_token_ids(token_ids, stats, batch, key_pos, dev)
    row_lse = _check_row_lse(row_lse, batch, head, query_pos, dev)
    return StatsSpec(
        stats,
        float(scale),
        None if softcap is None else float(softcap),
        window,
        sink_k,
        recent_w,
        distance_cap,
        top_k,
        query_offset,
        token_ids,
        key_padding_mask,
        key_set,
        row_lse,
    )


def causal_mask(query_pos: int, key_pos: int, *, query_offset: int | None = None, window: int | None = None,
                device=None) -> torch.Tensor:
    """``[query_pos, key_pos]`` bool, True where query row i may attend key j: ``j <= abs_i`` and, with a
    sliding window, ``abs_i - j < window``, where ``abs_i = i + query_offset`` (default ``key_pos - query_pos``:
    the queries are the last positions, as with a KV cache).  The one causal-mask builder of the project."""
    off = key_pos - query_pos if query_offset is None else query_offset
    i = torch.arange(query_pos, device=device)[:, None] + off
    j = torch.arange(key_pos, device=device)[None, :]
    allowed = j <= i
    if window is not None:
        allowed &= (i - j) < window
    return allowed


def output_names(stats: frozenset) -> list[str]:
    """Dict keys produced for a set of stat names ('topk' expands to 'topk_idx' and 'topk_prob')."""
    names = []
    for s in VALID_STATS:
        if s in stats:
            names += ["topk_idx", "topk_prob"] if s == "topk" else [s]
    return names


def row_valid(spec: StatsSpec, batch: int, query_pos: int, device) -> torch.Tensor:
    """Bool [batch, query_pos]: query token is a real (non-padding) token."""
    if spec.key_padding_mask is None:
        return torch.ones(batch, query_pos, dtype=torch.bool, device=device)
    off = spec.query_offset
    return spec.key_padding_mask[:, off : off + query_pos]


def row_key_counts(spec: StatsSpec, batch: int, query_pos: int, key_pos: int, device) -> torch.Tensor:
    """Int64 [batch, query_pos]: n_keys_i, number of allowed keys of row i (0 for invalid rows)."""
    pad = spec.key_padding_mask
    absi = torch.arange(query_pos, device=device) + spec.query_offset
    lo = absi - spec.window + 1 if spec.window is not None else torch.zeros_like(absi)
    lo = lo.clamp(min=0)
    if pad is None:
        cnt = (absi - lo + 1).expand(batch, query_pos)
    else:
        c = torch.zeros(batch, key_pos + 1, dtype=torch.int64, device=device)
        c[:, 1:] = pad.to(torch.int64).cumsum(-1)
        cnt = c[:, absi + 1] - c[:, lo]
    return torch.where(row_valid(spec, batch, query_pos, device), cnt, 0)


def col_row_counts(spec: StatsSpec, batch: int, query_pos: int, key_pos: int, device) -> torch.Tensor:
    """Int64 [batch, key_pos]: n_rows_j, number of valid query rows i with key j allowed."""
    off = spec.query_offset
    v = torch.zeros(batch, key_pos + 1, dtype=torch.int64, device=device)
    v[:, off + 1 : off + query_pos + 1] = row_valid(spec, batch, query_pos, device).to(torch.int64)
    v = v.cumsum(-1)  # v[:, p] = number of valid rows with abs position < p
    j = torch.arange(key_pos, device=device)
    hi = (j + spec.window).clamp(max=key_pos) if spec.window is not None else torch.full_like(j, key_pos)
    cnt = v[:, hi] - v[:, j]
    if spec.key_padding_mask is not None:
        cnt = torch.where(spec.key_padding_mask, cnt, 0)
    return cnt


def finalize(out: dict, spec: StatsSpec, batch: int, query_pos: int, key_pos: int, device) -> dict:
    """Derived stats shared by the O(n) implementations.

    entropy_norm = entropy / log(n_keys) (0 when n_keys <= 1);
    col_alpha = col_sum / n_rows (0 when n_rows = 0);
    col_entropy = log S_j - T_j / S_j from S_j = col_sum, T_j = sum_i A_ij log A_ij stored under '_col_alogA'.
    """
    st = spec.stats
    if "entropy_norm" in st:
        n = row_key_counts(spec, batch, query_pos, key_pos, device)[:, None, :]
        ent = out["entropy"] if "entropy" in out else out.pop("_entropy")
        denom = torch.log(n.clamp(min=2).to(ent.dtype))
        out["entropy_norm"] = torch.where(n > 1, ent / denom, torch.zeros_like(ent))
    if "col_alpha" in st:
        n = col_row_counts(spec, batch, query_pos, key_pos, device)[:, None, :]
        cs = out["col_sum"] if "col_sum" in out else out["_col_sum"]
        out["col_alpha"] = torch.where(n > 0, cs / n.clamp(min=1).to(cs.dtype), torch.zeros_like(cs))
    if "col_entropy" in st:
        cs = out["col_sum"] if "col_sum" in out else out["_col_sum"]
        t = out.pop("_col_alogA")
        pos = cs > 0
        safe = torch.where(pos, cs, torch.ones_like(cs))
        out["col_entropy"] = torch.where(pos, torch.log(safe) - t / safe, torch.zeros_like(cs)).clamp(min=0)
    out.pop("_col_sum", None)
    out.pop("_entropy", None)
    return {name: out[name] for name in output_names(st)}
