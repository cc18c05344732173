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
# # Attention sinks and the head taxonomy
#
# Everything here runs on O(n) attention statistics (`interp.attention_stats`), so the same calls work at the
# model's full context. We measure Sink_1^ε (Gu et al. 2025) on prose, random and repeated tokens, the
# StreamingLLM outside mass, hidden sinks, and the TransformerLens-style previous-token / duplicate / induction
# scores, then check causally that the top induction heads matter. Set `INTERP_NOTEBOOK_MODEL` to pick the
# model (default: the embedded SmolLM2-135M-Instruct; the tests use the random `tiny-llama`).

# %%
import os

import plotly.express as px

import interp
from interp.analyses import head_detector, hidden_sinks, sinks, streaming, waad_fai
from interp.scores import ScoreTable

model = interp.load_model(os.environ.get("INTERP_NOTEBOOK_MODEL", "default"))
tiny = model.name.startswith("tiny")
N = 8 if tiny else 40  # samples per condition (the paper uses 100)
model

# %% [markdown]
# ## Sink_1^0.3 on the three input conditions
# α^{l,h}_1 is the mean attention the first token receives; a head is a sink head on a sample when α > 0.3.

# %%
scores = sinks.sink_scores(model, n_samples=N, n_tokens=64)
scores[scores.layer < 0][["score", "value"]]

# %%
alpha = ScoreTable.matrix(scores, "sink_alpha_prose", model.shape.n_layers, model.shape.n_heads)
px.imshow(alpha, labels=dict(x="head", y="layer", color="α₁"), title="Mean first-token attention α₁ (prose)",
          aspect="auto")

# %% [markdown]
# ## StreamingLLM view: attention outside the first 4 tokens ∪ the last 64

# %%
ids = sinks.condition_samples(model, "prose", 2, 160 if tiny else 256)
stream, _ = streaming.streaming_scores(model, ids, sink=4, window=64)
stream[stream.score == "stream_outside"].sort_values("value").head(8)

# %% [markdown]
# ## Hidden sinks: non-initial keys with α > 0.1, by token class

# %%
hs_scores, hs = hidden_sinks.hidden_sinks(model, ids, threshold=0.1)
hs_scores[hs_scores.score.str.startswith("hidden_sink_share")][["score", "value"]]

# %% [markdown]
# ## Head taxonomy (TransformerLens `detect_head` "mul" semantics) on repeated random tokens

# %%
probe = head_detector.induction_probe(model, n_samples=4, half=50 if tiny else 100)
types = head_detector.head_scores(model, probe)
ind = types["induction_head"]
px.imshow(ind.numpy(), labels=dict(x="head", y="layer", color="score"), title="Induction score", aspect="auto")

# %% [markdown]
# Causal check: zero the top-5 induction heads vs 5 random heads; loss on the repeated half.

# %%
check = head_detector.ablation_check(model, ind, head_detector.induction_probe(model, 4, 50 if tiny else 100,
                                                                                 seed=2), k=5, n_random=3)
{k: check[k] for k in ("top_heads", "dloss_top", "dloss_random", "ratio")}

# %% [markdown]
# ## WAAD / FAI: local heads' windowed attention distance and global heads' future attention influence

# %%
wf, per_token = waad_fai.waad_fai_scores(model, ids[:1], window=10)
px.line(per_token[per_token.score == "waad_local"], x="position", y="value", title="WAAD over local heads")
