"""The computational graph of a decoder-only model and an edge-level forward pass over it.

Nodes (upstream, topological order): ``input`` (the token embedding), every attention head ``L{l}H{h}``
(its write to the residual stream, ``z_h @ W_O[:, h]``), every MLP ``M{l}`` (its output), and ``logits``.
Downstream *inputs* (where edges end), per layer: the q input of every query head ``(L{l}H{h}, "q")``, the k
and v inputs of every **KV head** ``(L{l}KV{j}, "k" | "v")`` (GQA-native: a KV head's k/v are computed once
for the query heads of its group), the MLP input ``(M{l}, "")``; finally ``("logits", "")``. An edge runs from
every node to every input downstream of it (heads of layer l feed the MLP of layer l and everything after).

Edge-level intervention. Each input reads its own copy of the residual stream::

    in_v = resid − Σ_u removed[u, v] · (out_u(run) − out_u(corrupt))

(``removed`` = 1 patches edge u→v to the corrupt run, 0 keeps it; fractional values interpolate), then passes
it through that node's own input norm and projections. So a query head's q is computed from a ``[batch, pos,
head, d_model]`` stream, k/v from ``[batch, pos, kv_head, d_model]`` streams — never ungrouped to MHA.

This is an explicit layer-by-layer forward for the Llama / Qwen2 / Mistral / Gemma 2/3 decoder family that
reuses the HF submodules (norms, projections, ``rotary_emb``, MLP). Gemma's post-attention norm is linear once
its RMS scale is fixed, so a head's output there is ``z_h W_O^h · scale(run)`` with the scale of the run it
belongs to; the heads of a layer still sum exactly to the HF attention output. The o_proj bias (if any) is a
constant of the residual stream, not a node. Padding masks are not supported (prompts of one batch must have
equal length).

Validated in ``tests/unit/test_circuits_graph.py``: with nothing removed the logits equal the HF logits (tiny
llama, qwen2, gemma3); with every edge removed they equal the corrupt run's logits.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from interp.kernels.attention_stats import causal_mask

from .arch import head_outputs, w_o_heads
from .devices import execution_device, materialized
from .hooks import native_modules


@dataclass(frozen=True)
class Graph:
    """Node and input names of a model with ``n_layers`` layers, ``n_heads`` query and ``n_kv_heads`` KV
    heads."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    nodes: tuple = field(init=False)
    inputs: tuple = field(init=False)

    def __post_init__(self):
        nodes, inputs = ["input"], []
        for l in range(self.n_layers):
            nodes += [f"L{l}H{h}" for h in range(self.n_heads)] + [f"M{l}"]
            inputs += [(f"L{l}H{h}", "q") for h in range(self.n_heads)]
            inputs += [(f"L{l}KV{j}", "k") for j in range(self.n_kv_heads)]
            inputs += [(f"L{l}KV{j}", "v") for j in range(self.n_kv_heads)]
            inputs += [(f"M{l}", "")]
        inputs.append(("logits", ""))
        object.__setattr__(self, "nodes", tuple(nodes))
        object.__setattr__(self, "inputs", tuple(inputs))

    @classmethod
    def of(cls, model) -> Graph:
        s = model.shape
        return cls(s.n_layers, s.n_heads, s.n_kv_heads)

    # --- index arithmetic ----------------------------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def n_inputs(self) -> int:
        return len(self.inputs)

    @property
    def width(self) -> int:
        """Input columns per layer: q per head, k and v per KV head, the MLP."""
        return self.n_heads + 2 * self.n_kv_heads + 1

    def n_upstream_attn(self, layer: int) -> int:
        """Nodes feeding layer ``layer``'s attention (``input`` and all earlier layers)."""
        return 1 + layer * (self.n_heads + 1)

    def cols(self, layer: int) -> dict[str, slice]:
        """Input columns of layer ``layer``: ``{"q", "k", "v", "mlp"}`` → slices."""
        b, h, k = layer * self.width, self.n_heads, self.n_kv_heads
        return {"q": slice(b, b + h), "k": slice(b + h, b + h + k), "v": slice(b + h + k, b + h + 2 * k),
                "mlp": slice(b + h + 2 * k, b + h + 2 * k + 1)}

    @property
    def logits_col(self) -> int:
        return self.n_layers * self.width

    def n_upstream_of_col(self, col: int) -> int:
        if col == self.logits_col:
            return self.n_nodes
        layer, off = divmod(col, self.width)
        return self.n_upstream_attn(layer) + (self.n_heads if off == self.width - 1 else 0)

    @property
    def valid(self) -> torch.Tensor:
        """``[n_nodes, n_inputs]`` bool: True where an edge exists."""
        v = torch.zeros(self.n_nodes, self.n_inputs, dtype=torch.bool)
        for c in range(self.n_inputs):
            v[: self.n_upstream_of_col(c), c] = True
        return v

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def edges(self) -> list[tuple[str, str, str]]:
        """All edges as ``(upstream, downstream, input)`` in (input, upstream) order."""
        return [(self.nodes[u], self.inputs[c][0], self.inputs[c][1])
                for c in range(self.n_inputs) for u in range(self.n_upstream_of_col(c))]

    def edge_index(self, upstream: str, downstream: str, kind: str = "") -> tuple[int, int]:
        """``(node row, input column)`` of an edge; raises a clear error if it does not exist."""
        try:
            u = self.nodes.index(upstream)
            c = self.inputs.index((downstream, kind))
        except ValueError:
            raise ValueError(f"no edge {upstream} → {downstream}{'.' + kind if kind else ''} in this graph "
                             f"(nodes like 'input', 'L0H1', 'M0'; inputs like ('L1H0','q'), ('L1KV0','k'), "
                             f"('M1',''), ('logits',''))") from None
        if u >= self.n_upstream_of_col(c):
            raise ValueError(f"{upstream} is not upstream of {downstream}: no such edge")
        return u, c


