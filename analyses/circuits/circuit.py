"""A circuit is data: nodes, edges with scores, and how they were found.

``Circuit(nodes, edges, scores, method, metric, task)``. ``edges`` are ``(upstream, downstream, input)``
triples with names from ``interp.graph.Graph`` (``input``, ``L{l}H{h}``, ``L{l}KV{j}``, ``M{l}``, ``logits``;
``input`` is ``"q"``, ``"k"``, ``"v"`` or ``""``). ``to_json``/``from_json`` round-trip (atomic write),
``to_frame()`` gives the tidy edge table, ``circuit_figure(circuit)`` a plotly layered graph.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Circuit:
    nodes: list[str]
    edges: list[tuple[str, str, str]]
    scores: list[float]
    method: str
    metric: str = ""
    task: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.edges = [tuple(e) for e in self.edges]
        self.scores = [float(s) for s in self.scores]
        if len(self.edges) != len(self.scores):
            raise ValueError(f"a circuit needs one score per edge: {len(self.edges)} edges, "
                             f"{len(self.scores)} scores")
        bad = [e for e in self.edges if len(e) != 3 or e[2] not in ("q", "k", "v", "")]
        if bad:
            raise ValueError(f"edges must be (upstream, downstream, input in 'q'|'k'|'v'|''), got {bad[:3]}")

    def __len__(self) -> int:
        return len(self.edges)

    def __repr__(self) -> str:
        return f"Circuit({self.method}: {len(self.edges)} edges, {len(self.nodes)} nodes, task={self.task!r})"

    # --- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_scores(cls, graph, scores: torch.Tensor, *, method: str, metric: str = "", task: str = "",
                    keep: torch.Tensor | None = None, meta: dict | None = None) -> Circuit:
        """All edges of ``graph`` (or those where ``keep [n_nodes, n_inputs]`` is True) with ``scores``
        ``[n_nodes, n_inputs]`` (a ``Graph``-shaped matrix)."""
        if tuple(scores.shape) != (graph.n_nodes, graph.n_inputs):
            raise ValueError(f"scores must be [n_nodes, n_inputs] = {(graph.n_nodes, graph.n_inputs)}, "
                             f"got {tuple(scores.shape)}")
        mask = graph.valid if keep is None else (graph.valid & keep.bool().cpu())
        sc = scores.detach().double().cpu()
        edges, vals = [], []
        for c in range(graph.n_inputs):
            for u in range(graph.n_upstream_of_col(c)):
                if mask[u, c]:
                    edges.append((graph.nodes[u], graph.inputs[c][0], graph.inputs[c][1]))
                    vals.append(float(sc[u, c]))
        nodes = sorted({e[0] for e in edges} | {e[1] for e in edges}, key=_node_key)
        return cls(nodes, edges, vals, method, metric, task, dict(meta or {}))

    def top(self, n: int) -> Circuit:
        """The ``n`` edges of largest ``|score|`` (ties broken by edge order)."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        order = sorted(range(len(self.edges)), key=lambda i: -abs(self.scores[i]))[:n]
        order.sort()
        edges = [self.edges[i] for i in order]
        nodes = sorted({e[0] for e in edges} | {e[1] for e in edges}, key=_node_key)
        return Circuit(nodes, edges, [self.scores[i] for i in order], self.method, self.metric, self.task,
                       dict(self.meta, top=n))

    def mask(self, graph) -> torch.Tensor:
        """``[n_nodes, n_inputs]`` bool: True for the edges of this circuit."""
        m = torch.zeros(graph.n_nodes, graph.n_inputs, dtype=torch.bool)
        for up, down, kind in self.edges:
            m[graph.edge_index(up, down, kind)] = True
        return m

    # --- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"nodes": list(self.nodes), "edges": [list(e) for e in self.edges], "scores": self.scores,
                "method": self.method, "metric": self.metric, "task": self.task, "meta": self.meta}

    def to_json(self, path) -> Path:
        """Write atomically (``interp.io``) and return the path."""
        from interp import io

        return io.write_json(path, self.to_dict(), indent=1, sort_keys=False, default=None)

    @classmethod
    def from_json(cls, path) -> Circuit:
        d = json.loads(Path(path).read_text())
        missing = [k for k in ("nodes", "edges", "scores", "method") if k not in d]
        if missing:
            raise ValueError(f"{path} is not a circuit file: missing {missing}")
        return cls(d["nodes"], [tuple(e) for e in d["edges"]], d["scores"], d["method"], d.get("metric", ""),
                   d.get("task", ""), d.get("meta", {}))

    def to_frame(self):
        """DataFrame with one row per edge: ``upstream, downstream, input, score``."""
        import pandas as pd

        return pd.DataFrame({"upstream": [e[0] for e in self.edges], "downstream": [e[1] for e in self.edges],
                             "input": [e[2] for e in self.edges], "score": self.scores})


_NODE_RE = re.compile(r"^L(\d+)(H|KV)(\d+)$")


def _node_pos(name: str) -> tuple[float, float]:
    """(x = depth, y = row) of a node in the layered layout."""
    if name == "input":
        return 0.0, 0.0
    if name == "logits":
        return float("inf"), 0.0
    m = _NODE_RE.match(name)
    if m:
        layer, kind, i = int(m.group(1)), m.group(2), int(m.group(3))
        return 1 + 2 * layer, float(i) + (0.5 if kind == "KV" else 0.0)
    if name.startswith("M") and name[1:].isdigit():
        return 2 + 2 * int(name[1:]), 0.0
    raise ValueError(f"unknown node name {name!r}")


def _node_key(name: str):
    x, y = _node_pos(name)
    return (x, y, name)


def circuit_figure(circuit: Circuit, *, max_edges: int = 300, title: str | None = None):
    """Plotly figure: nodes in columns by depth (input, L0 heads, M0, L1 heads, …, logits), edges as lines
    coloured by sign and with width ∝ |score| (the ``max_edges`` largest)."""
    import plotly.graph_objects as go

    c = circuit.top(min(max_edges, len(circuit))) if len(circuit) > max_edges else circuit
    pos = {n: _node_pos(n) for n in c.nodes}
    finite = [x for x, _ in pos.values() if x != float("inf")]
    x_logits = (max(finite) if finite else 0) + 1
    pos = {n: ((x_logits if x == float("inf") else x), y) for n, (x, y) in pos.items()}
    smax = max((abs(s) for s in c.scores), default=1.0) or 1.0
    fig = go.Figure()
    for (up, down, kind), s in zip(c.edges, c.scores, strict=True):
        (x0, y0), (x1, y1) = pos[up], pos[down]
        fig.add_trace(go.Scatter(
            x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="text", showlegend=False,
            text=f"{up} → {down}{'.' + kind if kind else ''}: {s:.4g}",
            line=dict(width=0.5 + 5 * abs(s) / smax, color="crimson" if s < 0 else "royalblue")))
    fig.add_trace(go.Scatter(x=[pos[n][0] for n in c.nodes], y=[pos[n][1] for n in c.nodes], mode="markers+text",
                             text=c.nodes, textposition="top center", marker=dict(size=10, color="black"),
                             showlegend=False, hoverinfo="text"))
    fig.update_layout(title=title or f"{c.method} circuit ({len(c)} edges){' · ' + c.task if c.task else ''}",
                      xaxis=dict(title="depth", showgrid=False), yaxis=dict(title="head", showgrid=False),
                      template="plotly_white")
    return fig
