# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Safety heads: Ships, Sahara and the refusal check
#
# Zhou et al., *On the Role of Attention Heads in Large Language Model Safety* (ICLR 2025).
#
# - **Ships** of head (l, h) on a harmful query: KL(p ‖ p̃), p the next-token distribution at the last prompt
#   position, p̃ the same with the head's query scaled by 1e-5 (its attention becomes uniform).
# - **Sahara**: greedy head-set search maximising the angle between the top singular direction of the
#   final-layer last-token states of N harmful prompts, clean vs ablated.
# - **Refusal check**: greedy generations judged by the GCG refusal-phrase list, clean and ablated.
#
# The model is `$INTERP_NOTEBOOK_MODEL` (default `"default"`, SmolLM2-135M-Instruct, which does *not* refuse:
# the mechanics run, but the refusal numbers only mean something on a model that refuses, e.g.
# `qwen2.5-coder-0.5b`; see `experiments/safety_causal.py`). Sizes are kept small for a CPU.

# %%
import os

import plotly.express as px

import interp
from interp.analyses.refusal import is_refusal, random_heads, refusal_rate
from interp.analyses.sahara import sahara
from interp.analyses.ships import ships_dataset
from interp.scores import ScoreTable

model = interp.load_model(os.environ.get("INTERP_NOTEBOOK_MODEL", "default"))
template = "chat" if getattr(model.tokenizer, "chat_template", None) else "paper"
print(model, "| template:", template)

# %% [markdown]
# ## Ships on a few AdvBench prompts (all heads, batched: one forward row per ablated head)

# %%
ships = ships_dataset(model, "advbench", n=2, template=template)
s = model.shape
kl_sum = ScoreTable.matrix(ships.scores, "ships_kl_sum", s.n_layers, s.n_heads)
px.imshow(kl_sum, labels=dict(x="head", y="layer", color="Σ KL"), title="Ships: summed KL per head",
          aspect="auto", color_continuous_scale="Viridis")

# %%
top = ships.top_heads(8)
print("top Ships heads:", ", ".join(interp.head_name(layer, head) for layer, head in top))
ships.scores[ships.scores["score"] == "ships_top10_count"].sort_values("value", ascending=False).head(8)

# %% [markdown]
# ## Sahara over the top Ships heads

# %%
sa = sahara(model, "advbench", n=4, set_size=3, candidates=top, template=template)
for (layer, head), angle in zip(sa.heads, sa.angles):
    print(f"{interp.head_name(layer, head)}: set angle {angle:.2f}°")
sa.scores(model.name).head(6)

# %% [markdown]
# ## Refusal rates: clean, top Ships head, Sahara set, random heads

# %%
conditions = {"clean": [], "ships_top1": top[:1], "sahara": sa.heads,
              "random": random_heads(model, len(sa.heads), seed=0)}
for name, heads in conditions.items():
    harmful = refusal_rate(model, "advbench", n=4, ablate=heads, template=template, max_new_tokens=16)
    harmless = refusal_rate(model, "harmless", n=4, ablate=heads, template=template, max_new_tokens=16)
    print(f"{name:>10}: harmful {harmful.rate:.2f}  harmless {harmless.rate:.2f}  e.g. {harmful.generations[0][:60]!r}")

# %%
print(is_refusal("I'm sorry, but I can't assist with that."), is_refusal("Sure, here is how"))
