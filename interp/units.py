"""Work units: how a registered analysis splits into independent pieces and how their results merge.

A distributed run (``interp.distributed``) hands units to model replicas in any order and on any number of
workers; the merged result must not depend on either. Each analysis therefore declares a ``Splitter``:

    split(params) -> [Unit]                        units in merge order (no model needed: only parameters)
    run(model, params, unit) -> result             one unit on a loaded model (JSON-able after ``encode``)
    merge(info, params, results) -> {table: df}    ``results`` in ``split`` order; ``info`` carries the
                                                   model's ``name`` and ``shape`` only (no weights)
    follow(info, params, units, results) -> [Unit] optional: the next round's units, given every unit and
                                                   result so far (in order); ``[]`` ends the run

Rounds (``follow``) serve analyses whose later parts need earlier results: safety's Sahara search needs the
merged Ships ranking, and its refusal conditions need the Sahara set; a sink or induction causal check needs
the merged head scores. The driver computes the next round's units from the results (cheap, no model), their
payload carries what they need (e.g. the candidate heads), and their indices continue the earlier ones. A
rerun after a crash reads the earlier rounds from the checkpoint, so it rebuilds the same later units.

and ``merge(info, p, [run(model, p, u) for u in split(p)]) == analysis.run(model, p)``, exactly: a unit keeps
the per-sample values the one-process run reduces, and ``merge`` applies the same reduction in the same order
(for sums: ``0 + x_0 + x_1 + ...`` sample by sample, never a sum of partial sums). Units of the registered
analyses (``SPLITS``; ``interp.analyses.splits``):

- ``retrieval``: one NIAH cell (needle, length, depth) per unit (Wu et al. 2024's 600-instance grid → 600 units);
- ``attention_basics``: one text per unit;
- ``safety``: one Ships query per unit; then one Sahara unit (the greedy search over the top Ships heads:
  its steps are sequential, see ``interp.analyses.splits``); then one refusal unit per condition × prompt set;
- ``sinks``: one batch of ``batch_size`` samples of one condition per unit, each enabled sub-analysis
  (streaming, hidden, secondary, extreme tokens, active/dormant) one unit; then the removal check (needs the
  merged prose α) one unit;
- ``taxonomy``: the head-type scores, and WAAD/FAI, one unit each; then the ablation check (needs the merged
  induction scores) one unit;
- ``divergence``: one (context, prompt) sample per unit;
- ``circuits``: the base metrics one unit, one unit per EAP / EAP-IG prompt batch (``batch_size`` prompts; a
  unit returns the batch's SUM of edge scores, ``merge`` adds them in batch order and divides by the prompt
  count, as ``run`` does); then one activation-patching unit per chunk of ``heads_per_unit`` heads (their
  results concatenated in head order);
- every other analysis (duo_attention, model_divergence, ...) is one unit (``whole``): the whole ``run`` on one
  replica. DuoAttention is one training run and stays one unit by design.

Results travel and are checkpointed as JSON: ``encode`` turns DataFrames into base64 parquet and arrays into
base64 raw bytes (dtype and shape kept), so ``decode(encode(x))`` is bit-identical. Tested in
``tests/unit/test_units.py`` (merge(split) == run, exactly, for every registered analysis on tiny models).
"""

from __future__ import annotations

import base64
import io as _io
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Unit:
    """One independent piece of an analysis. ``key``: stable, unique within the analysis (checkpoint key);
    ``index``: position in merge order; ``payload``: JSON-able description of the work (e.g. a NIAH cell)."""

    analysis: str
    key: str
    index: int
    payload: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    """What ``merge`` and the report need of a model without its weights (a replica reports it)."""

    name: str
    shape: object  # interp.model.Shape
    weights_hash: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class Splitter:
    """How one analysis splits (``split``), runs a unit (``run``) and merges results (``merge``)."""

    split: Callable
    run: Callable
    merge: Callable
    description: str = ""
    follow: Callable | None = None  # (info, params, units, results) -> next round's [Unit]; None: one round


# analysis name → Splitter or a lazy "module:attribute"; an analysis not listed is one unit (``whole``)
SPLITS: dict[str, Splitter | str] = {
    "retrieval": "interp.analyses.splits:RETRIEVAL",
    "attention_basics": "interp.analyses.splits:BASICS",
    "safety": "interp.analyses.splits_safety:SAFETY",
    "sinks": "interp.analyses.splits_sinks:SINKS",
    "taxonomy": "interp.analyses.splits_sinks:TAXONOMY",
    "divergence": "interp.analyses.splits:DIVERGENCE",
    "circuits": "interp.analyses.splits_circuits:CIRCUITS",
}


