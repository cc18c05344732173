"""Where things live in a HF module tree: decoder layers, attention, MLP, norms, embedding, unembedding.

One small adapter instead of per-architecture classes: HF decoder-only models share a layout
(``<base>.layers[i].self_attn.{q,k,v,o}_proj``, ``.mlp``, ``<base>.embed_tokens``, ``<base>.norm``, ``lm_head``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


class UnsupportedArchitectureError(ValueError):
    pass


def native(module):
    """The HF module behind a TransformerLens bridge wrapper (the module itself when not wrapped)."""
    while type(module).__module__.startswith("transformer_lens") and isinstance(
            getattr(module, "original_component", None), nn.Module):
        module = module.original_component
    return module


@dataclass
class Arch:
    """References to the model's own HF modules, taken once: a TransformerLens bridge built later wraps the
    tree in place, but these stay the native modules (interp swaps them back in around its own forwards)."""

    base_path: str  # e.g. "model" or "model.language_model"
    layers: list  # native decoder layers
    embed: nn.Module
    final_norm: nn.Module | None
    lm_head: nn.Module
    pre_mlp_norm: str  # attribute of a decoder layer whose *input* is resid_mid

    def attn(self, layer: int) -> nn.Module:
        return native(self.layers[layer].self_attn)

    def mlp(self, layer: int) -> nn.Module:
        return native(self.layers[layer].mlp)

    def submodule(self, layer: int, name: str) -> nn.Module:
        return native(getattr(self.layers[layer], name))

    def path(self, layer: int | None, part: str) -> str:
        """HF module path of a part ("layer", "self_attn", "self_attn.o_proj", "mlp", "embed", "lm_head")."""
        if part == "embed":
            return f"{self.base_path}.embed_tokens"
        if part == "lm_head":
            return "lm_head"
        if part == "norm":
            return f"{self.base_path}.norm"
        suffix = "" if part == "layer" else f".{part}"
        return f"{self.base_path}.layers.{layer}{suffix}"


def w_o_heads(o_proj: nn.Module, n_heads: int, d_head: int):
    """Per-head output projection ``W_O [head, d_head, d_model]`` (a view of ``o_proj.weight [d_model, head ·
    d_head]``): head ``h``'s write to the residual stream is ``z_h @ W_O[h]``."""
    w = o_proj.weight
    return w.view(w.shape[0], n_heads, d_head).permute(1, 2, 0)


def head_outputs(z, w_o):
    """Each head's write to the residual stream: ``z [..., head, d_head]`` × ``w_o [head, d_head, d_model]`` →
    ``[..., head, d_model]`` (``o_h = z_h W_O^h``; the heads sum to the attention output minus the o_proj bias)."""
    import torch

    return torch.einsum("...hd,hdm->...hm", z, w_o)


def _get(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def locate(hf: nn.Module) -> Arch:
    for base in ("model", "model.language_model", "language_model.model", "model.model"):
        layers = _get(hf, f"{base}.layers")
        if isinstance(layers, nn.ModuleList) and len(layers) and hasattr(native(layers[0]), "self_attn"):
            layers = [native(layer) for layer in layers]
            attn = native(layers[0].self_attn)
            if not all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
                break
            lm_head = getattr(hf, "lm_head", None)
            if lm_head is None:
                break
            pre = "pre_feedforward_layernorm" if hasattr(layers[0], "pre_feedforward_layernorm") \
                else "post_attention_layernorm"
            norm = _get(hf, f"{base}.norm")
            return Arch(base, layers, native(_get(hf, f"{base}.embed_tokens")), norm if norm is None else native(norm),
                        native(lm_head), pre)
    raise UnsupportedArchitectureError(
        f"{type(hf).__name__} is not a supported layout: interp needs a decoder-only HF model with "
        "`layers[i].self_attn.{q,k,v,o}_proj` (Llama, Mistral, Qwen2/3, Gemma 2/3, LLaVA's language model…)")


# --- the KV-cache argument across transformers versions (written once) ------------------------------------------
def cache_kwarg(hf) -> str:
    """The forward keyword holding the KV cache: ``cache`` in newer transformers, ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"


def output_cache(out):
    """The KV cache a forward returned (``out.cache`` in newer transformers, ``out.past_key_values`` before)."""
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values
