"""Work units (``interp.units.Splitter``) of the ``sinks`` and ``taxonomy`` analyses.

``sinks`` (``analyses/sinks.py``):

1. one unit per condition × sample batch (``batch_size`` samples, the batches ``sink_alpha`` forwards in the
   one-process run): its result is that batch's α ``[layer, batch, head]`` (float64). ``merge`` concatenates a
   condition's batches in sample order and applies ``sinks.condition_tables`` (Sink_k^ε, mean α, fraction
   above ε over the concatenated tensor), so the table is the one-process table exactly;
   each enabled sub-analysis (streaming, hidden, secondary, extreme tokens, active/dormant) is one unit too;
2. with the removal check on, one more unit: the driver ranks the heads by the merged α of the removal
   condition and hands the matrix to the unit.

``taxonomy`` (``analyses/head_detector.py``):

1. the head-type scores (one ``attention_stats`` pass over the ``r + r`` probe: its statistics are computed
   over the batch at once, so the samples stay together) and WAAD/FAI, one unit each;
2. with the ablation check on, one more unit, given the merged induction scores.

Tested in ``tests/unit/test_units.py`` (merge == ``run`` exactly on tiny models; shuffled completion order).
"""

from __future__ import annotations

import torch

from interp.units import Splitter, Unit

# --- sinks ---------------------------------------------------------------------------------------------------


def _sinks_params(params):
    from .sinks import SinksParams

    return SinksParams.coerce(params, where="sinks")


def _sinks_split(params):
    from .sinks import enabled_sub_analyses

    p = _sinks_params(params)
    cells = [("alpha", c, b0) for c in p.conditions for b0 in range(0, p.n_samples, p.batch_size)]
    cells += [("sub", name, 0) for name, _ in enabled_sub_analyses(p)]
    return [Unit("sinks", f"{part}|{name}|{b0}" if part == "alpha" else f"sub|{name}", i,
                 {"part": part, "name": name, "start": b0}) for i, (part, name, b0) in enumerate(cells)]


def _sink_tables(info, p, results):
    from interp.scores import ScoreTable

    from .sinks import condition_tables

    tables = []
    for cond in p.conditions:
        a = [torch.from_numpy(r["alpha"]) for r in results if r["part"] == "alpha" and r["name"] == cond]
        tables += condition_tables(torch.cat(a, 1), cond, p.eps, info.name, p.n_samples)
    return ScoreTable.concat(tables)


def _sinks_follow(info, params, units, results):
    from interp.scores import ScoreTable

    from .sinks import removal_condition

    p = _sinks_params(params)
    if not p.removal.enabled or any(r["part"] == "removal" for r in results):
        return []
    s = info.shape
    alpha = ScoreTable.matrix(_sink_tables(info, p, results), f"sink_alpha_{removal_condition(p)}", s.n_layers,
                              s.n_heads)
    return [Unit("sinks", "removal", len(units), {"part": "removal", "alpha": alpha.tolist()})]


def _sinks_run(model, params, unit):
    from .sinks import _removal, condition_samples, sink_alpha, sub_analysis

    p, u = _sinks_params(params), unit.payload
    if u["part"] == "alpha":
        b0 = int(u["start"])
        ids = condition_samples(model, u["name"], p.n_samples, p.n_tokens, p.seed)[b0:b0 + p.batch_size]
        return {"part": "alpha", "name": u["name"], "alpha": sink_alpha(model, ids, k=p.k, batch_size=p.batch_size)}
    if u["part"] == "sub":
        scores, table = sub_analysis(model, p, u["name"])
        return {"part": "sub", "name": u["name"], "scores": scores, "table": table}
    rows, table = _removal(model, p, torch.tensor(u["alpha"], dtype=torch.float64))
    return {"part": "removal", "rows": rows, "table": table}


