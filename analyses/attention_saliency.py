"""Attention × gradient saliency per head at long context: the MoA attention-influence score, in O(n) memory.

Paper: Fu et al., "MoA: Mixture of Sparse Attention for Automatic Large Language Model Compression" (2024), §3.2:
the influence of attention entry (i, j) on the loss, with the softmax renormalisation that dropping it implies,

    E_ij = −A_ij (∂L/∂A_ij − Σ_k A_ik ∂L/∂A_ik)

is the first-order change of L when key j is masked out of query row i's attention (the row renormalised):
ΔA_ij = −A_ij, ΔA_ik ≈ A_ij A_ik for k ≠ j. Σ_j E_ij = 0 for every row.

No ``[query_pos, key_pos]`` pattern is formed. Through the head output z_i = Σ_j A_ij v_j with g_i = ∂L/∂z_i
(the total derivative, all later paths included): ∂L/∂A_ij = g_i · v_j and Σ_k A_ik ∂L/∂A_ik = g_i · z_i, so

    E_ij = −A_ij (g_i · v_j − g_i · z_i)

One forward keeps per layer the post-RoPE q, k (``interp.capture``), v (by KV head: GQA is never repeated) and z;
one backward of L (``interp.grads.site_grads``) gives g at every layer's z. Then per layer and head, in key tiles
of ``tile`` keys (rows i ≥ the tile's first key only), A_ij is recomputed from q, k: a first pass takes each row's
log-sum-exp, the second forms E on the tile and accumulates. Memory beyond the forward/backward: one
``[head, query_pos, tile]`` tile. The loss is the *summed* next-token cross-entropy of the text
(``interp.metrics.summed_next_token_loss``, checkpointed in position chunks), so E is in nats of the whole
text. Causal; sliding windows (``abs_i − j < window``) and logit soft-capping are applied exactly as the model
attends.

Scores per head, with R = batch · (pos − 1) query rows (the last row predicts nothing: its g is 0) and
d = i − j the key distance:

    sal_total      = Σ_ij |E_ij| / R                   influence mass per query row (nats)
    sal_far_share  = Σ_{d > W} |E_ij| / Σ_ij |E_ij|     share beyond the window W ("needs long context")
    sal_sink_share = Σ_{j = 0} |E_ij| / Σ_ij |E_ij|     share on the first token
    sal_far_drop   = Σ_{d > W} E_ij / R                MoA's first-order loss increase per row if the head's span
                                                       were cut to W (signed; > 0 = the far keys help)
    sal_mean_dist  = Σ_ij |E_ij| d / Σ_ij |E_ij|        influence-weighted key distance (tokens)

Validated in ``tests/unit/test_attention_saliency.py``: every score and the per-key influence against a dense
float64 autograd reference (the full pattern A in the graph, ∂L/∂A by autograd, E by the literal formula) on a
tiny GQA model, for tile sizes that do and do not divide n, with a sliding window; and a planted case (only one
key carries a value the loss reads: exactly half of every row's |E| lies on that key).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.capture import Capture
from interp.params import Params, check_context, param
from interp.scores import ScoreTable
from interp.sites import Site

SCORES = ("sal_total", "sal_far_share", "sal_sink_share", "sal_far_drop", "sal_mean_dist")


@dataclass(frozen=True)
class SaliencyParams(Params):
    """Parameters of ``attention_saliency`` (MoA attention influence per head)."""

    n_tokens: int = param(2048, "tokens per sample (one forward + backward at this length)", ge=2)
    n_samples: int = param(1, "prose windows", ge=1)
    far_w: int = param(64, "window W: key distances i − j > W count as long range", ge=0)
    tile: int = param(512, "keys per tile of the recomputed attention", ge=1)
    seed: int = param(0, "sample seed", ge=0)

    def check_model(self, model, where=""):
        check_context(model, f"{where or 'attention_saliency'}.n_tokens", self.n_tokens)


class _QKCapture(Capture):
    """Keeps each layer's post-RoPE q ``[batch, head, query_pos, d_head]``, k ``[batch, kv_head, key_pos, d_head]``
    (detached) and its logit scale, soft-cap and sliding window."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.meta = {}, {}, {}

    def capture(self, layer, module, query, key, attention_mask, *, scaling, softcap, window, row_lse=None):
        if query.shape[2] != key.shape[2]:
            raise ValueError("attention_saliency needs a full causal forward (no KV cache)")
        self.q[layer], self.k[layer] = query.detach(), key.detach()
        self.meta[layer] = (float(scaling), softcap, window)


def _logits(q, k, j0, *, scaling, softcap, window):
    """Scaled (soft-capped) logits of query rows i ≥ j0 on a key tile starting at j0, causal/window masked.
    q ``[kv_head, group, query_pos, d]``, k ``[kv_head, tile, d]`` → ``([kv, group, rows, tile], dist
    [rows, tile])``."""
    s = torch.einsum("hgid,hjd->hgij", q[:, :, j0:], k) * scaling
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(j0, q.shape[2], device=q.device)[:, None]
    dist = i - torch.arange(j0, j0 + k.shape[1], device=q.device)[None, :]
    bad = dist < 0 if window is None else (dist < 0) | (dist >= window)
    return s.masked_fill(bad, float("-inf")), dist


