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

from dataclasses import dataclass

import torch

from interp.params import ParamError, Params, check_context, param, sub

from .extreme_tokens import ActiveDormantParams, ExtremeTokensParams
from .hidden_sinks import HiddenSinksParams
from .secondary_sinks import SecondarySinksParams
from .streaming import StreamingParams


@dataclass(frozen=True)
class SinkRemovalParams(Params):
    """Causal check: remove first-token attention in the top-k sink heads vs k random heads
    (``[params.sinks.removal]``; off by default)."""

    enabled: bool = param(False, "run this part of the sinks analysis")
    k: int = param(5, "heads removed at once", ge=1)
    n_random: int = param(5, "random head sets", ge=1)
    n_samples: int = param(4, "prose samples (the pattern is materialised: keep them short)", ge=1)
    n_tokens: int = param(64, "tokens per sample", ge=2)

    def check_model(self, model, where=""):
        check_context(model, f"{where}.n_tokens", self.n_tokens)
        n = model.shape.n_layers * model.shape.n_heads
        if self.k > n:
            raise ParamError(f"{where}.k = {self.k}: {model.name} has only {n} heads")


@dataclass(frozen=True)
class SinksParams(Params):
    """Parameters of the ``sinks`` analysis; each sub-analysis is a table ``[params.sinks.<name>]`` (or
    ``<name> = false`` to switch it off)."""

    n_samples: int = param(100, "samples per condition", ge=1)
    n_tokens: int = param(64, "tokens per sample T", ge=2)
    k: int = param(1, "key position of Sink_k (1 = the first token)", ge=1)
    eps: float = param(0.3, "threshold ε of Sink_k^ε", gt=0, lt=1)
    seed: int = param(0, "sampling seed (every sub-analysis uses it)", ge=0)
    batch_size: int = param(25, "samples per forward", ge=1)
    conditions: tuple[str, ...] = param(("prose", "random", "repeated"), "sample conditions (non-empty)",
                                        choices=("prose", "random", "repeated", "code"))
    streaming: StreamingParams = sub(StreamingParams)
    hidden: HiddenSinksParams = sub(HiddenSinksParams)
    secondary: SecondarySinksParams = sub(SecondarySinksParams)
    extreme: ExtremeTokensParams = sub(ExtremeTokensParams)
    dormant: ActiveDormantParams = sub(ActiveDormantParams)
    removal: SinkRemovalParams = sub(SinkRemovalParams)

    def check(self, where):
        if not self.conditions:
            raise ParamError(f"{where}.conditions = []: give at least one of prose, random, repeated, code")
        if self.k > self.n_tokens:
            raise ParamError(f"{where}.k = {self.k}: must be <= n_tokens = {self.n_tokens}")

    def check_model(self, model, where=""):
        check_context(model, f"{where}.n_tokens", self.n_tokens)
        super().check_model(model, where)


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
    for cond in conditions:
        ids = condition_samples(model, cond, n_samples, n_tokens, seed)
        a = sink_alpha(model, ids, k=k, batch_size=batch_size)  # [layer, batch, head]
        tables += condition_tables(a, cond, eps, model.name, n_samples)
    return ScoreTable.concat(tables)


