"""Shared test reference: a direct transcription of the official retrieval-head decode loop and scoring
(Wu et al. 2024, ``retrieval_head_detection.py``: ``decode`` + ``retrieval_calculate``) on HF eager attention
weights. Used by ``tests/unit/test_retrieval.py`` (tiny models) and ``tests/parity/test_retrieval_default.py``
(the real default model) as the independent reference for ``interp.analyses.retrieval``."""

from __future__ import annotations

import numpy as np
import torch


def official_eager_decode(model, prompt, n_steps, span):
    """Prefill ``prompt[:-1]``, then feed ``prompt[-1]`` and each greedy token for ``n_steps`` steps with
    ``output_attentions=True``; at every step, for every head, the top-1 key of the last attention row scores
    ``1 / (end - start)`` when it lies in ``span = (start, end)`` and holds the token generated at that step.

    Returns ``(generated [step] list[int], rows, score [layer, head] float64)`` where ``rows[t][layer]`` is the
    step's last attention row ``[head, key_pos]`` in float64.
    """
    hf = model.hf
    n_layers, n_heads = model.shape.n_layers, model.shape.n_heads
    prev = hf.config._attn_implementation
    hf.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = hf(input_ids=torch.tensor([prompt[:-1]]), use_cache=True)
            past, inp = out.past_key_values, torch.tensor(prompt[-1])
            score = np.zeros((n_layers, n_heads))
            gen, rows = [], []
            for _ in range(n_steps):
                out = hf(input_ids=inp.view(1, 1), past_key_values=past, use_cache=True,
                         output_attentions=True)
                past = out.past_key_values
                inp = out.logits[0, -1].argmax()
                gen.append(int(inp))
                assert len(out.attentions) == n_layers, "eager forward returned no attention weights"
                rows.append([a[0, :, -1].double() for a in out.attentions])
                for li in range(n_layers):
                    for h in range(n_heads):
                        i = int(out.attentions[li][0][h][-1].topk(1).indices[0])
                        if span[0] <= i < span[1] and inp.item() == prompt[i]:
                            score[li, h] += 1 / (span[1] - span[0])
    finally:
        hf.set_attn_implementation(prev)
    return gen, rows, score
