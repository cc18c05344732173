"""The hook runtime: every ``Site`` of ``interp.sites`` made readable and writable in a HF forward pass.

Module-level sites use ordinary PyTorch forward (pre-)hooks. Attention-internal sites (post-RoPE q/k, v, the
pattern, per-head z) are reached through one attention function registered with transformers'
``AttentionInterface`` under the name ``"interp"``: it receives post-RoPE ``query [batch, head, query_pos, d_head]``
and ``key/value [batch, kv_head, key_pos, d_head]`` (GQA not yet repeated), runs the hooks, computes the output
with SDPA (or eagerly, only when a hook needs the pattern) and hands q, k to an attention capture if one is set
(``capture=``, an ``interp.capture.Capture``; the protocol and its shapes are documented there). How the output
is computed next to the statistics — SDPA, the fused CPU kernel, or a flash forward that also returns the row
LSE — is decided by ``interp.kernels.attention_stats.dispatch.plan`` alone.

A handler is ``fn(x, site) -> Tensor | None``. Registered on a whole site (``Site(3, "z")``) it sees the whole
tensor; on a head (``Site(3, "z", 5)``) it sees that head's slice (``[batch, pos, d_head]``; for ``pattern``
``[batch, query_pos, key_pos]``) and may return a replacement for the slice. Hooks are removed on exit, also
when the body raises.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass

import torch

from interp.kernels.attention_stats._spec import causal_mask
from interp.kernels.attention_stats.dispatch import Request
from interp.kernels.attention_stats.dispatch import plan as plan_attention

from .sites import ATTN_INTERNAL, Site

_REGISTERED = False


def _register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface

    try:
        from transformers import AttentionMaskInterface
        from transformers.masking_utils import sdpa_mask

        AttentionMaskInterface.register("interp", sdpa_mask)
    except ImportError:  # older transformers: the sdpa mask is the default for unknown names
        pass
    AttentionInterface.register("interp", interp_attention)
    _REGISTERED = True


@contextlib.contextmanager
def native_modules(hf):
    """Swap the model's own modules back in where a TransformerLens bridge has wrapped them (restored on exit).

    ``TransformerBridge.boot_transformers`` replaces HF modules in place by wrappers that compute attention
    themselves, which would bypass interp's attention function and hooks.
    """
    swaps = []

    def visit(parent):
        for name, child in list(parent.named_children()):
            orig = child
            while type(orig).__module__.startswith("transformer_lens") and isinstance(
                    getattr(orig, "original_component", None), torch.nn.Module):
                orig = orig.original_component
            if orig is not child:
                swaps.append((parent, name, child))
                setattr(parent, name, orig)
            visit(orig)

    if getattr(hf, "_interp_bridged", False):
        visit(hf)
    try:
        yield
    finally:
        for parent, name, child in reversed(swaps):
            setattr(parent, name, child)


@contextlib.contextmanager
def interp_attention_active(model):
    """Route ``model``'s attention through the interp attention function for the duration of the block
    (and use the native HF modules if a TransformerLens bridge has wrapped them)."""
    _register()
    hf = model.hf
    with native_modules(hf):
        prev = hf.config._attn_implementation
        if prev != "interp":
            hf.set_attn_implementation("interp")
        try:
            yield
        finally:
            if prev != "interp" and prev is not None:
                hf.set_attn_implementation(prev)


def eager_pattern(query, key, attention_mask, scaling, softcap=None, window=None):
    """Attention weights ``[batch, head, query_pos, key_pos]`` (fp32) exactly as HF eager computes them."""
    k = _repeat_kv(key, query.shape[1])
    scores = torch.matmul(query.float(), k.float().transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if attention_mask is None:
        allowed = causal_mask(query.shape[2], key.shape[2], window=window, device=query.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask[..., : key.shape[2]], float("-inf"))
    else:
        scores = scores + attention_mask[..., : key.shape[2]].float()
    pattern = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(pattern, nan=0.0)  # fully masked (padding) rows → 0


def _repeat_kv(x, n_heads: int):
    """``[batch, kv_head, pos, d_head]`` → ``[batch, head, pos, d_head]`` (GQA: each KV head serves a group)."""
    group = n_heads // x.shape[1]
    return x.repeat_interleave(group, dim=1) if group > 1 else x


@dataclass
class _Call:
    """One call of the attention function: the module, its inputs after the q/k/v hooks, and its settings."""

    module: torch.nn.Module
    layer: int
    query: torch.Tensor  # [batch, head, query_pos, d_head], post-RoPE
    key: torch.Tensor  # [batch, kv_head, key_pos, d_head], post-RoPE
    value: torch.Tensor  # [batch, kv_head, key_pos, d_head]
    attention_mask: torch.Tensor | None
    scaling: float
    softcap: float | None
    window: int | None
    kwargs: dict
    rts: tuple


def interp_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The attention function registered as ``"interp"``: hooks, captures and the layer output.

    Returns ``(out [batch, query_pos, head, d_head], weights [batch, head, query_pos, key_pos] | None)`` as
    every HF attention function does. The forward route (eager / fused / flash / SDPA) is ``dispatch.plan``'s.
    """
    # runtimes active on this module, outermost first (nested contexts compose: an intervention installed
    # outside a caching context is applied before the cache reads the value)
    rts = getattr(module, "_interp_rts", ())
    softcap = kwargs.get("softcap")
    if not rts and softcap is None:  # nothing hooked here (or a non-decoder module, e.g. a vision tower)
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **{k: v for k, v in kwargs.items() if k != "sliding_window"})
    layer = module.layer_idx
    scaling = module.scaling if scaling is None else scaling
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    for rt in rts:
        query = rt.apply_bhnd(layer, "q", query)
        key = rt.apply_bhnd(layer, "k", key)
        value = rt.apply_bhnd(layer, "v", value)
    call = _Call(module, layer, query, key, value, attention_mask, scaling, softcap, window, kwargs, rts)
    captures = [rt.capture for rt in rts if rt.capture is not None and layer in rt.capture_layers]
    primary, plan = _forward_plan(call, captures)
    out, weights, row_lse = _FORWARDS[plan.forward](call, primary)
    for cap in captures:
        if not (plan.fused_output and cap is primary):  # attend() already recorded the primary's statistics
            cap.capture(layer, module, query, key, attention_mask, scaling=scaling, softcap=softcap, window=window,
                        row_lse=row_lse if cap.wants_lse() else None)
    for rt in rts:
        out = rt.apply(layer, "z", out, head_dim=2)  # [batch, pos, head, d_head]
    if any(rt.needs(layer, "head_out") for rt in rts):
        from .arch import head_outputs, w_o_heads
        from .devices import materialized

        with materialized(module.o_proj):  # o_proj's weights may be offloaded (accelerate): loaded for this read
            per_head = head_outputs(out, w_o_heads(module.o_proj, out.shape[2], out.shape[3]))  # [b, pos, head, d]
        for rt in rts:
            rt.apply(layer, "head_out", per_head, head_dim=2, read_only=True)
    return out, weights


