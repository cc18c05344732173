"""``attention_stats(model, inputs, stats=[...])``: attention statistics captured inside a real forward pass.

Each attention layer's post-RoPE q ``[batch, head, query_pos, d_head]`` and k ``[batch, kv_head, key_pos,
d_head]`` — exactly what the model attends with, at its own scale, sliding window and softcap — are handed to
the statistics engine (``interp.kernels.attention_stats``) by ``StatsCapture`` (an ``interp.capture.Capture``).
No ``[query_pos, key_pos]`` pattern is materialised. The dispatcher (``kernels/attention_stats/dispatch.py``)
decides the route: on CPU without padding the fused kernel computes the layer output from the statistics' own
tiles, or the flash SDPA op computes it and also returns each row's log-sum-exp, which the engine then reuses
instead of recomputing its first pass; otherwise SDPA computes the output and the engine runs on q, k.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .capture import Capture
from .sites import head_name

ROW_DIM_NAMES = ("layer", "batch", "head", "query_pos")
COL_DIM_NAMES = ("layer", "batch", "head", "key_pos")


class StatsCapture(Capture):
    """Receives q, k from the interp attention function and reduces them with the engine (one layer at a time).

    ``results[layer]`` holds the statistics (CPU tensors, shapes as ``compute_attention_stats``). With no padding
    the layer output may come from the fused kernel's own tiles (``attend``) or the flash forward's row LSE is
    reused (``capture(row_lse=...)``); the dispatcher decides which.
    """

    fuses_output = True

    def __init__(self, stats, *, layers, token_ids, key_padding_mask, impl, memory_budget_mb, params):
        super().__init__(stats=stats, impl=impl, key_padding_mask=key_padding_mask)
        self._layers = layers
        self.token_ids = token_ids
        self.memory_budget_mb = memory_budget_mb
        self.params = params
        self.results: dict[int, dict[str, torch.Tensor]] = {}

    def layers(self, model):
        return self._layers

    def wants_lse(self) -> bool:
        return self.key_padding_mask is None

    def _engine(self, query, key, **kw):
        from interp.kernels.attention_stats import compute_attention_stats

        from .devices import to_device

        dev = query.device  # under a device map each layer's q, k live on that layer's device
        return compute_attention_stats(
            query.detach(), key.detach(), stats=self.stats, token_ids=to_device(self.token_ids, dev),
            key_padding_mask=to_device(self.key_padding_mask, dev), impl=self.impl,
            memory_budget_mb=self.memory_budget_mb, **to_device(self.params, dev), **kw)

    def attend(self, layer, query, key, value, *, scaling, window):
        """Attention output ``[batch, query_pos, head, d_head]`` and this layer's statistics from one fused CPU
        pass (``kernels/attention_stats/fused_cpu.py``), replacing SDPA + a second pass over q, k."""
        out, res = self._engine(query, key, value=value.detach(), scale=scaling, window=window)
        self.results[layer] = {k: v.cpu() for k, v in res.items()}
        return out.to(query.dtype).transpose(1, 2).contiguous()

    def capture(self, layer, module, query, key, attention_mask, *, scaling, softcap, window, row_lse=None):
        res = self._engine(query, key, scale=scaling, window=window, softcap=softcap, row_lse=row_lse)
        self.results[layer] = {k: v.cpu() for k, v in res.items()}


@dataclass
class AttentionStats:
    """Statistics of every captured layer.

    ``values[name]`` is a tensor ``[layer, batch, head, query_pos]`` for row statistics, ``[layer, batch, head,
    key_pos]`` for column statistics and ``[layer, batch, head, query_pos, top_k]`` for ``topk_idx/topk_prob``;
    ``layers`` lists which model layers the first axis holds. ``valid`` is the ``[batch, pos]`` bool mask of
    real (non-padding) tokens.
    """

    model: str
    layers: list[int]
    values: dict[str, torch.Tensor]
    valid: torch.Tensor
    token_ids: torch.Tensor
    params: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.values:
            raise KeyError(f"statistic {name!r} was not computed; available: {sorted(self.values)}")
        return self.values[name]

    def head_mean(self, name: str, *, from_pos: int = 0) -> torch.Tensor:
        """``[layer, head]`` mean of a per-position statistic over real tokens at positions ≥ ``from_pos``
        (counted within each sequence's real tokens) and over the batch."""
        x = self[name].double()
        if x.ndim != 4:
            raise ValueError(f"{name!r} is not a per-position statistic (shape {tuple(x.shape)})")
        valid = self.valid.clone()
        if from_pos:
            rank = valid.long().cumsum(-1) - 1
            valid &= rank >= from_pos
        w = valid[None, :, None, :].to(x.dtype)
        return (torch.nan_to_num(x) * w).sum((1, 3)) / w.sum((1, 3)).clamp_min(1)

    def to_frame(self, names=None) -> pd.DataFrame:
        """Tidy DataFrame: one row per (statistic, layer, head, batch, position) over real tokens."""
        frames = []
        for name in names or [n for n in self.values if self.values[n].ndim == 4]:
            x = self[name]
            if x.ndim != 4:
                continue
            L, B, H, N = x.shape
            idx = np.stack(np.meshgrid(np.array(self.layers), np.arange(B), np.arange(H), np.arange(N),
                                       indexing="ij"), -1).reshape(-1, 4)
            keep = self.valid[idx[:, 1], idx[:, 3]].numpy()
            idx = idx[keep]
            frames.append(pd.DataFrame({
                "statistic": name, "layer": idx[:, 0], "head": idx[:, 2], "batch": idx[:, 1],
                "position": idx[:, 3], "value": x.reshape(-1).double().numpy()[keep]}))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def head_frame(self, name: str, **kw) -> pd.DataFrame:
        m = self.head_mean(name, **kw)
        rows = [{"layer": layer, "head": h, "name": head_name(layer, h), "value": float(m[i, h])}
                for i, layer in enumerate(self.layers) for h in range(m.shape[1])]
        return pd.DataFrame(rows)


ENGINE_PARAMS = ("sink_k", "recent_w", "distance_cap", "top_k", "key_set")


def _as_ids(model, inputs, attention_mask):
    if isinstance(inputs, torch.Tensor):
        if inputs.ndim not in (1, 2):
            raise ValueError(f"inputs must be token ids [pos] or [batch, pos], got shape {tuple(inputs.shape)}")
        ids = inputs if inputs.ndim == 2 else inputs[None]
        return ids, attention_mask
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, (list, tuple)) and any(isinstance(t, str) and not t.strip() for t in inputs):
        raise ValueError("attention_stats got an empty text; give at least one token of text")
    if isinstance(inputs, (list, tuple)):
        if not inputs:
            raise ValueError("attention_stats got no inputs: pass a string, a list of strings or token ids")
        if isinstance(inputs[0], str):
            from .batching import pad_batch

            return pad_batch(model, list(inputs))
        if isinstance(inputs[0], (list, tuple)) or isinstance(inputs[0], int):
            rows = [inputs] if isinstance(inputs[0], int) else inputs
            from .batching import pad_batch

            return pad_batch(model, [list(r) for r in rows])
    raise TypeError(f"inputs must be text, a list of texts, token-id lists or a [batch, pos] tensor, "
                    f"not {type(inputs).__name__}")


