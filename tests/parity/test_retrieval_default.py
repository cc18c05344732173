"""Parity on the real default model: the argmax keys captured by the retrieval scorer (SDPA prefill + engine
argmax at each decode step) equal the argmax of HF eager attention weights in the official decode loop, and
both give the same retrieval scores on a short needle-in-a-haystack prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.analyses import niah, retrieval


@pytest.mark.slow
def test_retrieval_capture_matches_eager_official_loop(default_model, monkeypatch):
    model = default_model
    monkeypatch.setattr(retrieval, "_is_stop", lambda m, t: False)
    needle = niah.load_needles()[1]
    sample = niah.build_sample(model, needle, 260, 50, needle_idx=1)
    prompt, span, steps = list(sample.prompt_ids), sample.span, 4
    assert span[0] >= 0
    gen, argmax = retrieval.decode_with_argmax(model, prompt, max_new_tokens=steps)
    hf = model.hf
    prev = hf.config._attn_implementation
    hf.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = hf(input_ids=torch.tensor([prompt[:-1]]), use_cache=True)
            past, inp = out.past_key_values, torch.tensor(prompt[-1])
            ref = np.zeros((model.shape.n_layers, model.shape.n_heads))
            for t in range(steps):
                out = hf(input_ids=inp.view(1, 1), past_key_values=past, use_cache=True, output_attentions=True)
                past, inp = out.past_key_values, out.logits[0, -1].argmax()
                assert int(inp) == gen[t]
                for li, a in enumerate(out.attentions):
                    rows = a[0, :, -1].float()  # [head, key_pos]
                    picked = rows.gather(1, torch.as_tensor(argmax[t, li])[:, None]).squeeze(1)
                    torch.testing.assert_close(picked, rows.max(-1).values, atol=1e-5, rtol=0)
                    for h in range(model.shape.n_heads):
                        i = int(rows[h].topk(1).indices[0])
                        if span[0] <= i < span[1] and int(inp) == prompt[i]:
                            ref[li, h] += 1 / (span[1] - span[0])
    finally:
        hf.set_attn_implementation(prev)
    np.testing.assert_allclose(retrieval.retrieval_scores_from_argmax(argmax, gen, prompt, span), ref)