def _forward_plan(call: _Call, captures: list):
    """``(primary capture | None, Plan)``: the outermost capture that uses the statistics engine decides, through
    the dispatcher, whether the output comes from its fused kernel or from a flash forward that yields the LSE."""
    primary = next((c for c in captures if c.stats), None)
    pattern = any(rt.needs(call.layer, "pattern") for rt in call.rts)
    if primary is None:
        req = Request.of(call.query, call.key, pattern=pattern, softcap=call.softcap)
    else:
        req = Request.of(call.query, call.key, stats=frozenset(primary.stats), impl=primary.impl,
                         want_output=primary.fuses_output, lse_wanted=primary.wants_lse(),
                         padding=primary.key_padding_mask is not None, attention_mask=call.attention_mask is not None,
                         window=call.window, softcap=call.softcap, pattern=pattern)
    return primary, plan_attention(req)


def _eager(call: _Call, primary):
    """Pattern materialised (a hook reads or writes it, or the layer soft-caps its logits)."""
    pattern = eager_pattern(call.query, call.key, call.attention_mask, call.scaling, call.softcap, call.window)
    for rt in call.rts:
        pattern = rt.apply(call.layer, "pattern", pattern, head_dim=1)
    v = _repeat_kv(call.value, call.query.shape[1])
    out = torch.matmul(pattern.to(v.dtype), v).transpose(1, 2).contiguous()
    return out, pattern, None


