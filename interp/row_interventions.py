"""Batch-row targeting: ``OnRows(intervention, rows)`` applies an intervention to some batch rows only.

For the rows ``R`` and the wrapped handler ``f`` at a site: ``x'[R] = f(x[R])``, ``x'[b] = x[b]`` for ``b ∉ R``.
Several row groups at one site are fused into one ``RowsHandler`` (one copy of the activation per forward),
which is how ``interp.variants.run_variants`` packs ablated variants into one batch.

Validated in ``tests/unit/test_variants.py``: rows outside ``R`` are bit-identical to the clean run and rows in
``R`` equal a forward of those rows alone under the plain intervention (float64 tiny models).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .interventions import Intervention, compose
from .sites import Site


def _row_index(rows, n: int, what: str):
    """``rows`` (a slice or a tuple of ints) checked against a forward of ``n`` batch rows."""
    if isinstance(rows, slice):
        stop = rows.stop if rows.stop is not None else n
        if stop > n or (rows.start or 0) >= n:
            raise ValueError(f"{what}: rows {rows.start}:{rows.stop} but the forward has {n} batch rows; "
                             "build the interventions for this batch")
        return rows
    bad = [r for r in rows if not -n <= r < n]
    if bad:
        raise ValueError(f"{what}: row {bad[0]} but the forward has {n} batch rows; build the interventions "
                         "for this batch")
    return list(rows)


class RowsHandler:
    """One hook handler applying per-row-group handlers at one site: ``entries = [(rows, [fn, ...])]``; each
    group's ``fn(x[rows], site)`` results are written back into its rows of one copy of ``x``."""

    def __init__(self, entries, what: str = "OnRows"):
        self.entries = entries
        self.what = what

    def __call__(self, x, site):
        out = None
        for rows, fns in self.entries:
            idx = _row_index(rows, x.shape[0], self.what)
            part = (x if out is None else out)[idx]
            new = None
            for fn in fns:
                y = fn(part if new is None else new, site)
                if y is not None:
                    new = y
            if new is not None:
                if out is None:
                    out = x.clone()
                out[idx] = new.to(out.dtype)
        return out


def rows_handlers(groups, what: str = "OnRows") -> dict[Site, list]:
    """``{Site: [RowsHandler]}`` from ``groups = [(rows, [(site, fn), ...]), ...]`` (compiled interventions and
    the batch rows they act on): one fused handler per site, one copy of the activation per forward."""
    by_site: dict[Site, list] = {}
    for rows, pairs in groups:
        per: dict[Site, list] = {}
        for site, fn in pairs:
            per.setdefault(site, []).append(fn)
        for site, fns in per.items():
            by_site.setdefault(site, []).append((rows, fns))
    return {site: [RowsHandler(entries, what)] for site, entries in by_site.items()}


def _norm_rows(rows):
    if isinstance(rows, slice):
        if rows.step not in (None, 1) or rows.start is None or rows.stop is None or rows.start < 0:
            raise ValueError(f"OnRows: a rows slice must be start:stop with 0 <= start (no step), got {rows!r}")
        return rows
    if isinstance(rows, int) and not isinstance(rows, bool):
        return (rows,)
    if isinstance(rows, torch.Tensor):
        rows = rows.tolist()
    if isinstance(rows, (list, tuple)) and rows and all(isinstance(r, int) and not isinstance(r, bool)
                                                        for r in rows):
        return tuple(rows)
    raise TypeError(f"OnRows: rows must be an int, a non-empty list of ints or a start:stop slice, got {rows!r}")


@dataclass(frozen=True, eq=False, repr=False)
class OnRows(Intervention):
    """Apply ``intervention`` (one, or a list composed) only to batch rows ``rows``; other rows are untouched.

    ``rows``: an int, a list of ints or a ``slice(start, stop)``. The wrapped handlers see ``x[rows]`` (so a
    ``Patch``/``Mean`` value or a ``PositionMean`` mask is shaped for those rows). ``interp.variants.run_variants``
    packs variants into the batch with it."""

    intervention: Intervention
    rows: int | slice | tuple

    def __post_init__(self):
        it = self.intervention
        if not isinstance(it, Intervention):
            object.__setattr__(self, "intervention", compose(*it) if isinstance(it, (list, tuple)) else compose(it))
        object.__setattr__(self, "rows", _norm_rows(self.rows))

    def compile(self, model):
        groups = [(self.rows, self.intervention.compile(model))]
        return [(site, fn) for site, fns in rows_handlers(groups, repr(self)).items() for fn in fns]
