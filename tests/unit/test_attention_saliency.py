"""attention_saliency: the tiled MoA influence vs a dense float64 autograd reference (full pattern A in the graph,
∂L/∂A by autograd, E by the literal formula) on tiny GQA models, and a planted single-key case."""

from __future__ import annotations

import pytest
import torch

from interp.analyses import attention_saliency as AS
from interp.sites import Site
from interp.testing import tiny_model


def dense_reference(model, ids, far_w):
    """Scores from the full [query_pos, key_pos] pattern: each layer's pattern is replaced by a float64 softmax of
    its own q, k (still in the graph), ∂L/∂A by autograd, E_ij = −A_ij (∂L/∂A_ij − Σ_k A_ik ∂L/∂A_ik)."""
    s = model.shape
    qk, pats = {}, {}

    def stash(x, site):
        qk[(site.layer, site.component)] = x

    def pattern(p, site):
        q, k = qk[(site.layer, "q")].transpose(1, 2), qk[(site.layer, "k")].transpose(1, 2)
        k = k.repeat_interleave(s.n_heads // s.n_kv_heads, dim=1)
        mod = model.arch.attn(site.layer)
        logits = (q.double() @ k.double().transpose(-1, -2)) * mod.scaling
        n = logits.shape[-1]
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        bad = j > i
        window = getattr(mod, "sliding_window", None)
        if window is not None:
            bad |= (i - j) >= window
        a = torch.softmax(logits.masked_fill(bad, float("-inf")), -1)
        pats[site.layer] = a
        return a

    handlers = {Site(layer, c): stash for layer in range(s.n_layers) for c in ("q", "k")}
    handlers.update({Site(layer, "pattern"): pattern for layer in range(s.n_layers)})
    with torch.enable_grad(), model.hooks(handlers):
        logits = model.forward(ids).logits
        loss = AS.summed_loss(logits, ids)
        grads = torch.autograd.grad(loss, [pats[layer] for layer in range(s.n_layers)])
    n = ids.shape[1]
    dist = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).double()
    out = {k: [] for k in (*AS.SCORES, "key_influence")}
    rows = ids.shape[0] * (n - 1)
    for a, da in zip((pats[layer].detach() for layer in range(s.n_layers)), grads, strict=True):
        e = -a * (da - (a * da).sum(-1, keepdim=True))  # [batch, head, query_pos, key_pos]
        ea, far = e.abs(), dist > far_w
        tot = ea.sum((0, 2, 3))
        out["sal_total"].append(tot / rows)
        out["sal_far_share"].append((ea * far).sum((0, 2, 3)) / tot)
        out["sal_sink_share"].append(ea[..., 0].sum((0, 2)) / tot)
        out["sal_far_drop"].append((e * far).sum((0, 2, 3)) / rows)
        out["sal_mean_dist"].append((ea * dist).sum((0, 2, 3)) / tot)
        out["key_influence"].append(ea.sum((0, 2)))
        assert torch.allclose(e.sum(-1), torch.zeros(()).double(), atol=1e-12)  # rows sum to 0
    return {k: torch.stack(v) for k, v in out.items()}, float(loss.detach())


@pytest.mark.parametrize("family,n,tile", [("llama", 96, 7), ("llama", 96, 32), ("llama", 200, 256),
                                           ("qwen2", 130, 50), ("gemma3", 64, 9)])
def test_tiled_equals_dense_float64_autograd(family, n, tile):
    m = tiny_model(family, dtype=torch.float64)  # GQA: 4 query heads on 2 KV heads; gemma3: window-8 layers
    ids = torch.randint(2, 64, (2, n), generator=torch.Generator().manual_seed(n))
    far_w = 5
    ref, ref_loss = dense_reference(m, ids, far_w)
    got = AS.saliency_scores(m, ids, far_w=far_w, tile=tile)
    assert float(got["loss"]) == pytest.approx(ref_loss, rel=1e-12)
    for name in (*AS.SCORES, "key_influence"):
        torch.testing.assert_close(got[name], ref[name], rtol=1e-9, atol=1e-12, msg=name)
    assert (ref["sal_total"] > 0).all() and (ref["sal_far_share"] > 0.05).any()  # not a trivial case
    if family == "gemma3":  # sliding layers (window 8) can have no influence beyond it
        assert float(ref["sal_far_share"][0].max()) > 0 and float(ref["sal_mean_dist"][0].max()) < 8