def register_splitter(name: str, splitter: Splitter | str) -> None:
    """Declare how analysis ``name`` splits (plugins, tests); replaces an earlier declaration."""
    SPLITS[name] = splitter


def _resolve(ref):
    if not isinstance(ref, str):
        return ref
    import importlib

    mod, _, attr = ref.partition(":")
    return getattr(importlib.import_module(mod), attr)


def splitter_for(spec) -> Splitter:
    """The ``Splitter`` of a loaded ``AnalysisSpec``: its declared one, else ``whole(spec)`` (one unit)."""
    found = SPLITS.get(spec.name)
    return _resolve(found) if found is not None else whole(spec)


def whole(spec) -> Splitter:
    """One unit: the analysis's own ``run`` on one replica (its tables travel encoded)."""
    run_fn = spec.run

    def split(params):
        return [Unit(spec.name, "all", 0)]

    def run(model, params, unit):
        return {"tables": run_fn(model, params, None)}

    def merge(info, params, results):
        return dict(results[0]["tables"])

    return Splitter(split, run, merge, "one unit (the whole analysis)")


def drive(splitter: Splitter, info: ModelInfo, params, run_round: Callable, analysis: str) -> dict:
    """Split, run round after round (``run_round(units) -> results`` in unit order), merge.

    The first round is ``split(params)``; while ``follow`` gives more units, they run as the next round."""
    units = check_units(splitter.split(params), analysis)
    results = list(run_round(units))
    while splitter.follow is not None:
        more = splitter.follow(info, params, list(units), list(results))
        if not more:
            break
        check_units(list(units) + list(more), analysis)
        units += more
        results += list(run_round(more))
    return splitter.merge(info, params, results)


def run_local(splitter: Splitter, model, params, *, on_unit=None, analysis: str = "?") -> dict:
    """Every unit in one process, round by round, then ``merge`` (what a distributed run computes, without Ray)."""
    info = ModelInfo(model.name, model.shape, model.weights_hash, getattr(model, "source", None))

    def run_round(units):
        out = []
        for unit in units:
            t0 = time.perf_counter()
            out.append(decode(encode(splitter.run(model, params, unit))))
            if on_unit is not None:
                on_unit(unit, time.perf_counter() - t0)
        return out

    return drive(splitter, info, params, run_round, analysis)


def check_units(units: list[Unit], analysis: str) -> list[Unit]:
    """Unique keys, indices 0..n-1 in order; a bad split raises ``ValueError`` naming the analysis."""
    keys = [u.key for u in units]
    if not units:
        raise ValueError(f"analysis {analysis!r} split into no units; check its parameters")
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"analysis {analysis!r} split into units with repeated keys {dup[:3]}")
    if [u.index for u in units] != list(range(len(units))):
        raise ValueError(f"analysis {analysis!r}: unit indices must be 0..{len(units) - 1} in order")
    return units


def heads_payload(heads) -> list[list[int]]:
    """``[(layer, head), ...]`` as JSON lists (a unit payload); ``heads_of`` reads them back as tuples."""
    return [[int(a), int(b)] for a, b in heads]


def heads_of(payload) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in payload]


# --- JSON codec for unit results ----------------------------------------------------------------------------

def encode(obj):
    """``obj`` (nested dicts/lists of DataFrames, numpy arrays, tensors, scalars) as JSON-able data."""
    import numpy as np
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        buf = _io.BytesIO()
        obj.to_parquet(buf, index=False)
        return {"__df__": base64.b64encode(buf.getvalue()).decode()}
    if hasattr(obj, "detach") and hasattr(obj, "numpy"):  # torch.Tensor
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        return {"__nd__": base64.b64encode(a.tobytes()).decode(), "dtype": a.dtype.str, "shape": list(a.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if any(not isinstance(k, str) for k in obj):
            raise TypeError(f"unit results need str keys, got {sorted(map(repr, obj))[:3]}")
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    raise TypeError(f"cannot encode a {type(obj).__name__} in a unit result; return DataFrames, arrays or "
                    "JSON values")


def decode(obj):
    """The inverse of ``encode`` (DataFrames and numpy arrays come back bit-identical)."""
    import numpy as np
    import pandas as pd

    if isinstance(obj, dict):
        if "__df__" in obj:
            return pd.read_parquet(_io.BytesIO(base64.b64decode(obj["__df__"])))
        if "__nd__" in obj:
            raw = base64.b64decode(obj["__nd__"])
            return np.frombuffer(raw, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj
