"""Weight-space composition, OV copying and QK structure of every head (Elhage et al. 2021).

Paper: Elhage et al., "A Mathematical Framework for Transformer Circuits" (Anthropic, 2021). In the row
convention of ``interp.weights`` (``x W``), head A's OV circuit is ``OV_A = W_V[g(A)] W_O[A]`` and head B's QK
circuit ``QK_B = W_Q[B] W_K[g(B)]ᵀ`` (``[d_model, d_model]``; g = the KV head a query head reads). For A in an
earlier layer than B::

    comp(X, Y) = ‖X Y‖_F / (‖X‖_F ‖Y‖_F)
    Q-composition  comp(OV_A, QK_B)       (A writes what B's queries read)
    K-composition  comp(OV_A, QK_Bᵀ)      (A writes what B's keys read)
    V-composition  comp(OV_A, OV_B)       (A writes what B's values read)

exactly TransformerLens's ``all_composition_scores`` (``transformer_lens.utilities.composition_scores``). Each
score has the random-matrix baseline subtracted: the mean of the same score over ``n_random`` draws of Gaussian
factors of the same shapes (the score is scale-free, so it depends on d_model and d_head only). GQA-native:
nothing is ungrouped; with ``W = Q R`` (reduced QR) ``‖W X‖_F = ‖R X‖_F``, so every norm is of a
``[d_head, d_head]`` matrix, e.g. ``‖OV_A QK_Bᵀ‖_F = ‖R_V[g(A)] (W_O[A] W_K[g(B)]) R_Q[B]ᵀ‖_F`` where the
``d_model`` contraction ``W_O[A] W_K[g]`` is done once per KV head g. Two KV-level scores say how much of A's
output the shared key/value projection of KV head g reads: ``comp(OV_A, W_K[g])``, ``comp(OV_A, W_V[g])``.

OV copying score (paper, "copying"): the eigenvalues λ of the full OV circuit ``W_E OV_A W_U``
(``[d_vocab, d_vocab]``, rank ≤ d_head) are those of the ``[d_head, d_head]`` matrix
``W_O[A] W_U W_E W_V[g(A)]`` (cyclic permutation); ``ov_copying = Σ Re λ / Σ |λ|`` in [-1, 1] (1: the head
raises the logit of the token it attends to). QK token structure: the same ratio for the full QK circuit
``W_E QK_B W_Eᵀ`` at relative offset 0 (RoPE is the identity there): ``qk_token_match`` > 0 means the head's
queries prefer keys of the same token. QK positional structure (RoPE models): ``qk_rope_high_freq`` = the share of
``Σ_p ‖W_Q[:, p] W_K[:, p]ᵀ‖_F`` carried by the rotary planes p whose wavelength 2π/θ_p is below
``short_wavelength`` tokens — the planes that encode relative position sharply (Barbero et al. 2024,
"Round and round we go! What makes Rotary Positional Encodings useful?"); positional heads (previous-token)
concentrate there. RMSNorm weights are folded in (``interp.weights``, ``fold_norm``); 1/rms and biases are not.

Validated in ``tests/unit/test_composition.py``: every pair score against an explicit float64 loop that builds
the ``[d_model, d_model]`` circuits with the KV head repeated by hand, TransformerLens's ``composition_scores``
on the ungrouped factors, the copying score against the eigenvalues of the full vocab × vocab circuit, and a
planted copying head (W_O W_U W_E W_V = identity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from interp.params import Params, param
from interp.scores import ScoreTable
from interp.weights import LayerWeights, all_layer_weights, w_e, w_u

KINDS = ("q", "k", "v")


@dataclass(frozen=True)
class CompositionParams(Params):
    """Parameters of ``composition`` (weight-space head composition, copying and QK structure)."""

    n_random: int = param(64, "Gaussian draws of the random-matrix baseline", ge=1)
    fold_norm: bool = param(True, "fold the RMSNorm weights into the projections (TransformerLens fold_ln)")
    short_wavelength: float = param(64.0, "rotary planes with wavelength below this many tokens count as "
                                    "positional (qk_rope_high_freq)", gt=0)
    seed: int = param(0, "seed of the random baseline", ge=0)


def _r(w: torch.Tensor) -> torch.Tensor:
    """``[..., n, d_head]`` → ``R [..., d_head, d_head]`` with ``‖w X‖_F = ‖R X‖_F`` (reduced QR)."""
    return torch.linalg.qr(w, mode="r").R


@dataclass
class _Factors:
    """Per-layer pieces: R factors (``‖W X‖_F = ‖R X‖_F``) and the small products every pair score reuses."""

    lw: LayerWeights
    rvo: torch.Tensor  # [head, d_head, d_model]  R_V[g(h)] W_O[h]       (‖X OV_h‖ = ‖X' rvo_h‖ for writers)
    q_right: torch.Tensor  # [head, d_model, d_head]  W_Q[h] R_K[g(h)]ᵀ  (‖Y QK_h‖ = ‖Y q_right_h‖)
    gram_q: torch.Tensor  # [head, d_head, d_head]  W_Q[h]ᵀ W_Q[h]
    gram_o: torch.Tensor  # [head, d_head, d_head]  W_O[h] W_O[h]ᵀ
    ov_norm: torch.Tensor  # [head]  ‖OV_h‖_F
    qk_norm: torch.Tensor  # [head]  ‖QK_h‖_F

    @staticmethod
    def of(lw: LayerWeights) -> _Factors:
        kv = lw.kv_of()
        rq, rk, rv = _r(lw.w_q), _r(lw.w_k), _r(lw.w_v)
        rvo = rv[kv] @ lw.w_o  # the [d_head, d_head] R factor of the KV head, not its weights, is gathered
        return _Factors(lw, rvo, lw.w_q @ rk[kv].transpose(1, 2), lw.w_q.transpose(1, 2) @ lw.w_q,
                        lw.w_o @ lw.w_o.transpose(1, 2), rvo.norm(dim=(-2, -1)),
                        (rq @ rk[kv].transpose(1, 2)).norm(dim=(-2, -1)))


def _cross(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``[a, i, d_model] × [b, d_model, j]`` → ``[a, b, i, j]`` as one 2-D GEMM (the only d_model contraction)."""
    a, i, m = left.shape
    b, _, j = right.shape
    return (left.reshape(a * i, m) @ right.permute(1, 0, 2).reshape(m, b * j)).view(a, i, b, j).transpose(1, 2)


