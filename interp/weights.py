"""Per-head weight matrices in TransformerLens's row convention, GQA-native (K/V per KV head, never repeated).

For one layer (``x`` a residual row vector ``[d_model]``)::

    q_h = x W_Q[h]          W_Q  [head, d_model, d_head]
    k_g = x W_K[g]          W_K  [kv_head, d_model, d_head]     query head h reads KV head g = h // group_size
    v_g = x W_V[g]          W_V  [kv_head, d_model, d_head]
    out = Σ_h z_h W_O[h]    W_O  [head, d_head, d_model]

and the model-wide ``W_E [d_vocab, d_model]`` (token row of the embedding) and ``W_U [d_model, d_vocab]``.
From HF: ``q_proj.weight`` is ``[head·d_head, d_model]``, so ``W_Q[h] = q_proj.weight.view(head, d_head,
d_model)[h].T``; ``o_proj.weight`` is ``[d_model, head·d_head]``, so ``W_O[h] = o_proj.weight.view(d_model, head,
d_head)[:, h].T``.

``fold_norm=True`` folds the linear part of the RMSNorm in front of each projection into it, as TransformerLens's
``fold_ln`` does: the layer's input norm weight ``γ`` scales the rows of W_Q, W_K, W_V (``x̂ = γ ⊙ x / rms(x)``),
the final norm weight scales the rows of W_U, and Gemma's per-head ``q_norm``/``k_norm`` weights scale the columns
of W_Q/W_K (Gemma stores norm weights as ``w`` with scale ``1 + w``). The ``1/rms`` factor is data-dependent and
is left out, as in every weight-space analysis. Biases (Qwen2's QKV bias) are not part of these matrices.

Tested in ``tests/unit/test_weights.py`` (each matrix reproduces the module's own projection on random inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerWeights:
    """One layer's per-head matrices (row convention, see the module docstring)."""

    layer: int
    w_q: torch.Tensor  # [head, d_model, d_head]
    w_k: torch.Tensor  # [kv_head, d_model, d_head]
    w_v: torch.Tensor  # [kv_head, d_model, d_head]
    w_o: torch.Tensor  # [head, d_head, d_model]

    @property
    def group_size(self) -> int:
        return self.w_q.shape[0] // self.w_k.shape[0]

    def kv_of(self) -> torch.Tensor:
        """``[head]`` long: the KV head each query head reads."""
        return torch.arange(self.w_q.shape[0]) // self.group_size


def _norm_scale(norm, dtype) -> torch.Tensor | None:
    """The per-channel scale of an RMSNorm module (``1 + w`` for Gemma's convention), or None."""
    w = getattr(norm, "weight", None)
    if w is None:
        return None
    w = w.detach().to(dtype)
    return 1 + w if "Gemma" in type(norm).__name__ else w


def _split_in(weight: torch.Tensor, n: int, d_head: int, dtype) -> torch.Tensor:
    """HF ``[n·d_head, d_model]`` projection → ``[n, d_model, d_head]``."""
    return weight.detach().to(dtype).view(n, d_head, -1).transpose(1, 2).contiguous()


def w_o(model, layer: int, *, dtype=torch.float64) -> torch.Tensor:
    """``W_O`` of ``layer``: ``[head, d_head, d_model]`` (``z_h W_O[h]`` is head h's write to the residual)."""
    return model.w_o(layer, dtype).contiguous()  # the one per-head view (interp.arch.w_o_heads)


def layer_weights(model, layer: int, *, fold_norm: bool = True, dtype=torch.float64) -> LayerWeights:
    """W_Q, W_K, W_V (KV heads not repeated) and W_O of one layer; see the module docstring."""
    s = model.shape
    if not 0 <= layer < s.n_layers:
        raise ValueError(f"layer {layer} out of range: {model.name} has {s.n_layers} layers (0..{s.n_layers - 1})")
    attn = model.arch.attn(layer)
    wq = _split_in(attn.q_proj.weight, s.n_heads, s.d_head, dtype)
    wk = _split_in(attn.k_proj.weight, s.n_kv_heads, s.d_head, dtype)
    wv = _split_in(attn.v_proj.weight, s.n_kv_heads, s.d_head, dtype)
    if fold_norm:
        gamma = _norm_scale(model.arch.layers[layer].input_layernorm, dtype)
        if gamma is not None:
            wq, wk, wv = (w * gamma[None, :, None] for w in (wq, wk, wv))
        for name, w in (("q_norm", wq), ("k_norm", wk)):
            g = _norm_scale(getattr(attn, name, None), dtype)
            if g is not None:
                w.mul_(g[None, None, :])
    return LayerWeights(layer, wq, wk, wv, w_o(model, layer, dtype=dtype))


def all_layer_weights(model, *, fold_norm: bool = True, dtype=torch.float64) -> list[LayerWeights]:
    return [layer_weights(model, layer, fold_norm=fold_norm, dtype=dtype) for layer in range(model.shape.n_layers)]


def w_e(model, *, dtype=torch.float64) -> torch.Tensor:
    """Token embedding ``[d_vocab, d_model]`` (Gemma's ``√d_model`` embedding scale included)."""
    emb = model.arch.embed
    w = emb.weight.detach().to(dtype)
    scale = getattr(emb, "embed_scale", None)
    return w * (float(scale) if scale is not None else 1.0)


def w_u(model, *, fold_norm: bool = True, dtype=torch.float64) -> torch.Tensor:
    """Unembedding ``[d_model, d_vocab]`` (the final norm's weight folded into its rows with ``fold_norm``)."""
    w = model.arch.lm_head.weight.detach().to(dtype).T
    if fold_norm and model.arch.final_norm is not None:
        gamma = _norm_scale(model.arch.final_norm, dtype)
        if gamma is not None:
            w = w * gamma[:, None]
    return w
