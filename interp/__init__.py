"""interp: a suite for interpreting attention heads.

Public API (everything is imported lazily: nothing heavy happens at ``import interp``)::

    model = interp.load_model("default")            # SmolLM2-135M-Instruct, embedded
    stats = interp.attention_stats(model, ids, stats=["lse", "col_alpha"])   # O(n) memory
    with model.intervene(interp.Zero(interp.Site(3, "z", 5))): ...
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_model": ".model", "Model": ".model", "Shape": ".model",
    "ModelNotAvailableError": ".registry",
    "Site": ".sites", "head_name": ".sites", "parse_head": ".sites",
    "run_with_cache": ".hooks",
    "attention_stats": ".attention", "AttentionStats": ".attention",
    "Capture": ".capture",
    "collect": ".store", "ActivationStore": ".store",
    "Zero": ".interventions", "Mean": ".interventions", "Resample": ".interventions",
    "UniformAttention": ".interventions", "Scale": ".interventions", "Knockout": ".interventions",
    "Patch": ".interventions", "load_interventions": ".interventions", "save_interventions": ".interventions",
    "patch_sweep": ".patching", "PatchResult": ".patching",
    "generate": ".generation", "Generation": ".generation",
    "logit_diff": ".metrics", "mean_logit_diff": ".metrics", "answer_prob": ".metrics",
    "mean_answer_prob": ".metrics", "kl_div": ".metrics", "kl_to_clean": ".metrics", "mean_kl_to_clean": ".metrics",
    "next_token_loss": ".metrics", "next_token_loss_per_token": ".metrics", "mean_next_token_loss": ".metrics",
    "ScoreTable": ".scores",
    "ScaleKeyAttention": ".attention_edits", "HiddenSinkCalibration": ".attention_edits",
    "Redistribute": ".attention_edits", "span_keys": ".attention_edits", "image_keys": ".attention_edits",
    "run_variants": ".variants", "VariantOutput": ".variants", "OnRows": ".row_interventions",
    "PositionMean": ".ablations", "AttendToKey": ".ablations",
    "top_heads": ".heads", "random_heads": ".heads", "causal_check": ".heads", "CausalCheck": ".heads",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'interp' has no attribute {name!r}")


def __dir__():
    return __all__
