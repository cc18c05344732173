"""Attention-sink heads: the Sink_k^ε metric of Gu et al., "When Attention Sink Emerges in Language Models"
(ICLR 2025), on natural text, random tokens and repeated tokens, plus a causal check.

Formula. For a sample of ``T`` tokens, layer ``l``, head ``h`` and key position ``k`` (1-indexed, k = 1 is the
first token), the average attention the key receives from the queries that can see it is

    α^{l,h}_k = 1 / (T − k + 1) · Σ_{i ≥ k} A^{l,h}_{i,k}

(the engine's ``col_alpha`` at 0-indexed key ``k − 1``). A head is a sink head on a sample when α > ε and

    Sink_k^ε = 100 % · #{(sample, l, h): α^{l,h}_k > ε} / (#samples · #layers · #heads).

Defaults follow the paper: ε = 0.3, k = 1, T = 64 tokens, 100 samples per condition. Conditions (our choice,
documented because the paper's exact sampling is not reproduced offline): ``prose`` = random 64-token windows of
the public-domain haystack novels; ``random`` = token ids uniform over the regular vocabulary; ``repeated`` = one
random token repeated 64 times. No BOS is prepended (the default model's tokenizer adds none), so the first token
of each sample is whatever token comes first.

Causal check (``sink_removal_check``): for a set of heads, the attention to the first token is removed and each
row renormalised (``A'_{i,j} = A_{i,j} / (1 − A_{i,0})`` for j ≥ 1, i ≥ 1; row 0 unchanged) through a pattern
hook on short inputs; the rise in next-token loss for the top-k sink heads is compared with k random heads.

Validation: ``tests/unit/test_sinks.py`` recomputes α and Sink_k^ε in float64 from the dense eager pattern
(``run_with_cache(..., Site(l, "pattern"))``) of a tiny model and checks the renormalisation hook against a
hand-computed pattern; the slow test runs the three conditions on the default model.
"""

from __future__ import annotations

import torch

DEFAULT_PARAMS = {"n_samples": 100, "n_tokens": 64, "k": 1, "eps": 0.3, "seed": 0, "batch_size": 25,
                  "conditions": ["prose", "random", "repeated"], "streaming": True, "hidden": True,
                  "secondary": True, "extreme": True}


def _check_ids(model, ids):
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
        raise TypeError(f"ids must be a [batch, pos] integer tensor, got "
                        f"{type(ids).__name__}{'' if not hasattr(ids, 'shape') else tuple(ids.shape)}")
    model.check_tokens(ids)


def sink_alpha(model, ids: torch.Tensor, *, k: int = 1, batch_size: int = 25) -> torch.Tensor:
    """α^{l,h}_k per sample: ``[layer, batch, head]`` float64, from ``ids [batch, pos]`` (O(pos) memory)."""
    import interp

    _check_ids(model, ids)
    if not isinstance(k, int) or not 1 <= k <= ids.shape[1]:
        raise ValueError(f"k must be an int in [1, pos={ids.shape[1]}] (1 = first token), got {k!r}")
    out = []
    for b0 in range(0, ids.shape[0], batch_size):
        st = interp.attention_stats(model, ids[b0:b0 + batch_size], stats=["col_alpha"])
        out.append(st["col_alpha"][..., k - 1].double())
    return torch.cat(out, 1)


def sink_rate(alpha: torch.Tensor, eps: float = 0.3) -> float:
    """Sink_k^ε in percent from ``alpha [layer, batch, head]``."""
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps!r}")
    return 100.0 * float((alpha > eps).double().mean())


def condition_samples(model, condition: str, n_samples: int, n_tokens: int, seed: int = 0) -> torch.Tensor:
    """Token ids ``[batch, pos]`` of one Gu et al. condition: ``"prose" | "random" | "repeated"`` (or ``"code"``)."""
    from interp.analyses._text import domain_samples

    return domain_samples(model, condition, n_samples, n_tokens, seed=seed)


def sink_scores(model, *, conditions=("prose", "random", "repeated"), n_samples: int = 100, n_tokens: int = 64,
                k: int = 1, eps: float = 0.3, seed: int = 0, batch_size: int = 25):
    """Tidy score table: per condition ``sink_rate_<cond>`` (model level, %), per head ``sink_alpha_<cond>``
    (mean α over samples) and ``sink_frac_<cond>`` (fraction of samples with α > ε)."""
    from interp.scores import ScoreTable

    tables = []
    common = dict(model=model.name, analysis="sinks", n_samples=n_samples)
    for cond in conditions:
        ids = condition_samples(model, cond, n_samples, n_tokens, seed)
        a = sink_alpha(model, ids, k=k, batch_size=batch_size)  # [layer, batch, head]
        tables += [
            ScoreTable.scalar(sink_rate(a, eps), score=f"sink_rate_{cond}", **common),
            ScoreTable.from_matrix(a.mean(1), score=f"sink_alpha_{cond}", **common),
            ScoreTable.from_matrix((a > eps).double().mean(1), score=f"sink_frac_{cond}", **common),
        ]
    return ScoreTable.concat(tables)


