"""patch_sweep vs TransformerLens's own ``transformer_lens.patching`` functions run on the TL bridge of the
default model (``get_act_patch_attn_head_out_all_pos`` and ``get_act_patch_resid_pre`` accept the bridge;
restricted to some layers through their ``index_df`` argument to stay fast), IOI-style prompt pair,
metric = logit difference " Mary" − " John"."""

import pandas as pd
import pytest
import torch
from transformer_lens import patching as tlp

from interp.metrics import logit_diff
from interp.patching import patch_sweep

pytestmark = pytest.mark.slow

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def _setup(m):
    clean, corrupt = m.to_tokens(CLEAN), m.to_tokens(CORRUPT)
    assert clean.shape == corrupt.shape
    mary = m.tokenizer(" Mary", add_special_tokens=False)["input_ids"][0]
    john = m.tokenizer(" John", add_special_tokens=False)["input_ids"][0]
    return clean, corrupt, (lambda lg: logit_diff(lg, mary, john))


def test_head_z_all_pos_equals_tl(default_model):
    m = default_model
    clean, corrupt, metric = _setup(m)
    layers = [0, 9, 14, 22, 29]
    ours = patch_sweep(m, clean, corrupt, "z", metric, "all", layers=layers)
    _, cache = m.tl.run_with_cache(clean)
    index = pd.DataFrame([(L, h) for L in layers for h in range(m.shape.n_heads)], columns=["layer", "head"])
    theirs = tlp.get_act_patch_attn_head_out_all_pos(m.tl, corrupt, cache, lambda lg: metric(lg).mean(),
                                                     index_axis_names=None, index_df=index)
    theirs = theirs.reshape(len(layers), m.shape.n_heads)
    torch.testing.assert_close(ours.values, theirs.float().cpu(), atol=1e-4, rtol=1e-4)
    assert abs(ours.clean_value - ours.corrupt_value) > 1.0  # the prompt pair does move the metric
    assert (theirs - ours.corrupt_value).abs().max() > 0.05  # and some heads matter


def test_resid_pre_by_pos_equals_tl(default_model):
    m = default_model
    clean, corrupt, metric = _setup(m)
    layers = [0, 8, 16, 24]
    ours = patch_sweep(m, clean, corrupt, "resid_pre", metric, "each", layers=layers)
    _, cache = m.tl.run_with_cache(clean)
    n = clean.shape[1]
    index = pd.DataFrame([(L, p) for L in layers for p in range(n)], columns=["layer", "pos"])
    theirs = tlp.get_act_patch_resid_pre(m.tl, corrupt, cache, lambda lg: metric(lg).mean(),
                                         index_axis_names=None, index_df=index).reshape(len(layers), n)
    torch.testing.assert_close(ours.values, theirs.float().cpu(), atol=1e-4, rtol=1e-4)
    # patching the whole residual at the changed name position restores most of the clean metric early on
    assert (theirs - ours.corrupt_value).abs().max() > 1.0
