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
# # Circuits: EAP, faithfulness, DLA and path patching
#
# Edge attribution patching scores every edge of the model's graph (input embedding, each head's write, each
# MLP, the logits; per head the q, k and v inputs separately, with k/v on the KV heads of GQA models) with two
# forwards and one backward. The faithfulness curve then checks how much of the clean-vs-corrupt metric the
# top-n edges recover. Set `INTERP_NOTEBOOK_MODEL` to pick the model (default: the embedded SmolLM2; IOI needs
# a real tokenizer, so a tiny random model gets a hand-written task instead).

# %%
import os

import plotly.express as px

import interp
from interp.analyses.circuits import Task, circuit_figure, dla, eap, faithfulness_curve, ioi_task, path_patch_heads

model = interp.load_model(os.environ.get("INTERP_NOTEBOOK_MODEL", "default"))
if model.name.startswith("tiny"):
    task = Task(clean=["abcab", "xyzxy"], corrupt=["abdab", "xyqxy"], answer=["c", "z"], wrong=["d", "q"], name="toy")
else:
    task = ioi_task(model, n=8, seed=0)
    print(task.clean[0], "→", task.answer[0], "| corrupt:", task.corrupt[0])
tt = task.tokens(model)
print("clean / corrupt logit difference:",
      float(tt.metric(model.logits(tt.clean))), float(tt.metric(model.logits(tt.corrupt))))

# %% [markdown]
# ## EAP over all edges, and the faithfulness of the top-n edges

# %%
circuit = eap(model, tt.clean, tt.corrupt, tt.metric, metric_name="logit_diff", task=task.name)
print(len(circuit), "edges scored; top 5:", circuit.to_frame().head(5).to_dict("records"))
sizes = sorted({0, *[n for n in (10, 100, 1000) if n < len(circuit)], len(circuit)})
curve = faithfulness_curve(model, tt.clean, tt.corrupt, circuit, tt.metric, sizes=sizes)
print("area under the curve:", round(curve.area, 3), "| smallest circuit reaching 0.85:", curve.smallest(0.85))
px.line(curve.to_frame(), x="n_edges", y="faithfulness", log_x=True, markers=True)

# %%
circuit_figure(circuit.top(40), title="top 40 EAP edges")

# %% [markdown]
# ## Direct logit attribution and path patching to the logits, per head

# %%
d = dla(model, tt.clean, tt.answer, tt.wrong)
px.imshow(d.numpy(), labels=dict(x="head", y="layer", color="DLA"), title="direct logit attribution")

# %%
effects = path_patch_heads(model, task, "logits")
px.imshow(effects.numpy(), labels=dict(x="head", y="layer", color="Δ metric"), title="path patching: head → logits")