def _fused(call: _Call, primary):
    """Statistics and output from the same tiles (CPU fused path); nothing left to capture for ``primary``."""
    out = primary.attend(call.layer, call.query, call.key, call.value, scaling=call.scaling, window=call.window)
    return out, None, None


def _flash(call: _Call, primary, *, cuda: bool = False):
    """The flash SDPA op (the kernel SDPA itself would pick) also returns the row LSE ``[batch, head, query_pos]``
    (natural log), which the statistics reuse instead of recomputing their first pass."""
    k, v = _repeat_kv(call.key, call.query.shape[1]), _repeat_kv(call.value, call.query.shape[1])
    if cuda:  # fp16/bf16, sm80+; selected only once dispatch.LiveCaps.flash_cuda_lse is switched on
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention(
            call.query, k, v, 0.0, True, False, scale=call.scaling)[:2]
    else:
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            call.query, k, v, 0.0, True, scale=call.scaling)[:2]
    return o.transpose(1, 2).contiguous(), None, lse


def _sdpa(call: _Call, primary):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    out, weights = sdpa_attention_forward(call.module, call.query, call.key, call.value, call.attention_mask,
                                          dropout=0.0, scaling=call.scaling,
                                          **{k: v for k, v in call.kwargs.items()
                                             if k not in ("sliding_window", "softcap")})
    return out, weights, None


_FORWARDS = {"eager": _eager, "fused": _fused, "flash_cpu": _flash, "sdpa": _sdpa,
             "flash_cuda": lambda call, primary: _flash(call, primary, cuda=True)}


def _check_capture(capture) -> None:
    from .capture import Capture

    if capture is not None and not isinstance(capture, Capture):
        raise TypeError(f"capture must be an interp.capture.Capture (subclass it), got {type(capture).__name__}")


