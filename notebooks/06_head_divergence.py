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
# # Head divergence: which heads depend on the context, and how two models differ
#
# *Context-aware head divergence* scores each head by how much its output (its write to the residual stream)
# changes when a context segment is removed — the text analogue of VHD (He et al. 2025), where the context is
# the image. *Model-vs-model* divergence compares two runs head by head: output distance, direct-logit
# attribution difference, and the Jensen–Shannon divergence of their attention, computed from q, k without
# building either n×n pattern. Set `INTERP_NOTEBOOK_MODEL` to pick the model (default: the embedded model).

# %%
import os

import plotly.express as px

import interp
from interp.analyses.head_divergence import context_divergence, top_heads
from interp.analyses.model_divergence import model_divergence
from interp.scores import ScoreTable

model = interp.load_model(os.environ.get("INTERP_NOTEBOOK_MODEL", "default"))
s = model.shape

# %% [markdown]
# ## Context-aware divergence
# Each sample is `(context, prompt)`: the prompt (plus a greedy continuation, teacher-forced in both runs) is
# the shared suffix whose head outputs are compared with and without the context.

# %%
samples = [
    ("The secret password is tangerine. Remember it.", " Question: what is the secret password? Answer:"),
    ("Alice lives in Paris and works as a baker.", " Question: where does Alice live? Answer:"),
]
scores, per_token = context_divergence(model, samples, n_generate=4)
rel = ScoreTable.matrix(scores, "context_rel", s.n_layers, s.n_heads)
px.imshow(rel, labels=dict(x="head", y="layer", color="relative L2"), title="context sensitivity per head")

# %%
print("most context-sensitive heads:", [f"L{l}H{h}" for l, h in top_heads(scores, "context_rel", 8)])

# %% [markdown]
# ## Model vs model: the model against itself with its most context-sensitive head ablated
# An ablation is a value (`interp.Zero(Site(layer, "z", head))`); model B is the same model under it.

# %%
layer, head = top_heads(scores, "context_rel", 1)[0]
ids = model.to_tokens("The secret password is tangerine. Question: what is the secret password? Answer:")
answer = model.tokenizer(" tang", add_special_tokens=False)["input_ids"][0]
wrong = model.tokenizer(" apple", add_special_tokens=False)["input_ids"][0]
df = model_divergence(model, ids, interventions_b=[interp.Zero(interp.Site(layer, "z", head))],
                      answer=answer, wrong=wrong)
js = ScoreTable.matrix(df, "pattern_js", s.n_layers, s.n_heads)
assert layer == 0 or js[:layer].max() < 1e-6  # layers below the ablated head cannot change
px.imshow(js, labels=dict(x="head", y="layer", color="JS"), title=f"attention JS after ablating L{layer}H{head}")
