"""Attention edits as data: ``ScaleKeyAttention`` (ZeroTuning, steering), ``HiddenSinkCalibration`` (ACT),
``Redistribute`` (VAR).

Each edit acts on one head's attention pattern ``A [batch, query_pos, key_pos]`` (rows sum to 1 over the
causal prefix) through the ``pattern`` site of the hook runtime, like ``interp.interventions.Knockout``: the
layer it touches runs the eager pattern (``interp.hooks._eager``) and every other layer keeps SDPA. Values
print, compare, compose (``interp.interventions.compose``) and save (``interp.save_interventions``) like the other
interventions. ``head=h`` edits one query head, ``kv_head=g`` every query head of KV group g.

Key sets (``keys`` / ``sinks`` / ``target``): ``"first"`` — the first key any query of the row sees (key 0,
or the first real token under left padding); ``"hidden_sinks"`` — ACT's rule below, computed from the pattern
itself on every forward; a tuple of key positions (negative = from the end); a bool mask ``[key_pos]`` or
``[batch, key_pos]`` (e.g. ``span_keys``: a character span of the prompt mapped to tokens, ``image_keys``:
LLaVA image-token positions).

Formulas, with K the key set, a_j = A_ij for one query row i and a_K = Σ_{j∈K} a_j:

- ``ScaleKeyAttention(γ)`` — ZeroTuning (Han et al. 2025, "ZeroTuning: Unlocking the Initial Token's Power to
  Enhance Large Language Models Without Training"; K = {first}), and attention steering toward a span:
      a'_j = γ a_j / D (j ∈ K),   a'_j = a_j / D (j ∉ K),   D = (γ − 1) a_K + 1
  which equals softmax of the logits with log γ added on K (``tests/unit/test_attention_edits.py`` checks both
  forms in float64). Being a logit bias, it could run through SDPA's float mask; here it goes through the
  pattern site (eager at the edited layers only), exact and simple at the prompt lengths the analyses use.
- ``HiddenSinkCalibration(β)`` — ACT (Yu et al. 2024, "Unveiling and Harnessing Hidden Attention Sinks",
  ICML): per sample, hidden sinks are keys j ≠ first with
      α_j = Σ_{i ≥ j} A_ij / (n − j) > threshold      (n − j = number of queries that see key j)
  and (keys seen by fewer than ``min_rows`` queries are skipped; 1 = the paper's rule). Then per row
      a'_s = β a_s (s ∈ S),   a'_j = a_j + (1 − β) a_S · a_j / Σ_{k ∉ S} a_k (j ∉ S)
  — the removed mass goes to the other keys in proportion to their attention. This is NOT a logit bias:
  ratios a'_s / a'_j = β (a_s / a_j)(1 − a_S)/(1 − β a_S) depend on the row's sink mass. A row with no non-sink
  mass is left as it is.
- ``Redistribute(p)`` — VAR (Kang et al. 2025, "See What You Are Told: Visual Attention Sink in Large
  Multimodal Models", ICLR): with sink keys S and a target set T (image tokens there, a marked span here),
      a'_s = (1 − p) a_s (s ∈ S),   a'_t = a_t + p a_S · a_t / a_T (t ∈ T),   others unchanged
  (T excludes S; a row that sees no target mass is left as it is).

All three keep every row's sum; γ = 1, β = 1, p = 0 return the pattern unchanged. Computed in float64, cast
back to the pattern's dtype. ``hidden_sinks`` needs the whole prefill pattern (query_pos == key_pos); the
other key sets also work with a KV cache. Validated in ``tests/unit/test_attention_edits.py`` against a dense
float64 reference that builds the full pattern from cached q/k/v and edits it element by element (GQA, sliding
windows, hypothesis over shapes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .interventions import Intervention
from .sites import Site

# --- key sets ----------------------------------------------------------------------------------------------
_NAMED = ("first", "hidden_sinks")


def _norm_keys(keys, what: str):
    if isinstance(keys, str):
        if keys not in _NAMED:
            raise ValueError(f"{what}: key set {keys!r} is unknown; use 'first', 'hidden_sinks', a tuple of key "
                             "positions or a bool mask [key_pos] / [batch, key_pos]")
        return keys
    if isinstance(keys, torch.Tensor):
        if keys.dtype != torch.bool or keys.ndim not in (1, 2):
            raise ValueError(f"{what}: a key mask must be bool [key_pos] or [batch, key_pos], got "
                             f"{tuple(keys.shape)} {keys.dtype}")
        if not bool(keys.any()):
            raise ValueError(f"{what}: the key mask selects no key; give at least one key position")
        return keys
    if isinstance(keys, int) and not isinstance(keys, bool):
        keys = (keys,)
    if isinstance(keys, (list, tuple)) and all(isinstance(k, int) and not isinstance(k, bool) for k in keys):
        if not keys:
            raise ValueError(f"{what}: the key set is empty; give at least one key position")
        return tuple(keys)
    raise TypeError(f"{what}: keys must be 'first', 'hidden_sinks', key positions or a bool mask, got {keys!r}")


def first_key_mask(pattern: torch.Tensor) -> torch.Tensor:
    """Bool ``[batch, key_pos]``: the first key any query attends to (key 0, or the first real token when the
    batch is left-padded). ``pattern [batch, query_pos, key_pos]``."""
    seen = pattern.sum(1) > 0  # [batch, key_pos]
    first = seen.float().argmax(-1)
    return torch.nn.functional.one_hot(first, pattern.shape[-1]).bool() & seen


def hidden_sink_keys(pattern: torch.Tensor, *, threshold: float = 0.1, min_rows: int = 1) -> torch.Tensor:
    """Bool ``[batch, key_pos]``: ACT's hidden sinks of a prefill ``pattern [batch, query_pos, key_pos]`` —
    α_j = Σ_i A_ij / (number of real queries that see j) > threshold, the first key excluded."""
    if pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(f"hidden sinks need the whole prefill pattern (query_pos == key_pos), got "
                         f"{pattern.shape[-2]} queries over {pattern.shape[-1]} keys (a KV-cache step); run the "
                         "full prompt without the cache")
    a = pattern.double()
    rows = a.sum(-1) > 0  # [batch, query_pos] real (non-padding) queries
    return hidden_sinks_from_columns(a.sum(1), rows, threshold=threshold, min_rows=min_rows)


def hidden_sinks_from_columns(col_sum: torch.Tensor, real: torch.Tensor, *, threshold: float = 0.1,
                              min_rows: int = 1) -> torch.Tensor:
    """ACT's rule from column sums, O(key_pos): bool ``[..., key_pos]`` of the keys j with
    α_j = col_sum_j / n_j > threshold, n_j = number of real queries i ≥ j (``real [..., pos]`` bool, the prefill
    queries), n_j ≥ ``min_rows``, and j not the first key with attention (col_sum > 0). ``col_sum [..., key_pos]``
    = Σ_i A_ij, e.g. the statistics engine's ``col_sum``."""
    n_seen = real.double().flip(-1).cumsum(-1).flip(-1)  # [..., pos]: real queries i >= j
    alpha = col_sum.double() / n_seen.clamp_min(1)
    seen = col_sum > 0
    first = torch.nn.functional.one_hot(seen.long().argmax(-1), col_sum.shape[-1]).bool() & seen
    return (alpha > threshold) & (n_seen >= min_rows) & ~first


