"""Interventions on tiny random models, checked against independent references: weight surgery (zeroing or
scaling W_O columns), float64 attention computed by hand from cached post-RoPE q/k/v, the source run's own
output (resample of the whole residual stream), and hand-computed means."""

from __future__ import annotations

import json

import pytest
import torch

from interp.hooks import run_with_cache
from interp.interventions import (
    INLINE_MAX,
    Knockout,
    Mean,
    Patch,
    Resample,
    Scale,
    UniformAttention,
    Zero,
    compile_interventions,
    compose,
    load_interventions,
    save_interventions,
)
from interp.sites import Site
from interp.testing import tiny_model

D = 8  # tiny d_head


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", n_layers=2, seed=3)


def _ids(batch=2, n=6, seed=0):
    return torch.randint(2, 64, (batch, n), generator=torch.Generator().manual_seed(seed))


def _with_wo(model, layer, head, factor):
    """Clean logits of a copy of the weights where head's W_O columns are multiplied by ``factor``."""
    w = model.arch.attn(layer).o_proj.weight
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w[:, head * D:(head + 1) * D] *= factor
        return model.logits(_ids())
    finally:
        with torch.no_grad():
            w.copy_(saved)


def test_zero_and_scale_equal_weight_surgery(llama):
    ids = _ids()
    with llama.intervene(Zero(Site(1, "z", 2))):
        zeroed = llama.logits(ids)
    torch.testing.assert_close(zeroed, _with_wo(llama, 1, 2, 0.0), atol=1e-5, rtol=1e-5)
    with llama.intervene(Scale(Site(0, "z", 1), 3.0)):
        scaled = llama.logits(ids)
    torch.testing.assert_close(scaled, _with_wo(llama, 0, 1, 3.0), atol=1e-5, rtol=1e-5)
    assert (scaled - llama.logits(ids)).abs().max() > 1e-3
    # composing two scales on one site multiplies them; compose(...) == passing both
    with llama.intervene(compose(Scale(Site(0, "z", 1), 1.5), Scale(Site(0, "z", 1), 2.0))):
        torch.testing.assert_close(llama.logits(ids), scaled, atol=1e-5, rtol=1e-5)
    with llama.intervene(Scale(Site(0, "z", 1), 1.5), Scale(Site(0, "z", 1), 2.0)):
        torch.testing.assert_close(llama.logits(ids), scaled, atol=1e-5, rtol=1e-5)


def test_positions_restrict_the_edit(llama):
    ids = _ids()
    _, clean = run_with_cache(llama, ids, [Site(1, "resid_pre")])
    for pos, rows in (([1, 3], [1, 3]), (2, [2]), (slice(4, None), [4, 5])):
        with llama.intervene(Zero(Site(0, "resid_post"), pos=pos)):
            _, cache = run_with_cache(llama, ids, [Site(1, "resid_pre")])
        x, c = cache[Site(1, "resid_pre")], clean[Site(1, "resid_pre")]
        keep = [i for i in range(6) if i not in rows]
        assert torch.all(x[:, rows] == 0)
        torch.testing.assert_close(x[:, keep], c[:, keep])


def test_mean_from_inputs_and_cache(llama):
    ids = _ids(batch=3)
    site = Site(0, "z", 3)
    _, cache = run_with_cache(llama, ids, [site])
    m = Mean.from_inputs(llama, site, ids)
    torch.testing.assert_close(m.value.double(), cache[site].double().mean((0, 1)), atol=1e-6, rtol=1e-6)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6, [0, 1, 1, 1, 1, 1]])
    mm = Mean.from_cache(site, cache[site], attention_mask=mask)
    ref = sum(cache[site][b, p].double() for b in range(3) for p in range(6) if mask[b, p]) / int(mask.sum())
    torch.testing.assert_close(mm.value.double(), ref, atol=1e-6, rtol=1e-6)
    per_pos = Mean.from_cache(site, cache[site], over="batch")
    assert per_pos.value.shape == (6, D)
    # mean ablation writes the mean into every position of the head's z
    with llama.intervene(m):
        _, got = run_with_cache(llama, _ids(seed=5), [Site(0, "z")])
    torch.testing.assert_close(got[Site(0, "z")][:, :, 3], m.value.expand(2, 6, D))


def test_resample_whole_residual_gives_the_source_output(llama):
    ids, src = _ids(seed=1), _ids(seed=2)
    with llama.intervene(Resample(Site(0, "resid_pre"), src)):
        got = llama.logits(ids)
    torch.testing.assert_close(got, llama.logits(src), atol=1e-5, rtol=1e-5)
    # one head, some positions: equals patching the cached source z there
    site = Site(1, "z", 0)
    _, cache = run_with_cache(llama, src, [site])
    with llama.intervene(Resample(site, src, pos=[0, 4])):
        a = llama.logits(ids)
    with llama.intervene(Patch(site, cache[site][:, [0, 4]], pos=[0, 4])):
        b = llama.logits(ids)
    torch.testing.assert_close(a, b)
    assert (a - llama.logits(ids)).abs().max() > 1e-4