def condition_tables(a: torch.Tensor, cond: str, eps: float, model_name: str, n_samples: int) -> list:
    """The three score tables of one condition from its ``alpha [layer, batch, head]`` (all its samples)."""
    from interp.scores import ScoreTable

    common = dict(model=model_name, analysis="sinks", n_samples=n_samples)
    return [
        ScoreTable.scalar(sink_rate(a, eps), score=f"sink_rate_{cond}", **common),
        ScoreTable.from_matrix(a.mean(1), score=f"sink_alpha_{cond}", **common),
        ScoreTable.from_matrix((a > eps).double().mean(1), score=f"sink_frac_{cond}", **common),
    ]


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
    random heads (mean over ``n_random`` draws): ``interp.heads.causal_check`` with ``Knockout`` of the
    (query ≥ 1, key 0) routes, as a dict (``CausalCheck.to_dict``)."""
    from interp.heads import causal_check
    from interp.interventions import Knockout
    from interp.metrics import mean_next_token_loss

    _check_ids(model, ids)
    n = ids.shape[1]
    routes = torch.zeros(n, n, dtype=torch.bool)
    routes[1:, 0] = True
    return causal_check(model, ids, alpha_head, lambda layer, h: Knockout(layer, h, routes),
                        lambda o: mean_next_token_loss(o.logits, o.ids), k=k, n_random=n_random, seed=seed).to_dict()


def data_files(params) -> list[str]:
    """Data read by the sink and taxonomy analyses: the three haystack texts (the code domain reads the
    installed standard library, random/repeated tokens are generated from ``seed``)."""
    from interp.analyses._text import haystack_paths

    return [str(p) for p in haystack_paths()]


def _removal(model, p: SinksParams, alpha_head: torch.Tensor):
    """The causal check as (score rows, one-row table)."""
    import pandas as pd

    from interp.scores import ScoreTable

    r = p.removal
    ids = condition_samples(model, "prose", r.n_samples, r.n_tokens, p.seed + 1)
    res = sink_removal_check(model, alpha_head, ids, k=r.k, n_random=r.n_random, seed=p.seed)
    common = dict(model=model.name, analysis="sinks", n_samples=r.n_samples)
    rows = [ScoreTable.scalar(res[key], score=f"sink_removal_{key}", **common)
            for key in ("base_loss", "dloss_top", "dloss_random", "ratio")]
    table = pd.DataFrame([{**res, "top_heads": " ".join(res["top_heads"]),
                           "dloss_random_draws": " ".join(f"{d:.4f}" for d in res["dloss_random_draws"])}])
    return rows, table


# (SinksParams field, sub-analysis name, kind) in run order; kind: "per_token" or an extra table
SUB_ANALYSES = (("streaming", "streaming", "per_token"), ("hidden", "hidden_sinks", "table"),
                ("secondary", "secondary_sinks", "table"), ("extreme", "extreme", "per_token"),
                ("dormant", "active_dormant", "table"))


def sub_analysis(model, p: SinksParams, name: str):
    """One sub-analysis (a name of ``SUB_ANALYSES``) as ``(scores, table)``."""
    from interp.analyses.extreme_tokens import active_dormant, extreme_token_scores
    from interp.analyses.hidden_sinks import hidden_sinks
    from interp.analyses.secondary_sinks import secondary_sinks
    from interp.analyses.streaming import streaming_scores

    st, hi, se, ex, do = p.streaming, p.hidden, p.secondary, p.extreme, p.dormant
    calls = {
        "streaming": lambda: streaming_scores(
            model, sink=st.sink, window=st.window, tau=st.tau, n_samples=st.n_samples, n_tokens=st.n_tokens,
            seed=p.seed),
        "hidden_sinks": lambda: hidden_sinks(
            model, threshold=hi.threshold, min_rows=hi.min_rows, n_samples=hi.n_samples, n_tokens=hi.n_tokens,
            seed=p.seed),
        "secondary_sinks": lambda: secondary_sinks(
            model, threshold=se.threshold, start_layer=se.start_layer, min_rows=se.min_rows,
            n_samples=se.n_samples, n_tokens=se.n_tokens, seed=p.seed),
        "extreme": lambda: extreme_token_scores(model, n_samples=ex.n_samples, n_tokens=ex.n_tokens, seed=p.seed),
        "active_dormant": lambda: active_dormant(
            model, do.domains, n_samples=do.n_samples, n_tokens=do.n_tokens, tol=do.tol, seed=p.seed),
    }
    return calls[name]()


def enabled_sub_analyses(p: SinksParams) -> list[tuple[str, str]]:
    """``(name, kind)`` of each enabled sub-analysis, in run order."""
    return [(name, kind) for field_, name, kind in SUB_ANALYSES if getattr(p, field_).enabled]


def _sub_analyses(model, p: SinksParams):
    """Each enabled sub-analysis as ``(name, scores, table, kind)``; kind: "per_token" or an extra table."""
    for name, kind in enabled_sub_analyses(p):
        scores, table = sub_analysis(model, p, name)
        yield name, scores, table, kind


def removal_condition(p: SinksParams) -> str:
    """The condition whose α ranks the heads of the removal check."""
    return "prose" if "prose" in p.conditions else p.conditions[0]


def run(model, params: SinksParams | dict | None = None, out_dir=None) -> dict:
    """Registry entry "sinks": Sink_k^ε on each condition, plus the StreamingLLM view, hidden and secondary
    sinks, the extreme-token statistics, active/dormant heads and the removal check (each a ``SinksParams``
    sub-table that sets its sizes or switches it off)."""
    import pandas as pd

    from interp.scores import ScoreTable

    p = SinksParams.coerce(params, where="sinks")
    tables = [sink_scores(model, conditions=p.conditions, n_samples=p.n_samples, n_tokens=p.n_tokens, k=p.k,
                          eps=p.eps, seed=p.seed, batch_size=p.batch_size)]
    extra: dict[str, pd.DataFrame] = {}
    per_token = []
    for name, scores, table, kind in _sub_analyses(model, p):
        tables.append(scores)
        if kind == "per_token":
            per_token.append(table)
        else:
            extra[name] = table
    if p.removal.enabled:
        s = model.shape
        alpha = ScoreTable.matrix(tables[0], f"sink_alpha_{removal_condition(p)}", s.n_layers, s.n_heads)
        rows, extra["removal"] = _removal(model, p, torch.from_numpy(alpha))
        tables += rows
    out = {"scores": ScoreTable.concat(tables), **extra}
    if per_token:
        out["per_token"] = pd.concat(per_token, ignore_index=True)
    return out
