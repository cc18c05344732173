"""Batched activation patching: ``patch_sweep`` patches every site of a kind from a clean run into a corrupt run.

Activation patching (Meng et al. 2022 "Locating and Editing Factual Associations in GPT"; Wang et al. 2022,
IOI), TransformerLens's convention: run the model on the *corrupt* input, replace the activation a_s at one site
s by its value on the *clean* input, and record metric(logits_patched), averaged over the batch:

    value[s] = mean_b metric(f(corrupt_b | a_s ← a_s(clean_b)))_b

Instead of one forward per site, each site is a variant ``Patch(site, clean value)`` and
``interp.variants.run_variants`` packs them into the batch (rows ``j·batch … (j+1)·batch − 1`` belong to
variant j) in chunks sized to ``memory_budget_mb``. With ``reuse_prefix=True`` (default) three exact shortcuts
skip work whose result is known:

- layers: below a chunk's earliest patched layer every replica equals the corrupt run, so the chunk starts from
  the cached ``resid_pre`` (``run_variants``' prefix reuse; variants ordered by layer);
- positions: in a causal model, before the first token ``p0`` where clean and corrupt differ (in any batch
  row) every activation of the two runs is equal, so a patch there is a no-op (its value is the corrupt
  metric) and the patched forwards run only positions ``p0…`` on the corrupt run's KV cache of ``0…p0−1``
  (an IOI pair differing at one name: 4 of 14 positions);
- logits: when the metric's value on the clean and corrupt logits is unchanged with every position but the
  last set to NaN, the patched forwards compute the last position's logits only (``logits_to_keep``); the
  metric still sees ``[batch, pos, d_vocab]`` (corrupt logits before ``p0``, NaN between).

``reuse_prefix=False`` runs every variant on the whole prompt (the plain reference path).

Sites (``sites=``): head components ``q``, ``z``, ``pattern`` (query heads), ``k``, ``v`` (KV heads); layer
components ``resid_pre``, ``attn_in``, ``attn_out``, ``resid_mid``, ``mlp_in``, ``mlp_out``, ``resid_post``.
``positions="all"`` patches all positions at once (TL ``get_act_patch_attn_head_out_all_pos``), ``"each"`` one
position at a time (TL ``..._by_pos``, ``get_act_patch_resid_pre``); for ``pattern`` the position is the query
position. Default: ``"all"`` for head components, ``"each"`` for layer components.

Validated in ``tests/unit/test_patching.py`` against a naive loop of one ``model.intervene(Patch(...))`` forward
per site on tiny models, and in ``tests/parity/test_patching_tl.py`` against TransformerLens's own
``transformer_lens.patching`` functions on the default model.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import torch

from .hooks import native_modules
from .interventions import Patch
from .sites import Site
from .variants import run_variants

HEAD_COMPONENTS = ("q", "k", "v", "z", "pattern")
LAYER_COMPONENTS = ("resid_pre", "attn_in", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post")


@dataclass
class PatchResult:
    """Patching results: ``values`` with named ``dims`` (e.g. ``("layer", "head")``, ``("layer", "pos")``,
    ``("layer", "head", "pos")``), indexed by ``layers``/``heads``/``positions`` (the actual numbers), plus
    the metric on the unpatched clean and corrupt runs (``clean_value``, ``corrupt_value``)."""

    values: torch.Tensor
    dims: tuple[str, ...]
    component: str
    layers: list[int]
    heads: list[int] | None
    positions: list[int] | None
    sites: list[tuple[Site, int | None]] = field(repr=False)  # (site, pos or None=all) in values' flat order
    clean_value: float = float("nan")
    corrupt_value: float = float("nan")

    def to_frame(self):
        """Tidy ``pandas.DataFrame`` with columns ``layer, head, pos, value`` (−1 where not applicable:
        no head for layer components, pos −1 for all positions at once; k/v heads are KV heads)."""
        import pandas as pd

        flat = self.values.flatten().tolist()
        rows = [(s.layer, -1 if s.head is None else s.head, -1 if p is None else p, v)
                for (s, p), v in zip(self.sites, flat)]
        return pd.DataFrame(rows, columns=["layer", "head", "pos", "value"])

    def normalized(self) -> torch.Tensor:
        """``(value − corrupt) / (clean − corrupt)``: 0 = no recovery, 1 = full clean behaviour."""
        return (self.values - self.corrupt_value) / (self.clean_value - self.corrupt_value)


def _check_inputs(model, clean_ids, corrupt_ids):
    for name, t in (("clean_ids", clean_ids), ("corrupt_ids", corrupt_ids)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be token ids [batch, pos], got {type(t).__name__}")
    if clean_ids.shape != corrupt_ids.shape:
        raise ValueError(f"clean_ids {tuple(clean_ids.shape)} and corrupt_ids {tuple(corrupt_ids.shape)} must have "
                         "the same [batch, pos] shape: pick prompts of equal token length (pad or reword them)")
    model.check_tokens(clean_ids)
    model.check_tokens(corrupt_ids)


def _pick(values, n: int, what: str) -> list[int]:
    if values is None:
        return list(range(n))
    vals = [values] if isinstance(values, int) else list(values)
    for v in vals:
        if not isinstance(v, int) or not 0 <= v < n:
            raise ValueError(f"{what} {v!r} out of range: the model has {n} {what}s (0..{n - 1})")
    if not vals:
        raise ValueError(f"empty list of {what}s")
    return vals


def patch_sweep(model, clean_ids: torch.Tensor, corrupt_ids: torch.Tensor, sites: str = "z", metric=None,
                positions: str | None = None, *, memory_budget_mb: float = 1024, layers=None, heads=None,
                batch_size: int | None = None, reuse_prefix: bool = True) -> PatchResult:
    """Patch each ``sites`` activation from the clean run into the corrupt run; return ``PatchResult``.

    ``clean_ids``, ``corrupt_ids``: token ids ``[batch, pos]`` of equal shape. ``metric(logits [batch, pos,
    d_vocab]) -> [batch]`` (or a scalar), e.g. ``lambda lg: interp.logit_diff(lg, mary, john)``; it always sees
    logits of the original batch size and its mean over the batch is stored. ``layers``/``heads`` restrict the
    sweep; ``batch_size`` fixes the number of patched variants per forward (else from ``memory_budget_mb``).
    Result dims: ``[layer, head]`` (heads, "all"), ``[layer, head, pos]`` (heads, "each"), ``[layer, pos]``
    (layer components, "each"), ``[layer]`` (layer components, "all").
    """
    if sites not in HEAD_COMPONENTS + LAYER_COMPONENTS:
        hint = " (head_out is read-only: patch z)" if sites == "head_out" else ""
        raise ValueError(f"cannot sweep sites={sites!r}{hint}; choose one of "
                         f"{', '.join(HEAD_COMPONENTS + LAYER_COMPONENTS)}")
    if not callable(metric):
        raise TypeError("metric must be a callable logits [batch, pos, d_vocab] -> [batch], e.g. "
                        "lambda lg: interp.logit_diff(lg, answer_ids, wrong_ids)")
    _check_inputs(model, clean_ids, corrupt_ids)
    shape = model.shape
    per_head = sites in HEAD_COMPONENTS
    positions = positions or ("all" if per_head else "each")
    if positions not in ("all", "each"):
        raise ValueError(f"positions must be 'all' or 'each', got {positions!r}")
    layers = sorted(set(_pick(layers, shape.n_layers, "layer")))
    n_h = shape.n_kv_heads if sites in ("k", "v") else shape.n_heads
    if per_head:
        heads = _pick(heads, n_h, "KV head" if sites in ("k", "v") else "head")
    elif heads is not None:
        raise ValueError(f"{sites} has no heads; drop heads={heads!r}")

    with native_modules(model.hf):
        return _sweep(model, clean_ids, corrupt_ids, sites, metric, positions, memory_budget_mb, layers, heads,
                      batch_size, reuse_prefix, per_head)


def _patch(sites: str, clean: torch.Tensor, L: int, h, p, off: int = 0) -> Patch:
    """The clean activation ``clean`` (as the hook of ``Site(L, sites)`` sees it on the whole prompt) patched at
    head ``h`` and position ``p`` (None = all); for ``pattern`` the position is the query position. ``off``: the
    forward runs positions ``off…`` on a KV cache of the rest (k/v hooks still see every key position)."""
    off = 0 if sites in ("k", "v") else off
    pos = None if p is None else p - off
    if h is None:
        value = clean[:, off:] if p is None else clean[:, p:p + 1]
    elif sites == "pattern":  # [batch, head, query_pos, key_pos]
        value = clean[:, h, off:] if p is None else clean[:, h, p:p + 1]
    else:  # [batch, pos, head, d]
        value = clean[:, off:, h] if p is None else clean[:, p:p + 1, h]
    return Patch(Site(L, sites, h), value, pos=pos)


def _first_difference(clean_ids, corrupt_ids) -> int:
    """First position where any batch row of clean and corrupt differ (``pos`` if they are identical)."""
    diff = (clean_ids != corrupt_ids).any(0).nonzero()
    return int(diff[0]) if len(diff) else clean_ids.shape[1]


def _corrupt_run(model, ids: torch.Tensor, p0: int):
    """The unpatched corrupt run on ``ids [batch, pos]``: ``(logits [batch, pos, d_vocab], past)`` with ``past``
    the per-layer ``(key, value) [batch, kv_head, p0, d_head]`` of the first ``p0`` positions (None when ``p0``
    is 0 or covers every position)."""
    from transformers import DynamicCache

    from .arch import cache_kwarg, output_cache
    from .hooks import interp_attention_active

    name = cache_kwarg(model.hf)
    with torch.no_grad(), interp_attention_active(model):
        out = model.hf(input_ids=ids.to(model.device), use_cache=True, **{name: DynamicCache()})
    if not 0 < p0 < ids.shape[1]:
        return out.logits, None
    kv = output_cache(out)
    return out.logits, [(layer.keys[:, :, :p0], layer.values[:, :, :p0]) for layer in kv.layers]


def _reads_last_only(evaluate, logits_list) -> bool:
    """True when the metric's value on each of ``logits_list`` ``[batch, pos, d_vocab]`` is unchanged (and finite)
    with every position but the last set to NaN."""
    for lg in logits_list:
        poisoned = lg.clone()
        poisoned[:, :-1] = float("nan")
        try:
            a, b = float(evaluate(lg)), float(evaluate(poisoned))
        except Exception:
            return False
        if not (math.isfinite(b) and a == b):
            return False
    return True


def _sweep(model, clean_ids, corrupt_ids, sites, metric, positions, memory_budget_mb, layers, heads, batch_size,
           reuse_prefix, per_head):
    from .hooks import run_with_cache

    batch, n_pos = corrupt_ids.shape
    pos_list = list(range(n_pos)) if positions == "each" else [None]
    # variants in the flat order of the result tensor: layer, head, pos
    variants = [(L, h, p) for L in layers for h in (heads if per_head else [None]) for p in pos_list]
    clean_logits, clean_cache = run_with_cache(model, clean_ids, [Site(L, sites) for L in layers])
    missing = [s for s in [Site(L, sites) for L in layers] if s not in clean_cache]
    if missing:
        raise RuntimeError(f"the hook runtime did not reach {missing[0]}: is the model's attention replaced "
                           "by another wrapper (e.g. a TransformerLens bridge)?")
    # causal model: before the first differing token every activation of the clean and corrupt runs agrees, so
    # patches there are no-ops and the patched runs continue the corrupt run's KV cache of that prefix
    p0 = _first_difference(clean_ids, corrupt_ids) if reuse_prefix else 0
    corrupt_logits, past = _corrupt_run(model, corrupt_ids, p0)

    def evaluate(logits):
        v = torch.as_tensor(metric(logits))
        if v.ndim not in (0, 1) or (v.ndim == 1 and v.shape[0] != batch):
            raise ValueError(f"metric must return [batch] = [{batch}] values or a scalar, got shape {tuple(v.shape)}")
        return v.float().mean()

    corrupt_value = evaluate(corrupt_logits)
    todo = [i for i, (L, h, p) in enumerate(variants) if p0 < n_pos and (p is None or p >= p0)]
    values = corrupt_value.repeat(len(variants))
    if todo:
        keep = n_pos - p0
        if (reuse_prefix and "logits_to_keep" in inspect.signature(model.hf.forward).parameters
                and _reads_last_only(evaluate, [clean_logits, corrupt_logits])):
            keep = 1
        full = corrupt_logits.clone()  # the metric's input: corrupt logits before p0, the patched run's after
        full[:, p0:] = float("nan")

        def readout(out):
            full[:, n_pos - keep:] = out.logits[:, -keep:]
            v = evaluate(full)
            if not torch.isfinite(v) and torch.isfinite(corrupt_value) and keep < n_pos - p0:
                raise RuntimeError("the metric gave NaN on a patched run although it read only the last position "
                                   "on the clean and corrupt runs; pass reuse_prefix=False")
            return v

        patches = [_patch(sites, clean_cache[Site(L, sites)], L, h, p, p0) for L, h, p in (variants[i] for i in todo)]
        values[todo] = run_variants(model, corrupt_ids[:, p0:], patches, readout, memory_budget_mb=memory_budget_mb,
                                    max_variants=batch_size, reuse_prefix=reuse_prefix, past=past,
                                    logits_to_keep=keep if keep < n_pos - p0 else 0)

    dims = ("layer",) + (("head",) if per_head else ()) + (("pos",) if positions == "each" else ())
    sizes = [len(layers)] + ([len(heads)] if per_head else []) + ([n_pos] if positions == "each" else [])
    return PatchResult(
        values=values.float().reshape(sizes), dims=dims, component=sites, layers=layers,
        heads=list(heads) if per_head else None, positions=list(range(n_pos)) if positions == "each" else None,
        sites=[(Site(L, sites, h), p) for L, h, p in variants],
        clean_value=float(evaluate(clean_logits)), corrupt_value=float(corrupt_value))