@torch.no_grad()
def head_influence(q, k, v, z, g, *, scaling: float, far_w: int = 64, tile: int = 512, softcap=None,
                   window=None) -> dict[str, torch.Tensor]:
    """Aggregates of E_ij = −A_ij (g_i·v_j − g_i·z_i) for one sequence, all heads, in key tiles.

    q, z, g ``[head, pos, d_head]``; k, v ``[kv_head, pos, d_head]`` (GQA: head h reads kv_head h // group).
    Returns float64 ``[head]`` sums ``abs`` (Σ|E|), ``far`` (Σ_{i−j>far_w} |E|), ``sink`` (Σ_{j=0} |E|),
    ``far_signed`` (Σ_{i−j>far_w} E), ``dist`` (Σ|E|(i−j)) and ``key`` ``[head, key_pos]`` (Σ_i |E_ij|).
    """
    H, n, _ = q.shape
    kv = k.shape[0]
    qg, zg, gg = (x.reshape(kv, H // kv, n, x.shape[-1]) for x in (q, z, g))
    kw = dict(scaling=scaling, softcap=softcap, window=window)
    lse = torch.full((kv, H // kv, n), float("-inf"), dtype=q.dtype, device=q.device)
    for j0 in range(0, n, tile):
        s, _ = _logits(qg, k[:, j0:j0 + tile], j0, **kw)
        lse[:, :, j0:] = torch.logaddexp(lse[:, :, j0:], torch.logsumexp(s, -1))
    gz = (gg * zg).sum(-1)  # [kv, group, pos]
    out = {name: torch.zeros(H, dtype=torch.float64, device=q.device)
           for name in ("abs", "far", "sink", "far_signed", "dist")}
    out["key"] = torch.zeros(H, n, dtype=torch.float64, device=q.device)
    for j0 in range(0, n, tile):
        s, dist = _logits(qg, k[:, j0:j0 + tile], j0, **kw)
        a = torch.exp(s - lse[:, :, j0:, None])  # masked entries: exp(−inf) = 0
        gv = torch.einsum("hgid,hjd->hgij", gg[:, :, j0:], v[:, j0:j0 + tile])
        e = (-a * (gv - gz[:, :, j0:, None])).reshape(H, n - j0, -1).double()
        ea = e.abs()
        far = dist > far_w
        out["abs"] += ea.sum((1, 2))
        out["far"] += (ea * far).sum((1, 2))
        out["far_signed"] += (e * far).sum((1, 2))
        out["dist"] += (ea * dist).sum((1, 2))
        out["key"][:, j0:j0 + tile] += ea.sum(1)
        if j0 == 0:
            out["sink"] += ea[:, :, 0].sum(1)
    return out


def summed_loss(logits, ids):
    """L = Σ over the batch and the targets of the next-token cross-entropy (nats), in checkpointed position
    chunks (``interp.metrics.summed_next_token_loss``: no float64 ``[pos, d_vocab]`` copy at long context)."""
    from interp.metrics import summed_next_token_loss

    return summed_next_token_loss(logits, ids)


def saliency_scores(model, ids: torch.Tensor, *, far_w: int = 64, tile: int = 512, loss_fn=summed_loss,
                    dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Per-head scores ``SCORES`` ``[layer, head]`` (float64) and ``key_influence`` ``[layer, head, key_pos]``
    (Σ over batch and query rows of |E_ij|) on ids ``[batch, pos]``. ``dtype``: the tiles' dtype (default the
    model's)."""
    from interp.grads import site_grads

    if ids.ndim != 2 or ids.shape[1] < 2:
        raise ValueError(f"ids must be [batch, pos] with pos >= 2, got {tuple(ids.shape)}")
    s = model.shape
    cap = _QKCapture()
    res = site_grads(model, ids, [Site(layer, c) for layer in range(s.n_layers) for c in ("v", "z")], loss_fn,
                     capture=cap)
    batch, n = ids.shape
    acc = {}
    for layer in range(s.n_layers):
        scaling, softcap, window = cap.meta[layer]
        v = res.values[Site(layer, "v")].transpose(1, 2)  # [batch, kv_head, pos, d_head]
        z, g = (t[Site(layer, "z")].transpose(1, 2) for t in (res.values, res.grads))  # [batch, head, pos, d]
        dt = dtype or cap.q[layer].dtype
        per = [head_influence(*(x[b].to(dt) for x in (cap.q[layer], cap.k[layer], v, z, g)), scaling=scaling,
                              far_w=far_w, tile=tile, softcap=softcap, window=window) for b in range(batch)]
        acc[layer] = {name: sum(p[name] for p in per) for name in per[0]}
        del cap.q[layer], cap.k[layer]
    stack = {name: torch.stack([acc[layer][name] for layer in range(s.n_layers)]) for name in acc[0]}
    rows = batch * (n - 1)
    tot = stack["abs"].clamp_min(1e-300)
    return {"sal_total": stack["abs"] / rows, "sal_far_share": stack["far"] / tot,
            "sal_sink_share": stack["sink"] / tot, "sal_far_drop": stack["far_signed"] / rows,
            "sal_mean_dist": stack["dist"] / tot, "key_influence": stack["key"],
            "loss": torch.tensor(res.loss, dtype=torch.float64)}


def run(model, params: SaliencyParams | dict | None = None, out_dir=None):
    """Report entry: MoA attention influence per head on prose windows."""
    from interp.analyses._text import domain_samples

    p = SaliencyParams.coerce(params, where="attention_saliency")
    p.check_model(model, "attention_saliency")
    ids = domain_samples(model, "prose", p.n_samples, p.n_tokens, seed=p.seed)
    sc = saliency_scores(model, ids, far_w=p.far_w, tile=p.tile)
    common = dict(model=model.name, analysis="attention_saliency", n_samples=p.n_samples * (p.n_tokens - 1))
    return {"scores": ScoreTable.concat([ScoreTable.from_matrix(sc[k], score=k, **common) for k in SCORES])}
