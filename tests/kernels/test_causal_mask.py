"""The one causal-mask builder (``_spec.causal_mask``) against its definition written as loops."""

import pytest
import torch

from interp.kernels.attention_stats import causal_mask


@pytest.mark.parametrize("q_len,k_len,offset,window", [
    (5, 5, None, None), (1, 7, None, None), (3, 7, None, 2), (4, 9, 2, None), (4, 9, 0, 3), (6, 6, None, 1),
])
def test_causal_mask_matches_loops(q_len, k_len, offset, window):
    off = k_len - q_len if offset is None else offset
    want = torch.zeros(q_len, k_len, dtype=torch.bool)
    for i in range(q_len):
        for j in range(k_len):
            want[i, j] = j <= i + off and (window is None or i + off - j < window)
    got = causal_mask(q_len, k_len, query_offset=offset, window=window)
    assert got.dtype == torch.bool and torch.equal(got, want)


def test_the_users_share_it():
    from interp.analyses.circuits.all_for_one import stage_masks
    from interp.analyses.duo_attention import streaming_mask

    # sink = recent = everything: plain causal; last-token-only stage: the diagonal
    assert torch.equal(streaming_mask(4, 6, 6, 6), causal_mask(4, 6))
    sm = streaming_mask(5, 5, 1, 2)
    assert sm.tolist()[4] == [True, False, False, True, True]
    masks = stage_masks(3, 4, 1, 2)
    assert torch.equal(masks[0], torch.ones(4, 4, dtype=torch.bool).tril())
    assert torch.equal(masks[2], torch.eye(4, dtype=torch.bool))
