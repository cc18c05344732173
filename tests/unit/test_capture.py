"""The declared capture protocol (interp.capture.Capture): what a capture is handed, the renamed keyword, nested
captures, the row LSE, and impl checked before any forward."""

import pytest
import torch

import interp
from interp.attention import StatsCapture
from interp.capture import Capture
from interp.hooks import run_with_cache
from interp.sites import Site
from interp.testing import tiny_model


class Recorder(Capture):
    """Keeps what ``capture`` receives."""

    def __init__(self, layers, *, stats=(), impl="auto", lse=False):
        super().__init__(stats=stats, impl=impl)
        self._layers, self._lse, self.seen = layers, lse, {}

    def layers(self, model):
        return self._layers

    def wants_lse(self):
        return self._lse

    def capture(self, layer, module, query, key, attention_mask, *, scaling, softcap, window, row_lse=None):
        self.seen[layer] = dict(q=query.detach().clone(), k=key.detach().clone(), scaling=scaling, row_lse=row_lse,
                                mask=attention_mask)


def _stats(m, ids, stats, layers, **kw):
    return StatsCapture(stats, layers=layers, token_ids=ids, key_padding_mask=None, impl="auto",
                        memory_budget_mb=256, params=kw)


def test_stats_keyword_was_renamed_to_capture():
    m = tiny_model("llama")
    cap = Recorder([0])
    with pytest.raises(TypeError, match=r"renamed: pass the capture as capture="):
        m.hooks({}, stats=cap)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['captures'\]"):
        m.hooks({}, captures=cap)


def test_a_capture_must_subclass_the_protocol():
    class Duck:
        def layers(self, model):
            return [0]

        def capture(self, *a, **kw):
            pass

    with pytest.raises(TypeError, match="interp.capture.Capture"):
        tiny_model("llama").hooks({}, capture=Duck())
    with pytest.raises(TypeError):  # capture() is abstract
        Capture()


def test_capture_sees_post_rope_q_k_after_hooks_on_its_layers_only():
    m = tiny_model("llama")
    s = m.shape
    ids = torch.randint(2, 60, (2, 9), generator=torch.Generator().manual_seed(0))
    _, cache = run_with_cache(m, ids, [Site(1, "q"), Site(1, "k")])
    double_h1 = {Site(1, "q", 1): lambda q, site: 2 * q}
    rec = Recorder([1])
    with torch.no_grad(), m.hooks(double_h1), m.hooks({}, capture=rec):
        m.forward(ids)
    assert list(rec.seen) == [1]  # layer 0 is not captured
    got = rec.seen[1]
    assert got["q"].shape == (2, s.n_heads, 9, s.d_head) and got["k"].shape == (2, s.n_kv_heads, 9, s.d_head)
    want_q = cache[Site(1, "q")].transpose(1, 2).clone()  # the q site is [batch, pos, head, d_head]
    want_q[:, 1] *= 2  # the outer runtime's q hook ran before the capture read q
    torch.testing.assert_close(got["q"], want_q)
    torch.testing.assert_close(got["k"], cache[Site(1, "k")].transpose(1, 2))
    assert got["scaling"] == pytest.approx(s.d_head ** -0.5) and got["row_lse"] is None  # wants_lse False


def test_row_lse_handed_is_the_natural_log_lse_of_the_scaled_logits():
    m = tiny_model("llama")
    ids = torch.randint(2, 60, (1, 12), generator=torch.Generator().manual_seed(1))
    rec = Recorder([0, 1], stats=("lse",), impl="chunked", lse=True)
    with torch.no_grad(), m.hooks({}, capture=rec):
        m.forward(ids)
    for layer in (0, 1):
        got = rec.seen[layer]
        q, k = got["q"].double(), got["k"].double().repeat_interleave(2, 1)
        scores = (q @ k.transpose(-1, -2)) * got["scaling"]
        scores = scores.masked_fill(~torch.ones(12, 12, dtype=torch.bool).tril(), float("-inf"))
        assert got["row_lse"] is not None and got["row_lse"].shape == (1, m.shape.n_heads, 12)
        torch.testing.assert_close(got["row_lse"].double(), torch.logsumexp(scores, -1), rtol=1e-5, atol=1e-5)
    # a pattern hook forces the eager forward: no flash LSE then
    rec2 = Recorder([0], stats=("lse",), impl="chunked", lse=True)
    with torch.no_grad(), m.hooks({Site(0, "pattern"): lambda p, site: None}, capture=rec2):
        m.forward(ids)
    assert rec2.seen[0]["row_lse"] is None


def test_nested_captures_each_get_their_layers():
    m = tiny_model("llama")
    ids = torch.randint(2, 60, (1, 16), generator=torch.Generator().manual_seed(2))
    ids[:, 8:] = ids[:, :8]
    outer = _stats(m, ids, ["entropy", "argmax"], [0, 1])
    inner = _stats(m, ids, ["col_alpha", "induction"], [1])
    rec = Recorder([0])
    with torch.no_grad(), m.hooks({}, capture=outer), m.hooks({}, capture=inner), m.hooks({}, capture=rec):
        logits = m.forward(ids).logits
    torch.testing.assert_close(logits, m.logits(ids), rtol=1e-4, atol=1e-4)
    assert sorted(outer.results) == [0, 1] and sorted(inner.results) == [1] and list(rec.seen) == [0]
    alone_outer = interp.attention_stats(m, ids, stats=["entropy", "argmax"])
    alone_inner = interp.attention_stats(m, ids, stats=["col_alpha", "induction"], layers=[1])
    for layer in (0, 1):
        torch.testing.assert_close(outer.results[layer]["entropy"], alone_outer["entropy"][layer], rtol=1e-5,
                                   atol=1e-5)
        assert torch.equal(outer.results[layer]["argmax"], alone_outer["argmax"][layer])
    for name in ("col_alpha", "induction"):
        torch.testing.assert_close(inner.results[1][name], alone_inner[name][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("env,impl", [(None, "fast"), ("gpu", "auto")])
def test_impl_is_checked_before_the_forward(monkeypatch, env, impl):
    m = tiny_model("llama")
    monkeypatch.setattr(m, "forward", lambda *a, **kw: pytest.fail("the forward ran"))
    if env:
        monkeypatch.setenv("INTERP_ATTN_IMPL", env)
    with pytest.raises(ValueError, match=r"one of \['auto', 'reference', 'chunked', 'fused', 'triton'\]"):
        interp.attention_stats(m, torch.ones(1, 4, dtype=torch.long), stats=["lse"], impl=impl)
    from interp.analyses.retrieval import ArgmaxCapture

    with pytest.raises(ValueError, match="one of"):
        ArgmaxCapture(2, impl=impl)


def test_environment_forces_the_chunked_path_inside_the_forward(monkeypatch):
    from interp.kernels.attention_stats import fused_cpu

    m = tiny_model("llama")
    ids = torch.randint(2, 60, (1, 20), generator=torch.Generator().manual_seed(3))
    stats = ["entropy", "col_alpha", "argmax"]
    auto = interp.attention_stats(m, ids, stats=stats)
    calls = []
    real = fused_cpu.fused_stats
    monkeypatch.setattr(fused_cpu, "fused_stats", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    monkeypatch.setenv("INTERP_ATTN_IMPL", "chunked")
    forced = interp.attention_stats(m, ids, stats=stats)
    assert calls == []
    for name in stats:
        torch.testing.assert_close(forced[name].double(), auto[name].double(), rtol=1e-5, atol=1e-5)
