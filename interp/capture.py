"""The capture protocol: what the interp attention function hands to an attention capture, and when.

A *capture* reads each captured layer's attention inputs exactly as the model attends with them — post-RoPE
queries, keys at the model's own scale, sliding window and softcap — without any ``[query_pos, key_pos]``
pattern being built. It is installed with ``model.hooks(handlers, capture=cap)`` (``interp.hooks.HookRuntime``);
``interp.attention.StatsCapture`` (every statistic of ``attention_stats``), ``analyses.retrieval.ArgmaxCapture``
(per decode step argmax keys) and ``analyses.model_divergence._QKCapture`` (q, k of two runs) implement it.

Per forward, for every layer in ``cap.layers(model)``, the attention function (``interp.hooks.interp_attention``):

1. applies the q / k / v hooks of every active runtime (so a capture sees the patched values);
2. asks the one dispatcher (``interp.kernels.attention_stats.dispatch.plan``) how to compute the layer's output,
   from the outermost capture's declared ``stats``, ``impl``, ``key_padding_mask``, ``fuses_output`` and
   ``wants_lse()``:

   * ``"fused"``: ``cap.attend(...)`` returns the layer output *and* records the statistics from the same tiles
     (one QKᵀ, the CPU fused kernel); ``capture`` is then not called for that capture and layer;
   * ``"flash_cpu"`` (later also ``"flash_cuda"``): the flash SDPA op computes the output and each row's
     log-sum-exp, which is handed to ``capture`` as ``row_lse`` of every capture whose ``wants_lse()`` is True;
   * ``"sdpa"`` / ``"eager"`` (eager when a hook reads or writes the pattern, or with softcap): ``row_lse`` is None;

3. calls ``cap.capture(...)`` of every other capture active on the layer (nested ``model.hooks`` contexts
   compose: each runtime's capture is called, outermost first).

Shapes (GQA: query head ``h`` uses KV head ``h // (head // kv_head)``; nothing is repeated):

    query       [batch, head, query_pos, d_head]     post-RoPE, the model's dtype
    key, value  [batch, kv_head, key_pos, d_head]    post-RoPE keys, incl. a KV cache (key_pos >= query_pos;
                                                     query row i sits at absolute position i + key_pos - query_pos)
    row_lse     [batch, head, query_pos]             natural-log LSE of the scaled (masked) logits, float32
    attend →    [batch, query_pos, head, d_head]     the layer output before o_proj, in query's dtype
    attention_mask  HF's mask for this layer: None (plain causal), or [batch, 1, query_pos, key_pos] bool
                    (True = attend) or additive float
"""

from __future__ import annotations

import abc
from collections.abc import Iterable

import torch


class Capture(abc.ABC):
    """Base class of every attention capture (subclass it; ``model.hooks(capture=...)`` checks).

    Declared attributes (read by the dispatcher, set by ``__init__``):
        stats: names from ``interp.kernels.attention_stats.VALID_STATS`` this capture computes with the engine;
            ``()`` when it does not call the engine (the output then always comes from SDPA).
        impl: the engine path asked for — "auto" | "reference" | "chunked" | "fused" | "triton" (checked here,
            before any forward; ``INTERP_ATTN_IMPL`` replaces "auto", see ``dispatch.plan``).
        key_padding_mask: ``[batch, key_pos]`` bool (True = real token) or None; padding rules out the fused
            output and the flash LSE.
        fuses_output: True when ``attend`` is implemented (the layer output may come from the statistics
            kernel's own tiles).
    """

    fuses_output: bool = False

    def __init__(self, *, stats: Iterable[str] = (), impl: str = "auto",
                 key_padding_mask: torch.Tensor | None = None):
        from interp.kernels.attention_stats.dispatch import check_impl

        check_impl(impl)
        self.stats = tuple(stats)
        self.impl = impl
        self.key_padding_mask = key_padding_mask

    def layers(self, model) -> Iterable[int]:
        """Layers to capture (their attention runs through the interp attention function); default all."""
        return range(model.shape.n_layers)

    def wants_lse(self) -> bool:
        """True when ``capture`` uses a ``row_lse`` from the forward (the statistics then skip a pass)."""
        return False

    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, scaling: float,
               window: int | None) -> torch.Tensor:
        """Layer output ``[batch, query_pos, head, d_head]`` (query's dtype) computed together with this layer's
        statistics; called instead of SDPA + ``capture`` when the plan is "fused" (only if ``fuses_output``).

        query ``[batch, head, query_pos, d_head]``; key, value ``[batch, kv_head, key_pos, d_head]``; plain causal
        (no mask, no padding, no softcap), ``window`` the layer's sliding window or None.
        """
        raise NotImplementedError(f"{type(self).__name__} sets fuses_output but does not implement attend()")

    @abc.abstractmethod
    def capture(self, layer: int, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                attention_mask: torch.Tensor | None, *, scaling: float, softcap: float | None, window: int | None,
                row_lse: torch.Tensor | None = None) -> None:
        """Read one layer's attention inputs after its output was computed (SDPA, flash or eager).

        query ``[batch, head, query_pos, d_head]``, key ``[batch, kv_head, key_pos, d_head]`` (post-RoPE, after
        every q/k hook); ``module`` the HF attention module; ``attention_mask`` HF's mask (see the module doc);
        ``scaling`` the logit scale; ``softcap`` / ``window`` the layer's logit soft-cap and sliding window or
        None; ``row_lse`` ``[batch, head, query_pos]`` the flash forward's natural-log row LSE when the plan
        computed one and ``wants_lse()`` is True, else None.
        """