@dataclass
class GraphRun:
    """Result of ``run_graph``: ``logits [batch, pos, d_vocab]``, node outputs ``[n_nodes, batch, pos,
    d_model]`` (stacked lazily from ``outs``) and, with ``keep_streams``, the per-input streams (list of
    tensors, one per layer: ``q [batch, pos, head, d_model]``, ``k``/``v [batch, pos, kv_head, d_model]``,
    ``mlp [batch, pos, d_model]``, then the logits input ``[batch, pos, d_model]``)."""

    logits: torch.Tensor
    outs: list
    streams: list | None = None
    final_scale: torch.Tensor | None = None  # [batch, pos, d_model]: the final norm as a per-element factor

    @property
    def node_outputs(self) -> torch.Tensor:
        """``[n_nodes, batch, pos, d_model]`` on the device of the first node (the embedding's)."""
        dev = self.outs[0].device
        return torch.stack([o.to(dev) for o in self.outs])


def _rms_factor(norm, x: torch.Tensor) -> torch.Tensor:
    """The per-element factor ``f`` with ``norm(x) == x * f`` for an RMSNorm module (fp32)."""
    eps = getattr(norm, "eps", None)
    if eps is None:
        eps = norm.variance_epsilon
    w = norm.weight.float()
    gain = 1.0 + w if "Gemma" in type(norm).__name__ else w
    xf = x.float()
    return torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * gain


def _rotary(model, x, pos_ids, attn):
    base = model.hf
    for part in model.arch.base_path.split("."):
        base = getattr(base, part)
    rot = base.rotary_emb
    layer_type = getattr(attn, "layer_type", None)
    if layer_type is not None and hasattr(rot, f"{layer_type}_inv_freq"):
        return rot(x, pos_ids, layer_type)
    return rot(x, pos_ids)


