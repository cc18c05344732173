"""Batched activation patching: ``patch_sweep`` patches every site of a kind from a clean run into a corrupt run.

Activation patching (Meng et al. 2022 "Locating and Editing Factual Associations in GPT"; Wang et al. 2022,
IOI), TransformerLens's convention: run the model on the *corrupt* input, replace the activation a_s at one site
s by its value on the *clean* input, and record metric(logits_patched), averaged over the batch:

    value[s] = mean_b metric(f(corrupt_b | a_s ← a_s(clean_b)))_b

Instead of one forward per site, k patched variants are packed into the batch: the corrupt input is replicated
k times and one hook per layer writes a different head/position of the clean activation into each replica's
rows (rows ``j·batch … (j+1)·batch − 1`` belong to variant j). Chunks are sized to ``memory_budget_mb``.
With ``reuse_prefix=True`` (default) three exact shortcuts skip work whose result is known:

- layers: below a chunk's earliest patched layer every replica equals the corrupt run, so the chunk starts from
  the corrupt run's cached ``resid_pre`` (lower decoder layers swapped for pass-throughs); chunks are grouped by
  layer;
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

import contextlib
import inspect
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .hooks import native_modules
from .sites import Site

HEAD_COMPONENTS = ("q", "k", "v", "z", "pattern")
LAYER_COMPONENTS = ("resid_pre", "attn_in", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post")
_N_GROUPS = 6  # layer groups of the prefix reuse (each forward starts at its group's first layer)


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


class _PassThrough(nn.Module):
    """Stands in for a decoder layer whose output is already known: returns its input hidden states."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextlib.contextmanager
def _skip_layers(model, n: int):
    """Swap the first ``n`` decoder layers of the module list the HF model iterates for pass-throughs."""
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


def _write(xv, cl, j, h, p):
    """In place: ``xv [c, batch, pos, (head,) ...]`` rows ``j`` ← clean ``cl [batch, pos, (head,) ...]`` at
    heads ``h`` / positions ``p`` (index tensors of equal length, or None for all)."""
    if h is not None and p is None:
        xv[j, :, :, h] = cl[:, :, h].movedim(2, 0)
    elif h is not None:
        xv[j, :, p, h] = cl[:, p, h].movedim(1, 0)
    elif p is None:
        xv[j] = cl
    else:
        xv[j, :, p] = cl[:, p].movedim(1, 0)


def _patch_handler(c: int, batch: int, clean: torch.Tensor, j, h, p, pattern: bool):
    """Handler writing ``clean`` into the replicas. With a KV-cached prefix the hook sees only the last
    positions (q, z, pattern rows, layer components) or all of them (k, v: HF concatenates the cache first);
    the clean tensor and the position indices are shifted by the difference."""
    pos_dim = 2 if pattern else 1  # pattern [batch, head, query_pos, key_pos]

    def fn(x, site):
        off = clean.shape[pos_dim] - x.shape[pos_dim]
        x = x.clone()
        xv = x.view(c, batch, *x.shape[1:])
        cl = clean.narrow(pos_dim, off, x.shape[pos_dim]).to(x.device, x.dtype)
        if pattern:  # [.., head, query_pos, key_pos] → [.., query_pos, head, key_pos] views
            xv, cl = xv.transpose(2, 3), cl.transpose(1, 2)
        _write(xv, cl, j, h, None if p is None else p - off)
        return x

    return fn


def _resid_handler(c: int, resid: torch.Tensor):
    """Handler replacing a layer's input by the corrupt run's cached ``resid_pre [batch, pos, d_model]`` (its
    last positions when the hook sees a KV-cached suffix), replicated for the ``c`` variants."""

    def fn(x, site):
        r = resid[:, resid.shape[1] - x.shape[1]:].to(x.device, x.dtype)
        return r.repeat(c, *([1] * (r.ndim - 1)))

    return fn


def _first_difference(clean_ids, corrupt_ids) -> int:
    """First position where any batch row of clean and corrupt differ (``pos`` if they are identical)."""
    diff = (clean_ids != corrupt_ids).any(0).nonzero()
    return int(diff[0]) if len(diff) else clean_ids.shape[1]