def pair_scores(a: _Factors, b: _Factors) -> dict[str, torch.Tensor]:
    """Raw composition of every head of ``a`` (writer) into every head / KV head of ``b`` (reader).

    Returns ``q, k, v``: ``[head_a, head_b]``; ``k_kv, v_kv``: ``[head_a, kv_head_b]`` (float64). K and V are
    contracted over d_model once per KV head: ``Y = R_V W_O[A] W_K[g]`` and ``‖Y R_Q[B]ᵀ‖² = ⟨YᵀY, W_Q[B]ᵀW_Q[B]⟩``.
    ``b`` may stack several layers along the head axis (``_stack``).
    """
    kv_b = b.lw.kv_of()
    ov_a = a.ov_norm[:, None]
    out = {"q": _cross(a.rvo, b.q_right).norm(dim=(-2, -1)) / (ov_a * b.qk_norm[None])}
    for kind, w, gram, norm in (("k", b.lw.w_k, b.gram_q, b.qk_norm), ("v", b.lw.w_v, b.gram_o, b.ov_norm)):
        y = _cross(a.rvo, w)  # [head_a, kv_head_b, d_head, d_head]
        yty = (y.transpose(-2, -1) @ y)[:, kv_b]  # [head_a, head_b, d_head, d_head], g = g(b)
        out[kind] = (yty * gram[None]).sum((-2, -1)).clamp_min(0).sqrt() / (ov_a * norm[None])
        out[f"{kind}_kv"] = y.norm(dim=(-2, -1)) / (ov_a * w.norm(dim=(-2, -1))[None])
    return out


def _stack(fs: list[_Factors]) -> _Factors:
    """Several layers' factors concatenated along the head axis (KV indices stay consistent: same group size)."""
    lw = LayerWeights(-1, *(torch.cat([getattr(f.lw, n) for f in fs]) for n in ("w_q", "w_k", "w_v", "w_o")))
    return _Factors(lw, *(torch.cat([getattr(f, n) for f in fs]) for n in
                          ("rvo", "q_right", "gram_q", "gram_o", "ov_norm", "qk_norm")))


