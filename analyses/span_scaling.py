"""Length scaling of each head's attention span: the elastic fit S_h(N) = α_h + β_h N (MoA; LongHeads).

Papers: Fu et al., "MoA: Mixture of Sparse Attention for Automatic Large Language Model Compression" (2024):
heads differ in how their attention span grows with the input length and MoA gives each head an elastic span
``S_h(N) = α_h + β_h N``; Lu et al., "LongHeads" (2024): some heads stay local, others widen with context.

Span of head h at context length N, from the statistics engine (no [query_pos, key_pos] pattern), averaged over
the last ``tail`` query rows of an N-token prose prefix (rows N − tail ≤ i < N) and over samples::

    span_h(N)         = mean_i Σ_j A_ij (i − j)                         (engine ``attn_distance``)
    span_nonsink_h(N) = mean_i (Σ_j A_ij (i − j) − A_i0 · i) / (1 − A_i0)   (the first token removed, renormalised;
                        A_i0 = ``mass_first`` with sink_k = 1, exact: key 0 sits at distance i; rows with
                        1 − A_i0 < ``min_rest`` are skipped, NaN if all are)
    recent_h(N)       = mean_i Σ_{i − j < w} A_ij                      (engine ``mass_recent``, recent_w = w)

Causality makes one forward enough: query row i of an N-token prefix attends exactly as row i of the longest
sequence (same tokens ≤ i, same absolute positions), so every length is read off one run at max(lengths).
The fit is ordinary least squares of S on N per head (``elastic_fit``): ``span_alpha``, ``span_beta`` (tokens of
span per token of context), ``span_r2``; ``span_growth`` = S(N_max) / S(N_min). The raw span is dominated by
attention on the first token (a sink at distance i grows with N by construction), so the fit is made on the
``span_nonsink`` series (``fit_on`` parameter).

Validated in ``tests/unit/test_span_scaling.py``: the per-length spans from one long run against separate
prefix runs and against a float64 dense pattern, and the fit on planted α, β.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from interp.params import ParamError, Params, check_context, param
from interp.scores import ScoreTable


@dataclass(frozen=True)
class SpanScalingParams(Params):
    """Parameters of ``span_scaling`` (attention span vs context length)."""

    lengths: tuple[int, ...] = param((512, 1024, 2048, 4096, 8192), "context lengths N (one forward at the "
                                     "largest; shorter ones are its prefixes)", ge=2)
    n_samples: int = param(1, "prose windows", ge=1)
    tail: int = param(64, "query rows at the end of each length that are averaged", ge=1)
    recent_w: int = param(64, "recent window w of recent_mass", ge=1)
    min_rest: float = param(0.01, "span_nonsink skips rows with less mass than this off the first token", ge=0,
                            lt=1)
    fit_on: str = param("span_nonsink", "series the elastic fit uses", choices=("span", "span_nonsink"))
    seed: int = param(0, "sample seed", ge=0)

    def check(self, where):
        if len(self.lengths) < 2 or len(set(self.lengths)) != len(self.lengths):
            raise ParamError(f"{where}.lengths = {list(self.lengths)}: give at least two distinct lengths")
        if self.tail > min(self.lengths):
            raise ParamError(f"{where}.tail = {self.tail}: must be <= the shortest length {min(self.lengths)}")

    def check_model(self, model, where=""):
        check_context(model, f"{where or 'span_scaling'}.lengths", max(self.lengths))


def spans_by_length(model, ids: torch.Tensor, lengths, *, tail: int = 64, recent_w: int = 64, min_rest: float = 0.01,
                    stats=None) -> dict[str, torch.Tensor]:
    """``span, span_nonsink, recent_mass``: each ``[len(lengths), layer, head]`` float64 (mean over the last
    ``tail`` rows of each prefix length and over the batch). ids: ``[batch, pos]`` with pos >= max(lengths).
    ``span_nonsink`` skips rows whose mass off the first token ``1 − A_i0`` is below ``min_rest`` (NaN when all
    are skipped: the head is a pure sink there and has no non-sink span)."""
    import interp

    lengths = [int(n) for n in lengths]
    if ids.ndim != 2 or ids.shape[1] < max(lengths):
        raise ValueError(f"ids must be [batch, pos] with pos >= max(lengths) = {max(lengths)}, got "
                         f"{tuple(ids.shape)}")
    if tail > min(lengths):
        raise ValueError(f"tail = {tail} is longer than the shortest length {min(lengths)}")
    st = stats if stats is not None else interp.attention_stats(
        model, ids[:, :max(lengths)], stats=["attn_distance", "mass_first", "mass_recent"], sink_k=1,
        recent_w=recent_w)
    dist, first, recent = (st[n].double() for n in ("attn_distance", "mass_first", "mass_recent"))
    pos = torch.arange(dist.shape[-1], dtype=torch.float64)
    rest = 1 - first
    nonsink = (dist - first * pos) / rest.clamp_min(1e-12)  # [layer, batch, head, query_pos]
    nonsink = nonsink.masked_fill(rest < min_rest, float("nan"))  # ill-defined when the first token takes it all
    out = {"span": [], "span_nonsink": [], "recent_mass": []}
    for n in lengths:
        rows = slice(n - tail, n)
        for name, x in (("span", dist), ("span_nonsink", nonsink), ("recent_mass", recent)):
            out[name].append(x[..., rows].nanmean((1, 3)) if name == "span_nonsink" else x[..., rows].mean((1, 3)))
    return {k: torch.stack(v) for k, v in out.items()}


def elastic_fit(lengths, spans) -> dict[str, np.ndarray]:
    """Least-squares ``S = α + β N`` per head. lengths ``[n]``, spans ``[n, ...]`` → alpha, beta, r2 ``[...]``
    (NaN for a head with a NaN span at any length)."""
    n = np.asarray(lengths, dtype=float)
    s = np.asarray(spans, dtype=float).reshape(len(n), -1)
    bad = np.isnan(s).any(0)
    s = np.where(bad[None], 0.0, s)
    x = np.stack([np.ones_like(n), n], 1)  # [n, 2]
    coef, *_ = np.linalg.lstsq(x, s, rcond=None)  # [2, heads]
    resid = ((s - x @ coef) ** 2).sum(0)
    tot = ((s - s.mean(0)) ** 2).sum(0)
    r2 = np.where(tot > 0, 1 - resid / np.where(tot > 0, tot, 1), 1.0)
    shape = np.asarray(spans).shape[1:]
    coef[:, bad], r2[bad] = np.nan, np.nan
    return {"alpha": coef[0].reshape(shape), "beta": coef[1].reshape(shape), "r2": r2.reshape(shape)}


def run(model, params: SpanScalingParams | dict | None = None, out_dir=None):
    """Report entry: span per length (``per_length``) and the elastic fit per head (scores)."""
    from interp.analyses._text import domain_samples

    p = SpanScalingParams.coerce(params, where="span_scaling")
    p.check_model(model, "span_scaling")
    lengths = sorted(p.lengths)
    ids = domain_samples(model, "prose", p.n_samples, max(lengths), seed=p.seed)
    sp = spans_by_length(model, ids, lengths, tail=p.tail, recent_w=p.recent_w, min_rest=p.min_rest)
    fit = elastic_fit(lengths, sp[p.fit_on].numpy())
    common = dict(model=model.name, analysis="span_scaling", n_samples=p.n_samples * p.tail)
    series = sp[p.fit_on].numpy()
    growth = series[-1] / np.where(series[0] > 0, series[0], np.nan)
    tables = [ScoreTable.from_matrix(fit[k], score=f"span_{k}", **common) for k in ("alpha", "beta", "r2")]
    tables.append(ScoreTable.from_matrix(growth, score="span_growth", **common))
    for i, n in enumerate(lengths):
        for name in ("span", "span_nonsink", "recent_mass"):
            tables.append(ScoreTable.from_matrix(sp[name][i], score=f"{name}_n{n}", **common))
    L, H = series.shape[1:]
    per_length = pd.DataFrame([
        {"length": n, "layer": layer, "head": h, **{k: float(sp[k][i, layer, h]) for k in sp}}
        for i, n in enumerate(lengths) for layer in range(L) for h in range(H)])
    return {"scores": ScoreTable.concat(tables), "per_length": per_length}