def _corrupt_run(model, ids: torch.Tensor, sites, p0: int):
    """The unpatched corrupt run on ``ids [batch, pos]``: ``(logits [batch, pos, d_vocab], {Site: tensor},
    prefix)`` with ``prefix`` the per-layer ``(key, value) [batch, kv_head, p0, d_head]`` of the first ``p0``
    positions (None when ``p0`` is 0 or covers every position)."""
    from transformers import DynamicCache

    cache: dict[Site, torch.Tensor] = {}

    def keep(x, site):
        cache[site] = x.detach()

    with torch.no_grad(), model.hooks({s: keep for s in sites}):
        out = model.hf(input_ids=ids.to(model.device), use_cache=True, **{_cache_kw(model.hf): DynamicCache()})
    kv = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    prefix = None
    if 0 < p0 < ids.shape[1]:
        prefix = [(layer.keys[:, :, :p0], layer.values[:, :, :p0]) for layer in kv.layers]
    return out.logits, cache, prefix


def _metric_reads_last_only(evaluate, logits_list) -> bool:
    """True when the metric's value on each of ``logits_list`` ``[batch, pos, d_vocab]`` is unchanged (and finite)
    with every position but the last set to NaN: the patched forwards then compute the last position's logits
    only (a metric reading other positions sees NaN there, and the sweep raises)."""
    for lg in logits_list:
        poisoned = lg.clone()
        poisoned[:, :-1] = float("nan")
        try:
            a, b = evaluate(lg), evaluate(poisoned)
        except Exception:
            return False
        if not (math.isfinite(b) and a == b):
            return False
    return True


def _cache_kw(hf) -> str:
    """The forward's KV-cache argument: ``cache`` in newer transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"


def _replicated_cache(prefix, c: int):
    """A fresh ``DynamicCache`` holding ``prefix`` (see ``_corrupt_run``) repeated for ``c`` variants."""
    from transformers import DynamicCache

    return DynamicCache([(k.repeat(c, 1, 1, 1), v.repeat(c, 1, 1, 1)) for k, v in prefix])


def _row_bytes(shape, n_pos: int) -> int:
    """Rough fp32 bytes of one batch row's forward: logits (+ log-softmax), MLP/attention intermediates."""
    return 4 * n_pos * (2 * shape.d_vocab + 16 * shape.d_model + 3 * shape.n_heads * n_pos)


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


def _sweep(model, clean_ids, corrupt_ids, sites, metric, positions, memory_budget_mb, layers, heads, batch_size,
           reuse_prefix, per_head):
    from .hooks import run_with_cache

    batch, n_pos = corrupt_ids.shape
    pos_list = list(range(n_pos)) if positions == "each" else [None]
    # variants in the flat order of the result tensor: layer, head, pos
    variants = [(L, h, p) for L in layers for h in (heads if per_head else [None]) for p in pos_list]
    clean_logits, clean_cache = run_with_cache(model, clean_ids, [Site(L, sites) for L in layers])
    # causal model: before the first differing token every activation of the clean and corrupt runs agrees, so
    # patches there are no-ops and the patched runs start from the corrupt run's KV cache of that prefix
    p0 = _first_difference(clean_ids, corrupt_ids) if reuse_prefix else 0
    resid_sites = [Site(L, "resid_pre") for L in layers] if reuse_prefix else []
    corrupt_logits, corrupt_cache, prefix = _corrupt_run(model, corrupt_ids, resid_sites, p0)
    missing = [s for s in [Site(L, sites) for L in layers] + resid_sites
               if s not in clean_cache and s not in corrupt_cache]
    if missing:
        raise RuntimeError(f"the hook runtime did not reach {missing[0]}: is the model's attention replaced "
                           "by another wrapper (e.g. a TransformerLens bridge)?")

    def evaluate(logits):
        v = torch.as_tensor(metric(logits))
        if v.ndim not in (0, 1) or (v.ndim == 1 and v.shape[0] != batch):
            raise ValueError(f"metric must return [batch] = [{batch}] values or a scalar, got shape {tuple(v.shape)}")
        return float(v.float().mean())

    corrupt_value = evaluate(corrupt_logits)
    values = {i: corrupt_value for i, v in enumerate(variants) if v[2] is not None and v[2] < p0 or p0 == n_pos}
    todo = [i for i in range(len(variants)) if i not in values]
    keep = n_pos - p0
    if (reuse_prefix and todo and "logits_to_keep" in inspect.signature(model.hf.forward).parameters
            and _metric_reads_last_only(evaluate, [clean_logits, corrupt_logits])):
        keep = 1
    full = corrupt_logits.clone()  # the metric's input: corrupt logits before p0, the patched run's after
    full[:, p0:] = float("nan")
    for chunk in _chunks(model, variants, todo, layers, batch, n_pos - p0, memory_budget_mb, batch_size,
                         reuse_prefix):
        logits = _run_chunk(model, corrupt_ids[:, p0:], [variants[i] for i in chunk], clean_cache, corrupt_cache,
                            sites, per_head, prefix, reuse_prefix, keep)
        for k, i in enumerate(chunk):
            full[:, n_pos - keep:] = logits[k * batch:(k + 1) * batch]
            values[i] = evaluate(full)
            if not math.isfinite(values[i]) and math.isfinite(corrupt_value) and keep < n_pos - p0:
                raise RuntimeError(f"the metric gave NaN on a patched run ({variants[i]}) although it read only "
                                   "the last position on the clean and corrupt runs; pass reuse_prefix=False")

    dims = ("layer",) + (("head",) if per_head else ()) + (("pos",) if positions == "each" else ())
    sizes = [len(layers)] + ([len(heads)] if per_head else []) + ([n_pos] if positions == "each" else [])
    out = torch.tensor([values[i] for i in range(len(variants))], dtype=torch.float32).reshape(sizes)
    return PatchResult(
        values=out, dims=dims, component=sites, layers=layers, heads=list(heads) if per_head else None,
        positions=list(range(n_pos)) if positions == "each" else None,
        sites=[(Site(L, sites, h), p) for L, h, p in variants],
        clean_value=evaluate(clean_logits), corrupt_value=corrupt_value)