def random_baseline(d_model: int, d_head: int, *, n_random: int = 64, seed: int = 0) -> dict[str, float]:
    """Mean of each composition score between independent Gaussian factors of the model's shapes."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def layer():
        return _Factors.of(LayerWeights(-1, rnd(n_random, d_model, d_head), rnd(n_random, d_model, d_head),
                                        rnd(n_random, d_model, d_head), rnd(n_random, d_head, d_model)))

    a, b = layer(), layer()
    out = {}
    for name, m in pair_scores(a, b).items():  # pairs (i, j), i != j use independent draws
        off = ~torch.eye(n_random, dtype=torch.bool) if m.shape[1] == n_random else torch.ones_like(m, dtype=bool)
        out[name] = float(m[off].mean())
    return out


def composition_pairs(model, *, fold_norm: bool = True, n_random: int = 64, seed: int = 0) -> pd.DataFrame:
    """Every writer→reader pair in different layers: columns src_layer, src_head, dst_layer, dst_head, dst_kv_head,
    ``q, k, v`` (raw), ``q_adj, k_adj, v_adj`` (baseline subtracted) and ``k_kv_adj, v_kv_adj`` (KV-level, per
    (src head, dst KV head): repeated on the query heads of that group)."""
    s = model.shape
    factors = [_Factors.of(lw) for lw in all_layer_weights(model, fold_norm=fold_norm)]
    base = random_baseline(s.d_model, s.d_head, n_random=n_random, seed=seed)
    frames = []
    kv = np.arange(s.n_heads) // s.group_size
    for la in range(s.n_layers - 1):
        later = pair_scores(factors[la], _stack(factors[la + 1:]))  # [head, (layers after la)·head]
        for i, lb in enumerate(range(la + 1, s.n_layers)):
            sc = {k: v[:, i * (s.n_heads if k in KINDS else s.n_kv_heads):][:, :s.n_heads if k in KINDS
                                                                            else s.n_kv_heads]
                  for k, v in later.items()}
            a, b = np.meshgrid(np.arange(s.n_heads), np.arange(s.n_heads), indexing="ij")
            cols = {k: sc[k].numpy().ravel() for k in KINDS}
            cols.update({f"{k}_adj": cols[k] - base[k] for k in KINDS})
            for k in ("k_kv", "v_kv"):
                cols[f"{k}_adj"] = (sc[k][:, kv] - base[k]).numpy().ravel()
            frames.append(pd.DataFrame({"src_layer": la, "src_head": a.ravel(), "dst_layer": lb,
                                        "dst_head": b.ravel(), "dst_kv_head": kv[b.ravel()], **cols}))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df.attrs["baseline"] = base
    return df


def ov_copying(model, *, fold_norm: bool = True) -> torch.Tensor:
    """``[layer, head]``: Σ Re λ / Σ |λ| over the eigenvalues of the full OV circuit ``W_E W_V W_O W_U``."""
    s = model.shape
    ue = w_u(model, fold_norm=fold_norm) @ w_e(model)  # [d_model, d_model] = W_U W_E
    out = torch.zeros(s.n_layers, s.n_heads, dtype=torch.float64)
    for lw in all_layer_weights(model, fold_norm=fold_norm):
        m = lw.w_o @ ue @ lw.w_v[lw.kv_of()]  # [head, d_head, d_head]: W_O W_U W_E W_V
        out[lw.layer] = _eig_ratio(m)
    return out


def qk_token_match(model, *, fold_norm: bool = True) -> torch.Tensor:
    """``[layer, head]``: Σ Re λ / Σ |λ| of the full QK circuit ``W_E W_Q W_Kᵀ W_Eᵀ`` (RoPE offset 0)."""
    s = model.shape
    e = w_e(model)
    ee = e.T @ e  # [d_model, d_model]
    out = torch.zeros(s.n_layers, s.n_heads, dtype=torch.float64)
    for lw in all_layer_weights(model, fold_norm=fold_norm):
        m = lw.w_k[lw.kv_of()].transpose(1, 2) @ ee @ lw.w_q  # [head, d_head, d_head]: W_Kᵀ W_Eᵀ W_E W_Q
        out[lw.layer] = _eig_ratio(m)
    return out


def _eig_ratio(m: torch.Tensor) -> torch.Tensor:
    lam = torch.linalg.eigvals(m)  # [..., d_head] complex
    return lam.real.sum(-1) / lam.abs().sum(-1).clamp_min(1e-300)


def rope_theta(model) -> float | None:
    c = getattr(model.hf.config, "text_config", None) or model.hf.config
    theta = getattr(c, "rope_theta", None)
    rp = getattr(c, "rope_parameters", None)
    if theta is None and isinstance(rp, dict):
        theta = rp.get("rope_theta") or next((v.get("rope_theta") for v in rp.values() if isinstance(v, dict)),
                                             None)
    return None if theta is None or model.shape.positional != "rope" else float(theta)


def qk_rope_high_freq(model, *, short_wavelength: float = 64.0, fold_norm: bool = True) -> torch.Tensor:
    """``[layer, head]``: share of the QK norm in rotary planes with wavelength < ``short_wavelength`` (NaN
    without RoPE). Planes follow HF's rotate_half layout: plane p = dims (p, p + d_head/2), θ_p = base^(-2p/d_head).
    """
    s = model.shape
    base = rope_theta(model)
    if base is None:
        return torch.full((s.n_layers, s.n_heads), float("nan"), dtype=torch.float64)
    half = s.d_head // 2
    p = torch.arange(half, dtype=torch.float64)
    short = (2 * math.pi / base ** (-2 * p / s.d_head)) < short_wavelength  # [half]
    out = torch.zeros(s.n_layers, s.n_heads, dtype=torch.float64)
    for lw in all_layer_weights(model, fold_norm=fold_norm):
        wq, wk = lw.w_q, lw.w_k[lw.kv_of()]
        planes = torch.stack([torch.arange(half), torch.arange(half) + half], -1)  # [half, 2]
        q, k = wq[:, :, planes], wk[:, :, planes]  # [head, d_model, half, 2]
        gq = torch.einsum("hmpi,hmpj->hpij", q, q)
        gk = torch.einsum("hmpi,hmpj->hpij", k, k)
        norm = torch.einsum("hpij,hpji->hp", gq, gk).clamp_min(0).sqrt()  # ‖W_Q,p W_K,pᵀ‖_F [head, half]
        out[lw.layer] = norm[:, short].sum(-1) / norm.sum(-1).clamp_min(1e-300)
    return out


def head_summaries(pairs: pd.DataFrame, n_layers: int, n_heads: int) -> dict[str, np.ndarray]:
    """``[layer, head]`` maxima: ``{kind}_comp_in`` (strongest earlier writer into the head) and
    ``{kind}_comp_out`` (strongest later reader of the head), baseline subtracted; NaN where no partner exists."""
    out = {}
    for kind in KINDS:
        col = f"{kind}_adj"
        for side, (lc, hc) in (("in", ("dst_layer", "dst_head")), ("out", ("src_layer", "src_head"))):
            m = np.full((n_layers, n_heads), np.nan)
            if len(pairs):
                g = pairs.groupby([lc, hc])[col].max()
                m[g.index.get_level_values(0), g.index.get_level_values(1)] = g.to_numpy()
            out[f"{kind}_comp_{side}"] = m
    return out


def top_partners(pairs: pd.DataFrame, dst: tuple[int, int], kind: str = "k", k: int = 5) -> list[tuple]:
    """The ``k`` strongest writers ``(src_layer, src_head, score)`` into head ``dst`` by ``{kind}_adj``."""
    sub = pairs[(pairs["dst_layer"] == dst[0]) & (pairs["dst_head"] == dst[1])].nlargest(k, f"{kind}_adj")
    return [(int(r.src_layer), int(r.src_head), float(getattr(r, f"{kind}_adj"))) for r in sub.itertuples()]


def run(model, params: CompositionParams | dict | None = None, out_dir=None):
    """Report entry: composition maxima per head, copying and QK structure; the full pair table as ``pairs``."""
    p = CompositionParams.coerce(params, where="composition")
    s = model.shape
    pairs = composition_pairs(model, fold_norm=p.fold_norm, n_random=p.n_random, seed=p.seed)
    common = dict(model=model.name, analysis="composition")
    tables = [ScoreTable.from_matrix(m, score=name, n_samples=s.n_heads * (s.n_layers - 1), **common)
              for name, m in head_summaries(pairs, s.n_layers, s.n_heads).items()]
    tables += [
        ScoreTable.from_matrix(ov_copying(model, fold_norm=p.fold_norm), score="ov_copying", n_samples=1, **common),
        ScoreTable.from_matrix(qk_token_match(model, fold_norm=p.fold_norm), score="qk_token_match", n_samples=1,
                               **common),
        ScoreTable.from_matrix(qk_rope_high_freq(model, short_wavelength=p.short_wavelength, fold_norm=p.fold_norm),
                               score="qk_rope_high_freq", n_samples=1, **common)]
    base = pairs.attrs.get("baseline", {})
    tables += [ScoreTable.scalar(v, score=f"baseline_{k}", n_samples=p.n_random, **common) for k, v in base.items()]
    return {"scores": ScoreTable.concat(tables), "pairs": pairs}