class _Patcher:
    """Builds the per-input residual streams of one run. Keeps the node deltas ``out_u(run) − out_u(corrupt)``
    (lazily) and their running sum, and per block of input columns uses whichever of the removed or the kept
    edges touches fewer upstream nodes: ``in = resid − Σ removed·δ`` or ``in = (resid − Σ_all δ) + Σ
    kept·δ``."""

    def __init__(self, outs, corrupt, removed, valid, force: bool):
        self.outs, self.corrupt, self.removed, self.valid, self.force = outs, corrupt, removed, valid, force
        self.deltas: list = []
        self.total = None  # Σ_u δ_u over the nodes seen so far

    def _delta(self, u, device):
        """``δ_u`` on ``device`` (node outputs live on the device of the layer that made them)."""
        while len(self.deltas) <= u:
            i = len(self.deltas)
            d = self.outs[i].to(device) - self.corrupt[i].to(device)
            self.deltas.append(d)
            self.total = d if self.total is None else self.total.to(device) + d
        return self.deltas[u].to(device)

    def stream(self, resid, n_up: int, cols: slice):
        """``[batch, pos, n_cols, d_model]``: the residual each input in ``cols`` sees."""
        n = cols.stop - cols.start
        base = resid.unsqueeze(2)
        if self.removed is None:
            return base.expand(-1, -1, n, -1)
        dev = resid.device
        mask = self.removed[:n_up, cols].to(device=dev, dtype=resid.dtype)
        if self.force:
            rows = list(range(n_up))
        else:
            rm_rows = mask.ne(0).any(1).nonzero().flatten().tolist()
            if not rm_rows:
                return base.expand(-1, -1, n, -1)
            keep = (1 - mask) * self.valid[:n_up, cols].to(dev, resid.dtype)
            kp_rows = keep.ne(0).any(1).nonzero().flatten().tolist()
            if len(kp_rows) < len(rm_rows):
                self._delta(n_up - 1, dev)
                corrupt_resid = resid - self.total.to(dev)
                if not kp_rows:
                    return corrupt_resid.unsqueeze(2).expand(-1, -1, n, -1)
                d = torch.stack([self._delta(u, dev) for u in kp_rows])
                return corrupt_resid.unsqueeze(2) + torch.einsum("ubpm,uc->bpcm", d, keep[kp_rows])
            rows = rm_rows
        d = torch.stack([self._delta(u, dev) for u in rows])
        return base - torch.einsum("ubpm,uc->bpcm", d, mask[rows])


