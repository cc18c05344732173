"""Path patching (Wang et al. 2022, "Interpretability in the Wild: a Circuit for Indirect Object Identification
in GPT-2 small", §3.1 and Appendix B; the three-step algorithm as in Goldowsky-Dill et al. 2023).

The effect of sender heads S on receiver inputs R *only through the direct path* S → R:

    1. run the clean prompt x (and the corrupt prompt x') and cache every head's z and every MLP output;
    2. run x with the senders' z set to their value on x', every other head's z (and, by default, every MLP
       output) frozen to its clean value; record the receivers' inputs r* there;
    3. run x with only the receivers' inputs set to r*:

        effect(S → R) = M(f(x | R ← r*)) − M(f(x))

Receivers: a query head's q (``("L3H1", "q")``), a KV head's k or v (``("L3KV0", "k")``; GQA-native, the k/v of a
KV head are shared by its query heads) or the logits (``"logits"``: the final residual stream, patched at the last
layer's ``resid_post``). Receiver inputs are patched as activations after the projection (post-RoPE q/k, v), which
are functions of the receiver's residual input, so steps 2-3 equal patching the receiver's residual input.

With ``freeze_mlps=True`` (default) step 2 changes the receiver's input by exactly out_S(x') − out_S(x): this is
the edge S → R of ``interp.graph`` patched to the corrupt run (``run_graph(removed={S→R})``). With
``freeze_mlps=False`` MLPs are recomputed in step 2, as in the IOI paper, so paths S → MLP → R count as well.
On Gemma the post-attention norm mixes heads of a layer, so frozen-z path patching is not exactly the graph edge
there.

Implemented with the hook runtime (``model.hooks``), independently of ``interp.graph``. Validated in
``tests/unit/test_circuits_path_patching.py``: on a tiny GQA llama, sender → logits and sender → q/k/v effects
equal the exact edge patch ``run_graph(removed={edge})``; a sender in a layer ≥ the receiver's layer has effect 0;
the sweep matches one-by-one calls.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from interp.hooks import run_with_cache
from interp.sites import Site, parse_head

_RECV_RE = re.compile(r"^L(\d+)(H|KV)(\d+)$")


def _parse_senders(model, senders) -> list[tuple[int, int]]:
    if isinstance(senders, (str, tuple)) and not (isinstance(senders, tuple) and senders
                                                   and isinstance(senders[0], (str, tuple))):
        senders = [senders]
    out = []
    for s in senders:
        if isinstance(s, str):
            layer, head = parse_head(s)
        elif isinstance(s, tuple) and len(s) == 2 and all(isinstance(v, int) for v in s):
            layer, head = s
        else:
            raise TypeError(f"a sender is a head 'L{{layer}}H{{head}}' or a (layer, head) pair, got {s!r}")
        Site(layer, "z", head).validate(model.shape)
        out.append((layer, head))
    if not out:
        raise ValueError("path patching needs at least one sender head")
    return out


def _parse_receivers(model, receivers) -> list[Site]:
    """Receivers → sites: ``"logits"`` → the last layer's ``resid_post``; ``("L3H1", "q")`` → ``Site(3, "q",
    1)``; ``("L3KV0", "k"|"v")`` → ``Site(3, "k"|"v", 0)``. Also accepts ``"L3H1.q"``."""
    if isinstance(receivers, (str, Site)) or (isinstance(receivers, tuple) and len(receivers) == 2
                                              and isinstance(receivers[1], str)):
        receivers = [receivers]
    n_layers = model.shape.n_layers
    out = []
    for r in receivers:
        if isinstance(r, Site):
            if r.component not in ("q", "k", "v") or r.head is None:
                raise ValueError(f"a receiver Site must be a head's q, k or v, got {r}")
            out.append(r.validate(model.shape))
            continue
        if isinstance(r, str) and r != "logits" and "." in r:
            r = tuple(r.split(".", 1))
        if r == "logits" or r == ("logits", ""):
            out.append(Site(n_layers - 1, "resid_post"))
            continue
        m = _RECV_RE.match(r[0]) if isinstance(r, tuple) and len(r) == 2 and isinstance(r[0], str) else None
        if m is None or r[1] not in ("q", "k", "v") or (m.group(2) == "H") != (r[1] == "q"):
            raise ValueError(f"bad receiver {r!r}: use 'logits', ('L3H1', 'q'), ('L3KV0', 'k') or ('L3KV0', 'v') "
                             "(q belongs to a query head, k/v to a KV head)")
        out.append(Site(int(m.group(1)), r[1], int(m.group(3))).validate(model.shape))
    if not out:
        raise ValueError("path patching needs at least one receiver")
    return out


def _recv_layer(site: Site, n_layers: int) -> int:
    """Layers strictly below this are upstream of the receiver (the logits are downstream of all)."""
    return n_layers if site.component == "resid_post" else site.layer


def _setter(value: torch.Tensor):
    def fn(x, site):
        return value.to(x.dtype)

    return fn


def path_patch(model, clean: torch.Tensor, corrupt: torch.Tensor, senders, receivers,
               metric: Callable[[torch.Tensor], torch.Tensor], *, freeze_mlps: bool = True) -> float:
    """Path-patching effect ``M(patched) − M(clean)`` of ``senders`` (heads ``"L{l}H{h}"`` or ``(l, h)``) on
    ``receivers`` (``"logits"``, ``("L{l}H{h}", "q")``, ``("L{l}KV{j}", "k"|"v")``, or a list of them).

    ``clean``/``corrupt`` ``[batch, pos]`` token ids of the same shape; ``metric(logits [batch, pos, d_vocab])``
    → scalar tensor.
    """
    if clean.shape != corrupt.shape:
        raise ValueError(f"clean {tuple(clean.shape)} and corrupt {tuple(corrupt.shape)} token ids must have the "
                         "same [batch, pos] shape")
    snd = _parse_senders(model, senders)
    rcv = _parse_receivers(model, receivers)
    cache = _clean_cache(model, clean, corrupt)
    return _path_patch_cached(model, clean, snd, rcv, metric, cache, freeze_mlps)


def _clean_cache(model, clean, corrupt) -> dict:
    s = model.shape
    z_sites = [Site(l, "z") for l in range(s.n_layers)]
    mlp_sites = [Site(l, "mlp_out") for l in range(s.n_layers)]
    logits, c_clean = run_with_cache(model, clean, z_sites + mlp_sites)
    _, c_corr = run_with_cache(model, corrupt, z_sites)
    return {"clean": c_clean, "corrupt": c_corr, "logits": logits}


def _path_patch_cached(model, clean, snd, rcv, metric, cache, freeze_mlps) -> float:
    n_layers = model.shape.n_layers
    senders_by_layer: dict[int, list[int]] = {}
    for layer, head in snd:
        senders_by_layer.setdefault(layer, []).append(head)
    c_clean, c_corr = cache["clean"], cache["corrupt"]
    m_clean = float(metric(cache["logits"]))
    # step 2: senders from corrupt, other heads (and MLPs) frozen to clean, record the receivers' inputs
    handlers = {}
    for layer in range(n_layers):  # all layers: causality alone makes later senders' effects 0
        z = c_clean[Site(layer, "z")].clone()
        for h in senders_by_layer.get(layer, ()):
            z[:, :, h] = c_corr[Site(layer, "z")][:, :, h]
        handlers[Site(layer, "z")] = _setter(z)
        if freeze_mlps:
            handlers[Site(layer, "mlp_out")] = _setter(c_clean[Site(layer, "mlp_out")])
    recorded = {}

    def record(x, site):
        recorded[site] = x.detach().clone()

    for r in rcv:
        handlers[r] = record
    with torch.no_grad(), model.hooks(handlers):
        model.forward(clean)
    # step 3: the clean run with only the receivers' inputs patched
    with torch.no_grad(), model.hooks({r: _setter(recorded[r]) for r in rcv}):
        logits = model.forward(clean).logits
    return float(metric(logits)) - m_clean


def path_patch_heads(model, task, receivers, *, metric: Callable | None = None,
                     freeze_mlps: bool = True) -> torch.Tensor:
    """Path-patching effect of every head (one sender at a time) on ``receivers``: ``[layer, head]`` float64.

    ``task``: a ``TaskTokens`` (or a ``Task``, tokenised for ``model``); ``metric`` defaults to
    ``task.metric`` (logit difference). Heads in layers ≥ every receiver's layer are 0 without a forward.
    """
    if hasattr(task, "tokens") and not hasattr(task, "metric"):
        task = task.tokens(model)
    if not all(hasattr(task, a) for a in ("clean", "corrupt")):
        raise TypeError(f"task must be a TaskTokens or Task, got {type(task).__name__}")
    metric = task.metric if metric is None else metric
    rcv = _parse_receivers(model, receivers)
    s = model.shape
    top = max(_recv_layer(r, s.n_layers) for r in rcv)
    cache = _clean_cache(model, task.clean, task.corrupt)
    out = torch.zeros(s.n_layers, s.n_heads, dtype=torch.float64)
    for layer in range(min(top, s.n_layers)):
        for head in range(s.n_heads):
            out[layer, head] = _path_patch_cached(model, task.clean, [(layer, head)], rcv, metric, cache,
                                                  freeze_mlps)
    return out
