"""The score table: the one tidy format every analysis returns and the report reads.

One row per (analysis, score, layer, head[, kv_head]): ``model · analysis · score · layer · head · value ·
n_samples · level`` plus optional ``kv_head``, ``ci_low``, ``ci_high``. ``level`` says which index columns are
set (``validate`` enforces it):

    level     layer    head    kv_head       built by
    model     -1       -1      -1 / absent   ScoreTable.scalar
    layer     >= 0     -1      -1 / absent   ScoreTable.from_layers        ([layer] vector)
    head      >= 0     >= 0    -1 / absent   ScoreTable.from_matrix, from_heads   ([layer, head])
    kv_head   >= 0     -1      >= 0          ScoreTable.from_matrix(kv=True)      ([layer, kv_head])

``validate`` also checks dtypes (integer index columns, float values), non-empty ``model``/``analysis``/``score``
strings, values finite or NaN (NaN = not measured; ±inf only for ``*_ratio`` scores, a ratio whose denominator
is 0), and that no index row appears twice. Tables written before ``level`` existed load through
``with_level`` / ``read``, which derive it from the index columns. Tested in ``tests/unit/test_scores.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ["model", "analysis", "score", "layer", "head", "value", "n_samples", "level"]
OPTIONAL = ["kv_head", "ci_low", "ci_high"]
LEVELS = ("model", "layer", "head", "kv_head")
INDEX = ["model", "analysis", "score", "layer", "head", "kv_head"]
# what each level needs of (layer, head, kv_head): "set" = >= 0, "unset" = -1
_RULES = {"model": ("unset", "unset", "unset"), "layer": ("set", "unset", "unset"),
          "head": ("set", "set", "unset"), "kv_head": ("set", "unset", "set")}


class ScoreTableError(ValueError):
    """A score table breaks the contract (one line: which row, which column, what is allowed)."""


def _py(v):
    return v.item() if isinstance(v, np.generic) else v


def _array(values) -> np.ndarray:
    return np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=float)


def _derive_level(df: pd.DataFrame) -> pd.Series:
    kv = df["kv_head"].fillna(-1) if "kv_head" in df.columns else pd.Series(-1, index=df.index)
    lev = np.where(kv >= 0, "kv_head", np.where(df["layer"] < 0, "model", np.where(df["head"] < 0, "layer",
                                                                                   "head")))
    return pd.Series(lev, index=df.index)


def _where(df: pd.DataFrame, mask) -> str:
    i = int(np.flatnonzero(np.asarray(mask))[0])
    r = df.iloc[i]
    return f"row {i} ({r.get('analysis')}/{r.get('score')}, level {r.get('level')!r})"


def _int_column(df: pd.DataFrame, col: str) -> pd.Series:
    s = df[col]
    if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
        raise ScoreTableError(f"score table column {col!r} must hold integers, got dtype {s.dtype}")
    bad = s.isna() | (s != np.floor(s.fillna(0)))
    if bad.any():
        raise ScoreTableError(f"score table {_where(df, bad)}: {col} = {_py(s[bad].iloc[0])!r} is not an integer")
    return s.astype("int64")


def _check_strings(df: pd.DataFrame) -> None:
    for col in ("model", "analysis", "score", "level"):
        s = df[col]
        bad = ~s.map(lambda v: isinstance(v, str) and v.strip() != "")
        if bad.any():
            raise ScoreTableError(f"score table {_where(df, bad)}: {col} = {_py(s[bad].iloc[0])!r}; "
                                  f"{col} must be a non-empty string")
    bad = ~df["level"].isin(LEVELS)
    if bad.any():
        raise ScoreTableError(f"score table {_where(df, bad)}: level = {_py(df['level'][bad].iloc[0])!r}; "
                              f"choose one of {', '.join(LEVELS)}")


def _check_values(df: pd.DataFrame) -> None:
    for col in ["value"] + [c for c in ("ci_low", "ci_high") if c in df.columns]:
        if not pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
            raise ScoreTableError(f"score table column {col!r} must hold numbers, got dtype {df[col].dtype}")
        v = df[col].astype("float64")
        bad = np.isinf(v) & ~df["score"].str.endswith("_ratio")
        if bad.any():
            raise ScoreTableError(f"score table {_where(df, bad)}: {col} = {_py(v[bad].iloc[0])}; values must be "
                                  "finite or NaN (±inf only for *_ratio scores)")
        df[col] = v


def _check_levels(df: pd.DataFrame, shape) -> None:
    kv = df["kv_head"] if "kv_head" in df.columns else pd.Series(-1, index=df.index)
    cols = {"layer": df["layer"], "head": df["head"], "kv_head": kv}
    for name, col in cols.items():
        bad = col < -1
        if bad.any():
            raise ScoreTableError(f"score table {_where(df, bad)}: {name} = {_py(col[bad].iloc[0])}; indices are >= 0, "
                                  "or -1 for unset")
    for level, need in _RULES.items():
        rows = df["level"] == level
        for (name, col), want in zip(cols.items(), need):
            bad = rows & ((col < 0) if want == "set" else (col != -1))
            if bad.any():
                rule = ">= 0" if want == "set" else "-1"
                raise ScoreTableError(f"score table {_where(df, bad)}: {name} = {_py(col[bad].iloc[0])}, but "
                                      f"{level}-level rows need {name} {rule}")
    if shape is not None:
        for name, n in (("layer", shape.n_layers), ("head", shape.n_heads), ("kv_head", shape.n_kv_heads)):
            bad = cols[name] >= n
            if bad.any():
                raise ScoreTableError(f"score table {_where(df, bad)}: {name} = {_py(cols[name][bad].iloc[0])} is out "
                                      f"of range for a model with {n} {name.replace('_', ' ')}s")


class ScoreTable:
    """Helpers around the tidy score DataFrame (it is a plain ``pandas.DataFrame``; these build and check it)."""

    @staticmethod
    def from_matrix(values, *, model: str, analysis: str, score: str, n_samples: int, kv: bool = False):
        """Head-level rows from a ``[layer, head]`` array-like, or KV-head-level rows from ``[layer, kv_head]``
        with ``kv=True``."""
        arr = _array(values)
        if arr.ndim != 2:
            raise ScoreTableError(f"{score}: expected a [layer, {'kv_head' if kv else 'head'}] matrix, "
                                  f"got shape {arr.shape}")
        layers, heads = np.meshgrid(np.arange(arr.shape[0]), np.arange(arr.shape[1]), indexing="ij")
        df = pd.DataFrame({
            "model": model, "analysis": analysis, "score": score, "layer": layers.ravel(),
            "head": -1 if kv else heads.ravel(), "value": arr.ravel(), "n_samples": int(n_samples),
            "level": "kv_head" if kv else "head"})
        if kv:
            df["kv_head"] = heads.ravel()
        return ScoreTable.validate(df)

    @staticmethod
    def from_layers(values, *, model: str, analysis: str, score: str, n_samples: int) -> pd.DataFrame:
        """Layer-level rows (``head = -1``) from a ``[layer]`` vector."""
        arr = _array(values)
        if arr.ndim != 1:
            raise ScoreTableError(f"{score}: expected a [layer] vector, got shape {arr.shape}")
        return ScoreTable.validate(pd.DataFrame({
            "model": model, "analysis": analysis, "score": score, "layer": np.arange(arr.shape[0]), "head": -1,
            "value": arr, "n_samples": int(n_samples), "level": "layer"}))

    @staticmethod
    def from_heads(heads, values, *, model: str, analysis: str, score: str, n_samples: int) -> pd.DataFrame:
        """Head-level rows for a sparse list of ``(layer, head)`` pairs and one value each."""
        heads, arr = list(heads), _array(values).reshape(-1)
        if len(heads) != arr.shape[0]:
            raise ScoreTableError(f"{score}: {len(heads)} heads but {arr.shape[0]} values")
        return ScoreTable.validate(pd.DataFrame({
            "model": model, "analysis": analysis, "score": score,
            "layer": np.array([int(h[0]) for h in heads], dtype=np.int64),
            "head": np.array([int(h[1]) for h in heads], dtype=np.int64), "value": arr,
            "n_samples": int(n_samples), "level": "head"}))

    @staticmethod
    def scalar(value: float, *, model: str, analysis: str, score: str, n_samples: int,
               ci_low: float | None = None, ci_high: float | None = None) -> pd.DataFrame:
        """One model-level row (``layer = head = -1``), with an optional confidence interval."""
        row = {"model": model, "analysis": analysis, "score": score, "layer": -1, "head": -1,
               "value": float(value), "n_samples": int(n_samples), "level": "model"}
        if ci_low is not None or ci_high is not None:
            row.update(ci_low=np.nan if ci_low is None else float(ci_low),
                       ci_high=np.nan if ci_high is None else float(ci_high))
        return ScoreTable.validate(pd.DataFrame([row]))

    @staticmethod
    def validate(df: pd.DataFrame, *, shape=None) -> pd.DataFrame:
        """The checked table (columns in contract order, index columns int64, values float64).

        ``shape`` (an ``interp.Shape``): also check layer/head/kv_head against the model. Raises
        ``ScoreTableError`` with one line naming the row and column."""
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing == ["level"]:
            raise ScoreTableError("score table has no 'level' column; build rows with ScoreTable.from_matrix / "
                                  "from_layers / from_heads / scalar, or load an old table with ScoreTable.with_level")
        if missing:
            raise ScoreTableError(f"score table misses columns {missing}; required: {COLUMNS}")
        df = df.reset_index(drop=True).copy()
        if not len(df):
            return df.astype({"layer": "int64", "head": "int64", "n_samples": "int64", "value": "float64"})[
                COLUMNS + [c for c in df.columns if c not in COLUMNS]]
        _check_strings(df)
        if "kv_head" in df.columns:
            df["kv_head"] = df["kv_head"].where(df["kv_head"].notna(), -1)
        for col in ("layer", "head", "n_samples") + (("kv_head",) if "kv_head" in df.columns else ()):
            df[col] = _int_column(df, col)
        if (df["n_samples"] < 0).any():
            raise ScoreTableError(f"score table {_where(df, df['n_samples'] < 0)}: n_samples must be >= 0")
        _check_values(df)
        if "kv_head" not in df.columns and (df["level"] == "kv_head").any():
            raise ScoreTableError(f"score table {_where(df, df['level'] == 'kv_head')}: kv_head-level rows need "
                                  "a kv_head column")
        _check_levels(df, shape)
        key = [c for c in INDEX if c in df.columns]
        dup = df.duplicated(key)
        if dup.any():
            r = df[dup].iloc[0]
            raise ScoreTableError(f"score table {_where(df, dup)}: index ({', '.join(f'{c}={r[c]}' for c in key)}) "
                                  "appears twice")
        return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]

    @staticmethod
    def with_level(df: pd.DataFrame) -> pd.DataFrame:
        """A table written before the ``level`` column existed, with ``level`` derived from its indices."""
        if "level" not in df.columns and len(df):
            df = df.assign(level=_derive_level(df))
        elif "level" not in df.columns:
            df = df.assign(level=pd.Series(dtype=object))
        return df

    @staticmethod
    def read(path) -> pd.DataFrame:
        """Load ``scores.parquet`` / ``scores.csv`` (old reports included) and validate it."""
        from pathlib import Path

        path = Path(path)
        df = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
        return ScoreTable.validate(ScoreTable.with_level(df))

    @staticmethod
    def concat(tables, *, shape=None) -> pd.DataFrame:
        tables = [t for t in tables if t is not None and len(t)]
        if not tables:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
                COLUMNS, ["object"] * 3 + ["int64", "int64", "float64", "int64", "object"])})
        return ScoreTable.validate(pd.concat(tables, ignore_index=True), shape=shape)

    @staticmethod
    def matrix(df: pd.DataFrame, score: str, n_layers: int, n_heads: int, *, kv: bool = False):
        """``[layer, head]`` numpy array of one head-level score (``kv=True``: ``[layer, kv_head]`` of a
        KV-head-level score); NaN where absent."""
        out = np.full((n_layers, n_heads), np.nan)
        df = ScoreTable.with_level(df)
        sub = df[(df["score"] == score) & (df["level"] == ("kv_head" if kv else "head"))]
        out[sub["layer"].to_numpy(), sub["kv_head" if kv else "head"].to_numpy()] = sub["value"].to_numpy()
        return out

    @staticmethod
    def vector(df: pd.DataFrame, score: str, n_layers: int):
        """``[layer]`` numpy array of one layer-level score (NaN where absent)."""
        out = np.full(n_layers, np.nan)
        df = ScoreTable.with_level(df)
        sub = df[(df["score"] == score) & (df["level"] == "layer")]
        out[sub["layer"].to_numpy()] = sub["value"].to_numpy()
        return out
