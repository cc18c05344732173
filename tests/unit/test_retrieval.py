"""Retrieval-head scoring (Wu et al. 2024): hand-worked scores, the captured argmax against an eager decode
scored by a transcription of the official loop, JSON round trip, head masking, checkpoint/resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _official_retrieval import official_eager_decode  # tests/_official_retrieval.py

from interp.analyses import retrieval
from interp.testing import tiny_model

# --- scoring on hand-made argmax sequences ----------------------------------------------------------------

def test_scores_from_argmax_hand_case():
    prompt = [5, 6, 7, 8, 9, 10]          # needle span [2, 5) holds tokens 7, 8, 9
    generated = [7, 8, 3, 9]
    argmax = np.array([[[2, 0, 3], [3, 3, 2], [2, 2, 4], [4, 5, 1]]])  # [layer=1, step, head] written by step
    argmax = argmax.transpose(1, 0, 2)  # → [step, layer, head]
    got = retrieval.retrieval_scores_from_argmax(argmax, generated, prompt, (2, 5))
    # head 0: hits at steps 0 (key2=7), 1 (key3=8), 3 (key4=9) → 3/3; head 1: step 1 only → 1/3;
    # head 2: keys 3,2,4,1 never hold the token generated at that step → 0
    np.testing.assert_allclose(got, [[1.0, 1 / 3, 0.0]])


def test_scores_ignore_keys_outside_prompt_and_missing_span():
    prompt = [4, 4, 4]
    argmax = np.array([[[5]], [[1]]])  # step 0 looks at a generated position, step 1 at the span
    score = retrieval.retrieval_scores_from_argmax
    np.testing.assert_allclose(score(argmax, [4, 4], prompt, (0, 3)), [[1 / 3]])
    np.testing.assert_array_equal(score(argmax, [4, 4], prompt, (-1, -1)), [[0.0]])
    with pytest.raises(ValueError, match="one step per generated token"):
        retrieval.retrieval_scores_from_argmax(argmax, [4], prompt, (0, 3))


def test_head_counter_keeps_only_found_samples_and_averages():
    recs = [{"kept": True, "scores": [[0.5, 0.0]]}, {"kept": False, "scores": [[9.0, 9.0]]},
            {"kept": True, "scores": [[0.1, 0.3]]}]
    counter = retrieval.head_counter(recs)
    assert counter == {"0-0": [0.5, 0.1], "0-1": [0.0, 0.3]}
    np.testing.assert_allclose(retrieval.retrieval_head_scores(counter, 1, 2), [[0.3, 0.15]])
    assert retrieval.top_heads([[0.3, 0.15]], threshold=0.2) == [(0, 0)]
    assert retrieval.top_heads([[0.3, 0.15]], threshold=None, k=2) == [(0, 0), (0, 1)]


def test_json_round_trip_and_official_format(tmp_path):
    counter = {"0-0": [0.5, 0.25], "3-7": [], "12-1": [1.0]}
    path = tmp_path / "sub" / "heads.json"
    retrieval.save_retrieval_json(counter, path)
    assert retrieval.load_retrieval_json(path) == counter
    assert [p.name for p in path.parent.iterdir()] == ["heads.json"]  # no temp file left behind
    official = tmp_path / "official.json"
    official.write_text(json.dumps({"0-1": [0.1, 0.2], "1-0": [0.0]}))  # one line, as json.dump writes
    assert retrieval.load_retrieval_json(official) == {"0-1": [0.1, 0.2], "1-0": [0.0]}
    official.write_text(json.dumps({"L0H1": [0.1]}))
    with pytest.raises(ValueError, match="layer-head"):
        retrieval.load_retrieval_json(official)


# --- captured argmax vs an eager decode scored like the official code ---------------------------------------

def _peaked(family):
    """A tiny model with large q/k weights so attention rows have clear maxima (no float-noise ties)."""
    m = tiny_model(family, n_layers=2, seed=3)
    with torch.no_grad():
        for layer in m.hf.model.layers:
            layer.self_attn.q_proj.weight.mul_(12.0)
            layer.self_attn.k_proj.weight.mul_(12.0)
    return m


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_captured_argmax_matches_eager_official_loop(family):
    model = _peaked(family)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(2, 20, (24,), generator=g).tolist()  # small alphabet → repeated tokens
    gen, argmax = retrieval.decode_with_argmax(model, prompt, max_new_tokens=6, stop_rule="none")  # all 6 steps
    ref_gen, att, ref_score = official_eager_decode(model, prompt, 6, (0, len(prompt)))
    assert gen == ref_gen
    assert argmax.shape == (6, model.shape.n_layers, model.shape.n_heads)
    for t in range(6):
        for li in range(model.shape.n_layers):
            a = att[t][li]  # [head, key_pos]
            picked = a.gather(1, torch.as_tensor(argmax[t, li])[:, None]).squeeze(1)
            # the engine's key is a maximum of the eager row
            torch.testing.assert_close(picked, a.max(-1).values, atol=1e-6, rtol=0)
    np.testing.assert_allclose(retrieval.retrieval_scores_from_argmax(argmax, gen, prompt, (0, len(prompt))),
                               ref_score)


def test_decode_rejects_bad_input(tiny_llama):
    with pytest.raises(ValueError, match="at least 2 tokens"):
        retrieval.decode_with_argmax(tiny_llama, [5])
    with pytest.raises(ValueError, match="max_new_tokens"):
        retrieval.decode_with_argmax(tiny_llama, [5, 6], max_new_tokens=0)


def test_uniform_attention_makes_the_pattern_uniform():
    from interp.sites import Site

    model = _peaked("llama")
    ids = torch.randint(2, 60, (1, 12), generator=torch.Generator().manual_seed(1))
    seen = {}
    keep = lambda x, site: seen.__setitem__(site.head, x.detach().clone())
    handlers = {Site(1, "pattern", 2): keep, Site(1, "pattern", 0): keep}
    with torch.no_grad(), model.intervene(*retrieval.uniform_attention([(1, 2)])), model.hooks(handlers):
        model.forward(ids)
    n = torch.arange(1, 13, dtype=torch.float32)
    expected = torch.tril(torch.ones(12, 12)) / n[:, None]
    torch.testing.assert_close(seen[2][0], expected, atol=1e-4, rtol=0)
    assert not torch.allclose(seen[0][0], expected, atol=1e-2)  # other heads untouched


def test_causal_check_draws_per_seed_from_non_retrieval_heads_and_resumes(tmp_path, monkeypatch):
    model = tiny_model("llama", n_layers=2, n_ctx=512, seed=1)
    scores = np.zeros((2, 4))
    scores[1, 2], scores[0, 1], scores[1, 0] = 0.9, 0.5, 0.1  # 0.1 is not above the threshold
    kw = dict(k=2, lengths=[260], depths=[50], needles=[1], max_new_tokens=3, buffer=20)
    calls = []
    real = retrieval.score_sample
    monkeypatch.setattr(retrieval, "score_sample", lambda *a, **k: calls.append(k["handlers"]) or real(*a, **k))
    prefix = tmp_path / "causal"
    t = retrieval.causal_check(model, scores, seeds=[3, 11, 3], checkpoint_prefix=prefix, **kw)
    assert list(t.condition) == ["none", "top-2 retrieval"] + [f"random-2 non-retrieval #{i}" for i in range(3)]
    assert t.heads[1] == "L1H2 L0H1"
    rnd = [h.split() for h in t.heads[2:]]
    assert all(len(h) == 2 and len(set(h)) == 2 and not {"L1H2", "L0H1"} & set(h) for h in rnd)
    assert rnd[0] == rnd[2] and list(t.seed[2:]) == [3, 11, 3]  # a draw depends on its seed only
    # one decode per condition with k heads masked; the repeated seed 3 reads the first draw's checkpoint
    assert sorted(len(c or {}) for c in calls) == [0, 2, 2, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["causal_none.jsonl", "causal_rand_s11.jsonl",
                                                          "causal_rand_s3.jsonl", "causal_top.jsonl"]
    base = retrieval.niah_sweep(model, lengths=[260], depths=[50], needles=[1], max_new_tokens=3, buffer=20,
                                capture=False)
    calls.clear()
    again = retrieval.causal_check(model, scores, seeds=[3, 11, 3], checkpoint_prefix=prefix, baseline=base, **kw)
    assert calls == []  # every masked condition came back from its checkpoint, the baseline was reused
    assert again.drop(columns="rouge").equals(t.drop(columns="rouge"))
    with pytest.raises(ValueError, match="non-retrieval heads"):
        retrieval.causal_check(model, scores, seeds=[0], **dict(kw, k=7))
