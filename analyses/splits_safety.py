"""Work units (``interp.units.Splitter``) of the ``safety`` analysis (Ships → Sahara → refusal check,
``analyses/refusal.py``), in three rounds:

1. **Ships**, one harmful query per unit: the unit's result is ``ships.ships_kl`` of that query
   (``[layer, head]`` float64), the same call ``ships_dataset`` makes query by query. ``merge`` stacks them in
   query order and applies ``ships.dataset_scores`` (top-10 counts and KL sums over the stacked tensor), so
   the dataset-level table is the one-process table bit for bit, whatever the number of workers.
2. **Sahara**, one unit: the greedy search over the top ``sahara_candidates`` Ships heads (the driver ranks
   them from the merged Ships results and puts them in the payload). It stays one unit because its steps are
   sequential: step ``s`` scores ``S_{s-1} ∪ {c}`` for every candidate ``c``, and ``S_{s-1}`` is the argmax of
   step ``s − 1``. The candidates of one step are independent and could be units (a round per step, driven by
   ``follow``), but ``sahara`` scores them in shared batched forwards (``run_variants``), and splitting the
   batch regroups the float sums of the batched matmuls, so per-candidate units would not reproduce the
   one-process angles exactly; with ``set_size`` 3 and 24 candidates the search is a small part of the run.
3. **Refusal**, one unit per condition × prompt set (clean, top-1 / top-k Ships heads, the Sahara set, random
   heads; harmful and harmless sets): each is an independent ``refusal_rate`` call in the one-process run too.

Tested in ``tests/unit/test_units.py`` (merge of the units == ``refusal.run``, exactly, on a tiny model; a
shuffled completion order merges the same) and ``tests/integration/test_distributed.py`` (two Ray workers).
"""

from __future__ import annotations

import torch

from interp.units import Splitter, Unit, heads_of, heads_payload


def _params(params):
    from .refusal import SafetyParams

    return SafetyParams.coerce(params, where="safety")


def _split(params):
    from ._safety_data import load_prompts

    p = _params(params)
    n = len(load_prompts(p.prompts, p.n_ships))
    return [Unit("safety", f"ships|q{i}", i, {"part": "ships", "query": i}) for i in range(n)]


def _ships_scores(info, p, results):
    from .ships import dataset_scores

    kl = torch.stack([torch.from_numpy(r["kl"]) for r in results if r["part"] == "ships"])
    return dataset_scores(kl, model_name=info.name, top_k=p.top_k)


def _follow(info, params, units, results):
    from .ships import top_heads

    p = _params(params)
    parts = [r["part"] for r in results]
    n, scores = len(units), _ships_scores(info, p, results)
    if "sahara" not in parts:
        cands = top_heads(scores, max(p.sahara_candidates, p.sahara_set_size))
        return [Unit("safety", "sahara", n, {"part": "sahara", "candidates": heads_payload(cands)})]
    if not p.refusal or "refusal" in parts:
        return []
    from .refusal import refusal_conditions

    sahara = heads_of(results[parts.index("sahara")]["heads"])
    conditions = refusal_conditions(info.shape, p, lambda k: top_heads(scores, k), sahara)
    cells = [(c, h, j) for c, h in conditions.items() for j in range(2)]  # j: 0 harmful, 1 harmless set
    return [Unit("safety", f"refusal|{c}|{j}", n + i, {"part": "refusal", "condition": c,
                                                      "heads": heads_payload(h), "set": j})
            for i, (c, h, j) in enumerate(cells)]


def _run(model, params, unit):
    from ._safety_data import encode, load_prompts
    from .refusal import _template

    p, u = _params(params), unit.payload
    tmpl = _template(model, p.template)
    ab = dict(method=p.method, eps=p.eps, memory_budget_mb=p.memory_budget_mb)
    if u["part"] == "ships":
        from .ships import ships_kl

        row = encode(model, load_prompts(p.prompts, p.n_ships), tmpl)[int(u["query"])]
        return {"part": "ships", "kl": ships_kl(model, row, **ab)}
    if u["part"] == "sahara":
        from .sahara import sahara

        sa = sahara(model, p.prompts, n=p.n_sahara, set_size=p.sahara_set_size, r=p.sahara_r,
                    candidates=heads_of(u["candidates"]), template=tmpl, **ab)
        return {"part": "sahara", "heads": heads_payload(sa.heads), "angles": sa.angles,
                "step_angles": sa.step_angles, "n_prompts": sa.n_prompts, "r": sa.r}
    from .refusal import refusal_condition

    set_name = (p.prompts, p.harmless)[int(u["set"])]
    score, row = refusal_condition(model, p, u["condition"], heads_of(u["heads"]), set_name, tmpl)
    return {"part": "refusal", "score": score, "row": row}


def _merge(info, params, results):
    import pandas as pd

    from interp.scores import ScoreTable

    from .sahara import SaharaResult

    p = _params(params)
    by = {part: [r for r in results if r["part"] == part] for part in ("sahara", "refusal")}
    (s,) = by["sahara"]
    sa = SaharaResult(heads=heads_of(s["heads"]), angles=list(s["angles"]),
                      step_angles=torch.from_numpy(s["step_angles"]), n_prompts=s["n_prompts"], r=s["r"])
    tables = [_ships_scores(info, p, results), sa.scores(info.name)]
    out = {}
    if p.refusal:
        tables += [r["score"] for r in by["refusal"] if r["score"] is not None]
        out["refusal"] = pd.DataFrame([r["row"] for r in by["refusal"]])
    out["scores"] = ScoreTable.concat(tables)
    return out


SAFETY = Splitter(_split, _run, _merge, "one Ships query per unit; then Sahara; then one refusal condition × "
                  "prompt set per unit", follow=_follow)
