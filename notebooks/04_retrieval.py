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
# # Retrieval heads (Wu et al. 2024)
#
# A needle (a sentence) is hidden in a long haystack; the model is asked about it and decodes greedily.
# At every decode step each head's *argmax key* is compared with the token just generated: if the head
# looks at the needle token it is copying, the head scores `1/|needle|`. Scores are averaged over samples
# the model answers (ROUGE-1 recall > 0.5). Heads above 0.1 are retrieval heads; masking them (uniform
# attention) should break needle retrieval while masking random other heads should not.
#
# Set `INTERP_NOTEBOOK_MODEL` to pick the model (default: SmolLM2-135M-Instruct, which finds needles only
# in short contexts; the tests use the random `tiny-llama`, which finds nothing).

# %%
import os

import numpy as np
import plotly.express as px

import interp
from interp.analyses import niah, retrieval

name = os.environ.get("INTERP_NOTEBOOK_MODEL", "default")
model = interp.load_model(name)
tiny = name.startswith("tiny-")
model

# %% [markdown]
# ## One needle-in-a-haystack sample
# The harness follows the official code: haystack trimmed to `length` tokens, needle inserted after the
# previous sentence end at `depth` %, the question appended, chat template for instruct models.

# %%
needles = niah.load_needles()
length, buffer = (150, 20) if tiny else (500, 200)
sample = niah.build_sample(model, needles[1], length, 50, needle_idx=1, buffer=buffer)
print(len(sample.prompt_ids), "prompt tokens; needle span", sample.span)
print(repr(model.tokenizer.decode(list(sample.prompt_ids[sample.span[0]:sample.span[1]]))))

# %%
rec = retrieval.score_sample(model, sample, max_new_tokens=4 if tiny else 50)
print(repr(rec["response"]), "ROUGE-1 recall", round(rec["rouge"], 2), "kept:", rec["kept"])
scores = np.array(rec["scores"])
print("heads with a nonzero score:", [f"L{l}H{h}={scores[l, h]:.2f}"
                                      for l, h in retrieval.top_heads(scores, threshold=0.0)][:10])

# %% [markdown]
# ## A small sweep and the head scores
# `niah_sweep` checkpoints every sample when given `checkpoint=...jsonl` and resumes after a kill.

# %%
recs = retrieval.niah_sweep(model, lengths=[length], depths=[0, 100] if tiny else [0, 50],
                            needles=[1] if tiny else [0, 1, 2], max_new_tokens=4 if tiny else 50,
                            buffer=buffer)
counter = retrieval.head_counter(recs)
mat = np.nan_to_num(retrieval.retrieval_head_scores(counter, model.shape.n_layers, model.shape.n_heads))
print(f"{sum(r['kept'] for r in recs)}/{len(recs)} samples answered")
px.imshow(mat, labels=dict(x="head", y="layer", color="retrieval score"), aspect="auto",
          title=f"Retrieval scores of {model.name}")

# %% [markdown]
# The paper's JSON format (`{"l-h": [per-sample scores]}`) round-trips:

# %%
import tempfile  # noqa: E402

path = os.path.join(tempfile.mkdtemp(), "heads.json")
retrieval.save_retrieval_json(counter, path)
assert retrieval.load_retrieval_json(path) == counter
retrieval.top_heads(mat, threshold=0.1)

# %% [markdown]
# ## Causal check
# Uniform attention on the top-k retrieval heads vs k random non-retrieval heads (skipped when no sample
# was answered, e.g. on a random tiny model).

# %%
if any(r["kept"] for r in recs):
    table = retrieval.causal_check(model, mat, k=5, lengths=[length], depths=[0], needles=[1], n_random=1,
                                   buffer=buffer)
    print(table.to_string(index=False))
