"""Parity on the real default model: the argmax keys captured by the retrieval scorer (SDPA prefill + engine
argmax at each decode step) equal the argmax of HF eager attention weights in the official decode loop, and
both give the same retrieval scores on a short needle-in-a-haystack prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _official_retrieval import official_eager_decode  # tests/_official_retrieval.py

from interp.analyses import niah, retrieval


@pytest.mark.slow
def test_retrieval_capture_matches_eager_official_loop(default_model):
    model = default_model
    if getattr(model.hf, "_interp_bridged", False):
        # another test built a TransformerLens bridge on the shared model; HF's output_attentions no longer
        # reports weights through it, so the official eager loop needs an untouched copy
        import interp

        model = interp.load_model("default")
    needle = niah.load_needles()[1]
    sample = niah.build_sample(model, needle, 260, 50, needle_idx=1)
    prompt, span, steps = list(sample.prompt_ids), sample.span, 4
    assert span[0] >= 0
    gen, argmax = retrieval.decode_with_argmax(model, prompt, max_new_tokens=steps, stop_rule="none")
    ref_gen, rows, ref = official_eager_decode(model, prompt, steps, span)
    assert ref_gen == gen
    for t in range(steps):
        for li in range(model.shape.n_layers):
            r = rows[t][li]  # [head, key_pos]
            picked = r.gather(1, torch.as_tensor(argmax[t, li])[:, None]).squeeze(1)
            torch.testing.assert_close(picked, r.max(-1).values, atol=1e-5, rtol=0)
    np.testing.assert_allclose(retrieval.retrieval_scores_from_argmax(argmax, gen, prompt, span), ref)
