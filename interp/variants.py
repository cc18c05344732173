"""Ablated variants packed into the batch: ``run_variants(model, ids, variants, readout)``.

Every causal score of the suite compares a forward under some intervention with the clean one: patching
(Meng et al. 2022), Ships and Sahara (Zhou et al. 2024), the active/dormant edit (Guo et al. 2024), the
top-k-vs-random checks. With ``V`` variants (each a list of ``interp.interventions`` values) and token ids
``x [batch, pos]``, this computes

    out[v] = readout(f(x | variant_v))        for v = 0 … V−1

in few forwards: ``c`` variants share one forward of ``c · batch`` rows, variant ``j`` of a chunk owning rows
``j·batch … (j+1)·batch − 1`` (``interp.row_interventions.OnRows``). One memory model sizes the chunks:
``c = max(1, budget // (batch · row_bytes))`` with ``row_bytes`` the fp32 bytes one row keeps alive (logits,
layer intermediates, hidden states when asked); one variant is never split, so a batch larger than the budget
runs one variant per forward.

Clean-prefix reuse (``reuse_prefix=True``): layers below a variant's first intervened layer compute the clean
activations. Variants are ordered by that layer and split into up to 6 layer groups; a chunk starting at layer
``s`` feeds the clean ``resid_pre`` of layer ``s`` (computed once) and runs only layers ``s …`` (the lower
decoder layers become pass-throughs). With variants spread evenly over the layers this skips ≈ 40% of the work.

Validated in ``tests/unit/test_variants.py``: packed rows equal one forward per variant under
``model.intervene`` (float64 tiny models, with and without prefix reuse, left-padded batches), and the chunk
sizes follow the byte budget.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .interventions import Intervention, _flatten
from .row_interventions import rows_handlers
from .sites import Site


@dataclass
class VariantOutput:
    """What ``readout`` sees for one variant: its slice of the packed forward.

    ``logits [batch, n_logit_pos, d_vocab]`` (``n_logit_pos = pos`` unless ``logits_to_keep``),
    ``hidden_states``: tuple of ``[batch, pos, d_model]`` (embeddings, then each layer; None unless asked;
    entries ``0 … s`` are None when prefix reuse started the forward at layer ``s > 0``),
    ``ids [batch, pos]``, ``attention_mask [batch, pos]`` or None, ``index`` = the variant's number."""

    logits: torch.Tensor
    hidden_states: tuple | None
    ids: torch.Tensor
    attention_mask: torch.Tensor | None
    index: int


def row_bytes(model, n_pos: int, *, logits_to_keep: int = 0, hidden_states: bool = False) -> int:
    """Rough fp32 bytes one batch row of ``n_pos`` tokens keeps alive in a forward: the live activations of one
    layer (residual, q/k/v, MLP, attention scores), the logits (+ their log-softmax) and, with
    ``hidden_states``, every layer's hidden state."""
    s = model.shape
    cfg = getattr(model.hf.config, "text_config", None) or model.hf.config
    d_mlp = getattr(cfg, "intermediate_size", None) or 4 * s.d_model
    n_logit = logits_to_keep if 0 < logits_to_keep < n_pos else n_pos
    per = n_pos * (10 * s.d_model + 3 * d_mlp + 3 * s.n_heads * n_pos) + 2 * s.d_vocab * n_logit
    if hidden_states:
        per += (s.n_layers + 1) * n_pos * s.d_model
    return 4 * per


