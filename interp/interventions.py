"""Interventions as data: ``Zero``, ``Mean``, ``Resample``, ``Scale``, ``Patch``, ``UniformAttention``, ``Knockout``.

Each intervention is a frozen dataclass (penzai style): it prints, compares (tensor fields by value), composes
(``compose(a, b)`` or a plain tuple) and round-trips through JSON. ``compile_interventions(model, items)`` turns
a list of them into ``{Site: [handler]}`` for ``interp.hooks.HookRuntime``; ``Model.intervene(*items)`` does both
and removes the hooks on exit, also when the body raises.

What each one does to the activation ``x`` at its site (restricted to positions ``pos`` when given; ``pos``
indexes ``pos`` for residual/q/k/v/z sites and ``query_pos`` for ``pattern``):

- ``Zero``:      x ← 0                         (zero ablation)
- ``Mean``:      x ← μ                         (mean ablation; μ from ``Mean.from_inputs`` or ``Mean.from_cache``)
- ``Resample``:  x ← x(source_ids)             (resample ablation: the activation of a run on other input ids,
                                               computed once at compile time, without the other interventions)
- ``Scale``:     x ← α·x
- ``Patch``:     x ← value                     (activation patching, e.g. a clean activation into a corrupt run)
- ``UniformAttention(layer, head, eps)``:  q_h ← eps·q_h  (post-RoPE), so softmax(eps·q·k/√d) is ≈ uniform over
  the causal prefix — the ablation of the retrieval-head (Wu et al. 2024, "Retrieval Head Mechanistically
  Explains Long-Context Factuality") and safety-head (Zhou et al. 2024, "On the Role of Attention Heads in
  LLM Safety") papers. ``kv_head=g`` scales every query head of KV group g.
- ``Knockout(layer, head, routes)``: attention knockout (Geva et al. 2023, "Dissecting Recall of Factual
  Associations"): blocked query→key routes get logit −∞. Implemented on the pattern as
  a'_ij = a_ij·m_ij / Σ_j a_ij·m_ij, which equals softmax with −∞ at blocked entries; a fully blocked row
  becomes 0. The pattern site forces eager attention: fine for short prompts.

Heads: q/z/pattern sites are indexed by query head, k/v by KV head (``interp.sites``). Asking for a k/v site by
``query_head=`` on a GQA model raises an error (the KV head is shared by several query heads).

Saving (``interp/intervention_io.py``, re-exported here): ``save_interventions(path, items)`` writes JSON;
tensors with ≤ ``INLINE_MAX`` elements are stored inline as nested lists with their dtype, larger ones in
``<path>.safetensors`` beside the JSON (both files written atomically: temp file then ``os.replace``).
``load_interventions(path)`` reads them back.

Validated in ``tests/unit/test_interventions.py`` against hand computations (dense float64 attention for
``UniformAttention``/``Knockout``, masked softmax by hand) on tiny models.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .sites import Site


# --- positions ---------------------------------------------------------------------------------------------
def _norm_pos(pos):
    if pos is None or isinstance(pos, slice):
        return pos
    if isinstance(pos, bool):
        raise TypeError(f"pos must be an int, a slice or a list of ints, got {pos!r}")
    if isinstance(pos, int):
        return pos
    if isinstance(pos, torch.Tensor):
        pos = pos.tolist()
    if isinstance(pos, (list, tuple)) and all(isinstance(p, int) and not isinstance(p, bool) for p in pos):
        return tuple(pos)
    raise TypeError(f"pos must be an int, a slice or a list of ints, got {pos!r}")


def _pos_index(pos):
    """An index for the position dim: ints keep the dim (``[p]``), slices and lists as given."""
    if pos is None:
        return slice(None)
    if isinstance(pos, int):
        return [pos]
    if isinstance(pos, tuple):
        return list(pos)
    return pos


def _pos_dim(site: Site) -> int:
    """Position dim of the tensor a handler for ``site`` sees (the query_pos dim for pattern)."""
    if site.component == "pattern":
        return 1 if site.head is not None else 2
    return 1


# --- base class --------------------------------------------------------------------------------------------
def _eq(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b))
    return a == b


def _short(v) -> str:
    if isinstance(v, torch.Tensor):
        if v.numel() <= 4:
            return f"tensor({v.tolist()})"
        return f"tensor[{str(v.dtype).replace('torch.', '')} {' × '.join(map(str, v.shape))}]"
    if isinstance(v, Site):
        return str(v)
    return repr(v)


_TYPES: dict[str, type] = {}  # JSON "type" -> class (every subclass registers itself)


class Intervention:
    """Base class: value equality, a short repr, JSON round trip and the hook handler(s) it compiles to."""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        _TYPES[cls.__name__] = cls

    def __eq__(self, other):
        if type(self) is not type(other):
            return NotImplemented
        return all(_eq(getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self))

    def __hash__(self):
        parts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = (tuple(v.shape), str(v.dtype))
            elif isinstance(v, slice):
                v = (v.start, v.stop, v.step)
            elif isinstance(v, tuple) and v and isinstance(v[0], Intervention):
                v = tuple(hash(x) for x in v)
            parts.append(v)
        return hash((type(self).__name__, *parts))

    def __repr__(self):
        shown = [f"{f.name}={_short(getattr(self, f.name))}" for f in dataclasses.fields(self)
                 if getattr(self, f.name) is not None or f.name in ("site", "layer", "head")]
        return f"{type(self).__name__}({', '.join(shown)})"

    def to_json(self, tensors: dict | None = None) -> dict:
        """A JSON-able dict. Tensors larger than ``INLINE_MAX`` go into ``tensors`` (key → tensor) when given."""
        from . import intervention_io

        out = {"type": type(self).__name__}
        for f in dataclasses.fields(self):
            out[f.name] = intervention_io.encode(getattr(self, f.name), tensors)
        return out

    @staticmethod
    def from_json(d: dict, tensors: dict | None = None) -> Intervention:
        from . import intervention_io

        kind = d.get("type")
        if kind in _LAZY:
            __getattr__(kind)  # registers the class
        types = _types()
        if kind not in types:
            raise ValueError(f"unknown intervention type {kind!r}; known: {', '.join(types)}")
        cls = types[kind]
        kw = {f.name: intervention_io.decode(d[f.name], tensors) for f in dataclasses.fields(cls) if f.name in d}
        return cls(**kw)

    def compile(self, model) -> list[tuple[Site, object]]:  # pragma: no cover - overridden
        raise NotImplementedError


# --- site resolution (validation, query_head= for KV sites) -------------------------------------------------
def _resolve(site, query_head, model, what: str) -> Site:
    if not isinstance(site, Site):
        raise TypeError(f"{what}: site must be an interp.Site, got {type(site).__name__} {site!r}")
    shape = model.shape
    if query_head is not None:
        if site.kv_indexed:
            if shape.group_size > 1:
                kv = shape.kv_head_of(query_head) if 0 <= query_head < shape.n_heads else "?"
                raise ValueError(
                    f"{what}: {site.component} at layer {site.layer} is indexed by KV head, and KV head {kv} is "
                    f"shared by query heads {shape.heads_of_kv(kv) if kv != '?' else '…'} "
                    f"({shape.n_heads} query heads over {shape.n_kv_heads} KV heads). Address the KV head "
                    f"(Site({site.layer}, {site.component!r}, {kv})) or use the per-query-head output "
                    f"Site({site.layer}, 'z', {query_head}).")
            site = Site(site.layer, site.component, query_head)
        elif site.head is not None and site.head != query_head:
            raise ValueError(f"{what}: site {site} already names head {site.head}, but query_head={query_head}")
        else:
            site = Site(site.layer, site.component, query_head)
    if site.component == "head_out":
        raise ValueError(f"{what}: {site} is read-only; write per-head outputs through z (Site(L, 'z', head))")
    return site.validate(shape)


def _slice_setter(site: Site, pos, new):
    """A handler setting ``x[..pos..] ← new(x[..pos..])`` on the position dim of ``site``."""
    dim = _pos_dim(site)
    if pos is None:
        def whole(x, s):
            y = new(x).to(x.dtype)
            return y if y.shape == x.shape else y.expand_as(x).clone()

        return whole

    idx = _pos_index(pos)

    def fn(x, s):
        index = (slice(None),) * dim + (idx,)
        out = x.clone()
        part = x[index]
        out[index] = new(part).to(x.dtype).expand_as(part)
        return out

    return fn


def _check_value(value, what):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what}: value must be a torch.Tensor, got {type(value).__name__}")


# --- the interventions -------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, repr=False)
class Zero(Intervention):
    """Zero ablation of ``site`` (optionally at positions ``pos``)."""

    site: Site
    pos: int | slice | tuple | None = None
    query_head: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "pos", _norm_pos(self.pos))

    def compile(self, model):
        site = _resolve(self.site, self.query_head, model, repr(self))
        return [(site, _slice_setter(site, self.pos, torch.zeros_like))]


@dataclass(frozen=True, eq=False, repr=False)
class Scale(Intervention):
    """``x ← alpha · x`` at ``site`` (optionally at positions ``pos``)."""

    site: Site
    alpha: float
    pos: int | slice | tuple | None = None
    query_head: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "pos", _norm_pos(self.pos))
        if not isinstance(self.alpha, (int, float)):
            raise TypeError(f"Scale: alpha must be a number, got {self.alpha!r}")

    def compile(self, model):
        site = _resolve(self.site, self.query_head, model, repr(self))
        a = float(self.alpha)
        return [(site, _slice_setter(site, self.pos, lambda x: x * a))]


@dataclass(frozen=True, eq=False, repr=False)
class Patch(Intervention):
    """Set the activation at ``site`` (positions ``pos``) to ``value``, broadcastable to that slice."""

    site: Site
    value: torch.Tensor
    pos: int | slice | tuple | None = None
    query_head: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "pos", _norm_pos(self.pos))
        _check_value(self.value, type(self).__name__)

    def compile(self, model):
        site = _resolve(self.site, self.query_head, model, repr(self))
        return [(site, _broadcast_setter(site, self.pos, self.value, repr(self)))]


def _broadcast_setter(site, pos, value, what):
    def new(part):
        v = value.to(part.device)
        try:
            return torch.broadcast_to(v, part.shape)
        except RuntimeError:
            raise ValueError(f"{what}: value of shape {tuple(value.shape)} does not broadcast to the activation "
                             f"slice of shape {tuple(part.shape)} at {site}") from None

    return _slice_setter(site, pos, new)


@dataclass(frozen=True, eq=False, repr=False)
class Mean(Patch):
    """Mean ablation: ``x ← value`` where ``value`` is a mean collected beforehand (``from_inputs``/``from_cache``)."""

    @staticmethod
    def from_cache(site: Site, acts: torch.Tensor, *, over: str = "batch_pos", attention_mask=None,
                   pos=None) -> Mean:
        """Mean of cached activations ``acts`` (as a hook at ``site`` sees them, ``[batch, pos, ...]``).

        ``over="batch_pos"`` averages over batch and positions (value ``[d_head]``/``[d_model]``);
        ``over="batch"`` keeps one mean per position (value ``[pos, ...]``). ``attention_mask [batch, pos]``
        excludes padding. For ``pattern`` only ``over="batch"`` makes sense (query/key positions kept).
        """
        if over not in ("batch_pos", "batch"):
            raise ValueError(f"over must be 'batch_pos' or 'batch', got {over!r}")
        dim = _pos_dim(site)
        x = acts.float()
        if site.component == "pattern" and over == "batch_pos":
            raise ValueError("a mean pattern over positions is meaningless; use over='batch'")
        w = torch.ones(x.shape[0], x.shape[dim]) if attention_mask is None else attention_mask.float()
        w = w.to(x.device).reshape(*w.shape[:1], *([1] * (dim - 1)), w.shape[1], *([1] * (x.ndim - dim - 1)))
        w = w.expand_as(x)
        dims = (0, dim) if over == "batch_pos" else (0,)
        value = (x * w).sum(dims) / w.sum(dims).clamp_min(1e-12)
        return Mean(site, value.to(acts.dtype), pos=pos)

    @staticmethod
    def from_inputs(model, site: Site, ids: torch.Tensor, *, attention_mask=None, over: str = "batch_pos",
                    pos=None) -> Mean:
        """Run ``model`` on ``ids [batch, pos]`` and return ``Mean.from_cache`` of the activations at ``site``."""
        from .hooks import run_with_cache

        site.validate(model.shape)
        _, cache = run_with_cache(model, ids, [site], attention_mask)
        return Mean.from_cache(site, cache[site], over=over, attention_mask=attention_mask, pos=pos)


@dataclass(frozen=True, eq=False, repr=False)
class Resample(Intervention):
    """Resample ablation: the activation at ``site`` from a run on ``source_ids [batch, pos]`` (same shape as the
    input, or batch 1), computed once when compiled (the source run sees no other interventions)."""

    site: Site
    source_ids: torch.Tensor
    pos: int | slice | tuple | None = None
    query_head: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "pos", _norm_pos(self.pos))
        _check_value(self.source_ids, "Resample source_ids")
        if self.source_ids.ndim != 2 or self.source_ids.dtype not in (torch.long, torch.int32):
            raise ValueError(f"Resample: source_ids must be integer token ids [batch, pos], got "
                             f"{tuple(self.source_ids.shape)} {self.source_ids.dtype}")

    def compile(self, model):
        from .hooks import run_with_cache

        site = _resolve(self.site, self.query_head, model, repr(self))
        _, cache = run_with_cache(model, self.source_ids.long(), [site])
        src = cache[site]
        dim = _pos_dim(site)
        if self.pos is not None:
            src = src[(slice(None),) * dim + (_pos_index(self.pos),)]
        return [(site, _broadcast_setter(site, self.pos, src, repr(self)))]


@dataclass(frozen=True, eq=False, repr=False)
class UniformAttention(Intervention):
    """Scale the post-RoPE query of head ``head`` (or of every query head of ``kv_head``) by ``eps``: its pattern
    becomes ≈ uniform over the causal prefix (optionally only for query positions ``pos``)."""

    layer: int
    head: int | None = None
    eps: float = 1e-5
    kv_head: int | None = None
    pos: int | slice | tuple | None = None

    def __post_init__(self):
        object.__setattr__(self, "pos", _norm_pos(self.pos))
        if (self.head is None) == (self.kv_head is None):
            raise ValueError(f"UniformAttention(layer={self.layer}): give exactly one of head= (a query head) or "
                             f"kv_head= (all query heads of a KV group), got head={self.head}, "
                             f"kv_head={self.kv_head}")

    def compile(self, model):
        shape = model.shape
        if self.kv_head is not None:
            Site(self.layer, "k", self.kv_head).validate(shape)
            heads = shape.heads_of_kv(self.kv_head)
        else:
            heads = [self.head]
        eps = float(self.eps)
        out = []
        for h in heads:
            site = Site(self.layer, "q", h).validate(shape)
            out.append((site, _slice_setter(site, self.pos, lambda x: x * eps)))
        return out


@dataclass(frozen=True, eq=False, repr=False)
class Knockout(Intervention):
    """Block query→key routes of head ``head`` (all heads if None) at ``layer``.

    ``routes``: a bool tensor ``[query_pos, key_pos]`` (True = blocked) or a list of ``(query_pos, key_pos)``
    pairs (negative indices count from the end). Blocked logits become −∞ (renormalised pattern)."""

    layer: int
    head: int | None
    routes: torch.Tensor | tuple

    def __post_init__(self):
        r = self.routes
        if isinstance(r, torch.Tensor):
            if r.ndim != 2 or r.dtype != torch.bool:
                raise ValueError(f"Knockout: a routes mask must be bool [query_pos, key_pos], got "
                                 f"{tuple(r.shape)} {r.dtype}")
        else:
            try:
                pairs = tuple((int(q), int(k)) for q, k in r)
            except (TypeError, ValueError):
                raise TypeError(f"Knockout: routes must be a bool mask [query_pos, key_pos] or a list of "
                                f"(query_pos, key_pos) pairs, got {r!r}") from None
            object.__setattr__(self, "routes", pairs)

    def mask(self, n_q: int, n_k: int, device=None) -> torch.Tensor:
        """The blocked-route mask ``[query_pos, key_pos]`` for a pattern of that size."""
        if isinstance(self.routes, torch.Tensor):
            if tuple(self.routes.shape) != (n_q, n_k):
                raise ValueError(f"{self!r}: routes mask is {tuple(self.routes.shape)} but the pattern is "
                                 f"[{n_q}, {n_k}] (query_pos, key_pos) for this input")
            return self.routes.to(device)
        m = torch.zeros(n_q, n_k, dtype=torch.bool, device=device)
        for q, k in self.routes:
            if not (-n_q <= q < n_q and -n_k <= k < n_k):
                raise ValueError(f"{self!r}: route ({q}, {k}) is outside the [{n_q}, {n_k}] pattern")
            m[q, k] = True
        return m

    def compile(self, model):
        site = Site(self.layer, "pattern", self.head).validate(model.shape)

        def fn(x, s):  # [batch, (head,) query_pos, key_pos]
            blocked = self.mask(x.shape[-2], x.shape[-1], x.device)
            kept = x.masked_fill(blocked, 0.0)
            return torch.nan_to_num(kept / kept.sum(-1, keepdim=True), nan=0.0)

        return [(site, fn)]


@dataclass(frozen=True, eq=False, repr=False)
class Compose(Intervention):
    """Several interventions applied together (in order, when two share a site)."""

    items: tuple

    def __post_init__(self):
        object.__setattr__(self, "items", tuple(_flatten(self.items)))

    def compile(self, model):
        return [pair for it in self.items for pair in it.compile(model)]


def compose(*items) -> Compose:
    """``compose(a, b, ...)``: one intervention applying all of ``items`` (nested tuples/Compose flattened)."""
    return Compose(tuple(items))


def _flatten(items):
    for it in items:
        if isinstance(it, Compose):
            yield from it.items
        elif isinstance(it, (list, tuple)):
            yield from _flatten(it)
        elif isinstance(it, Intervention):
            yield it
        else:
            raise TypeError(f"not an intervention: {it!r} ({type(it).__name__}); use Zero, Mean, Resample, "
                            "Scale, Patch, UniformAttention, Knockout, PositionMean, AttendToKey, OnRows or "
                            "compose(...)")


_TYPES.update({c.__name__: c for c in (Zero, Scale, Patch, Mean, Resample, UniformAttention, Knockout, Compose)})
_LAZY = {"PositionMean": "interp.ablations", "AttendToKey": "interp.ablations", "OnRows": "interp.row_interventions",
         "RowsHandler": "interp.row_interventions", "rows_handlers": "interp.row_interventions",
         "VHR": "interp.analyses.vhd"}


def __getattr__(name):  # the interventions defined in ablations.py / row_interventions.py, imported on first use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'interp.interventions' has no attribute {name!r}")


def _types() -> dict:
    """Every intervention type by name: the ones here and the attention edits of ``interp.attention_edits``."""
    from . import attention_edits

    return {**_TYPES, **{c.__name__: c for c in attention_edits.EDITS}}


def compile_interventions(model, interventions) -> dict[Site, list]:
    """``{Site: [handler fn(x, site)]}`` for ``model.hooks``; validates every site against ``model.shape``."""
    out: dict[Site, list] = {}
    for it in _flatten(interventions):
        for site, fn in it.compile(model):
            out.setdefault(site, []).append(fn)
    return out


# re-exported (the implementation lives in intervention_io.py, which imports this module lazily)
from .intervention_io import INLINE_MAX as INLINE_MAX  # noqa: E402
from .intervention_io import load_interventions as load_interventions  # noqa: E402
from .intervention_io import save_interventions as save_interventions  # noqa: E402
