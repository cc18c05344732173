"""Core: loading errors, shapes, sites, and the hook runtime on tiny random models."""

import pytest
import torch

import interp
from interp.hooks import run_with_cache
from interp.registry import ModelNotAvailableError
from interp.sites import Site, parse_head
from interp.testing import tiny_model


def test_tiny_models_have_the_requested_shape(tiny_any):
    s = tiny_any.shape
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.d_head, s.positional) == (2, 4, 2, 8, "rope")
    assert s.kv_head_of(3) == 1 and s.heads_of_kv(0) == [0, 1]
    if tiny_any.name == "tiny-gemma3":
        assert s.sliding_layers == (0,) and s.sliding_window == 8


@pytest.mark.parametrize("spec,match", [
    ("no-such-model-xyz", "cannot load model"),
    ("/nonexistent/folder/model.gguf", "does not exist"),
    ("", "non-empty"),
])
def test_load_model_clear_errors(spec, match, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises((ModelNotAvailableError, ValueError), match=match):
        interp.load_model(spec)


def test_packaged_model_missing_says_how_to_install(monkeypatch, tmp_path):
    from interp import registry

    monkeypatch.setattr(registry, "_package_dir", lambda name: None)
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    with pytest.raises(ModelNotAvailableError, match="pip install"):
        registry.locate_gguf(registry.PACKAGED["qwen2.5-coder-0.5b"])


def test_chunk_assembly_checks_hash_and_is_atomic(monkeypatch, tmp_path):
    import hashlib

    from interp import registry

    parts = []
    for i, data in enumerate([b"abc" * 1000, b"defg" * 777]):
        d = tmp_path / f"pkg{i}"
        d.mkdir()
        (d / f"part{i + 1:02d}.bin").write_bytes(data)
        parts.append(d)
    good = hashlib.sha256(b"abc" * 1000 + b"defg" * 777).hexdigest()
    model = registry.PackagedModel("toy", "toy/toy", ("p1", "p2"), ("part01.bin", "part02.bin"), "toy.gguf",
                                   good, "pip install toy", "MIT")
    monkeypatch.setattr(registry, "_package_dir", lambda name: parts[int(name[-1]) - 1])
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    path = registry.locate_gguf(model)
    assert path.read_bytes() == b"abc" * 1000 + b"defg" * 777
    bad = registry.PackagedModel(**{**model.__dict__, "name": "toy2", "sha256": "0" * 64})
    with pytest.raises(ModelNotAvailableError, match="sha256"):
        registry.locate_gguf(bad)
    assert not any(p.suffix in (".part", ".tmp") for p in (tmp_path / "cache").rglob("*"))  # no temp file left
    assert not (tmp_path / "cache" / "toy2" / "toy.gguf").exists()


def test_sites_print_validate_and_map():
    m = tiny_model("llama")
    assert str(Site(1, "z", 3)) == "L1.z[H3]" and str(Site(0, "k", 1)) == "L0.k[KV1]"
    assert Site(1, "resid_pre").tl_name() == "blocks.1.hook_resid_pre"
    assert Site(1, "q").tl_name() == "blocks.1.attn.hook_rot_q"
    assert Site(1, "z").hf_path(m).startswith("model.layers.1.self_attn.o_proj")
    with pytest.raises(ValueError, match="head 4 out of range"):
        Site(0, "z", 4).validate(m.shape)
    with pytest.raises(ValueError, match="head 2 out of range .* 2 KV heads"):
        Site(0, "v", 2).validate(m.shape)
    with pytest.raises(ValueError, match="layer 5 out of range"):
        Site(5, "resid_pre").validate(m.shape)
    with pytest.raises(ValueError, match="unknown component"):
        Site(0, "attn_scores")
    with pytest.raises(ValueError, match="has no heads"):
        Site(0, "resid_pre", 1)
    assert parse_head("L12H3") == (12, 3) and parse_head("12-3") == (12, 3)


def test_hooks_reproduce_the_plain_forward_and_cache_every_site(tiny_any):
    m = tiny_any
    ids = torch.randint(2, 60, (2, 12))
    with torch.no_grad():
        plain = m.hf(ids).logits
    sites = [Site(layer, c) for layer in range(2) for c in
             ("resid_pre", "attn_in", "q", "k", "v", "pattern", "z", "head_out", "attn_out", "resid_mid",
              "mlp_in", "mlp_out", "resid_post")]
    logits, cache = run_with_cache(m, ids, sites + [Site(0, "embed"), Site(0, "logits")])
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-5)
    d = m.shape
    assert cache[Site(1, "q")].shape == (2, 12, d.n_heads, d.d_head)
    assert cache[Site(1, "k")].shape == (2, 12, d.n_kv_heads, d.d_head)
    assert cache[Site(1, "pattern")].shape == (2, d.n_heads, 12, 12)
    # per-head outputs sum to the attention output (no o_proj bias in these families)
    torch.testing.assert_close(cache[Site(1, "head_out")].sum(2), cache[Site(1, "attn_out")], atol=1e-5,
                               rtol=1e-5)
    # residual bookkeeping: resid_post = resid_mid + mlp_out (llama/qwen2 families)
    if m.name != "tiny-gemma3":
        torch.testing.assert_close(cache[Site(0, "resid_mid")] + cache[Site(0, "mlp_out")],
                                   cache[Site(0, "resid_post")], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache[Site(1, "resid_pre")], cache[Site(0, "resid_post")])
    torch.testing.assert_close(cache[Site(0, "logits")], plain, atol=1e-5, rtol=1e-5)