def variants_per_chunk(model, batch: int, n_pos: int, memory_budget_mb: float, **kw) -> int:
    """How many variants of ``batch`` rows × ``n_pos`` tokens fit one forward under ``memory_budget_mb``
    (at least 1; ``kw`` as for ``row_bytes``)."""
    if isinstance(memory_budget_mb, bool) or not isinstance(memory_budget_mb, (int, float)) or memory_budget_mb <= 0:
        raise ValueError(f"memory_budget_mb must be a positive number of MiB, got {memory_budget_mb!r}")
    return max(1, int(memory_budget_mb * 2**20 // (batch * row_bytes(model, n_pos, **kw))))


class _PassThrough(nn.Module):
    """Stands in for a decoder layer whose output is already known: returns its input hidden states."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextlib.contextmanager
def skip_layers(model, n: int):
    """Swap the first ``n`` decoder layers of the module list the HF model iterates for pass-throughs (a hook at
    ``Site(n, "resid_pre")`` then supplies the hidden state)."""
    if n == 0:
        yield
        return
    obj = model.hf
    for part in f"{model.arch.base_path}.layers".split("."):
        obj = getattr(obj, part)
    saved = [obj[i] for i in range(n)]
    try:
        for i in range(n):
            obj[i] = _PassThrough()
        yield
    finally:
        for i, mod in enumerate(saved):
            obj[i] = mod


def _as_list(variant, i: int) -> list:
    if variant is None:
        return []
    if isinstance(variant, Intervention):
        return [variant]
    if isinstance(variant, (list, tuple)):
        try:
            return list(_flatten(variant))
        except TypeError as e:
            raise TypeError(f"variant {i}: {e}") from None
    raise TypeError(f"variant {i} must be an Intervention or a list of them, got {type(variant).__name__}")


def _replicated_cache(model, past, c: int) -> dict:
    """The forward argument holding a fresh ``DynamicCache`` of ``past`` (per-layer ``(key, value)``) repeated
    for ``c`` variants (``cache`` in newer transformers, ``past_key_values`` before)."""
    from transformers import DynamicCache

    from .arch import cache_kwarg

    name = cache_kwarg(model.hf)
    return {name: DynamicCache([(k.repeat(c, 1, 1, 1), v.repeat(c, 1, 1, 1)) for k, v in past])}


def _forward(model, ids, mask, handlers, logits_to_keep, hidden_states, past=None, c=1):
    kw = {} if past is None else _replicated_cache(model, past, c)
    if logits_to_keep:
        kw["logits_to_keep"] = logits_to_keep
    if hidden_states:
        kw["output_hidden_states"] = True
    if mask is not None:
        from .batching import position_ids

        kw["position_ids"] = position_ids(mask).to(model.device)
    with model.hooks(handlers):
        return model.forward(ids, mask, **kw)


def _check_ids(model, ids, attention_mask):
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
        raise ValueError(f"ids must be token ids [batch, pos], got {getattr(ids, 'shape', type(ids).__name__)}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(ids.shape):
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must have the shape of ids "
                         f"{tuple(ids.shape)} [batch, pos]")
    model.check_tokens(ids)


@torch.no_grad()
def run_variants(model, ids: torch.Tensor, variants: Sequence, readout: Callable | None = None, *,
                 attention_mask: torch.Tensor | None = None, memory_budget_mb: float = 1024.0,
                 max_variants: int | None = None, reuse_prefix: bool = True, logits_to_keep: int = 0,
                 hidden_states: bool = False, past=None) -> torch.Tensor:
    """``readout`` of each variant's forward, stacked: ``[variant, ...]`` (``readout(VariantOutput)`` returns a
    tensor of the same shape for every variant; default: the logits ``[batch, n_logit_pos, d_vocab]``).

    ``ids``, ``attention_mask``: ``[batch, pos]`` (left padding: positions count from each row's first real
    token). ``variants``: each an ``Intervention``, a list of them, or ``[]`` for the clean run; their tensor
    values are shaped for the ``batch`` rows. ``max_variants`` caps the variants per forward (else from
    ``memory_budget_mb``); ``logits_to_keep``/``hidden_states`` are passed to the HF forward. ``past``: per-layer
    ``(key, value) [batch, kv_head, n_past, d_head]`` of positions before ``ids`` (which then continue that KV
    cache; hooks see ``ids``' positions, k/v hooks the cached keys too); each forward gets its own replicated copy.
    """
    from .hooks import native_modules

    _check_ids(model, ids, attention_mask)
    if not len(variants):
        raise ValueError("no variants given; pass at least one (use [] for the clean run)")
    if past is not None and attention_mask is not None:
        raise ValueError("past (a KV-cache prefix) goes without attention_mask: pass unpadded ids")
    readout = readout or (lambda out: out.logits)
    batch, n_pos = ids.shape
    per = variants_per_chunk(model, batch, n_pos, memory_budget_mb, logits_to_keep=logits_to_keep,
                             hidden_states=hidden_states)
    if max_variants is not None:
        if isinstance(max_variants, bool) or not isinstance(max_variants, int) or max_variants < 1:
            raise ValueError(f"max_variants must be a positive int, got {max_variants!r}")
        per = min(per, max_variants)
    with native_modules(model.hf):
        compiled = [[p for it in _as_list(v, i) for p in it.compile(model)] for i, v in enumerate(variants)]
        starts = [min((site.layer for site, _ in pairs), default=0) if reuse_prefix else 0 for pairs in compiled]
        chunks = _chunks(starts, per)
        prefix = _clean_prefix(model, ids, attention_mask, sorted({starts[c[0]] for c in chunks} - {0}), past)
        results: list = [None] * len(compiled)
        for chunk in chunks:
            for i, value in zip(chunk, _run_chunk(model, ids, attention_mask, chunk, compiled, starts[chunk[0]],
                                                  prefix, readout, logits_to_keep, hidden_states, past)):
                results[i] = value
    return torch.stack([torch.as_tensor(r) for r in results])


def _chunks(starts: list[int], per: int, max_groups: int = 6) -> list[list[int]]:
    """Variant indices in forwards of at most ``per``: ordered by start layer and split into at most
    ``max_groups`` layer groups (bounds at the quantiles of the distinct start layers), so that a group starting
    high skips its lower layers even when every variant would fit one forward."""
    order = sorted(range(len(starts)), key=lambda i: starts[i])
    levels = sorted(set(starts))
    n_groups = min(max_groups, len(levels))
    bounds = [levels[(g * len(levels)) // n_groups] for g in range(n_groups)]
    groups: list[list[int]] = [[] for _ in bounds]
    for i in order:
        groups[max(g for g, b in enumerate(bounds) if starts[i] >= b)].append(i)
    return [grp[k:k + per] for grp in groups for k in range(0, len(grp), per)]


def _clean_prefix(model, ids, mask, layers, past=None) -> dict[int, torch.Tensor]:
    """Clean ``resid_pre [batch, pos, d_model]`` at each of ``layers`` (one forward; {} when none)."""
    if not layers:
        return {}
    cache: dict[int, torch.Tensor] = {}

    def keep(x, site):
        cache[site.layer] = x.detach()

    _forward(model, ids, mask, {Site(layer, "resid_pre"): keep for layer in layers}, 1, False, past)
    missing = [layer for layer in layers if layer not in cache]
    if missing:
        raise RuntimeError(f"the hook runtime did not reach resid_pre of layer {missing[0]}: is the model's "
                           "decoder replaced by another wrapper (e.g. a TransformerLens bridge)?")
    return cache


def _hidden(hs: tuple, rows: slice, start: int, n_layers: int) -> tuple:
    """The ``n_layers + 1`` hidden states of ``rows``; None for those a forward started at ``start`` did not
    compute (entries ``0 … start`` when ``start > 0``: HF records only the layers that ran, or their inputs)."""
    if start == 0:
        return tuple(h[rows] for h in hs)
    return (None,) * (start + 1) + tuple(h[rows] for h in hs[len(hs) - (n_layers - start):])


def _run_chunk(model, ids, mask, chunk, compiled, start, prefix, readout, logits_to_keep, hidden_states, past):
    """One packed forward of the variants ``chunk`` (indices into ``compiled``); yields each one's readout."""
    batch = ids.shape[0]
    c = len(chunk)
    groups = [(slice(j * batch, (j + 1) * batch), compiled[i]) for j, i in enumerate(chunk)]
    handlers = rows_handlers(groups, "run_variants")
    if start > 0:
        resid = prefix[start]
        feed = lambda x, s: resid.to(x.device, x.dtype).repeat(c, 1, 1)  # noqa: E731
        handlers[Site(start, "resid_pre")] = [feed] + handlers.get(Site(start, "resid_pre"), [])
    big_ids = ids.repeat(c, 1)
    big_mask = None if mask is None else mask.repeat(c, 1)
    with skip_layers(model, start):
        out = _forward(model, big_ids, big_mask, handlers, logits_to_keep, hidden_states, past, c)
    for j, i in enumerate(chunk):
        rows = slice(j * batch, (j + 1) * batch)
        hs = _hidden(out.hidden_states, rows, start, model.shape.n_layers) if hidden_states else None
        yield readout(VariantOutput(out.logits[rows], hs, ids, mask, i))
