"""Chunked (CPU default) implementation vs the float64 reference, tie-breaking, validation errors."""

from __future__ import annotations

import pytest
import torch
from _attn_helpers import compare, make_inputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interp.kernels.attention_stats import VALID_STATS, chunked_stats, compute_attention_stats
from interp.kernels.attention_stats._spec import validate

# fp32 compute for fp32/fp16/bf16 inputs (the reference upcasts the same rounded inputs to fp64)
TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-3, 2e-3),
    torch.float64: (1e-10, 1e-10),
}


@st.composite
def cases(draw, max_n=300):
    key_pos = draw(st.integers(1, max_n))
    query_pos = draw(st.one_of(st.just(key_pos), st.integers(1, key_pos)))
    kv_head = draw(st.integers(1, 3))
    group = draw(st.sampled_from([1, 2, 3, 4]))
    d_head = draw(st.sampled_from([16, 32, 64, 128, 256]))
    batch = draw(st.integers(1, 2))
    dtype = draw(
        st.sampled_from([torch.float32, torch.float32, torch.float16, torch.bfloat16, torch.float64])
    )
    q, k, tok, key_set = make_inputs(
        batch,
        kv_head * group,
        kv_head,
        query_pos,
        key_pos,
        d_head,
        dtype,
        seed=draw(st.integers(0, 2**16)),
        vocab=draw(st.integers(1, 6)),
    )
    kw = dict(
        stats=VALID_STATS,
        scale=d_head**-0.5 * draw(st.sampled_from([1.0, 4.0])),
        token_ids=tok,
        key_set=key_set,
        top_k=draw(st.integers(1, 7)),
        sink_k=draw(st.integers(0, 5)),
        recent_w=draw(st.integers(1, 40)),
        distance_cap=draw(st.one_of(st.none(), st.integers(0, 50))),
        window=draw(st.one_of(st.none(), st.integers(1, 80))),
        softcap=draw(st.one_of(st.none(), st.just(2.0), st.just(30.0))),
    )
    if draw(st.booleans()):  # left padding, per batch row
        pad = torch.ones(batch, key_pos, dtype=torch.bool)
        for b in range(batch):
            pad[b, : draw(st.integers(0, key_pos - 1))] = False
        kw["key_padding_mask"] = pad
    if draw(st.booleans()):
        kw["stats"] = draw(st.sets(st.sampled_from(VALID_STATS), min_size=1))
    if query_pos < key_pos and draw(st.booleans()):
        kw["query_offset"] = draw(st.integers(0, key_pos - query_pos))
    # explicit tiles; keep the number of (query strip, key tile) pairs small enough for CI
    q_tile = draw(st.sampled_from([None, 7, 16, 64, max(1, query_pos // 3)]))
    k_tile = draw(st.sampled_from([None, 13, 64, max(1, key_pos // 4)]))
    if key_pos <= 24 and draw(st.booleans()):
        q_tile, k_tile = 1, 1
    tiles = (q_tile, k_tile)
    return q, k, kw, tiles


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_chunked_matches_reference(case):
    q, k, kw, (q_tile, k_tile) = case
    spec = validate(q, k, **kw)
    out = chunked_stats(q, k, spec, q_tile=q_tile, k_tile=k_tile)
    rtol, atol = TOL[q.dtype]
    compare(out, q, k, kw, rtol=rtol, atol=atol)


@settings(max_examples=10, deadline=None)
@given(cases(max_n=48))
def test_small_memory_budget_forces_tiles(case):
    q, k, kw, _ = case
    out = compute_attention_stats(q, k, impl="chunked", memory_budget_mb=0.01, **kw)
    rtol, atol = TOL[q.dtype]
    compare(out, q, k, kw, rtol=rtol, atol=atol)


def test_row_lse_skips_pass_one():
    q, k, tok, _ = make_inputs(1, 4, 2, 50, 70, 16, seed=3)
    ref = compute_attention_stats(q, k, stats=["lse", "entropy", "col_sum"], scale=0.25, impl="reference")
    spec = validate(q, k, stats=["lse", "entropy", "col_sum"], scale=0.25, row_lse=ref["lse"].float())
    out = chunked_stats(q, k, spec, q_tile=8, k_tile=9)
    for name in ("entropy", "col_sum"):
        torch.testing.assert_close(out[name].double(), ref[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tiles", [(None, None), (2, 3), (1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_ties_pick_smallest_index(tiles, dtype):
    # keys 0, 2, 5, 6 identical -> equal maximal logits; keys 1, 3 identical and second best
    k = torch.zeros(1, 1, 8, 4, dtype=dtype)
    k[0, 0, [0, 2, 5, 6], 0] = 1.0
    k[0, 0, [1, 3], 0] = 0.5
    q = torch.zeros(1, 2, 8, 4, dtype=dtype)
    q[..., 0] = 1.0
    spec = validate(q, k, stats=["argmax", "topk"], scale=1.0, top_k=6)
    out = chunked_stats(q, k, spec, q_tile=tiles[0], k_tile=tiles[1])
    ref = compute_attention_stats(q, k, stats=["argmax", "topk"], scale=1.0, top_k=6, impl="reference")
    assert out["argmax"][0, 0].tolist() == [0, 0, 0, 0, 0, 0, 0, 0]
    assert out["topk_idx"][0, 0, 7].tolist() == [0, 2, 5, 6, 1, 3]
    assert out["topk_idx"][0, 0, 1].tolist() == [0, 1, -1, -1, -1, -1]
    assert torch.equal(out["topk_idx"], ref["topk_idx"])
    assert torch.equal(out["argmax"], ref["argmax"])
    torch.testing.assert_close(out["topk_prob"].double(), ref["topk_prob"], rtol=1e-6, atol=1e-7)


def test_only_requested_stats_and_dtypes():
    q, k, _, _ = make_inputs(1, 3, 1, 5, 9, 16, dtype=torch.float16)
    out = compute_attention_stats(q, k, stats=["entropy", "topk", "col_alpha"], scale=0.25)
    assert sorted(out) == ["col_alpha", "entropy", "topk_idx", "topk_prob"]
    assert out["entropy"].dtype == torch.float32 and out["topk_idx"].dtype == torch.int64
    assert out["entropy"].shape == (1, 3, 5) and out["col_alpha"].shape == (1, 3, 9)
    assert compute_attention_stats(q, k, stats="lse", scale=0.25)["lse"].shape == (1, 3, 5)
    assert compute_attention_stats(q, k, stats=[], scale=0.25) == {}


BAD = [
    (dict(q=torch.zeros(2, 5, 4)), "ndim=3"),
    (dict(k=torch.zeros(1, 2, 6, 8)), "divisible by kv_head=2"),
    (dict(k=torch.zeros(1, 1, 6, 4)), "d_head mismatch"),
    (dict(stats=["entropy", "bogus"]), "unknown stat name.*bogus.*valid names"),
    (dict(stats=["induction"]), "need token_ids"),
    (dict(stats=["mass_keyset"]), "needs key_set"),
    (dict(k=torch.zeros(1, 1, 3, 8)), "query_pos=5 > key_pos=3"),
    (dict(k=torch.zeros(2, 1, 6, 8)), "batch mismatch"),
    (dict(scale=-1.0), "scale must be a positive"),
    (dict(window=0), "window must be None or an int >= 1"),
    (dict(top_k=0), "top_k must be an int >= 1"),
    (dict(query_offset=4), "query_offset must be an int in"),
    (dict(key_padding_mask=torch.ones(1, 5, dtype=torch.bool)), "key_padding_mask must have shape"),
    (dict(key_padding_mask=torch.ones(1, 6)), "must be a bool tensor"),
    (dict(token_ids=torch.zeros(1, 6)), "token_ids must be an integer"),
    (dict(row_lse=torch.zeros(1, 3, 4)), "row_lse must have shape"),
    (dict(impl="cuda"), "impl must be one of"),
    (dict(q=torch.zeros(1, 3, 5, 8, dtype=torch.int32)), "floating tensor"),
]


@pytest.mark.parametrize("bad,match", BAD, ids=[m.split()[0] for _, m in BAD])
def test_bad_input_messages(bad, match):
    args = dict(q=torch.zeros(1, 3, 5, 8), k=torch.zeros(1, 1, 6, 8), stats=["entropy"], scale=1.0)
    args.update(bad)
    q, k = args.pop("q"), args.pop("k")
    with pytest.raises(ValueError, match=match):
        compute_attention_stats(q, k, **args)