def _resolve_keys(keys, pattern: torch.Tensor, what: str, *, threshold=0.1, min_rows=1) -> torch.Tensor:
    """The key set as bool ``[batch, key_pos]`` for ``pattern [batch, query_pos, key_pos]``."""
    b, n_k = pattern.shape[0], pattern.shape[-1]
    if isinstance(keys, str):
        if keys == "first":
            return first_key_mask(pattern)
        return hidden_sink_keys(pattern, threshold=threshold, min_rows=min_rows)
    if isinstance(keys, torch.Tensor):
        m = keys.to(pattern.device)
        if m.shape[-1] != n_k or (m.ndim == 2 and m.shape[0] not in (1, b)):
            raise ValueError(f"{what}: key mask of shape {tuple(m.shape)} does not fit a pattern of {b} rows "
                             f"× {n_k} keys; build it for this input ([key_pos] or [batch, key_pos])")
        return m.expand(b, n_k) if m.ndim == 2 else m[None].expand(b, n_k)
    m = torch.zeros(b, n_k, dtype=torch.bool, device=pattern.device)
    for k in keys:
        if not -n_k <= k < n_k:
            raise ValueError(f"{what}: key position {k} is outside the prompt of {n_k} tokens")
        m[:, k] = True
    return m


def span_keys(model, prompt: str, start: int, end: int, *, add_special_tokens: bool = True) -> torch.Tensor:
    """Bool ``[key_pos]`` of the tokens of ``prompt`` (tokenised as ``model.tokenizer`` does) that overlap the
    characters ``prompt[start:end]``. Uses the tokenizer's offset mapping when it has one; otherwise the token
    count of the prefixes (exact for tokenizers that never merge across the boundary, e.g. the tiny byte one)."""
    if not (0 <= start < end <= len(prompt)):
        raise ValueError(f"span [{start}, {end}) is outside the prompt of {len(prompt)} characters (need "
                         "0 <= start < end <= len(prompt))")
    tok = model.tokenizer
    try:
        enc = tok(prompt, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (TypeError, NotImplementedError, KeyError, ValueError):
        offsets = None
    if offsets is not None:
        m = torch.tensor([e > start and s < end and e > s for s, e in offsets], dtype=torch.bool)
    else:
        n = lambda t: len(tok(t, add_special_tokens=add_special_tokens)["input_ids"])
        a, b, total = n(prompt[:start]) if start else n(""), n(prompt[:end]), n(prompt)
        m = torch.zeros(total, dtype=torch.bool)
        m[a:b] = True
    if not bool(m.any()):
        raise ValueError(f"span [{start}, {end}) of the prompt covers no token")
    return m


def image_keys(model, ids: torch.Tensor) -> torch.Tensor:
    """Bool ``[batch, key_pos]``: the image-token positions of ``ids [batch, pos]`` (LLaVA-style models)."""
    cfg = model.hf.config
    tid = getattr(cfg, "image_token_index", None)
    tid = getattr(cfg, "image_token_id", None) if tid is None else tid
    if tid is None:
        raise ValueError(f"model {model.name!r} has no image token (config.image_token_index); give the target "
                         "span as key positions or span_keys(...) instead")
    m = ids == int(tid)
    if not bool(m.any()):
        raise ValueError(f"the input has no image token (id {tid}); build the prompt with the model's processor")
    return m


# --- the edits as pure functions (pattern [batch, query_pos, key_pos], masks [batch, key_pos]) --------------
def scale_keys(pattern: torch.Tensor, keys: torch.Tensor, gamma: float) -> torch.Tensor:
    """ZeroTuning: a'_j = γ^[j∈K] a_j / ((γ − 1) a_K + 1). ``pattern [batch, query_pos, key_pos]``,
    ``keys`` bool ``[batch, key_pos]``; returns the edited pattern (same shape and dtype)."""
    a, m = pattern.double(), keys[:, None, :].double()
    a_k = (a * m).sum(-1, keepdim=True)
    out = a * (1 + (gamma - 1) * m) / ((gamma - 1) * a_k + 1)
    return out.to(pattern.dtype)


def calibrate_sinks(pattern: torch.Tensor, sinks: torch.Tensor, beta: float) -> torch.Tensor:
    """ACT: a'_s = β a_s on sinks, the removed (1 − β) a_S given to the other keys in proportion to a_j.
    ``pattern [batch, query_pos, key_pos]``, ``sinks`` bool ``[batch, key_pos]``."""
    a, m = pattern.double(), sinks[:, None, :].double()
    a_s = (a * m).sum(-1, keepdim=True)
    rest = (a * (1 - m)).sum(-1, keepdim=True)
    gain = torch.where(rest > 0, (1 - beta) * a_s / rest.clamp_min(1e-300), torch.zeros_like(rest))
    out = torch.where(rest > 0, a * m * beta + a * (1 - m) * (1 + gain), a)
    return out.to(pattern.dtype)


def redistribute(pattern: torch.Tensor, sinks: torch.Tensor, target: torch.Tensor, p: float) -> torch.Tensor:
    """VAR: a'_s = (1 − p) a_s on sinks, the removed p·a_S spread over the target keys in proportion to a_t.
    ``pattern [batch, query_pos, key_pos]``, ``sinks``/``target`` bool ``[batch, key_pos]`` (target minus sinks)."""
    a = pattern.double()
    ms, mt = sinks[:, None, :].double(), (target & ~sinks)[:, None, :].double()
    a_s, a_t = (a * ms).sum(-1, keepdim=True), (a * mt).sum(-1, keepdim=True)
    gain = p * a_s / a_t.clamp_min(1e-300)
    out = a * (1 - ms - mt) + a * ms * (1 - p) + a * mt * (1 + gain)
    return torch.where(a_t > 0, out, a).to(pattern.dtype)


# --- the intervention values -------------------------------------------------------------------------------
def _heads(self, model) -> list[int]:
    shape = model.shape
    if (self.head is None) == (self.kv_head is None):
        raise ValueError(f"{self!r}: give exactly one of head= (a query head) or kv_head= (a KV group)")
    if not 0 <= self.layer < shape.n_layers:
        raise ValueError(f"{self!r}: layer {self.layer} is out of range (the model has {shape.n_layers} layers)")
    if self.kv_head is not None:
        if not 0 <= self.kv_head < shape.n_kv_heads:
            raise ValueError(f"{self!r}: kv_head {self.kv_head} is out of range (0..{shape.n_kv_heads - 1})")
        return shape.heads_of_kv(self.kv_head)
    if not 0 <= self.head < shape.n_heads:
        raise ValueError(f"{self!r}: head {self.head} is out of range (0..{shape.n_heads - 1})")
    return [self.head]


def _check_head_args(self):
    if (self.head is None) == (self.kv_head is None):
        raise ValueError(f"{type(self).__name__}(layer={self.layer}): give exactly one of head= (a query head) or "
                         f"kv_head= (all query heads of a KV group), got head={self.head}, kv_head={self.kv_head}")


def _number(v, what):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{what} must be a number, got {v!r}")
    return float(v)


class _PatternEdit(Intervention):
    def edit(self, pattern: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def compile(self, model):
        def fn(x, s):  # [batch, query_pos, key_pos] of one head
            return self.edit(x)

        return [(Site(self.layer, "pattern", h).validate(model.shape), fn) for h in _heads(self, model)]


@dataclass(frozen=True, eq=False, repr=False)
class ScaleKeyAttention(_PatternEdit):
    """Multiply the attention on ``keys`` by ``gamma`` and renormalise (= logit bias log γ on ``keys``)."""

    layer: int
    head: int | None = None
    gamma: float = 1.0
    keys: str | tuple | torch.Tensor = "first"
    kv_head: int | None = None

    def __post_init__(self):
        _check_head_args(self)
        g = _number(self.gamma, "ScaleKeyAttention: gamma")
        if not g > 0:
            raise ValueError(f"ScaleKeyAttention: gamma = {self.gamma!r} must be > 0 (1 = no change; the logit "
                             "bias is log gamma)")
        object.__setattr__(self, "keys", _norm_keys(self.keys, "ScaleKeyAttention"))
        if self.keys == "hidden_sinks":
            raise ValueError("ScaleKeyAttention: keys='hidden_sinks' is ACT's set; use HiddenSinkCalibration")

    def edit(self, pattern):
        return scale_keys(pattern, _resolve_keys(self.keys, pattern, repr(self)), float(self.gamma))


@dataclass(frozen=True, eq=False, repr=False)
class HiddenSinkCalibration(_PatternEdit):
    """ACT: scale the attention on hidden sinks (α > threshold, first key excluded) by ``beta`` and give the
    removed mass to the other keys in proportion to their attention."""

    layer: int
    head: int | None = None
    beta: float = 0.4
    threshold: float = 0.1
    min_rows: int = 1
    kv_head: int | None = None

    def __post_init__(self):
        _check_head_args(self)
        b = _number(self.beta, "HiddenSinkCalibration: beta")
        if not 0 < b <= 1:
            raise ValueError(f"HiddenSinkCalibration: beta = {self.beta!r} must be in (0, 1] (1 = no change; "
                             "ACT uses 0.4)")
        t = _number(self.threshold, "HiddenSinkCalibration: threshold")
        if not 0 < t < 1:
            raise ValueError(f"HiddenSinkCalibration: threshold = {self.threshold!r} must be in (0, 1)")

    def edit(self, pattern):
        sinks = hidden_sink_keys(pattern, threshold=float(self.threshold), min_rows=int(self.min_rows))
        return calibrate_sinks(pattern, sinks, float(self.beta))


@dataclass(frozen=True, eq=False, repr=False)
class Redistribute(_PatternEdit):
    """VAR: move a fraction ``p`` of the attention on ``sinks`` onto ``target`` in proportion to its attention."""

    layer: int
    head: int | None = None
    p: float = 0.6
    target: tuple | torch.Tensor = ()
    sinks: str | tuple | torch.Tensor = "first"
    threshold: float = 0.1
    kv_head: int | None = None

    def __post_init__(self):
        _check_head_args(self)
        p = _number(self.p, "Redistribute: p")
        if not 0 <= p <= 1:
            raise ValueError(f"Redistribute: p = {self.p!r} must be in [0, 1] (0 = no change; VAR uses 0.6)")
        if isinstance(self.target, str):
            raise ValueError(f"Redistribute: target must be key positions or a bool mask, got {self.target!r}")
        object.__setattr__(self, "target", _norm_keys(self.target, "Redistribute target"))
        object.__setattr__(self, "sinks", _norm_keys(self.sinks, "Redistribute sinks"))

    def edit(self, pattern):
        sinks = _resolve_keys(self.sinks, pattern, repr(self), threshold=float(self.threshold))
        target = _resolve_keys(self.target, pattern, repr(self))
        return redistribute(pattern, sinks, target, float(self.p))


EDITS = (ScaleKeyAttention, HiddenSinkCalibration, Redistribute)
