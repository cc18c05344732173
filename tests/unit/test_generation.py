"""interp.generation: the greedy decoder against a naive no-cache argmax loop (llama / qwen2 / gemma3 with a
sliding window), left-padded batches against one prompt at a time, every stop rule on planted tokens, captures
and hooks in the prefill and the decode steps, and its bad-input errors."""

from __future__ import annotations

import pytest
import torch

from interp import generation
from interp.capture import Capture
from interp.generation import PaperNewlineStop, generate
from interp.interventions import Zero
from interp.model import Model
from interp.sites import Site
from interp.testing import CharTokenizer, tiny_model

FAMILIES = ["llama", "qwen2", "gemma3"]
PROMPTS = [[0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [0, 20, 21], [0, 30, 31, 32, 33, 34]]  # different lengths


def model64(family, seed=3, **kw):
    """float64, so the cached and the no-cache path cannot differ by an argmax tie."""
    return tiny_model(family, n_layers=2, seed=seed, dtype=torch.float64, **kw)


@torch.no_grad()
def naive(model, prompt, n):
    """The spec: re-run the whole sequence, plain HF forward (no interp, no cache), append the argmax."""
    seq, out = list(prompt), []
    for _ in range(n):
        t = int(model.hf(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].argmax())
        out.append(t)
        seq.append(t)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_every_mode_equals_a_naive_no_cache_argmax_loop(family):
    m = model64(family)  # gemma3: sliding window 8 < prompt + 12 tokens
    want = [naive(m, p, 12) for p in PROMPTS]
    for mode in ({}, {"feed_last": True}, {"use_cache": False}):
        g = generate(m, PROMPTS, max_new_tokens=12, stop="none", **mode)
        assert g.tokens == want, mode
        assert g.n_steps == 12 and g.stopped == [None] * 3 and len(g.captures) == 0
        assert g.texts == [m.tokenizer.decode(r) for r in want]
    assert len({tuple(r) for r in want}) == 3, "degenerate model: every prompt continues the same way"


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_equals_each_prompt_alone(family):
    m = model64(family, seed=5)
    logits = lambda step: step.logits.clone()
    batch = generate(m, PROMPTS, max_new_tokens=8, stop="none", on_step=logits)
    ids, mask = batch_ids = generation._batch(m, PROMPTS, None)
    assert int((mask == 0).sum()) > 0  # really padded
    as_tensor = generate(m, ids, attention_mask=mask, max_new_tokens=8, stop="none")
    assert as_tensor.tokens == batch.tokens and batch_ids[0].shape == (3, 11)
    for r, p in enumerate(PROMPTS):
        alone = generate(m, [p], max_new_tokens=8, stop="none", on_step=logits)
        assert alone.tokens[0] == batch.tokens[r]
        for t in range(8):
            torch.testing.assert_close(batch.captures[t][r], alone.captures[t][0], atol=1e-10, rtol=0)


class PlantedTokenizer(CharTokenizer):
    """Decodes ``newline`` as a newline and names ``byte_newline`` ``<0x0A>`` (Llama-2's newline byte)."""

    def __init__(self, newline=None, byte_newline=None):
        super().__init__()
        self.newline, self.byte_newline = newline, byte_newline

    def decode(self, ids, skip_special_tokens=False):
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return "".join("\n" if i == self.newline else super(PlantedTokenizer, self).decode([i]) for i in ids)

    def convert_ids_to_tokens(self, ids):
        return ["<0x0A>" if i == self.byte_newline else "Ċ" if i == self.newline else self.decode([i]) for i in ids]


def _first_new(tokens):
    """A step k ≥ 2 whose token did not occur before it (so a rule planted on it fires first at k)."""
    return next(k for k in range(2, len(tokens)) if tokens[k] not in tokens[:k] and tokens[k] > 1)


def test_each_stop_rule_fires_where_planted():
    m = model64("llama", seed=7)
    free = generate(m, [PROMPTS[0]], max_new_tokens=12, stop="none").tokens[0]
    k = _first_new(free)
    t = free[k]
    with_tok = lambda tok: Model(m.hf, tok, name="tiny-planted")
    cases = [
        (m, dict(stop="eos", eos=[t]), "eos"),
        (with_tok(PlantedTokenizer(newline=t)), dict(stop="newline", eos=[]), "newline"),
        (with_tok(PlantedTokenizer(byte_newline=t)), dict(stop="paper"), "paper"),
        (m, dict(stop="none", stop_strings=[m.tokenizer.decode(free[k - 1:k + 1])]), "stop_string"),
    ]
    for model, kw, name in cases:
        g = generate(model, [PROMPTS[0]], max_new_tokens=12, **kw)
        assert g.tokens[0] == free[:k + 1] and g.stopped == [name] and g.n_steps == k + 1, (name, g.tokens)
    # the paper's rule ignores a newline that is not the <0x0A> byte token (BPE vocabularies): runs to the end
    g = generate(with_tok(PlantedTokenizer(newline=t)), [PROMPTS[0]], max_new_tokens=12, stop="paper")
    assert g.tokens[0] == free and g.stopped == [None]
    # "newline" also stops at end-of-sequence; rules combine as a list
    g = generate(m, [PROMPTS[0]], max_new_tokens=12, stop=["none", generation.EosStop([t])])
    assert g.tokens[0] == free[:k + 1] and g.stopped == ["eos"]
    assert generation.stop_rules(m, "newline", eos=[t])[0](t, [t])
    with pytest.raises(ValueError, match="unknown stop rule 'sometimes'"):
        generate(m, [PROMPTS[0]], stop="sometimes")


def test_paper_rule_by_its_definition():
    tok = PlantedTokenizer(newline=9, byte_newline=13)
    rule = PaperNewlineStop(tok)
    assert rule(13, [13]) and rule(144, [144]) and not rule(9, [9]) and not rule(5, [5])


def test_a_finished_row_stops_and_the_others_go_on():
    m = model64("qwen2", seed=11)
    free = generate(m, PROMPTS, max_new_tokens=10, stop="none").tokens
    k = _first_new(free[1])
    eos = [free[1][k]]
    if any(eos[0] in r for i, r in enumerate(free) if i != 1):
        pytest.skip("planted token also occurs in another row")
    g = generate(m, PROMPTS, max_new_tokens=10, stop="eos", eos=eos)
    assert g.tokens[1] == free[1][:k + 1] and g.tokens[0] == free[0] and g.tokens[2] == free[2]
    assert g.stopped == [None, "eos", None] and g.n_steps == 10


class Recorder(Capture):
    """A capture that records (layer, query_pos, key_pos) of every attention call it sees."""

    def __init__(self, n_layers):
        super().__init__()
        self.calls, self.n_layers = [], n_layers

    def layers(self, model):
        return list(range(self.n_layers))

    def wants_lse(self):
        return False

    def capture(self, layer, module, query, key, attention_mask, *, scaling, softcap, window, row_lse=None):
        self.calls.append((layer, query.shape[2], key.shape[2]))


@pytest.mark.parametrize("feed_last", [True, False])
def test_capture_sees_the_decode_steps_and_on_step_reads_it_per_step(feed_last):
    m = model64("llama")
    p = PROMPTS[2]
    cap = Recorder(m.shape.n_layers)

    def read(step):
        calls, cap.calls = cap.calls, []
        assert step.capture is cap and step.tokens.shape == (1,) and step.logits.shape == (1, m.shape.d_vocab)
        return calls

    g = generate(m, [p], max_new_tokens=5, stop="none", capture=cap, on_step=read, feed_last=feed_last)
    assert len(g.captures) == 5 and g.tokens[0] == naive(m, p, 5)
    for t, calls in enumerate(g.captures):
        if t == 0 and not feed_last:
            assert calls == []  # step 0 is the prefill: the capture is installed for decode steps only
            continue
        keys = len(p) + t  # the query is the token fed at this step; the cache holds everything before it
        assert calls == [(layer, 1, keys) for layer in range(m.shape.n_layers)]


def test_hooks_and_interventions_act_in_prefill_and_decode():
    m = tiny_model("llama", n_layers=2, seed=2)
    g_ = torch.Generator().manual_seed(7)
    for w in m.hf.parameters():
        if w.ndim == 2:
            w.data.normal_(0, 0.3, generator=g_)  # sharp logits: an ablation changes the greedy tokens
    seen = []
    spy = {Site(1, "q"): lambda x, site: seen.append(x.shape[1])}
    clean = generate(m, PROMPTS, max_new_tokens=6, stop="none", handlers=spy)
    assert seen == [11, 1, 1, 1, 1, 1]  # [batch, pos, head, d_head]: the prefill, then one position per step
    ablated = generate(m, PROMPTS, max_new_tokens=6, stop="none", interventions=[Zero(Site(0, "z", 1))])
    d = m.shape.d_head
    o = m.arch.attn(0).o_proj.weight
    saved = o.data.clone()
    try:
        o.data[:, d:2 * d] = 0  # head 1's columns of W_O: the same ablation by weight surgery
        surgery = generate(m, PROMPTS, max_new_tokens=6, stop="none")
    finally:
        o.data.copy_(saved)
    assert ablated.tokens == surgery.tokens and ablated.tokens != clean.tokens


def test_bad_input_errors(tiny_llama):
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
            generate(tiny_llama, [[0, 5]], max_new_tokens=bad)
    with pytest.raises(ValueError, match="exceeds tiny-llama's context of 256"):
        generate(tiny_llama, [[0] * 250], max_new_tokens=10)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        generate(tiny_llama, [[0, 5], [7]], feed_last=True)
    with pytest.raises(ValueError, match="needs the KV cache"):
        generate(tiny_llama, [[0, 5]], feed_last=True, use_cache=False)
    ids = torch.tensor([[0, 5, 6], [0, 7, 1]])
    with pytest.raises(ValueError, match="left padded"):
        generate(tiny_llama, ids, attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]))
    with pytest.raises(ValueError, match="goes with a \\[batch, pos\\] tensor"):
        generate(tiny_llama, [[0, 5]], attention_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(tiny_llama, [[0, 500]])
