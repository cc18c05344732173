"""Hidden (non-initial) attention sinks: keys other than the first that a head attends to heavily.

Paper: Yu et al., "Unveiling and Harnessing Hidden Attention Sinks: Training-Free Attention Calibration for
Enhancing Large Language Models" (ACT, ICML 2024). They call a token a sink in a head when its average received
attention exceeds a threshold (α > 0.1 here, the brief's value), and observe that beyond the first token such
sinks sit on punctuation, newlines and delimiters.

Formula, per sample, head (l, h) and key j ≥ 1 (0-indexed; the first token j = 0 is excluded):

    α^{l,h}_j = 1 / (T − j) · Σ_{i ≥ j} A^{l,h}_{ij}        (engine ``col_alpha``)
    hidden sink  ⇔  α^{l,h}_j > threshold  and  T − j ≥ min_rows

``min_rows`` (default 16) drops the last keys, whose α averages over too few queries to mean anything (the
last key's α is a single attention weight). Token classes (``classify_token``, on the decoded token text):
``newline`` (contains "\\n"); ``punctuation`` (only sentence marks . ! ? …); ``delimiter`` (special tokens,
whitespace-only tokens, or only clause/structure marks , ; : brackets quotes dashes | / etc.); ``other``.

Outputs: one row per hidden sink (sample, layer, head, position, token, class, alpha) and score rows:
per layer ``hidden_sinks_<class>`` (mean count per sample, head = -1), per head ``hidden_sinks`` (mean count
per sample), model level ``hidden_sink_share_<class>`` (share of all hidden sinks).

Validation: ``tests/unit/test_sinks_views.py`` recomputes the sink set in float64 from the dense eager
pattern of a tiny model and checks ``classify_token`` on hand-written tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.params import ParamError, Params, check_context, param


@dataclass(frozen=True)
class HiddenSinksParams(Params):
    """Hidden (non-initial) sinks (``[params.sinks.hidden]``)."""

    enabled: bool = param(True, "run this part of the sinks analysis")
    n_samples: int = param(8, "prose windows", ge=1)
    n_tokens: int = param(256, "tokens per window (> min_rows)", ge=2)
    threshold: float = param(0.1, "α above which a key is a sink", gt=0, lt=1)
    min_rows: int = param(16, "queries a key needs before its α counts", ge=1)

    def check(self, where):
        if self.n_tokens <= self.min_rows:
            raise ParamError(f"{where}.n_tokens = {self.n_tokens}: must exceed min_rows = {self.min_rows}")

    def check_model(self, model, where=""):
        check_context(model, f"{where}.n_tokens", self.n_tokens)

CLASSES = ("punctuation", "newline", "delimiter", "other")
_SENTENCE = set(".!?…")
_DELIM = set(",;:()[]{}<>\"'`“”‘’-–—|/\\_=*#~+&@%$^")


def classify_token(text: str, *, special: bool = False) -> str:
    """Class of a decoded token: ``"newline" | "punctuation" | "delimiter" | "other"``."""
    if "\n" in text or "Ċ" in text:  # Ċ: byte-level BPE spelling of \n
        return "newline"
    if special:
        return "delimiter"
    s = text.replace("Ġ", " ").strip()
    if not s:
        return "delimiter"
    if all(c in _SENTENCE for c in s):
        return "punctuation"
    if all(c in _SENTENCE or c in _DELIM for c in s):
        return "delimiter"
    return "other"


def hidden_sink_mask(col_alpha: torch.Tensor, *, threshold: float = 0.1, min_rows: int = 16) -> torch.Tensor:
    """Bool ``[layer, batch, head, key_pos]``: hidden sinks from ``col_alpha [layer, batch, head, key_pos]``."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    T = col_alpha.shape[-1]
    j = torch.arange(T)
    keep = (j >= 1) & (T - j >= min_rows)
    return (col_alpha > threshold) & keep


def hidden_sinks(model, ids: torch.Tensor | None = None, *, threshold: float = 0.1, min_rows: int = 16,
                 n_samples: int = 8, n_tokens: int = 256, seed: int = 0, stats=None):
    """(scores, sinks) DataFrames; ``ids [batch, pos]`` default: ``n_samples`` prose windows of ``n_tokens``."""
    import pandas as pd

    import interp
    from interp.scores import ScoreTable

    if ids is None:
        from interp.analyses._text import domain_samples

        ids = domain_samples(model, "prose", n_samples, n_tokens, seed=seed)
    if ids.shape[1] <= min_rows:
        raise ValueError(f"inputs of {ids.shape[1]} tokens leave no key with >= min_rows={min_rows} queries")
    st = stats if stats is not None else interp.attention_stats(model, ids, stats=["col_alpha"])
    alpha = st["col_alpha"].double()  # [layer, batch, head, key_pos]
    mask = hidden_sink_mask(alpha, threshold=threshold, min_rows=min_rows)
    special = set(getattr(model.tokenizer, "all_special_ids", None) or [])
    toks = [model.tokenizer.convert_ids_to_tokens(r) for r in ids.tolist()]
    cls = [[classify_token(str(t), special=int(i) in special) for t, i in zip(tr, ir)]
           for tr, ir in zip(toks, ids.tolist())]
    nz = mask.nonzero().tolist()
    sinks = pd.DataFrame([{
        "model": model.name, "batch": b, "layer": st.layers[li], "head": h, "position": j,
        "token": str(toks[b][j]), "token_id": int(ids[b, j]), "class": cls[b][j], "alpha": float(alpha[li, b, h, j]),
    } for li, b, h, j in nz], columns=["model", "batch", "layer", "head", "position", "token", "token_id",
                                        "class", "alpha"])
    B = ids.shape[0]
    L = alpha.shape[0]
    common = dict(model=model.name, analysis="sinks", n_samples=B)
    tables = [ScoreTable.from_matrix(mask.double().sum((1, 3)) / B, score="hidden_sinks", **common)]
    for c in CLASSES:
        sub = sinks[sinks["class"] == c]
        per_layer = sub.groupby("layer").size().reindex(range(L), fill_value=0) / B
        tables.append(ScoreTable.from_layers(per_layer.to_numpy(dtype=float), score=f"hidden_sinks_{c}", **common))
        share = len(sub) / len(sinks) if len(sinks) else 0.0
        tables.append(ScoreTable.scalar(share, score=f"hidden_sink_share_{c}", **common))
    return ScoreTable.concat(tables), sinks