# --- causal check --------------------------------------------------------------------------------------------
def _drop_first_key(pattern: torch.Tensor) -> torch.Tensor:
    """Pattern ``[batch, query_pos, key_pos]`` with key 0 removed and rows ≥ 1 renormalised."""
    p = pattern.clone()
    p[:, 1:, 0] = 0
    p[:, 1:] = p[:, 1:] / p[:, 1:].sum(-1, keepdim=True).clamp_min(1e-30)
    return p


def loss_without_first_token(model, ids: torch.Tensor, heads) -> float:
    """Mean next-token loss with attention to the first token removed (renormalised) in every head of ``heads``
    (list of ``(layer, head)``); ``ids [batch, pos]`` should be short (the pattern is materialised)."""
    from interp.metrics import mean_next_token_loss
    from interp.sites import Site

    _check_ids(model, ids)
    hooks = {Site(layer, "pattern", h): (lambda x, s: _drop_first_key(x)) for layer, h in heads}
    with torch.no_grad(), model.hooks(hooks):
        logits = model.forward(ids).logits
    return float(mean_next_token_loss(logits, ids))


def sink_removal_check(model, alpha_head: torch.Tensor, ids: torch.Tensor, *, k: int = 5, n_random: int = 5,
                       seed: int = 0) -> dict:
    """Δloss of removing first-token attention in the top-``k`` heads by ``alpha_head [layer, head]`` vs ``k``
    random heads (mean over ``n_random`` draws)."""
    import random

    base = loss_without_first_token(model, ids, [])
    n_layers, n_heads = alpha_head.shape
    order = torch.argsort(alpha_head.flatten(), descending=True).tolist()
    top = [(i // n_heads, i % n_heads) for i in order[:k]]
    rng = random.Random(seed)
    rand = []
    for _ in range(n_random):
        pick = rng.sample(range(n_layers * n_heads), k)
        rand.append(loss_without_first_token(model, ids, [(i // n_heads, i % n_heads) for i in pick]) - base)
    d_top = loss_without_first_token(model, ids, top) - base
    d_rand = sum(rand) / len(rand)
    return {"base_loss": base, "top_heads": [f"L{a}H{b}" for a, b in top], "dloss_top": d_top,
            "dloss_random": d_rand, "dloss_random_draws": rand,
            "ratio": d_top / d_rand if d_rand > 0 else float("inf")}


def data_files(params) -> list[str]:
    """Data read by the sink and taxonomy analyses: the three haystack texts (the code domain reads the
    installed standard library, random/repeated tokens are generated from ``seed``)."""
    from interp.analyses._text import haystack_paths

    return [str(p) for p in haystack_paths()]


def run(model, params: dict, out_dir=None) -> dict:
    """Registry entry "sinks": Sink_1^ε on the three conditions, plus the StreamingLLM view, hidden and
    secondary sinks and the extreme-token statistics (each switchable in ``params``)."""
    import pandas as pd

    from interp.scores import ScoreTable

    p = {**DEFAULT_PARAMS, **(params or {})}
    tables = [sink_scores(model, conditions=tuple(p["conditions"]), n_samples=int(p["n_samples"]),
                          n_tokens=int(p["n_tokens"]), k=int(p["k"]), eps=float(p["eps"]), seed=int(p["seed"]),
                          batch_size=int(p["batch_size"]))]
    extra: dict[str, pd.DataFrame] = {}
    per_token = []
    if p.get("streaming"):
        from interp.analyses.streaming import streaming_scores

        s, tok = streaming_scores(model, n_samples=4, n_tokens=256, seed=int(p["seed"]))
        tables.append(s)
        per_token.append(tok)
    if p.get("hidden"):
        from interp.analyses.hidden_sinks import hidden_sinks

        s, tok = hidden_sinks(model, n_samples=8, n_tokens=256, seed=int(p["seed"]))
        tables.append(s)
        extra["hidden_sinks"] = tok
    if p.get("secondary"):
        from interp.analyses.secondary_sinks import secondary_sinks

        s, tok = secondary_sinks(model, n_samples=4, n_tokens=256, seed=int(p["seed"]))
        tables.append(s)
        extra["secondary_sinks"] = tok
    if p.get("extreme"):
        from interp.analyses.extreme_tokens import extreme_token_scores

        s, tok = extreme_token_scores(model, n_samples=2, n_tokens=256, seed=int(p["seed"]))
        tables.append(s)
        per_token.append(tok)
    out = {"scores": ScoreTable.concat(tables), **extra}
    if per_token:
        out["per_token"] = pd.concat(per_token, ignore_index=True)
    return out