def attention_stats(model, inputs, stats, *, layers=None, attention_mask=None, impl="auto",
                    memory_budget_mb=256, **params) -> AttentionStats:
    """Run ``model`` on ``inputs`` once and return the requested attention statistics for every head.

    Args:
        model: an ``interp.Model``.
        inputs: text, list of texts (left-padded), token-id lists, or ids ``[batch, pos]``.
        stats: names understood by the engine (``interp.kernels.attention_stats.VALID_STATS``), e.g.
            ``["lse", "entropy", "mass_first", "col_alpha", "argmax", "induction"]``.
        layers: which layers to capture (default all).
        attention_mask: ``[batch, pos]`` (1 = real token) when passing padded ids.
        impl: "auto" | "fused" | "chunked" | "triton" | "reference" (the dense fp64 spec; small inputs only);
            checked before the forward; "auto" is resolved per layer by ``kernels/attention_stats/dispatch.py``
            (``INTERP_ATTN_IMPL`` replaces it).
        params: engine parameters (``sink_k``, ``recent_w``, ``distance_cap``, ``top_k``, ``key_set``).
    Every argument is checked before the forward (one ``ValueError`` naming the bad value): a single stat name is
    one name; empty ``stats``/``layers``, an empty text, a mask of the wrong shape or an all-zero mask row, an
    unknown keyword and token ids outside the vocabulary are refused.
    Returns: ``AttentionStats`` (tensors ``[layer, batch, head, pos]``; ``.to_frame()`` for a tidy table).
    """
    from interp.kernels.attention_stats.dispatch import check_impl

    stats = _check_stats(stats)
    unknown_kw = sorted(set(params) - set(ENGINE_PARAMS))
    if unknown_kw:
        raise ValueError(f"unknown keyword argument(s) {unknown_kw}; attention_stats takes layers, attention_mask, "
                         f"impl, memory_budget_mb and the engine parameters {list(ENGINE_PARAMS)}")
    check_impl(impl)  # before the forward: an unknown impl (or INTERP_ATTN_IMPL value) is one clear line
    ids, mask = _as_ids(model, inputs, attention_mask)
    model.check_tokens(ids)
    mask = _check_mask(mask, ids)
    layers = _check_layers(model, layers)
    from .plan import check_run

    check_run(model, ids.shape[1], ids.shape[0], stats=tuple(stats), memory_budget_mb=memory_budget_mb)
    kpm = None
    if mask is not None and not bool(mask.bool().all()):
        kpm = mask.bool().to(model.device)
    stats, params, rename = _first_real_tokens(list(stats), params, kpm)
    cap = StatsCapture(stats, layers=layers, token_ids=ids.to(model.device), key_padding_mask=kpm, impl=impl,
                       memory_budget_mb=memory_budget_mb, params=params)
    with torch.no_grad(), model.hooks({}, capture=cap):
        model.forward(ids, mask, **_no_logits(model))
    names = list(cap.results[layers[0]]) if layers else []
    values = {rename.get(n, n): torch.stack([cap.results[layer][n] for layer in layers]) for n in names}
    valid = mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
    return AttentionStats(model.name, layers, values, valid.cpu(), ids.cpu(), dict(params, impl=impl))


