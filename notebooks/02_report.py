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
# # The report from Python
#
# `interp.report.run_report` is what `interp report` runs: it executes registered analyses, writes
# `scores.parquet` / `scores.csv`, `per_token.parquet`, a self-contained `report.html` and `manifest.json`,
# and resumes an interrupted run. Set `INTERP_NOTEBOOK_MODEL` to pick the model (default: `default`).

# %%
import os  # noqa: I001
import tempfile

import pandas as pd

import interp
from interp.analyses import registry
from interp.report import run_report

{name: spec.description for name, spec in registry.available().items()}

# %%
model = interp.load_model(os.environ.get("INTERP_NOTEBOOK_MODEL", "default"))
out = tempfile.mkdtemp(prefix="interp-report-")
result = run_report(model, ["attention_basics"], out, n_tokens=64, progress=False)
sorted(os.listdir(out))

# %% [markdown]
# ## The tidy score table
# One row per (analysis, score, layer, head): `model · analysis · score · layer · head · value · n_samples`.

# %%
scores = result.scores
scores.head()

# %% [markdown]
# Top heads by first-token ("sink") mass, and the layer × head matrix of the entropy score:

# %%
sink = scores[scores["score"] == "first_token_mass"].nlargest(5, "value")
sink.assign(head_name=[interp.head_name(r.layer, r.head) for r in sink.itertuples()])

# %%
scores[scores["score"] == "entropy"].pivot(index="layer", columns="head", values="value").round(3)

# %% [markdown]
# The manifest records what produced the numbers:

# %%
{k: result.manifest[k] for k in ["model", "weights_hash", "seed", "params", "timings_s"]}

# %% [markdown]
# Open `report.html` (in `out`) in a browser: the head atlas (a layer × head map of roles; click a head for its
# card). The roles are also a table, one row per (head, role, score) that fired, with the rule:

# %%
pd.read_parquet(result.out / "roles.parquet").head()

# %% [markdown]
# `interp report --static` writes the print-friendly page instead (a heatmap, histogram and top-10 table per
# score); `interp compare A B --out DIR` compares two reports score by score.
