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
# # Caching activations and patching them
#
# Load a model, cache activations at typed `Site`s with `interp.run_with_cache`, look at an attention
# pattern, and patch activations by hand with `model.hooks`. Set `INTERP_NOTEBOOK_MODEL` to pick the model
# (default: the embedded SmolLM2-135M-Instruct; the tests use the random `tiny-llama`).

# %%
import os

import plotly.express as px
import torch

import interp
from interp import Site

model = interp.load_model(os.environ.get("INTERP_NOTEBOOK_MODEL", "default"))
model

# %% [markdown]
# ## Cache activations
# A `Site(layer, component, head)` names a place in the model; the cache maps each site to its tensor
# (shapes: `pattern` is `[batch, head, query_pos, key_pos]`, `z` is `[batch, pos, head, d_head]`).

# %%
clean_text = "When Mary and John went to the store, John gave a drink to"
corrupt_text = "When Mary and John went to the store, Mary gave a drink to"
clean = model.to_tokens(clean_text)
corrupt = model.to_tokens(corrupt_text)
assert clean.shape == corrupt.shape, "the two prompts must tokenise to the same length"
last = model.shape.n_layers - 1
sites = [Site(0, "pattern"), Site(last, "z"), Site(last, "resid_post")]
clean_logits, cache = interp.run_with_cache(model, clean, sites)
{str(s): tuple(t.shape) for s, t in cache.items()}

# %% [markdown]
# ## Look at a pattern
# Each row of an attention pattern is a probability distribution over earlier positions.

# %%
pattern = cache[Site(0, "pattern")][0, 0]  # [query_pos, key_pos], layer 0 head 0
assert torch.allclose(pattern.sum(-1), torch.ones(pattern.shape[0]), atol=1e-5)
assert torch.all(pattern.triu(1) == 0), "causal: no attention to later positions"
tokens = model.tokenizer.convert_ids_to_tokens(clean[0].tolist())
labels = [f"{i}:{t}" for i, t in enumerate(tokens)]
px.imshow(pattern.numpy(), x=labels, y=labels, color_continuous_scale="Viridis",
          labels=dict(x="key", y="query", color="attention"), title="L0H0 attention pattern")

# %% [markdown]
# ## Patch by hand
# A hook handler `fn(x, site)` may return a replacement. On a head site (`Site(L, "z", h)`) it sees only
# that head's slice `[batch, pos, d_head]`. Zero-ablating one head changes the logits a little:

# %%
def zero(z, site):
    return torch.zeros_like(z)


with model.hooks({Site(last, "z", 0): zero}):
    ablated_logits = model.logits(clean)
print(f"max |Δ logit| from zeroing L{last}H0:", float((ablated_logits - clean_logits).abs().max()))

# %% [markdown]
# Activation patching: run the *corrupted* prompt but write in the *clean* residual stream after the last
# layer. Everything downstream is then clean, so the logits must equal the clean run's.

# %%
clean_resid = cache[Site(last, "resid_post")]


def put_clean(x, site):
    return clean_resid


corrupt_logits = model.logits(corrupt)
with model.hooks({Site(last, "resid_post"): put_clean}):
    patched_logits = model.logits(corrupt)
print("corrupt vs clean:", float((corrupt_logits - clean_logits).abs().max()))
print("patched vs clean:", float((patched_logits - clean_logits).abs().max()))
assert torch.allclose(patched_logits, clean_logits, atol=1e-4)

# %% [markdown]
# Patching a single head's `z` from the clean run moves the final-position logits part of the way:

# %%
clean_z = cache[Site(last, "z")]  # [batch, pos, head, d_head]


def put_clean_head(z, site):
    return clean_z[:, :, site.head]


effects = []
for h in range(model.shape.n_heads):
    with model.hooks({Site(last, "z", h): put_clean_head}):
        logits = model.logits(corrupt)
    effects.append(float((logits[0, -1] - corrupt_logits[0, -1]).abs().max()))
px.bar(x=[f"L{last}H{h}" for h in range(model.shape.n_heads)], y=effects,
       labels=dict(x="head", y="max |Δ logit| at the last position"), title="Effect of patching one head")