def _attn_by_hand(q, k, v, scale, blocked=None, window=None):
    """float64 causal attention for one head: q, k, v [batch, pos, d]; returns (pattern, z)."""
    q, k, v = q.double(), k.double(), v.double()
    n = q.shape[1]
    s = q @ k.transpose(-1, -2) * scale
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    allowed = j <= i
    if window is not None:
        allowed &= (i - j) < window
    if blocked is not None:
        allowed &= ~blocked
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.nan_to_num(torch.softmax(s, -1), nan=0.0)
    return p, p @ v


def test_uniform_attention_matches_hand_computed_uniform_mean(llama):
    ids = _ids()
    L, h = 1, 3
    kv = llama.shape.kv_head_of(h)
    _, cache = run_with_cache(llama, ids, [Site(L, "v", kv)])
    with llama.intervene(UniformAttention(L, h)):
        _, got = run_with_cache(llama, ids, [Site(L, "z", h), Site(L, "pattern")])
    n = ids.shape[1]
    uniform = torch.tril(torch.ones(n, n, dtype=torch.float64)) / torch.arange(1, n + 1, dtype=torch.float64)[:, None]
    pat = got[Site(L, "pattern")]
    torch.testing.assert_close(pat[:, h].double(), uniform.expand(2, n, n), atol=2e-5, rtol=0)
    torch.testing.assert_close(got[Site(L, "z", h)].double(), uniform @ cache[Site(L, "v", kv)].double(),
                               atol=1e-4, rtol=1e-4)
    assert (pat[:, 0].double() - uniform).abs().max() > 2e-3  # other heads untouched
    # kv_head= makes every query head of the group uniform
    with llama.intervene(UniformAttention(L, kv_head=1)):
        _, got = run_with_cache(llama, ids, [Site(L, "pattern")])
    for hh in llama.shape.heads_of_kv(1):
        torch.testing.assert_close(got[Site(L, "pattern")][:, hh].double(), uniform.expand(2, n, n), atol=2e-5,
                                   rtol=0)


def test_uniform_attention_respects_sliding_window():
    g = tiny_model("gemma3", n_layers=2, seed=0, sliding_window=3)
    ids = _ids(n=7)
    assert 0 in g.shape.sliding_layers
    with g.intervene(UniformAttention(0, 2)):
        _, got = run_with_cache(g, ids, [Site(0, "pattern", 2)])
    i, j = torch.arange(7)[:, None], torch.arange(7)[None, :]
    allowed = ((j <= i) & (i - j < 3)).double()
    torch.testing.assert_close(got[Site(0, "pattern", 2)].double(), (allowed / allowed.sum(1, keepdim=True))
                               .expand(2, 7, 7), atol=1e-4, rtol=0)


@pytest.mark.parametrize("as_mask", [False, True])
def test_knockout_equals_masked_softmax_by_hand(llama, as_mask):
    ids = _ids()
    L, h = 1, 2
    kv = llama.shape.kv_head_of(h)
    pairs = [(3, 0), (3, 2), (5, 5), (-1, 1), (1, 0), (1, 1)]  # row 1 fully blocked → zero row
    blocked = torch.zeros(6, 6, dtype=torch.bool)
    for qp, kp in pairs:
        blocked[qp, kp] = True
    _, cache = run_with_cache(llama, ids, [Site(L, "q", h), Site(L, "k", kv), Site(L, "v", kv)])
    p_ref, z_ref = _attn_by_hand(cache[Site(L, "q", h)], cache[Site(L, "k", kv)], cache[Site(L, "v", kv)],
                                 D ** -0.5, blocked)
    with llama.intervene(Knockout(L, h, blocked if as_mask else pairs)):
        _, got = run_with_cache(llama, ids, [Site(L, "pattern", h), Site(L, "z", h)])
    torch.testing.assert_close(got[Site(L, "pattern", h)].double(), p_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[Site(L, "z", h)].double(), z_ref, atol=1e-5, rtol=1e-5)
    assert torch.all(got[Site(L, "pattern", h)][:, 1] == 0)
    with pytest.raises(ValueError, match=r"routes mask is \(6, 6\) but the pattern is \[4, 4\]"):
        with llama.intervene(Knockout(L, h, blocked)):
            llama.logits(_ids(n=4))


