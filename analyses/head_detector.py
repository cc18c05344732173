"""Previous-token, duplicate-token and induction head scores with TransformerLens ``head_detector`` semantics,
computed from O(pos) attention statistics (so they run at the model's full context), plus an ablation check.

Reference: TransformerLens ``transformer_lens/head_detector.py`` (``detect_head`` with ``error_measure="mul"``),
after Olsson et al. 2022 ("In-context learning and induction heads"). For one sequence of T tokens and a head
with pattern A (rows sum to 1), TL zeroes column 0 (``exclude_bos``) and/or the diagonal
(``exclude_current_token``) giving A', and scores ``Σ_ij A'_ij D_ij / Σ_ij A'_ij`` with the detection pattern

    previous:  D_ij = [j = i − 1]
    duplicate: D_ij = [j < i, tok_j = tok_i]
    induction: D_ij = [1 ≤ j ≤ i, tok_{j−1} = tok_i]       (duplicate pattern shifted one key to the right)

Every sum is a sum over rows of engine row statistics (``prev_token``, ``duplicate``, ``induction``,
``mass_first`` with sink_k = 1 (= A_i0), ``mass_self`` (= A_ii)):

    Σ A'            = T − b·Σ_i A_i0 − c·Σ_i A_ii + b·c·A_00                  (b = exclude_bos, c = exclude_current)
    num_previous    = Σ_i prev_token_i − b·A_10
    num_duplicate   = Σ_i duplicate_i − b·Σ_{i ≥ 1, tok_i = tok_0} A_i0
    num_induction   = Σ_i induction_i − c·Σ_{i ≥ 1, tok_{i−1} = tok_i} A_ii

Like TL, a list of sequences gets the mean of the per-sequence scores.

Ablation check (``ablation_check``): zero the z of the top-k induction heads at once (``Site(l, "z", h)`` hooks
returning zeros) vs k random heads (mean over draws); the metric is the next-token loss on the second (repeated)
half of ``r + r`` random-token sequences.

Validation: ``tests/unit/test_taxonomy.py`` recomputes all three scores (all four exclusion settings) with TL's
own ``compute_head_attention_similarity_score`` and detection-pattern functions on the dense eager pattern of a
tiny model; ``tests/parity/test_taxonomy_tl.py`` (slow) compares with ``detect_head(model.tl, ...)`` on the
default model for the same token ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.params import ParamError, Params, check_context, param, sub

from .waad_fai import WaadParams

HEAD_TYPES = ("previous_token_head", "duplicate_token_head", "induction_head")


@dataclass(frozen=True)
class AblationParams(Params):
    """Zero the top-k induction heads vs k random heads (``[params.taxonomy.ablation]``)."""

    enabled: bool = param(True, "run this part of the taxonomy analysis")
    k: int = param(5, "heads zeroed at once", ge=1)
    n_random: int = param(5, "random head sets", ge=1)

    def check_model(self, model, where=""):
        n = model.shape.n_layers * model.shape.n_heads
        if self.k > n:
            raise ParamError(f"{where}.k = {self.k}: {model.name} has only {n} heads")


@dataclass(frozen=True)
class TaxonomyParams(Params):
    """Parameters of the ``taxonomy`` analysis (head types on ``r + r`` random tokens; sub-tables
    ``[params.taxonomy.ablation]`` and ``[params.taxonomy.waad]``)."""

    n_samples: int = param(8, "r + r sequences", ge=1)
    half: int = param(100, "tokens in each half r", ge=1)
    exclude_bos: bool = param(False, "TransformerLens exclude_bos")
    exclude_current_token: bool = param(False, "TransformerLens exclude_current_token")
    seed: int = param(0, "sampling seed", ge=0)
    ablation: AblationParams = sub(AblationParams)
    waad: WaadParams = sub(WaadParams)

    def check_model(self, model, where=""):
        check_context(model, f"{where}.half", 2 * self.half, "tokens (2 × half)", value=self.half,
                      hint=f"choose half <= {model.shape.n_ctx // 2}")
        super().check_model(model, where)


def head_scores(model, ids: torch.Tensor, *, exclude_bos: bool = False, exclude_current_token: bool = False,
                per_sequence: bool = False, stats=None) -> dict[str, torch.Tensor]:
    """TL ``"mul"`` scores of ``ids [batch, pos]`` (unpadded): ``{head_type: [layer, head]}`` (mean over the
    batch) or ``[layer, batch, head]`` with ``per_sequence=True``. ``stats``: a precomputed ``AttentionStats``
    of ``ids`` holding the needed statistics (``mass_first`` with sink_k = 1 only if ``exclude_bos``)."""
    import interp

    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[1] < 2:
        raise ValueError(f"ids must be a [batch, pos] tensor with pos >= 2, got "
                         f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}")
    need = ["prev_token", "duplicate", "induction"] + ["mass_first"] * bool(exclude_bos) + \
        ["mass_self"] * bool(exclude_current_token)
    st = stats if stats is not None else interp.attention_stats(model, ids, stats=need, sink_k=1)
    if exclude_bos and st.params.get("sink_k", 4) != 1:
        raise ValueError("exclude_bos needs mass_first computed with sink_k=1")
    zero = torch.zeros_like(st["prev_token"], dtype=torch.float64)
    f = {k: (st[k].double() if k in need else zero) for k in
         ("prev_token", "duplicate", "induction", "mass_first", "mass_self")}
    T = ids.shape[1]
    b, c = float(bool(exclude_bos)), float(bool(exclude_current_token))
    tok = ids.cpu()
    same_as_first = (tok == tok[:, :1]).double()  # [batch, pos]
    same_as_first[:, 0] = 0
    same_as_prev = torch.zeros_like(same_as_first)
    same_as_prev[:, 1:] = (tok[:, 1:] == tok[:, :-1]).double()
    den = T - b * f["mass_first"].sum(-1) - c * f["mass_self"].sum(-1) + b * c  # A_00 = 1
    num = {
        "previous_token_head": f["prev_token"].sum(-1) - b * f["prev_token"][..., 1],
        "duplicate_token_head": f["duplicate"].sum(-1) - b * (f["mass_first"] * same_as_first[None, :, None]).sum(-1),
        "induction_head": f["induction"].sum(-1) - c * (f["mass_self"] * same_as_prev[None, :, None]).sum(-1),
    }
    out = {k: v / den for k, v in num.items()}  # [layer, batch, head]
    return out if per_sequence else {k: v.mean(1) for k, v in out.items()}


def taxonomy_scores(model, ids: torch.Tensor, **kw):
    """Tidy score table of the three head types (scores ``previous_token``, ``duplicate_token``, ``induction``)."""
    from interp.scores import ScoreTable

    s = head_scores(model, ids, **kw)
    common = dict(model=model.name, analysis="taxonomy", n_samples=ids.shape[0])
    return ScoreTable.concat([ScoreTable.from_matrix(v, score=k.replace("_head", ""), **common)
                              for k, v in s.items()])


def induction_probe(model, n_samples: int = 8, half: int = 100, seed: int = 0) -> torch.Tensor:
    """``r + r`` sequences of ``half`` random regular tokens each → ``[batch, 2 * half]``."""
    from interp.analyses._text import _first_regular_id, repeated_random_halves

    return repeated_random_halves(model.shape.d_vocab, n_samples, half, seed=seed, min_id=_first_regular_id(model))


def loss_with_zeroed_heads(model, ids: torch.Tensor, heads, from_pos: int = 0) -> float:
    """Mean next-token loss (targets after ``from_pos``) with the z of every ``(layer, head)`` zeroed."""
    from interp.interventions import Zero
    from interp.metrics import mean_next_token_loss
    from interp.sites import Site

    with torch.no_grad(), model.intervene(*[Zero(Site(layer, "z", h)) for layer, h in heads]):
        logits = model.forward(ids).logits
    return float(mean_next_token_loss(logits, ids, from_pos=from_pos))


def ablation_check(model, scores: torch.Tensor, ids: torch.Tensor, *, k: int = 5, n_random: int = 5,
                   seed: int = 0) -> dict:
    """Loss rise on the repeated half of ``ids [batch, 2 * half]`` when zeroing the top-``k`` heads of
    ``scores [layer, head]`` vs ``k`` random heads (mean over ``n_random`` draws): ``interp.heads.causal_check``
    as a dict (``CausalCheck.to_dict``)."""
    from interp.heads import causal_check
    from interp.interventions import Zero
    from interp.metrics import mean_next_token_loss
    from interp.sites import Site

    half = ids.shape[1] // 2
    return causal_check(model, ids, scores, lambda layer, h: Zero(Site(layer, "z", h)),
                        lambda o: mean_next_token_loss(o.logits, o.ids, from_pos=half),
                        k=k, n_random=n_random, seed=seed).to_dict()


def run(model, params: TaxonomyParams | dict | None = None, out_dir=None) -> dict:
    """Registry entry "taxonomy": head-type scores on ``r + r`` random tokens, WAAD/FAI on prose, the ablation check."""
    import pandas as pd

    from interp.scores import ScoreTable

    p = TaxonomyParams.coerce(params, where="taxonomy")
    ids = induction_probe(model, p.n_samples, p.half, seed=p.seed + 1)
    raw = head_scores(model, ids, exclude_bos=p.exclude_bos, exclude_current_token=p.exclude_current_token)
    common = dict(model=model.name, analysis="taxonomy", n_samples=ids.shape[0])
    tables = [ScoreTable.from_matrix(v, score=k.replace("_head", ""), **common) for k, v in raw.items()]
    out = {}
    if p.ablation.enabled:
        eval_ids = induction_probe(model, p.n_samples, p.half, seed=p.seed + 2)
        res = ablation_check(model, raw["induction_head"], eval_ids, k=p.ablation.k, n_random=p.ablation.n_random,
                             seed=p.seed)
        for key in ("base_loss", "dloss_top", "dloss_random", "ratio"):
            tables.append(ScoreTable.scalar(res[key], score=f"induction_ablation_{key}", **common))
        draws = " ".join(f"{d:.4f}" for d in res["dloss_random_draws"])
        out["ablation"] = pd.DataFrame([{**res, "top_heads": " ".join(res["top_heads"]), "dloss_random_draws": draws}])
    if p.waad.enabled:
        from interp.analyses._text import domain_samples
        from interp.analyses.waad_fai import waad_fai_scores

        w = p.waad
        s, tok = waad_fai_scores(model, domain_samples(model, "prose", w.n_samples, w.n_tokens, seed=p.seed),
                                 window=w.window)
        tables.append(s)
        out["per_token"] = tok
    return {"scores": ScoreTable.concat(tables), **out}