def test_head_hook_edits_only_that_head_and_hooks_are_removed_on_error():
    m = tiny_model("llama")
    ids = torch.randint(2, 60, (1, 10))
    _, clean = run_with_cache(m, ids, [Site(1, "z")])
    with pytest.raises(RuntimeError, match="boom"):
        with m.hooks({Site(1, "z", 2): lambda x, s: torch.zeros_like(x)}):
            _, c = run_with_cache(m, ids, [Site(1, "z")])
            z = c[Site(1, "z")]
            assert torch.all(z[:, :, 2] == 0)
            torch.testing.assert_close(z[:, :, [0, 1, 3]], clean[Site(1, "z")][:, :, [0, 1, 3]])
            raise RuntimeError("boom")
    after, c2 = run_with_cache(m, ids, [Site(1, "z")])
    torch.testing.assert_close(c2[Site(1, "z")], clean[Site(1, "z")])
    assert not any(hasattr(m.arch.attn(layer), "_interp_rts") for layer in range(2))


def test_pattern_hook_forces_eager_and_edits_attention():
    """A pattern edit changes z exactly as a dense recomputation predicts (one-hot on key 0 ⇒ z = v_0)."""
    m = tiny_model("llama")
    ids = torch.randint(2, 60, (1, 9))

    def onehot(p, site):
        out = torch.zeros_like(p)
        out[..., 0] = 1.0
        return out

    with m.hooks({Site(1, "pattern", 3): onehot}):
        _, c = run_with_cache(m, ids, [Site(1, "z"), Site(1, "v")])
    v0 = c[Site(1, "v")][:, 0, m.shape.kv_head_of(3)]  # [batch, d_head]
    torch.testing.assert_close(c[Site(1, "z")][:, :, 3], v0[:, None].expand(-1, 9, -1), atol=1e-6, rtol=1e-5)


def test_bad_tokens_are_rejected_clearly():
    m = tiny_model("llama")
    with pytest.raises(ValueError, match="longer than"):
        m.logits(torch.ones(1, 1000, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.logits(torch.tensor([[1, 2, 999]]))
    with pytest.raises(ValueError, match="empty"):
        m.logits(torch.ones(1, 0, dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids"):
        m.logits(torch.ones(1, 3))
    with pytest.raises(TypeError, match="Site values"):
        m.hooks({"blocks.0.hook_resid_pre": lambda x, s: x})
    with pytest.raises(ValueError, match="no chat template"):
        m.apply_chat_template("hi")