def test_gz_term_matters():
    """Dropping the renormalisation term g·z (E = −A g·v) changes the scores: the comparison above can fail."""
    s = tiny_model("llama").shape
    q, k, v = (torch.randn(s.n_heads if c == "q" else s.n_kv_heads, 40, s.d_head, dtype=torch.float64)
               for c in ("q", "k", "v"))
    z, g = torch.randn(2, s.n_heads, 40, s.d_head, dtype=torch.float64)
    a = AS.head_influence(q, k, v, z, g, scaling=0.3, far_w=5, tile=16)
    b = AS.head_influence(q, k, v, torch.zeros_like(z), g, scaling=0.3, far_w=5, tile=16)
    assert not torch.allclose(a["abs"], b["abs"], rtol=1e-3)


@pytest.mark.parametrize("star,tile", [(0, 8), (37, 16), (37, 100)])
def test_planted_single_key_value(star, tile):
    """Only key j* has a value and L = Σ_i c·z_i: ∂L/∂A_ij = c·v_j is non-zero only at j*, so for each row
    E_ij* = −A_ij*(1 − A_ij*) c·u and Σ_{j≠j*} |E_ij| = A_ij*(1 − A_ij*) |c·u|: exactly half of the |E| mass of the
    rows i ≥ j* sits on j*, and E_ij* summed is the planted closed form."""
    torch.manual_seed(star)
    H, kv, n, d = 4, 2, 80, 8
    q, k = torch.randn(H, n, d, dtype=torch.float64), torch.randn(kv, n, d, dtype=torch.float64)
    v = torch.zeros(kv, n, d, dtype=torch.float64)
    v[:, star] = torch.randn(kv, d, dtype=torch.float64)
    c = torch.randn(d, dtype=torch.float64)
    qr = q.requires_grad_(True)
    kk = k.repeat_interleave(H // kv, 0)
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    a = torch.softmax((qr @ kk.transpose(-1, -2) * 0.5).masked_fill(~mask, float("-inf")), -1)
    z = a @ v.repeat_interleave(H // kv, 0)  # [head, pos, d]
    g = c.expand_as(z).clone()  # ∂(Σ_i c·z_i)/∂z_i
    out = AS.head_influence(q.detach(), k, v, z.detach(), g, scaling=0.5, far_w=10, tile=tile)
    torch.testing.assert_close(out["key"][:, star] / out["abs"], torch.full((H,), 0.5, dtype=torch.float64))
    cu = (v.repeat_interleave(H // kv, 0)[:, star] @ c)  # [head]
    ast = a.detach()[:, :, star]
    torch.testing.assert_close(out["key"][:, star], (ast * (1 - ast)).sum(1) * cu.abs())
    assert float(out["key"][:, :star].sum()) > 0 or star == 0  # the other half: spread over the row's other keys
    if star == 0:
        torch.testing.assert_close(out["sink"], out["abs"] / 2)


def test_run_rows_and_bad_params():
    from interp.params import ParamError

    m = tiny_model("llama")
    res = AS.run(m, {"n_tokens": 48, "tile": 20})
    sc = res["scores"]
    assert set(sc["score"]) == set(AS.SCORES) and len(sc) == len(AS.SCORES) * 2 * 4
    share = sc[sc["score"] == "sal_far_share"]["value"]
    assert ((share >= 0) & (share <= 1)).all()
    with pytest.raises(ParamError, match="n_tokens"):
        AS.run(m, {"n_tokens": 10_000})
    with pytest.raises(ParamError, match="tile"):
        AS.run(m, {"tile": 0})
