"""Head-type scores vs TransformerLens' own scoring functions on dense patterns; the ablation helpers."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import head_detector as tl_hd

from interp.analyses import head_detector
from interp.hooks import run_with_cache
from interp.sites import Site
from interp.testing import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", n_layers=2, seed=11)


def tl_scores(model, ids, name, exclude_bos, exclude_current_token):
    """[layer, head] with TL's detection pattern + compute_head_attention_similarity_score, mean over sequences."""
    sites = [Site(layer, "pattern") for layer in range(model.shape.n_layers)]
    out = torch.zeros(model.shape.n_layers, model.shape.n_heads, dtype=torch.float64)
    for row in ids:
        _, cache = run_with_cache(model, row[None], sites)
        det = getattr(tl_hd, f"get_{name}_detection_pattern")(row[None].cpu())
        for layer in range(model.shape.n_layers):
            for h in range(model.shape.n_heads):
                pat = cache[sites[layer]][0, h].double()
                out[layer, h] += tl_hd.compute_head_attention_similarity_score(
                    pat, det.double(), exclude_bos=exclude_bos, exclude_current_token=exclude_current_token,
                    error_measure="mul")
    return out / ids.shape[0]


@pytest.mark.parametrize("exclude_bos", [False, True])
@pytest.mark.parametrize("exclude_current_token", [False, True])
def test_matches_transformer_lens(model, exclude_bos, exclude_current_token):
    g = torch.Generator().manual_seed(0)
    r = torch.randint(2, 12, (2, 9), generator=g)  # small alphabet: many duplicates, repeats of the first token
    ids = torch.cat([r, r], 1)
    ids[0, 5] = ids[0, 4]  # tok_{i-1} == tok_i: the induction/current-token overlap TL subtracts
    ids[1, 7] = ids[1, 0]
    got = head_detector.head_scores(model, ids, exclude_bos=exclude_bos, exclude_current_token=exclude_current_token)
    for name in head_detector.HEAD_TYPES:
        ref = tl_scores(model, ids, name.replace("_head", "_head"), exclude_bos, exclude_current_token)
        torch.testing.assert_close(got[name], ref, atol=2e-6, rtol=1e-5, msg=f"{name}")


def test_taxonomy_table_and_errors(model):
    ids = head_detector.induction_probe(model, 2, 6, seed=0)
    assert ids.shape == (2, 12) and torch.equal(ids[:, :6], ids[:, 6:])
    df = head_detector.taxonomy_scores(model, ids)
    assert set(df.score) == {"previous_token", "duplicate_token", "induction"} and len(df) == 3 * 8
    with pytest.raises(ValueError, match="pos >= 2"):
        head_detector.head_scores(model, torch.zeros(1, 1, dtype=torch.long))


def test_zero_ablation_loss(model):
    ids = head_detector.induction_probe(model, 2, 6, seed=1)
    with torch.no_grad():
        logits = model.forward(ids).logits.double()
    lp = torch.log_softmax(logits[:, :-1], -1)
    nll = -lp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert head_detector.loss_with_zeroed_heads(model, ids, [], 6) == pytest.approx(float(nll[:, 6:].mean()))

    def zero_all(z, site):
        return torch.zeros_like(z)

    with torch.no_grad(), model.hooks({Site(0, "z"): zero_all}):
        logits0 = model.forward(ids).logits.double()
    lp0 = torch.log_softmax(logits0[:, :-1], -1)
    ref = float(-lp0.gather(-1, ids[:, 1:, None]).squeeze(-1)[:, 6:].mean())
    got = head_detector.loss_with_zeroed_heads(model, ids, [(0, h) for h in range(4)], 6)
    assert got == pytest.approx(ref, rel=1e-6)
    res = head_detector.ablation_check(model, torch.rand(2, 4), ids, k=2, n_random=2)
    assert len(res["dloss_random_draws"]) == 2
