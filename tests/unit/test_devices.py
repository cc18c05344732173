"""Device maps on the CPU: a tiny model's layers split the way accelerate sees this machine (alternate decoder
layers, the embedding and the unembedding offloaded to disk, i.e. ``meta`` weights loaded on demand by
accelerate's hooks) give the same numbers as the single-device model through every entry point: hooks, the
per-head sites, interventions, ``collect``, ``patch_sweep``, ``attention_stats``, the circuit graph (which runs
the layers itself, gradients included) and generation. Plus ``load_model``'s placement arguments and errors."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.devices import execution_device, materialized, parse_device, parse_dtype, parse_max_memory, place
from interp.sites import Site
from interp.testing import tiny_model

FAMILIES = ["llama", "qwen2", "gemma3"]


def split_map(model, first="disk"):
    """Embedding, every other decoder layer and the unembedding on disk, the rest in CPU memory."""
    a, n = model.arch, model.shape.n_layers
    dm = {f"{a.base_path}.embed_tokens": first, f"{a.base_path}.norm": "cpu", f"{a.base_path}.rotary_emb": "cpu",
          "lm_head": "disk"}
    for layer in range(n):
        dm[f"{a.base_path}.layers.{layer}"] = "disk" if layer % 2 == 0 else "cpu"
    return dm


def pair(family, tmp_path, **kw):
    """(single-device model, the same weights spread by ``split_map``)."""
    kw = {"n_layers": 3, "seed": 1, **kw}
    ref, m = tiny_model(family, **kw), tiny_model(family, **kw)
    m.hf = place(m.hf, "cpu", split_map(m), offload_folder=str(tmp_path / "offload"))
    assert m.hf.model.layers[0].self_attn.q_proj.weight.device.type == "meta"  # really offloaded
    return ref, m


def ids(batch=2, n=9, seed=0):
    return torch.randint(2, 60, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_and_every_site(family, tmp_path):
    ref, m = pair(family, tmp_path)
    x = ids()
    assert m.device == torch.device("cpu")  # the embedding's execution device, not its meta weight's
    torch.testing.assert_close(m.logits(x), ref.logits(x), rtol=0, atol=0)
    sites = [Site(layer, c) for layer in range(3) for c in ("q", "k", "v", "z", "pattern", "head_out", "resid_pre",
                                                            "attn_out", "mlp_out")] + [Site(0, "logits")]
    _, got = interp.run_with_cache(m, x, sites)
    _, want = interp.run_with_cache(ref, x, sites)
    for s in sites:
        torch.testing.assert_close(got[s], want[s], rtol=0, atol=0, msg=str(s))


@pytest.mark.parametrize("family", FAMILIES)
def test_interventions(family, tmp_path):
    ref, m = pair(family, tmp_path)
    x = ids()
    _, cache = interp.run_with_cache(ref, ids(seed=5), [Site(1, "z")])
    ivs = [interp.Zero(Site(0, "z", 1)), interp.Patch(Site(1, "z"), cache[Site(1, "z")]),
           interp.Scale(Site(2, "v", 0), 0.5), interp.UniformAttention(2, head=3)]
    for iv in ivs:
        with m.intervene(iv):
            got = m.logits(x)
        with ref.intervene(iv):
            want = ref.logits(x)
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=repr(iv))
        assert (want - ref.logits(x)).abs().max() > 1e-4, repr(iv)  # the intervention does something


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_stats(family, tmp_path):
    ref, m = pair(family, tmp_path)
    stats = ["lse", "entropy", "mass_first", "col_alpha", "argmax"]
    for impl in ("auto", "chunked"):
        got = interp.attention_stats(m, ids(n=12), stats, impl=impl)
        want = interp.attention_stats(ref, ids(n=12), stats, impl=impl)
        for name in want.values:
            assert got[name].device.type == "cpu"
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
    # left padding: the key padding mask and token ids follow q to its layer's device
    texts = ["the cat sat", "a b a b a b a"]
    got, want = (interp.attention_stats(mm, texts, ["entropy", "mass_first"]) for mm in (m, ref))
    torch.testing.assert_close(got["mass_first"], want["mass_first"], rtol=0, atol=0)


def test_patch_sweep(tmp_path):
    ref, m = pair("llama", tmp_path)
    clean, corrupt = ids(seed=1, n=6), ids(seed=2, n=6)

    def metric(lg):
        return lg[:, -1, 5] - lg[:, -1, 7]

    for comp, pos in (("z", "all"), ("resid_pre", "each"), ("k", "all")):
        got = interp.patch_sweep(m, clean, corrupt, comp, metric, pos, batch_size=2, reuse_prefix=True)
        want = interp.patch_sweep(ref, clean, corrupt, comp, metric, pos, batch_size=2, reuse_prefix=True)
        torch.testing.assert_close(got.values, want.values, rtol=0, atol=0)
        assert (want.values - want.corrupt_value).abs().max() > 1e-4


def test_collect(tmp_path):
    ref, m = pair("gemma3", tmp_path)
    prompts = ["the cat sat on the mat", "hi", "a b a b a"]
    sites = [Site(0, "resid_post"), Site(1, "z"), Site(2, "head_out"), Site(1, "pattern")]
    got = interp.collect(m, prompts, sites, batch_size=2, progress=False)
    want = interp.collect(ref, prompts, sites, batch_size=2, progress=False)
    for s in sites:
        assert got[s].device.type == "cpu"
        torch.testing.assert_close(got[s], want[s], rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_generation(family, tmp_path):
    ref, m = pair(family, tmp_path)
    prompts = ["the cat", "a b a b a b"]
    iv = [interp.Zero(Site(1, "z", 0))]
    for kw in ({}, {"interventions": iv}, {"use_cache": False}):
        got = interp.generate(m, prompts, max_new_tokens=6, stop="none", **kw)
        want = interp.generate(ref, prompts, max_new_tokens=6, stop="none", **kw)
        assert got.tokens == want.tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_circuit_graph_and_eap(family, tmp_path):
    from interp.analyses.circuits import eap_scores
    from interp.graph import Graph, corrupt_outputs, run_graph
    from interp.metrics import mean_logit_diff

    ref, m = pair(family, tmp_path, dtype=torch.float64)
    clean, corrupt = ids(seed=3), ids(seed=4)
    g = Graph.of(m)
    with torch.no_grad():
        torch.testing.assert_close(run_graph(m, clean).logits, run_graph(ref, clean).logits, rtol=0, atol=0)
        torch.testing.assert_close(run_graph(m, clean).logits, m.logits(clean), rtol=1e-6, atol=1e-6)
    outs_m, outs_r = corrupt_outputs(m, corrupt), corrupt_outputs(ref, corrupt)
    torch.testing.assert_close(outs_m, outs_r, rtol=0, atol=0)
    removed = (torch.rand(g.n_nodes, g.n_inputs, generator=torch.Generator().manual_seed(0)) < 0.3).double()
    with torch.no_grad():
        got = run_graph(m, clean, corrupt=outs_m, removed=removed).logits
        want = run_graph(ref, clean, corrupt=outs_r, removed=removed).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)

    def metric(lg):
        return mean_logit_diff(lg, torch.tensor([3, 4]), torch.tensor([6, 7]))

    torch.testing.assert_close(eap_scores(m, clean, corrupt, metric), eap_scores(ref, clean, corrupt, metric),
                               rtol=1e-9, atol=1e-12)
    for p in m.hf.parameters():  # the graph's direct weight reads offloaded them again
        assert p.device.type == "meta" or p.device.type == "cpu"
    assert m.hf.model.layers[0].self_attn.o_proj.weight.device.type == "meta"


def test_materialized_loads_and_offloads_again(tmp_path):
    ref, m = pair("llama", tmp_path)
    attn, want = m.arch.attn(0), ref.arch.attn(0)
    with materialized(attn):
        torch.testing.assert_close(attn.o_proj.weight, want.o_proj.weight, rtol=0, atol=0)
    assert attn.o_proj.weight.device.type == "meta"
    assert execution_device(attn) == torch.device("cpu")


def test_load_model_from_a_folder_with_a_map(tmp_path):
    m0 = tiny_model("qwen2", n_layers=4, seed=2)
    m0.hf.save_pretrained(tmp_path / "w")
    import json

    (tmp_path / "w" / "tokenizer_config.json").write_text(json.dumps({}))
    x = ids()
    want = m0.logits(x)
    dm = split_map(m0, first="cpu")
    from transformers import AutoModelForCausalLM

    from interp.model import _from_pretrained

    place_kw = dict(device=torch.device("cpu"), device_map=dm, max_memory=None,
                    offload_folder=str(tmp_path / "off"))
    hf = _from_pretrained(AutoModelForCausalLM, str(tmp_path / "w"), torch.float32, place_kw, {})
    assert hf.model.layers[0].self_attn.q_proj.weight.device.type == "meta"
    got = interp.Model(hf.eval(), m0.tokenizer, name="w").logits(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # "auto" under a small CPU budget sends the rest to disk; numbers unchanged
    place_kw.update(device_map="auto", max_memory={"cpu": 40_000})
    hf = _from_pretrained(AutoModelForCausalLM, str(tmp_path / "w"), torch.float32, place_kw, {})
    assert "disk" in hf.hf_device_map.values()
    torch.testing.assert_close(interp.Model(hf.eval(), m0.tokenizer, name="w").logits(x), want, rtol=0, atol=0)


def test_load_model_places_tiny_models(tmp_path):
    ref = interp.load_model("tiny-llama")
    m = interp.load_model("tiny-llama", device="auto", device_map={"model": "cpu", "lm_head": "disk"},
                          offload_folder=str(tmp_path), max_memory={"cpu": "2GiB"})
    assert m.device_map == {"model": "cpu", "lm_head": "disk"} and m.max_memory == {"cpu": "2GiB"}
    torch.testing.assert_close(m.logits(ids()), ref.logits(ids()), rtol=0, atol=0)
    m = interp.load_model("tiny-llama", device_map={"model": "cpu", "lm_head": "cpu"})
    assert m.device_map is None or set(m.device_map.values()) == {"cpu"}


def test_bf16_on_cpu_works():
    m32, m16 = interp.load_model("tiny-llama"), interp.load_model("tiny-llama", dtype="bf16")
    assert m16.dtype == torch.bfloat16
    x = ids(n=16)
    a32 = interp.attention_stats(m32, x, ["entropy", "lse"])
    a16 = interp.attention_stats(m16, x, ["entropy", "lse"])
    # bf16 weights and activations (8 mantissa bits) through 2 layers: agree to bf16 accuracy, not bitwise
    torch.testing.assert_close(a16["entropy"].float(), a32["entropy"], rtol=0.05, atol=0.05)
    assert not torch.equal(a16["entropy"].float(), a32["entropy"])


@pytest.mark.parametrize("kw,match", [
    (dict(device="gpu"), "unknown device 'gpu'"),
    (dict(device="cuda:0x"), "unknown device"),
    (dict(dtype="int8"), "unknown dtype 'int8'"),
    (dict(device_map={"foo": "cpu"}), "names module 'foo'"),
    (dict(device_map={"model.layers.0": "cpu"}), "places no device for"),
    (dict(device_map={"model": "disk", "lm_head": "cpu"}), "pass offload_folder"),
    (dict(device_map="balanced"), "device_map must be None, 'auto' or a dict"),
    (dict(max_memory={"cpu": "lots"}), "memory size 'lots'"),
    (dict(max_memory={"npu": "1GiB"}), "unknown device 'npu'"),
])
def test_bad_placement_is_one_clear_line(kw, match):
    with pytest.raises(ValueError, match=match) as e:
        interp.load_model("tiny-llama", **kw)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_names_the_alternative():
    with pytest.raises(ValueError, match="no CUDA GPU is visible; use device='cpu'"):
        parse_device("cuda:1")
    assert parse_device("auto") == torch.device("cpu")


def test_parsers():
    assert parse_dtype("torch.bfloat16") is torch.bfloat16 and parse_dtype(torch.float16) is torch.float16
    assert parse_max_memory({"cpu": "1KiB", "disk": 5}) == {"cpu": 1024, "disk": 5}
    assert parse_device(torch.device("cpu")) == torch.device("cpu")


def test_kernel_choice_follows_each_layers_gpu(monkeypatch):
    """Layers on two GPUs of different generations (faked capabilities: cuda:0 sm90, cuda:1 sm75): the
    dispatcher probes the device of each layer's q, so bf16 takes Triton on cuda:0 and falls back to the chunked
    path (with its warning) on cuda:1; INTERP_ATTN_IMPL forces one path on both."""
    from interp.kernels.attention_stats.dispatch import ENV, Request, plan

    pytest.importorskip("triton")
    cc = {0: (9, 0), 1: (7, 5)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: cc[torch.device(d).index])
    req = dict(dtype=torch.bfloat16, query_pos=64, key_pos=64, stats=frozenset({"entropy"}), want_output=True,
               lse_wanted=True)
    p0, p1 = plan(Request("cuda:0", **req), env={}), plan(Request("cuda:1", **req), env={})
    assert (p0.impl, p0.fallback, p0.warning) == ("triton", "chunked", None)
    assert p1.impl == "chunked" and "sm75" in p1.warning
    for dev in ("cuda:0", "cuda:1"):
        assert plan(Request(dev, **req), env={ENV: "chunked"}).impl == "chunked"
    assert plan(Request("cuda:0", **dict(req, dtype=torch.float16)), env={}).impl == "triton"
    assert plan(Request("cuda:1", **dict(req, dtype=torch.float16)), env={}).impl == "triton"  # fp16 runs on sm75
