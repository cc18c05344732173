"""DuoAttention gates (Xiao et al. 2024): the gating math against independent dense references, the TSV
format, deployment rules, and gate training where streaming attention is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.analyses import duo_attention as duo
from interp.testing import tiny_model


def _qkv(seed=0, b=1, h=4, g=2, n=12, d=8):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, n, d, generator=gen, dtype=torch.float64),
            torch.randn(b, g, n, d, generator=gen, dtype=torch.float64),
            torch.randn(b, g, n, d, generator=gen, dtype=torch.float64))


def _dense_reference(q, k, v, sink, recent, scale):
    """Per-row loops in float64: softmax over keys j ≤ i with j < sink or i − j < recent."""
    b, h, n, d = q.shape
    group = h // k.shape[1]
    out = torch.zeros_like(q)
    for hh in range(h):
        for i in range(n):
            keys = [j for j in range(i + 1) if j < sink or i - j < recent]
            s = torch.stack([(q[0, hh, i] * k[0, hh // group, j]).sum() * scale for j in keys])
            w = torch.softmax(s, 0)
            out[0, hh, i] = sum(w[t] * v[0, hh // group, j] for t, j in enumerate(keys))
    return out


def test_alpha_one_is_full_causal_attention():
    q, k, v = _qkv()
    got = duo.gated_attention(q, k, v, torch.ones(2, dtype=torch.float64), scale=0.3, sink=2, recent=3)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True, scale=0.3)
    torch.testing.assert_close(got, ref)


def test_alpha_zero_is_sink_plus_recent_attention_and_mixing_is_per_kv_head():
    q, k, v = _qkv(1)
    ref = _dense_reference(q, k, v, sink=2, recent=3, scale=0.3)
    got = duo.gated_attention(q, k, v, torch.zeros(2, dtype=torch.float64), scale=0.3, sink=2, recent=3)
    torch.testing.assert_close(got, ref)
    full = _dense_reference(q, k, v, sink=12, recent=12, scale=0.3)
    mixed = duo.gated_attention(q, k, v, torch.tensor([0.25, 1.0], dtype=torch.float64), scale=0.3, sink=2,
                                recent=3)
    torch.testing.assert_close(mixed[:, :2], 0.25 * full[:, :2] + 0.75 * ref[:, :2])  # KV head 0 → heads 0, 1
    torch.testing.assert_close(mixed[:, 2:], full[:, 2:])
    with pytest.raises(ValueError, match="one gate per KV head"):
        duo.gated_attention(q, k, v, torch.ones(3), scale=0.3, sink=2, recent=3)


def test_gates_on_a_model_with_alpha_one_reproduce_the_model():
    model = tiny_model("llama", n_layers=2)
    ids = torch.randint(2, 60, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.hf.model(input_ids=ids).last_hidden_state
        gates = duo.DuoGates(model, sink=2, recent=4, init=1.0)
        with gates.active():
            got = model.hf.model(input_ids=ids).last_hidden_state
        gates.alpha.fill_(0.0)
        with gates.active():
            stream = model.hf.model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(stream, ref, atol=1e-3)  # the streaming path does change the output


def test_training_drives_gates_to_zero_when_streaming_is_exact():
    model = tiny_model("llama", n_layers=2, n_ctx=512)
    filler = " ".join(["lorem ipsum dolor sit amet."] * 40)
    log = []
    gates = duo.train_gates(model, steps=6, n_tokens=60, n_keys=2, sink=4, recent=64, lam=0.05, lr=0.2,
                            filler=filler, log=log.append)
    assert all(r["distill"] < 1e-10 for r in log)  # recent ≥ sequence length: streaming == full attention
    assert float(gates.alpha.detach().max()) < 0.1  # only the L1 term acts: every gate falls
    assert all(p.requires_grad for p in model.hf.parameters())  # weights restored to trainable


def test_tsv_round_trip_and_deployment(tmp_path):
    a = np.array([[0.9, 0.1, 0.5], [0.0, 1.0, 0.3]])
    path = tmp_path / "alpha.tsv"
    duo.save_duo_tsv(a, path)
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(len(x.split("\t")) == 3 for x in lines)  # rows layers, tab columns
    np.testing.assert_allclose(duo.load_duo_tsv(path), a)
    np.testing.assert_array_equal(duo.retrieval_kv_heads(a, threshold=0.5), [[1, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(duo.retrieval_kv_heads(a, sparsity=0.5, threshold=None),
                                  [[1, 0, 1], [0, 1, 0]])  # median 0.4: above → retrieval
    with pytest.raises(ValueError, match="sparsity"):
        duo.retrieval_kv_heads(a, sparsity=1.5)


def test_streaming_proxy_matches_the_dense_pattern():
    from interp.hooks import run_with_cache
    from interp.sites import Site

    model = tiny_model("llama", n_layers=2)
    ids = torch.randint(2, 60, (1, 24), generator=torch.Generator().manual_seed(2))
    got = duo.streaming_proxy(model, ids, sink=2, recent=4)
    _, cache = run_with_cache(model, ids, [Site(l, "pattern") for l in range(2)])
    keep = duo.streaming_mask(24, 24, 2, 4)
    for layer in range(2):
        p = cache[Site(layer, "pattern")][0].double()  # [head, query_pos, key_pos]
        outside = (p * ~keep).sum(-1)[:, 6:].mean(-1)  # query rows ≥ sink + recent, as the proxy
        np.testing.assert_allclose(got[layer], outside.view(2, 2).mean(-1).numpy(), atol=1e-5)
    assert duo.spearman([1, 2, 3], [10, 30, 20]) == pytest.approx(0.5)


def test_training_resumes_from_alpha_and_logs_alpha():
    model = tiny_model("llama", n_layers=2, n_ctx=512)
    filler = " ".join(["lorem ipsum dolor sit amet."] * 40)
    kw = dict(n_tokens=60, n_keys=2, sink=4, recent=64, lam=0.05, lr=0.2, filler=filler)
    full, part = [], []
    duo.train_gates(model, steps=4, log=full.append, **kw)
    duo.train_gates(model, steps=2, log=part.append, **kw)
    # streaming is exact here, so the only gradient is λ·sign(α) and Adam's moments (which restart on resume)
    # give the same step -lr each time: resuming from step 2's α reproduces steps 2-3 of the full run
    duo.train_gates(model, steps=2, log=part.append, alpha_init=part[-1]["alpha"], start_step=2, **kw)
    assert [r["step"] for r in part] == [0, 1, 2, 3]
    np.testing.assert_allclose(np.asarray(part[-1]["alpha"]), np.asarray(full[-1]["alpha"]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(full[-1]["alpha"]), 1 - 4 * 0.2, atol=1e-5)
    stopped = []
    duo.train_gates(model, steps=50, log=stopped.append, max_seconds=0.0, **kw)
    assert len(stopped) == 1  # the time budget is checked after each step
    with pytest.raises(ValueError, match="alpha_init"):
        duo.train_gates(model, steps=1, alpha_init=np.ones((3, 2)), **kw)


def test_kv_aggregate_by_hand():
    scores = np.array([[0.1, 0.5, 0.0, 0.2], [np.nan, 0.3, 0.9, 0.6]])  # [layer=2, head=4], 2 KV heads
    np.testing.assert_allclose(duo.kv_aggregate(scores, 2, "max"), [[0.5, 0.2], [0.3, 0.9]])
    np.testing.assert_allclose(duo.kv_aggregate(scores, 2, "mean"), [[0.3, 0.1], [0.15, 0.75]])
    with pytest.raises(ValueError, match="divisible"):
        duo.kv_aggregate(scores, 3)
    with pytest.raises(ValueError, match="how"):
        duo.kv_aggregate(scores, 2, "median")
