"""``attention_stats(model, inputs, stats=[...])``: attention statistics captured inside a real forward pass.

Each attention layer's post-RoPE q ``[batch, head, query_pos, d_head]`` and k ``[batch, kv_head, key_pos,
d_head]`` — exactly what the model attends with, at its own scale, sliding window and softcap — are handed to
the statistics engine (``interp.kernels.attention_stats``) while the layer's output is computed by SDPA. No
``[query_pos, key_pos]`` pattern is materialised. On CPU without padding the flash SDPA op also returns each
row's log-sum-exp, which the engine then reuses instead of recomputing its first pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .sites import head_name

ROW_DIM_NAMES = ("layer", "batch", "head", "query_pos")
COL_DIM_NAMES = ("layer", "batch", "head", "key_pos")


class StatsCapture:
    """Receives q, k from the interp attention function and reduces them with the engine (one layer at a time)."""

    def __init__(self, stats, *, layers, token_ids, key_padding_mask, impl, memory_budget_mb, params):
        self.stats = list(stats)
        self._layers = layers
        self.token_ids = token_ids
        self.key_padding_mask = key_padding_mask
        self.impl = impl
        self.memory_budget_mb = memory_budget_mb
        self.params = params
        self.results: dict[int, dict[str, torch.Tensor]] = {}
        self.lse_hint: torch.Tensor | None = None

    def layers(self, model):
        return self._layers

    def wants_lse(self) -> bool:
        return self.key_padding_mask is None

    def attend(self, layer, query, key, value, *, scaling, window):
        """Attention output ``[batch, query_pos, head, d_head]`` and this layer's statistics from one fused CPU
        pass (``kernels/attention_stats/fused_cpu.py``), replacing SDPA + a second pass over q, k; ``None``
        when that path does not apply (then the caller runs SDPA and ``capture``)."""
        if layer not in self._layers or self.impl not in ("auto", "fused") or self.key_padding_mask is not None:
            return None
        if query.device.type != "cpu" or torch.float64 in (query.dtype, key.dtype):
            return None
        from interp.kernels.attention_stats import fused_cpu
        from interp.kernels.attention_stats._spec import validate

        if not (set(self.stats) <= fused_cpu.SUPPORTED and fused_cpu.available()):
            return None
        spec = validate(query, key, stats=self.stats, scale=scaling, token_ids=self.token_ids, window=window,
                        **self.params)
        out, res = fused_cpu.fused_stats(query.detach(), key.detach(), spec, v=value.detach())
        self.results[layer] = {k: v.cpu() for k, v in res.items()}
        return out.to(query.dtype).transpose(1, 2).contiguous()

    def capture(self, layer, module, query, key, attention_mask, *, scaling, softcap, window):
        if layer not in self._layers:
            return
        from interp.kernels.attention_stats import compute_attention_stats

        res = compute_attention_stats(
            query.detach(), key.detach(), stats=self.stats, scale=scaling, token_ids=self.token_ids,
            key_padding_mask=self.key_padding_mask, window=window, softcap=softcap, impl=self.impl,
            memory_budget_mb=self.memory_budget_mb, row_lse=self.lse_hint, **self.params)
        self.lse_hint = None
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


def _as_ids(model, inputs, attention_mask):
    if isinstance(inputs, torch.Tensor):
        ids = inputs if inputs.ndim == 2 else inputs[None]
        return ids, attention_mask
    if isinstance(inputs, str):
        inputs = [inputs]
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
        impl: "auto" | "chunked" | "triton" | "reference" (the dense fp64 spec; small inputs only).
        params: engine parameters (``sink_k``, ``recent_w``, ``distance_cap``, ``top_k``, ``key_set``).
    Returns: ``AttentionStats`` (tensors ``[layer, batch, head, pos]``; ``.to_frame()`` for a tidy table).
    """
    from interp.kernels.attention_stats import VALID_STATS

    unknown = [s for s in stats if s not in VALID_STATS]
    if unknown:
        raise ValueError(f"unknown statistic(s) {unknown}; valid: {sorted(VALID_STATS)}")
    ids, mask = _as_ids(model, inputs, attention_mask)
    model.check_tokens(ids)
    layers = list(range(model.shape.n_layers)) if layers is None else sorted(int(x) for x in layers)
    for layer in layers:
        if not 0 <= layer < model.shape.n_layers:
            raise ValueError(f"layer {layer} out of range (model has {model.shape.n_layers} layers)")
    kpm = None
    if mask is not None and not bool(mask.bool().all()):
        kpm = mask.bool().to(model.device)
    stats, rename = list(stats), {}
    if kpm is not None and "mass_first" in stats:
        # with left padding "the first k tokens" are the first k *real* tokens of each row
        if "mass_keyset" in stats:
            raise ValueError("with padded inputs, mass_first and mass_keyset cannot be requested together; "
                             "run them in two calls or pass unpadded inputs")
        rank = kpm.long().cumsum(-1) - 1
        params = dict(params, key_set=kpm & (rank < params.pop("sink_k", 4)))
        stats = [("mass_keyset" if s == "mass_first" else s) for s in stats]
        rename = {"mass_keyset": "mass_first"}
    cap = StatsCapture(stats, layers=layers, token_ids=ids.to(model.device), key_padding_mask=kpm, impl=impl,
                       memory_budget_mb=memory_budget_mb, params=params)
    with torch.no_grad(), model.hooks({}, stats=cap):
        model.forward(ids, mask)
    names = list(cap.results[layers[0]]) if layers else []
    values = {rename.get(n, n): torch.stack([cap.results[layer][n] for layer in layers]) for n in names}
    valid = mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
    return AttentionStats(model.name, layers, values, valid.cpu(), ids.cpu(), dict(params, impl=impl))