def test_hooks_removed_after_exception(llama):
    ids = _ids()
    clean = llama.logits(ids)
    for it in (Zero(Site(0, "z", 1)), Knockout(1, None, [(2, 0)]), UniformAttention(0, kv_head=0),
               Zero(Site(1, "resid_post"))):
        with pytest.raises(RuntimeError, match="boom"):
            with llama.intervene(it):
                assert (llama.logits(ids) - clean).abs().max() > 1e-5
                raise RuntimeError("boom")
        torch.testing.assert_close(llama.logits(ids), clean, atol=0, rtol=0)


def test_validation_errors(llama):
    with pytest.raises(ValueError, match=r"KV head 1 is shared by query heads \[2, 3\].*Site\(0, 'z', 3\)"):
        compile_interventions(llama, [Zero(Site(0, "v"), query_head=3)])
    # query_head on a query-indexed site is the same as naming the head
    a = compile_interventions(llama, [Zero(Site(0, "z"), query_head=3)])
    assert list(a) == [Site(0, "z", 3)]
    with pytest.raises(ValueError, match="head 4 out of range"):
        compile_interventions(llama, [Zero(Site(0, "z", 4))])
    with pytest.raises(ValueError, match="KV head.*out of range|head 2 out of range"):
        compile_interventions(llama, [UniformAttention(0, kv_head=2)])
    with pytest.raises(ValueError, match="layer 5 out of range"):
        compile_interventions(llama, [Knockout(5, 0, [(1, 0)])])
    with pytest.raises(ValueError, match="read-only"):
        compile_interventions(llama, [Zero(Site(0, "head_out", 1))])
    with pytest.raises(TypeError, match="interp.Site"):
        compile_interventions(llama, [Zero("L0.z")])
    with pytest.raises(TypeError, match="not an intervention"):
        compile_interventions(llama, ["zero"])
    with pytest.raises(ValueError, match="exactly one of head"):
        UniformAttention(0)
    with pytest.raises(ValueError, match="does not broadcast"):
        with llama.intervene(Patch(Site(0, "z", 0), torch.zeros(3, D))):
            llama.logits(_ids())


def _examples():
    g = torch.Generator().manual_seed(0)
    big = torch.randn(INLINE_MAX + 10, generator=g)
    return [
        Zero(Site(0, "z", 1), pos=[1, 2]), Scale(Site(1, "resid_pre"), 0.5, pos=slice(1, None, 2)),
        Patch(Site(1, "z", 0), torch.randn(2, 6, D, generator=g)), Mean(Site(0, "k", 1), torch.randn(D, generator=g)),
        Resample(Site(0, "v", 0), _ids(), pos=3), UniformAttention(1, 2, eps=1e-4),
        UniformAttention(0, kv_head=1, pos=[4]), Knockout(1, 0, [(3, 1)]),
        Knockout(0, None, torch.eye(6, dtype=torch.bool)), Patch(Site(0, "mlp_out"), big),
        compose(Zero(Site(0, "q", 0)), Scale(Site(1, "attn_out"), 2.0)),
    ]


def test_values_json_roundtrip_and_files(tmp_path):
    items = _examples()
    for it in items:
        d = it.to_json()
        back = type(it).from_json(json.loads(json.dumps(d)))
        assert back == it and hash(back) == hash(it)
    assert Zero(Site(0, "z", 1)) != Zero(Site(0, "z", 2))
    assert Patch(Site(1, "z", 0), torch.zeros(3)) != Patch(Site(1, "z", 0), torch.ones(3))
    assert repr(Zero(Site(0, "z", 1), pos=2)) == "Zero(site=L0.z[H1], pos=2)"
    assert "tensor[float32 4106]" in repr(items[9])
    path = tmp_path / "ivs.json"
    save_interventions(path, items)
    assert (tmp_path / "ivs.json.safetensors").exists()  # the big tensor went beside the JSON
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ivs.json", "ivs.json.safetensors"]  # no temp files
    assert load_interventions(path) == items
    save_interventions(path, items[:2])
    assert not (tmp_path / "ivs.json.safetensors").exists() and load_interventions(path) == items[:2]
    with pytest.raises(FileNotFoundError):
        load_interventions(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not an interp interventions file"):
        load_interventions(tmp_path / "bad.json")


def test_loaded_interventions_act_the_same(tmp_path, llama):
    items = [Zero(Site(0, "z", 1), pos=[1, 2]), UniformAttention(1, kv_head=0), Knockout(1, 3, [(4, 0)])]
    save_interventions(tmp_path / "a.json", items)
    ids = _ids()
    with llama.intervene(*items):
        a = llama.logits(ids)
    with llama.intervene(*load_interventions(tmp_path / "a.json")):
        b = llama.logits(ids)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert (a - llama.logits(ids)).abs().max() > 1e-4