def _no_logits(model) -> dict:
    """Ask for the last position's logits only: the statistics need none, and ``[batch, pos, d_vocab]`` is the
    largest buffer of a long forward (8192 tokens × 49152 vocab × 4 B = 1.6 GB on the default model)."""
    import inspect

    try:
        return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.hf.forward).parameters else {}
    except (TypeError, ValueError, AttributeError):
        return {}


def _check_stats(stats) -> list[str]:
    from interp.kernels.attention_stats import VALID_STATS

    if isinstance(stats, str):
        stats = [stats]  # one name, not its letters
    if not isinstance(stats, (list, tuple, set, frozenset)) or not stats:
        raise ValueError(f"stats must be a non-empty list of statistic names, got {stats!r}; "
                         f"valid: {sorted(VALID_STATS)}")
    unknown = [s for s in stats if s not in VALID_STATS]
    if unknown:
        raise ValueError(f"unknown statistic(s) {unknown}; valid: {sorted(VALID_STATS)}")
    return list(stats)


def _check_layers(model, layers) -> list[int]:
    n = model.shape.n_layers
    if layers is None:
        return list(range(n))
    if isinstance(layers, int):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError(f"layers = [] selects no layer; pass None for all {n} layers or a list of indices")
    out = []
    for layer in layers:
        try:
            index = operator.index(layer) if not isinstance(layer, bool) else None
        except TypeError:
            index = None
        if index is None or not 0 <= index < n:
            raise ValueError(f"layer {layer!r} out of range (model has {n} layers: 0..{n - 1})")
        out.append(index)
    return sorted(set(out))


def _check_mask(mask, ids: torch.Tensor):
    """``attention_mask [batch, pos]`` (1 = real token) of the ids' shape with a real token in every row."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(mask)
    if tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}; it must match the token ids "
                         f"[batch, pos] = {tuple(ids.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
    empty = (~mask.bool().any(-1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"attention_mask row(s) {empty} are all zero (no real token); drop those rows")
    return mask


def _first_real_tokens(stats: list, params: dict, kpm):
    """With left padding (``kpm [batch, pos]``) "the first k tokens" of ``mass_first`` are the first k *real*
    tokens of each row: ask for ``mass_keyset`` over them instead. Returns ``(stats, params, rename)``."""
    if kpm is None or "mass_first" not in stats:
        return stats, params, {}
    if "mass_keyset" in stats:
        raise ValueError("with padded inputs, mass_first and mass_keyset cannot be requested together; "
                         "run them in two calls or pass unpadded inputs")
    rank = kpm.long().cumsum(-1) - 1
    params = dict(params)
    params["key_set"] = kpm & (rank < params.pop("sink_k", 4))
    stats = [("mass_keyset" if s == "mass_first" else s) for s in stats]
    return stats, params, {"mass_keyset": "mass_first"}