def _attention(model, layer: int, q_in, k_in, v_in, cos_sin):
    """Per-head attention from per-head input streams. Returns ``z [batch, pos, head, d_head]``."""
    dec = model.arch.layers[layer]
    attn = dec.self_attn
    s = model.shape
    b, p = q_in.shape[:2]
    dh, H, KV = s.d_head, s.n_heads, s.n_kv_heads

    def proj(x, lin, n):
        x = dec.input_layernorm(x)
        with materialized(lin):  # offloaded weights (accelerate) are loaded for this read only
            y = torch.einsum("bphm,hdm->bphd", x, lin.weight.view(n, dh, -1))
            return y if lin.bias is None else y + lin.bias.view(n, dh)

    q, k, v = proj(q_in, attn.q_proj, H), proj(k_in, attn.k_proj, KV), proj(v_in, attn.v_proj, KV)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    q, k = rope(q, k, *cos_sin, unsqueeze_dim=2)
    g = H // KV
    scores = torch.einsum("bqkgd,bskd->bkgqs", q.view(b, p, KV, g, dh), k) * attn.scaling
    softcap = getattr(attn.config, "attn_logit_softcapping", None)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if hasattr(attn, "sliding_window"):  # Gemma, Qwen2: set per layer on the module
        window = attn.sliding_window
    else:  # e.g. Mistral: from the config, via interp's Shape
        window = s.sliding_window if layer in s.sliding_layers else None
    allowed = causal_mask(p, p, window=window, device=q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    pattern = torch.softmax(scores.float(), dim=-1).to(v.dtype)  # [batch, kv_head, group, query_pos, key_pos]
    return torch.einsum("bkgqs,bskd->bqkgd", pattern, v).reshape(b, p, H, dh)


def run_graph(model, ids: torch.Tensor | None = None, *, embeds: torch.Tensor | None = None,
              corrupt: torch.Tensor | None = None, removed: torch.Tensor | None = None,
              keep_streams: bool = False) -> GraphRun:
    """Edge-level forward (see ``_run_graph``), on the native HF modules even if a TL bridge wrapped them."""
    with native_modules(model.hf):
        return _run_graph(model, ids, embeds=embeds, corrupt=corrupt, removed=removed, keep_streams=keep_streams)


def _run_graph(model, ids: torch.Tensor | None = None, *, embeds: torch.Tensor | None = None,
               corrupt: torch.Tensor | None = None, removed: torch.Tensor | None = None,
               keep_streams: bool = False) -> GraphRun:
    """Edge-level forward of ``model`` (an ``interp.Model``) on token ids ``[batch, pos]``.

    ``embeds [batch, pos, d_model]`` replaces the embedding output (for integrated gradients). ``corrupt``
    ``[n_nodes, batch, pos, d_model]`` are node outputs of a corrupt run (``run_graph(...).node_outputs``);
    ``removed [n_nodes, n_inputs]`` (see ``Graph``) says how much of each edge is patched to them. Gradients
    flow (wrap in ``torch.no_grad()`` when not needed); if ``removed.requires_grad`` every stream is built
    from it.
    """
    graph = Graph.of(model)
    arch, s = model.arch, model.shape
    if embeds is None:
        if ids is None:
            raise ValueError("run_graph needs token ids [batch, pos] or embeds [batch, pos, d_model]")
        model.check_tokens(ids)
        embeds = arch.embed(ids.to(model.device))
    if removed is not None:
        if corrupt is None:
            raise ValueError("removed edges need the corrupt run's node outputs: pass corrupt=...")
        if tuple(removed.shape) != (graph.n_nodes, graph.n_inputs):
            raise ValueError(f"removed must be [n_nodes, n_inputs] = {(graph.n_nodes, graph.n_inputs)}, "
                             f"got {tuple(removed.shape)}")
        if tuple(corrupt.shape[1:]) != tuple(embeds.shape):
            raise ValueError(f"corrupt node outputs {tuple(corrupt.shape)} do not match this run's "
                             f"[n_nodes, batch, pos, d_model] = [{graph.n_nodes}, {', '.join(map(str, embeds.shape))}]"
                             "; clean and corrupt prompts must have the same shape")
    force = removed is not None and removed.requires_grad
    b, p, _ = embeds.shape
    pos_ids = torch.arange(p, device=embeds.device)[None]
    gemma_norms = arch.pre_mlp_norm == "pre_feedforward_layernorm"
    outs, streams = [embeds], [] if keep_streams else None
    patch = _Patcher(outs, corrupt, removed, graph.valid.to(embeds.device), force)
    resid = embeds
    for layer in range(s.n_layers):
        dec = arch.layers[layer]
        attn = dec.self_attn
        cols, n_up = graph.cols(layer), graph.n_upstream_attn(layer)
        dev = execution_device(dec)  # the layer's device: its inputs go there, its outputs stay there
        resid = resid.to(dev)
        q_in, k_in, v_in = (patch.stream(resid, n_up, cols[x]) for x in "qkv")
        cos_sin = tuple(t.to(dev) for t in _rotary(model, embeds, pos_ids, attn))
        z = _attention(model, layer, q_in, k_in, v_in, cos_sin)
        with materialized(attn.o_proj):
            head_out = head_outputs(z, w_o_heads(attn.o_proj, s.n_heads, s.d_head))  # [batch, pos, head, d_model]
            bias = attn.o_proj.bias
        if gemma_norms:
            total = head_out.sum(2) + (0 if bias is None else bias)
            with materialized(dec.post_attention_layernorm):
                f = _rms_factor(dec.post_attention_layernorm, total).unsqueeze(2)
            head_out = (head_out.float() * f).to(head_out.dtype)
            bias = None if bias is None else (bias.float() * f[:, :, 0]).to(head_out.dtype)
        outs.extend(head_out.unbind(2))
        resid = resid + head_out.sum(2) + (0 if bias is None else bias)
        m_in = patch.stream(resid, n_up + s.n_heads, cols["mlp"])[:, :, 0]
        m_out = arch.mlp(layer)(getattr(dec, arch.pre_mlp_norm)(m_in))
        if gemma_norms:
            m_out = dec.post_feedforward_layernorm(m_out)
        outs.append(m_out)
        resid = resid + m_out.to(dev)
        if keep_streams:
            streams.append((q_in, k_in, v_in, m_in))
    col = graph.logits_col
    f_in = patch.stream(resid, graph.n_nodes, slice(col, col + 1))[:, :, 0]
    if keep_streams:
        streams.append(f_in)
    final = arch.final_norm
    logits = arch.lm_head(final(f_in) if final is not None else f_in)
    cap = getattr(model.hf.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    if final is None:
        scale = None
    else:
        with materialized(final):
            scale = _rms_factor(final, f_in.to(execution_device(final))).detach()
    return GraphRun(logits=logits, outs=outs, streams=streams, final_scale=scale)


def corrupt_outputs(model, corrupt_ids: torch.Tensor) -> torch.Tensor:
    """Node outputs ``[n_nodes, batch, pos, d_model]`` of the corrupt prompts (no gradient)."""
    with torch.no_grad():
        return run_graph(model, corrupt_ids).node_outputs


def patched_logits(model, clean_ids: torch.Tensor, corrupt: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Logits ``[batch, pos, d_vocab]`` of the clean prompts with edges ``removed`` patched to ``corrupt``."""
    with torch.no_grad():
        return run_graph(model, clean_ids, corrupt=corrupt, removed=removed).logits