def _chunks(model, variants, todo, layers, batch, n_run, memory_budget_mb, batch_size, reuse_prefix):
    """Variant indices packed into forwards: grouped by layer (so each forward can start at its earliest patched
    layer), at most ``batch_size`` (or what ``memory_budget_mb`` allows for ``n_run`` positions) per forward."""
    row = batch * _row_bytes(model.shape, max(1, n_run))
    per_forward = batch_size or max(1, int(memory_budget_mb * 2**20 // row))
    n_groups = min(_N_GROUPS, len(layers)) if reuse_prefix else 1
    bounds = [layers[(i * len(layers)) // n_groups] for i in range(n_groups)]
    groups: list[list] = [[] for _ in range(n_groups)]
    for i in todo:
        groups[max(g for g, b in enumerate(bounds) if variants[i][0] >= b)].append(i)
    return [g[i:i + per_forward] for g in groups for i in range(0, len(g), per_forward)]


def _run_chunk(model, ids, chunk, clean_cache, corrupt_cache, sites, per_head, prefix, reuse_prefix, keep):
    """Logits ``[len(chunk) · batch, keep, d_vocab]`` (the last ``keep`` positions) of the corrupt run on ``ids
    [batch, pos]`` (after the cached ``prefix``, if any) with each variant's patch applied to its replica."""
    c, batch, dev = len(chunk), ids.shape[0], model.device
    start = chunk[0][0] if reuse_prefix else 0
    handlers: dict[Site, list] = {}
    if start > 0:
        handlers[Site(start, "resid_pre")] = [_resid_handler(c, corrupt_cache[Site(start, "resid_pre")])]
    for L in sorted({v[0] for v in chunk}):
        rows = [(j, h, p) for j, (L2, h, p) in enumerate(chunk) if L2 == L]
        j = torch.tensor([r[0] for r in rows], device=dev)
        h = torch.tensor([r[1] for r in rows], device=dev) if per_head else None
        p = torch.tensor([r[2] for r in rows], device=dev) if rows[0][2] is not None else None
        fn = _patch_handler(c, batch, clean_cache[Site(L, sites)], j, h, p, sites == "pattern")
        handlers.setdefault(Site(L, sites), []).append(fn)
    ids = ids.repeat(c, 1)
    with torch.no_grad(), _skip_layers(model, start), model.hooks(handlers):
        if prefix is None and keep == ids.shape[1]:
            return model.forward(ids).logits
        from .hooks import interp_attention_active

        kw = {} if prefix is None else {_cache_kw(model.hf): _replicated_cache(prefix, c)}
        if keep < ids.shape[1]:
            kw["logits_to_keep"] = keep
        with interp_attention_active(model):
            return model.hf(input_ids=ids.to(dev), use_cache=prefix is not None, **kw).logits[:, -keep:]
