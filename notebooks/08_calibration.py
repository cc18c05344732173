# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Acting on the heads: attention calibration and steering
#
# Three attention edits, each a value you can print, compose and save (`interp.attention_edits`):
#
# - `ScaleKeyAttention` — ZeroTuning (Han et al. 2025): a'_0 = γ a_0 / D, a'_j = a_j / D, D = (γ−1) a_0 + 1,
#   the same as a logit bias log γ on key 0; with a span as key set it steers a head toward a context.
# - `HiddenSinkCalibration` — ACT (Yu et al. 2024): keys with α_j = Σ_i A_ij / (n − j) > 0.1 (not the first)
#   get β = 0.4 of their attention; the rest goes to the other keys in proportion to theirs.
# - `Redistribute` — VAR (Kang et al. 2025): a fraction p of the sinks' attention moves onto a target span.
#
# The analyses `zerotuning`, `act`, `attention_redistribution` and `context_attention` use them on the shipped
# evaluation sets. This notebook runs them end to end on `INTERP_NOTEBOOK_MODEL` (CI: a tiny random model, so
# the numbers are meaningless there) and then shows the figures of the runs on the default model.

# %%
import json
import os
import tempfile
from pathlib import Path

import pandas as pd
import plotly.express as px
import torch

import interp
from interp.analyses import act, attention_redistribution, context_attention, zerotuning
from interp.interventions import compose

model = interp.load_model(os.environ.get("INTERP_NOTEBOOK_MODEL", "default"))
print(model)

# %% [markdown]
# ## The edits as values
# Scaling the first token's attention of one head by γ = 4 and calibrating the hidden sinks of a KV group:
# both print, compose, save to JSON and act on the pattern of the layer they touch.

# %%
edit = compose(interp.ScaleKeyAttention(1, 0, gamma=4.0), interp.HiddenSinkCalibration(0, kv_head=0))
print(edit)
path = Path(tempfile.mkdtemp()) / "edits.json"
interp.save_interventions(path, [edit])
assert interp.load_interventions(path) == [edit]

ids = model.to_tokens("The quick brown fox jumps over the lazy dog.")
_, clean = interp.run_with_cache(model, ids, [interp.Site(1, "pattern", 0)])
with model.intervene(edit):
    _, edited = interp.run_with_cache(model, ids, [interp.Site(1, "pattern", 0)])
rows = pd.DataFrame({"key_pos": range(ids.shape[1]),
                     "clean": clean[interp.Site(1, "pattern", 0)][0, -1].double().numpy(),
                     "gamma = 4": edited[interp.Site(1, "pattern", 0)][0, -1].double().numpy()})
px.bar(rows.melt("key_pos", var_name="run", value_name="attention"), x="key_pos", y="attention", color="run",
       barmode="group", title="L1H0, last query: first-token attention scaled by γ = 4 and renormalised")

# %% [markdown]
# ## ZeroTuning: per-head γ sweep, head selection, supervised / unsupervised γ
# Δ_h(γ) = change of the label's mean log-probability on the calibration split when only head h is scaled.
# Heads whose Δ has one sign for γ > 1 and the other for γ < 1 are kept; one γ is then calibrated on the
# validation split (accuracy: supervised; answer entropy: unsupervised) and the test split is scored.

# %%
small = dict(tasks=["category"], n_candidates=4, sweep=[0.5, 2.0], grid=[0.5, 2.0], n_calibration=8,
             n_validation=8, n_test=16, n_random=1, batch_size=8)
zt = zerotuning.run(model, small)
zt["sweep"].assign(head=lambda d: "L" + d.layer.astype(str) + "H" + d["head"].astype(str))

# %%
print(zt["calibration"])
acc = zt["scores"][zt["scores"]["score"].str.contains("_accuracy_") & ~zt["scores"]["score"].str.contains("delta")]
acc[["score", "value", "ci_low", "ci_high", "n_samples"]]

# %% [markdown]
# ## ACT: hidden-sink calibration with greedy head selection

# %%
a = act.run(model, dict(tasks=["category"], n_candidates=3, n_calibration=8, n_test=16, n_random=1,
                        batch_size=8, threshold=0.02))["scores"]
a[a["score"].str.contains("accuracy_|act_n_heads")][["score", "value", "ci_low", "ci_high"]]

# %% [markdown]
# ## VAR on a marked passage, and context steering
# The context-QA items state a counterfactual fact in a passage (the answer is only there; the world answer is
# the distractor). VAR moves sink attention onto the passage in the heads that attend to it; context steering
# compares each head's passage attention with and without the chat template and boosts the heads that lose it.

# %%
v = attention_redistribution.run(model, dict(rho=0.0, max_heads=4, n_calibration=4, n_test=8, n_random=1,
                                             batch_size=4))["scores"]
v[v["level"] == "model"][["score", "value", "ci_low", "ci_high"]]

# %%
if getattr(model.tokenizer, "chat_template", None):
    c = context_attention.run(model, dict(n_heads=4, grid=[2.0], n_calibration=4, n_test=8, n_random=1,
                                          batch_size=4))["scores"]
    drop = interp.ScoreTable.matrix(c, "span_mass_drop", model.shape.n_layers, model.shape.n_heads)
    fig = px.imshow(drop, labels=dict(x="head", y="layer", color="plain − chat"),
                    title="passage attention lost under the chat template")
else:
    print(f"{model.name} has no chat template: context steering needs an instruct model")
    fig = None
fig

# %% [markdown]
# ## Figures of the runs on the default model
# Written by `python experiments/calibration_table.py --model default` (CPU, small sizes, test half of the
# shipped sets; see the README for the table and the machine's load).

# %%
runs = Path(interp.__file__).resolve().parents[1] / "reports" / "experiments"
found = sorted(runs.glob("calibration_*_smollm2-135m-instruct.json"))
print([p.name for p in found] or "no saved runs")
tables = {json.loads(p.read_text())["analysis"]: json.loads(p.read_text())["tables"] for p in found}
if "zerotuning" in tables:
    sweep = pd.DataFrame(tables["zerotuning"]["sweep"])
    sweep["head"] = "L" + sweep.layer.astype(str) + "H" + sweep["head"].astype(str)
    px.line(sweep.sort_values("gamma"), x="gamma", y="delta", color="head", facet_col="task", markers=True,
            log_x=True, title="ZeroTuning per-head sweep: Δ mean label log-prob vs γ (default model)").show()
    cal = pd.DataFrame(tables["zerotuning"]["calibration"])
    px.line(cal.sort_values("gamma"), x="gamma", y=["val_accuracy", "val_entropy"], facet_col="task",
            markers=True, log_x=True, title="joint γ on the kept heads: validation accuracy and entropy").show()

# %%
rows = []
for name, t in tables.items():
    s = pd.DataFrame(t["scores"])
    s = s[s["score"].str.contains("_accuracy_") & ~s["score"].str.contains("delta|random_mean")]
    rows.append(s.assign(analysis=name))
if rows:
    acc = pd.concat(rows)
    acc["task"] = acc["score"].str.split("_accuracy_").str[0]
    acc["condition"] = acc["score"].str.split("_accuracy_").str[1]
    acc["err_hi"], acc["err_lo"] = acc.ci_high - acc.value, acc.value - acc.ci_low
    px.bar(acc, x="condition", y="value", error_y="err_hi", error_y_minus="err_lo", color="analysis",
           facet_col="task", title="test accuracy with Wilson 95% intervals (default model)").show()
torch.cuda.is_available()  # CPU runs everywhere