class HookRuntime:
    """Installs handlers for ``Site``s on an ``interp.Model``; use as a context manager."""

    def __init__(self, model, handlers: dict, *, capture=None, **kwargs):
        if "stats" in kwargs:
            raise TypeError("hooks(stats=...) was renamed: pass the capture as capture=... (an interp.capture.Capture)")
        if kwargs:
            raise TypeError(f"hooks() got unexpected keyword argument(s) {sorted(kwargs)}; it takes capture=")
        _check_capture(capture)
        self.model = model
        self.capture = capture
        self.capture_layers: frozenset[int] = frozenset()
        self.by_key: dict[tuple[int, str], list] = defaultdict(list)
        for site, fns in handlers.items():
            if isinstance(site, str):
                raise TypeError(f"hook keys are interp.Site values, not strings ({site!r})")
            site.validate(model.shape)
            for fn in fns if isinstance(fns, (list, tuple)) else [fns]:
                self.by_key[(site.layer, site.component)].append((site, fn))
        self._handles: list = []
        self._attn_modules: list = []
        self._stack = contextlib.ExitStack()

    # -- lookup and application -----------------------------------------------------------------------------
    def needs(self, layer: int, component: str) -> bool:
        return (layer, component) in self.by_key

    def apply(self, layer: int, component: str, x, *, head_dim: int | None = None, read_only: bool = False):
        for site, fn in self.by_key.get((layer, component), ()):
            if site.head is None:
                y = fn(x, site)
                if y is not None:
                    if read_only:
                        raise ValueError(f"{site} is read-only: write per-head outputs through z instead")
                    x = y
            else:
                part = x.select(head_dim, site.head)
                y = fn(part, site)
                if y is not None:
                    if read_only:
                        raise ValueError(f"{site} is read-only: write per-head outputs through z instead")
                    x = x.clone()
                    x.select(head_dim, site.head).copy_(y)
        return x

    def apply_bhnd(self, layer: int, component: str, x):
        """Apply q/k/v handlers, which see ``[batch, pos, head, d_head]``, to a ``[batch, head, pos, d]`` tensor."""
        if not self.needs(layer, component):
            return x
        return self.apply(layer, component, x.transpose(1, 2), head_dim=2).transpose(1, 2)

    # -- installation -----------------------------------------------------------------------------------------
    def _module_hook(self, module, layer, component, kind):
        if kind == "output":
            def hook(mod, args, output):
                if isinstance(output, tuple):
                    return (self.apply(layer, component, output[0]), *output[1:])
                return self.apply(layer, component, output)

            self._handles.append(module.register_forward_hook(hook))
        else:
            def pre(mod, args, kwargs):
                if args:
                    return (self.apply(layer, component, args[0]), *args[1:]), kwargs
                kwargs = dict(kwargs)
                kwargs["hidden_states"] = self.apply(layer, component, kwargs["hidden_states"])
                return args, kwargs

            self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))

    def __enter__(self):
        arch = self.model.arch
        try:
            attn_layers = {layer for (layer, comp) in self.by_key if comp in ATTN_INTERNAL}
            if self.capture is not None:
                self.capture_layers = frozenset(int(x) for x in self.capture.layers(self.model))
                attn_layers |= self.capture_layers
            for layer in sorted(attn_layers):
                mod = arch.attn(layer)
                mod._interp_rts = (*getattr(mod, "_interp_rts", ()), self)
                self._attn_modules.append(mod)
            for layer, comp in self.by_key:
                if comp in ATTN_INTERNAL:
                    continue
                target = {
                    "embed": (arch.embed, "output"), "logits": (arch.lm_head, "output"),
                    "resid_pre": (arch.layers[layer], "input"), "resid_post": (arch.layers[layer], "output"),
                    "attn_in": (arch.attn(layer), "input"), "attn_out": (arch.attn(layer), "output"),
                    "resid_mid": (arch.submodule(layer, arch.pre_mlp_norm), "input"),
                    "mlp_in": (arch.mlp(layer), "input"), "mlp_out": (arch.mlp(layer), "output"),
                }[comp]
                self._module_hook(target[0], layer, comp, target[1])
            self._stack.enter_context(interp_attention_active(self.model))
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for mod in self._attn_modules:
            rest = tuple(rt for rt in getattr(mod, "_interp_rts", ()) if rt is not self)
            if rest:
                mod._interp_rts = rest
            elif hasattr(mod, "_interp_rts"):
                del mod._interp_rts
        self._attn_modules.clear()

    def __exit__(self, *exc):
        try:
            self._stack.close()
        finally:
            self._remove()
        return False


def run_with_cache(model, ids, sites, attention_mask=None, *, detach: bool = True):
    """One forward pass; returns ``(logits [batch, pos, d_vocab], {Site: tensor})`` for the requested sites.

    Head-indexed sites return that head's slice. Prefer ``interp.collect`` for datasets and reductions.
    """
    cache: dict[Site, torch.Tensor] = {}

    def keep(x, site):
        cache[site] = x.detach() if detach else x

    with torch.no_grad() if detach else contextlib.nullcontext():
        with model.hooks({s: keep for s in sites}):
            logits = model.forward(ids, attention_mask).logits
    return logits, cache
