"""Batched activation patching: ``patch_sweep`` patches every site of a kind from a clean run into a corrupt run.

Activation patching (Meng et al. 2022 "Locating and Editing Factual Associations in GPT"; Wang et al. 2022,
IOI), TransformerLens's convention: run the model on the *corrupt* input, replace the activation a_s at one site
s by its value on the *clean* input, and record metric(logits_patched), averaged over the batch:

    value[s] = mean_b metric(f(corrupt_b | a_s ← a_s(clean_b)))_b

Instead of one forward per site, each site is a variant ``Patch(site, clean value)`` and
``interp.variants.run_variants`` packs them into the batch (rows ``j·batch … (j+1)·batch − 1`` belong to
variant j) in chunks sized to ``memory_budget_mb``. Layers below a chunk's earliest patched layer are identical
for every replica, so (``reuse_prefix=True``) they run once on the corrupt input and the chunk starts from the
cached ``resid_pre``; variants are ordered by layer so this skips ≈ half the work.

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


def _patch(sites: str, clean: torch.Tensor, L: int, h, p) -> Patch:
    """The clean activation ``clean`` (as the hook of ``Site(L, sites)`` sees it) patched at head ``h`` and
    position ``p`` (None = all); for ``pattern`` the position is the query position."""
    if h is None:
        value = clean if p is None else clean[:, p:p + 1]
    elif sites == "pattern":  # [batch, head, query_pos, key_pos]
        value = clean[:, h] if p is None else clean[:, h, p:p + 1]
    else:  # [batch, pos, head, d]
        value = clean[:, :, h] if p is None else clean[:, p:p + 1, h]
    return Patch(Site(L, sites, h), value, pos=p)


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
    with torch.no_grad():
        corrupt_logits = model.forward(corrupt_ids).logits

    def evaluate(logits):
        v = torch.as_tensor(metric(logits))
        if v.ndim not in (0, 1) or (v.ndim == 1 and v.shape[0] != batch):
            raise ValueError(f"metric must return [batch] = [{batch}] values or a scalar, got shape {tuple(v.shape)}")
        return v.float().mean()

    patches = [_patch(sites, clean_cache[Site(L, sites)], L, h, p) for L, h, p in variants]
    values = run_variants(model, corrupt_ids, patches, lambda out: evaluate(out.logits),
                          memory_budget_mb=memory_budget_mb, max_variants=batch_size, reuse_prefix=reuse_prefix)

    dims = ("layer",) + (("head",) if per_head else ()) + (("pos",) if positions == "each" else ())
    sizes = [len(layers)] + ([len(heads)] if per_head else []) + ([n_pos] if positions == "each" else [])
    return PatchResult(
        values=values.float().reshape(sizes), dims=dims, component=sites, layers=layers,
        heads=list(heads) if per_head else None, positions=list(range(n_pos)) if positions == "each" else None,
        sites=[(Site(L, sites, h), p) for L, h, p in variants],
        clean_value=float(evaluate(clean_logits)), corrupt_value=float(evaluate(corrupt_logits)))
