"""Work-unit declarations (``interp.units.Splitter``) of the registered analyses that split finer than one unit.

Each one reuses the analysis's own per-sample function (``run``) and its own table builder (``merge``), so the
merged tables are the one-process tables exactly (see ``interp.units`` for the rules):

- ``retrieval`` (Wu et al. 2024): one unit per NIAH cell ``(needle, length, depth)`` in the official grid
  order; a unit's result is the per-sample record of ``niah.run_sweep``; ``merge`` is
  ``retrieval.tables_from_records`` over the records in grid order.
- ``attention_basics``: one unit per text; a unit's result is ``basic.text_stats`` (float64 sums over the
  text's query positions); ``merge`` adds them text by text from zero (``basic.tables_from_stats``), as ``run``.
- ``divergence``: one needle (context, prompt) sample per unit; a unit's result is that sample's per-token frame
  (``head_divergence.sample_divergence``); ``merge`` concatenates them in sample order and takes the same
  per-head means (``head_divergence.divergence_tables``).

The ``safety`` units are in ``splits_safety``, the ``sinks`` and ``taxonomy`` units in ``splits_sinks``.

Tested in ``tests/unit/test_units.py``.
"""

from __future__ import annotations

import torch

from interp.units import Splitter, Unit

# --- retrieval: one NIAH cell per unit ---------------------------------------------------------------------


def _retrieval_split(params):
    from .niah import grid, sample_key
    from .retrieval import RetrievalParams

    p = RetrievalParams.coerce(params, where="retrieval")
    cells = grid(p.lengths, p.depths, p.needles)
    return [Unit("retrieval", sample_key(*c), i, {"cell": list(c)}) for i, c in enumerate(cells)]


def _retrieval_run(model, params, unit):
    from .retrieval import RetrievalParams, niah_sweep

    p = RetrievalParams.coerce(params, where="retrieval")
    length, depth, needle = unit.payload["cell"]
    (rec,) = niah_sweep(model, lengths=[int(length)], depths=[float(depth)], needles=[int(needle)],
                        max_new_tokens=p.max_new_tokens, buffer=p.buffer, stop_rule=p.stop_rule)
    return rec


def _retrieval_merge(info, params, results):
    from .retrieval import tables_from_records

    return tables_from_records(list(results), info.name, info.shape)


# --- attention_basics: one text per unit -------------------------------------------------------------------


def _basics_split(params):
    from .basic import BasicParams, _texts

    p = BasicParams.coerce(params, where="attention_basics")
    return [Unit("attention_basics", f"text{t}", t, {"text": t}) for t in range(len(_texts(p)))]


def _basics_run(model, params, unit):
    from .basic import BasicParams, _texts, effective_n_tokens, text_stats

    p = BasicParams.coerce(params, where="attention_basics")
    t = int(unit.payload["text"])
    mass, ent, n_q, per_token = text_stats(model, t, _texts(p)[t], effective_n_tokens(model, p))
    return {"mass": mass, "ent": ent, "n_query": n_q, "per_token": per_token}


def _basics_merge(info, params, results):
    from .basic import tables_from_stats

    stats = [(torch.from_numpy(r["mass"]), torch.from_numpy(r["ent"]), r["n_query"], r["per_token"])
             for r in results]
    return tables_from_stats(info.name, info.shape, stats)


# --- divergence: one (context, prompt) sample per unit ---------------------------------------------------------


def _div_split(params):
    from .head_divergence import DivergenceParams
    from .niah import load_needles

    DivergenceParams.coerce(params, where="divergence")
    return [Unit("divergence", f"sample{i}", i, {"sample": i}) for i in range(len(load_needles()))]


def _div_run(model, params, unit):
    from .head_divergence import DivergenceParams, needle_samples, sample_divergence

    p = DivergenceParams.coerce(params, where="divergence")
    i = int(unit.payload["sample"])
    context, prompt = needle_samples(model, context_tokens=p.context_tokens, depth=p.depth)[i]
    return {"per_token": sample_divergence(model, i, context, prompt, n_generate=p.n_generate)}


def _div_merge(info, params, results):
    from .head_divergence import DivergenceParams, divergence_tables

    p = DivergenceParams.coerce(params, where="divergence")
    scores, per_token = divergence_tables([r["per_token"] for r in results], info.name,
                                          generated_only=p.generated_only)
    return {"scores": scores, "per_token": per_token}


RETRIEVAL = Splitter(_retrieval_split, _retrieval_run, _retrieval_merge, "one NIAH cell per unit")
BASICS = Splitter(_basics_split, _basics_run, _basics_merge, "one text per unit")
DIVERGENCE = Splitter(_div_split, _div_run, _div_merge, "one (context, prompt) sample per unit")
