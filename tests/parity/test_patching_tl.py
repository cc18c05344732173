"""patch_sweep vs TransformerLens's own ``transformer_lens.patching`` functions run on a TL bridge of the same
weights (``get_act_patch_attn_head_out_all_pos``, ``..._by_pos`` and ``get_act_patch_resid_pre`` accept the
bridge): every site of a tiny float64 llama (bridged with a word-level HF tokenizer, since the bridge refuses
the tiny models' byte tokenizer), and the default model (``slow``; restricted to some layers through TL's
``index_df`` to stay fast) on an IOI-style prompt pair, metric = logit difference " Mary" − " John"."""

import pandas as pd
import pytest
import torch
from transformer_lens import patching as tlp

from interp.metrics import logit_diff
from interp.patching import patch_sweep

slow = pytest.mark.slow

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def _setup(m):
    clean, corrupt = m.to_tokens(CLEAN), m.to_tokens(CORRUPT)
    assert clean.shape == corrupt.shape
    mary = m.tokenizer(" Mary", add_special_tokens=False)["input_ids"][0]
    john = m.tokenizer(" John", add_special_tokens=False)["input_ids"][0]
    return clean, corrupt, (lambda lg: logit_diff(lg, mary, john))


def _tiny_bridged(seed=0):
    """A tiny float64 llama as an ``interp.Model`` whose tokenizer the TL bridge accepts (ids ``t0 … t63``)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from interp.model import Model
    from interp.tiny import build_tiny

    hf, _ = build_tiny("llama", seed=seed, dtype=torch.float64, n_layers=3)
    vocab = hf.config.vocab_size
    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t2"))
    tok = PreTrainedTokenizerFast(tokenizer_object=words, bos_token="t0", eos_token="t1", pad_token="t1",
                                  unk_token="t2", name_or_path="tiny-llama", add_bos_token=True)
    return Model(hf, tok, name="tiny-llama", weights_hash=f"random-seed{seed}")


def _tiny_pair(n=9, p=4):
    """Two rows of random ids; the corrupt ones differ from the clean ones at positions ``p`` and ``n − 2``."""
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(2, 64, (2, n), generator=g)
    corrupt = clean.clone()
    corrupt[:, p] = (clean[:, p] + 7 - 2) % 62 + 2
    corrupt[1, n - 2] = (clean[1, n - 2] + 11 - 2) % 62 + 2
    return clean, corrupt


@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_tiny_head_z_by_pos_and_all_pos_equal_tl(reuse_prefix):
    """positions="each" vs ``get_act_patch_attn_head_out_by_pos`` and "all" vs ``..._all_pos``, every layer,
    head and position (TL's full default index), batch of 2, float64."""
    m = _tiny_bridged()
    clean, corrupt = _tiny_pair()
    metric = lambda lg: logit_diff(lg, [5, 9], 7)  # noqa: E731  per row: [batch]
    _, cache = m.tl.run_with_cache(clean)
    tl_metric = lambda lg: metric(lg).mean()  # noqa: E731  TL's metric returns a scalar
    by_pos = tlp.get_act_patch_attn_head_out_by_pos(m.tl, corrupt, cache, tl_metric)  # [layer, pos, head]
    all_pos = tlp.get_act_patch_attn_head_out_all_pos(m.tl, corrupt, cache, tl_metric)  # [layer, head]
    each = patch_sweep(m, clean, corrupt, "z", metric, "each", reuse_prefix=reuse_prefix, batch_size=5)
    assert each.dims == ("layer", "head", "pos")
    torch.testing.assert_close(each.values.double(), by_pos.transpose(1, 2).double(), atol=1e-6, rtol=1e-6)
    ours_all = patch_sweep(m, clean, corrupt, "z", metric, "all", reuse_prefix=reuse_prefix)
    torch.testing.assert_close(ours_all.values.double(), all_pos.double(), atol=1e-6, rtol=1e-6)
    # the comparison has teeth: patches after the first difference move the metric, those before do not
    assert (by_pos[:, 4:] - ours_all.corrupt_value).abs().max() > 1e-3
    torch.testing.assert_close(by_pos[:, :4].double(), torch.full_like(by_pos[:, :4], ours_all.corrupt_value).double())


@slow
def test_head_z_by_pos_equals_tl(default_model):
    m = default_model
    clean, corrupt, metric = _setup(m)
    layers = [21]
    ours = patch_sweep(m, clean, corrupt, "z", metric, "each", layers=layers)
    _, cache = m.tl.run_with_cache(clean)
    n, n_h = clean.shape[1], m.shape.n_heads
    index = pd.DataFrame([(L, p, h) for L in layers for p in range(n) for h in range(n_h)],
                         columns=["layer", "pos", "head"])
    theirs = tlp.get_act_patch_attn_head_out_by_pos(m.tl, corrupt, cache, lambda lg: metric(lg).mean(),
                                                    index_axis_names=None, index_df=index)
    theirs = theirs.reshape(len(layers), n, n_h).transpose(1, 2)
    torch.testing.assert_close(ours.values, theirs.float().cpu(), atol=1e-4, rtol=1e-4)
    assert (theirs - ours.corrupt_value).abs().max() > 0.05


@slow
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


@slow
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
