"""The hook runtime: every ``Site`` of ``interp.sites`` made readable and writable in a HF forward pass.

Module-level sites use ordinary PyTorch forward (pre-)hooks. Attention-internal sites (post-RoPE q/k, v, the
pattern, per-head z) are reached through one attention function registered with transformers'
``AttentionInterface`` under the name ``"interp"``: it receives post-RoPE ``query [batch, head, query_pos, d_head]``
and ``key/value [batch, kv_head, key_pos, d_head]`` (GQA not yet repeated), runs the hooks, computes the output
with SDPA (or eagerly, only when a hook needs the pattern) and hands q, k to a statistics capture if one is set.

A handler is ``fn(x, site) -> Tensor | None``. Registered on a whole site (``Site(3, "z")``) it sees the whole
tensor; on a head (``Site(3, "z", 5)``) it sees that head's slice (``[batch, pos, d_head]``; for ``pattern``
``[batch, query_pos, key_pos]``) and may return a replacement for the slice. Hooks are removed on exit, also
when the body raises.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch

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


def causal_bool_mask(q_len: int, k_len: int, device, window: int | None = None) -> torch.Tensor:
    """``[query_pos, key_pos]`` bool, True where query i (absolute position i + k_len - q_len) may attend key j."""
    i = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)
    j = torch.arange(k_len, device=device)[None, :]
    allowed = j <= i
    if window is not None:
        allowed &= (i - j) < window
    return allowed


def eager_pattern(query, key, attention_mask, scaling, softcap=None, window=None):
    """Attention weights ``[batch, head, query_pos, key_pos]`` (fp32) exactly as HF eager computes them."""
    group = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(group, dim=1) if group > 1 else key
    scores = torch.matmul(query.float(), k.float().transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if attention_mask is None:
        allowed = causal_bool_mask(query.shape[2], key.shape[2], query.device, window)
        scores = scores.masked_fill(~allowed, float("-inf"))
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask[..., : key.shape[2]], float("-inf"))
    else:
        scores = scores + attention_mask[..., : key.shape[2]].float()
    pattern = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(pattern, nan=0.0)  # fully masked (padding) rows → 0


def interp_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
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
    stats_rt = next((rt for rt in rts if rt.stats is not None), None)
    attend = getattr(stats_rt.stats, "attend", None) if stats_rt is not None else None  # fused output + stats
    need_pattern = softcap is not None or any(rt.needs(layer, "pattern") for rt in rts)
    if need_pattern:
        pattern = eager_pattern(query, key, attention_mask, scaling, softcap, window)
        for rt in rts:
            pattern = rt.apply(layer, "pattern", pattern, head_dim=1)
        group = query.shape[1] // value.shape[1]
        v = value.repeat_interleave(group, dim=1) if group > 1 else value
        out = torch.matmul(pattern.to(v.dtype), v).transpose(1, 2).contiguous()
        weights = pattern
    elif (attend is not None and attention_mask is None and softcap is None
          and (fused := attend(layer, query, key, value, scaling=scaling, window=window)) is not None):
        # statistics and output from the same tiles (CPU fused path); nothing left to capture
        out, weights, stats_rt = fused, None, None
    elif _flash_lse_ok(stats_rt, query, key, attention_mask, window):
        # same kernel SDPA would use on CPU; it also returns the row log-sum-exp the statistics engine reuses
        group = query.shape[1] // key.shape[1]
        k_full = key.repeat_interleave(group, dim=1) if group > 1 else key
        v_full = value.repeat_interleave(group, dim=1) if group > 1 else value
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, k_full, v_full, 0.0, True, scale=scaling)[:2]
        out, weights = o.transpose(1, 2).contiguous(), None
        stats_rt.stats.lse_hint = lse
    else:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0,
                                              scaling=scaling, **{k: v for k, v in kwargs.items()
                                                                  if k not in ("sliding_window", "softcap")})
    if stats_rt is not None:
        stats_rt.stats.capture(layer, module, query, key, attention_mask, scaling=scaling, softcap=softcap,
                               window=window)
    for rt in rts:
        out = rt.apply(layer, "z", out, head_dim=2)  # [batch, pos, head, d_head]
    if any(rt.needs(layer, "head_out") for rt in rts):
        w_o = module.o_proj.weight  # [d_model, head * d_head]
        per_head = torch.einsum("bphd,mhd->bphm", out, w_o.view(w_o.shape[0], out.shape[2], out.shape[3]))
        for rt in rts:
            rt.apply(layer, "head_out", per_head, head_dim=2, read_only=True)
    return out, weights


def _flash_lse_ok(runtime, query, key, attention_mask, window) -> bool:
    return (runtime is not None and runtime.stats.wants_lse()
            and attention_mask is None and query.device.type == "cpu" and query.shape[2] == key.shape[2]
            and (window is None or key.shape[2] <= window) and query.dtype in (torch.float32, torch.float64)
            and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"))


class HookRuntime:
    """Installs handlers for ``Site``s on an ``interp.Model``; use as a context manager."""

    def __init__(self, model, handlers: dict, *, stats=None):
        self.model = model
        self.stats = stats
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
            if self.stats is not None:
                attn_layers |= set(self.stats.layers(self.model))
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