def _sinks_merge(info, params, results):
    import pandas as pd

    from interp.scores import ScoreTable

    from .sinks import enabled_sub_analyses

    p = _sinks_params(params)
    tables, extra, per_token = [_sink_tables(info, p, results)], {}, []
    subs = {r["name"]: r for r in results if r["part"] == "sub"}
    for name, kind in enabled_sub_analyses(p):
        tables.append(subs[name]["scores"])
        if kind == "per_token":
            per_token.append(subs[name]["table"])
        else:
            extra[name] = subs[name]["table"]
    for r in results:
        if r["part"] == "removal":
            tables += r["rows"]
            extra["removal"] = r["table"]
    out = {"scores": ScoreTable.concat(tables), **extra}
    if per_token:
        out["per_token"] = pd.concat(per_token, ignore_index=True)
    return out


SINKS = Splitter(_sinks_split, _sinks_run, _sinks_merge, "one condition × sample batch per unit, one unit per "
                 "sub-analysis; then the removal check", follow=_sinks_follow)

# --- taxonomy ------------------------------------------------------------------------------------------------


def _tax_params(params):
    from .head_detector import TaxonomyParams

    return TaxonomyParams.coerce(params, where="taxonomy")


def _tax_split(params):
    p = _tax_params(params)
    parts = ["types"] + ["waad"] * p.waad.enabled
    return [Unit("taxonomy", part, i, {"part": part}) for i, part in enumerate(parts)]


def _tax_follow(info, params, units, results):
    p = _tax_params(params)
    if not p.ablation.enabled or any(r["part"] == "ablation" for r in results):
        return []
    (types,) = [r for r in results if r["part"] == "types"]
    return [Unit("taxonomy", "ablation", len(units), {"part": "ablation",
                                                      "induction": types["raw"]["induction_head"].tolist()})]


def _tax_run(model, params, unit):
    from .head_detector import ablation_check, head_scores, induction_probe

    p, part = _tax_params(params), unit.payload["part"]
    if part == "types":
        ids = induction_probe(model, p.n_samples, p.half, seed=p.seed + 1)
        raw = head_scores(model, ids, exclude_bos=p.exclude_bos, exclude_current_token=p.exclude_current_token)
        return {"part": part, "raw": raw, "n_samples": ids.shape[0]}
    if part == "waad":
        from interp.analyses._text import domain_samples
        from interp.analyses.waad_fai import waad_fai_scores

        w = p.waad
        s, tok = waad_fai_scores(model, domain_samples(model, "prose", w.n_samples, w.n_tokens, seed=p.seed),
                                 window=w.window)
        return {"part": part, "scores": s, "per_token": tok}
    eval_ids = induction_probe(model, p.n_samples, p.half, seed=p.seed + 2)
    scores = torch.tensor(unit.payload["induction"], dtype=torch.float64)
    return {"part": part, "res": ablation_check(model, scores, eval_ids, k=p.ablation.k,
                                                n_random=p.ablation.n_random, seed=p.seed)}


def _tax_merge(info, params, results):
    import pandas as pd

    from interp.scores import ScoreTable

    by = {r["part"]: r for r in results}
    t = by["types"]
    common = dict(model=info.name, analysis="taxonomy", n_samples=t["n_samples"])
    tables = [ScoreTable.from_matrix(torch.from_numpy(v), score=k.replace("_head", ""), **common)
              for k, v in t["raw"].items()]
    out = {}
    if "ablation" in by:
        res = by["ablation"]["res"]
        for key in ("base_loss", "dloss_top", "dloss_random", "ratio"):
            tables.append(ScoreTable.scalar(res[key], score=f"induction_ablation_{key}", **common))
        draws = " ".join(f"{d:.4f}" for d in res["dloss_random_draws"])
        out["ablation"] = pd.DataFrame([{**res, "top_heads": " ".join(res["top_heads"]), "dloss_random_draws": draws}])
    if "waad" in by:
        tables.append(by["waad"]["scores"])
        out["per_token"] = by["waad"]["per_token"]
    return {"scores": ScoreTable.concat(tables), **out}


TAXONOMY = Splitter(_tax_split, _tax_run, _tax_merge, "head-type scores and WAAD/FAI one unit each; then the "
                    "ablation check", follow=_tax_follow)
