"""The score table: the one tidy format every analysis returns and the report reads.

One row per (analysis, score, layer, head): ``model · analysis · score · layer · head · value · n_samples``
plus optional ``kv_head``, ``ci_low``, ``ci_high``. Model-level numbers use ``layer = head = -1``; KV-head
scores set ``kv_head`` and leave ``head = -1``.
"""

from __future__ import annotations

import pandas as pd

COLUMNS = ["model", "analysis", "score", "layer", "head", "value", "n_samples"]
OPTIONAL = ["kv_head", "ci_low", "ci_high"]


class ScoreTable:
    """Helpers around the tidy score DataFrame (it is a plain ``pandas.DataFrame``; these build and check it)."""

    @staticmethod
    def from_matrix(values, *, model: str, analysis: str, score: str, n_samples: int, kv: bool = False):
        """Rows from a ``[layer, head]`` (or ``[layer, kv_head]`` with ``kv=True``) array-like of values."""
        import numpy as np

        arr = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=float)
        if arr.ndim != 2:
            raise ValueError(f"expected a [layer, head] matrix, got shape {arr.shape}")
        layers, heads = np.meshgrid(np.arange(arr.shape[0]), np.arange(arr.shape[1]), indexing="ij")
        df = pd.DataFrame({
            "model": model, "analysis": analysis, "score": score, "layer": layers.ravel(),
            "head": -1 if kv else heads.ravel(), "value": arr.ravel(), "n_samples": int(n_samples),
        })
        if kv:
            df["kv_head"] = heads.ravel()
        return ScoreTable.validate(df)

    @staticmethod
    def scalar(value: float, *, model: str, analysis: str, score: str, n_samples: int) -> pd.DataFrame:
        return ScoreTable.validate(pd.DataFrame([{
            "model": model, "analysis": analysis, "score": score, "layer": -1, "head": -1,
            "value": float(value), "n_samples": int(n_samples)}]))

    @staticmethod
    def validate(df: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"score table misses columns {missing}; required: {COLUMNS}")
        df = df.astype({"layer": "int64", "head": "int64", "n_samples": "int64", "value": "float64"})
        return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]

    @staticmethod
    def concat(tables) -> pd.DataFrame:
        tables = [t for t in tables if t is not None and len(t)]
        if not tables:
            return pd.DataFrame(columns=COLUMNS)
        return ScoreTable.validate(pd.concat(tables, ignore_index=True))

    @staticmethod
    def matrix(df: pd.DataFrame, score: str, n_layers: int, n_heads: int):
        """``[layer, head]`` numpy array of one score (NaN where absent)."""
        import numpy as np

        out = np.full((n_layers, n_heads), np.nan)
        sub = df[(df["score"] == score) & (df["layer"] >= 0) & (df["head"] >= 0)]
        out[sub["layer"].to_numpy(), sub["head"].to_numpy()] = sub["value"].to_numpy()
        return out
