"""Hand-worked cases: check the spec itself (reference) and the O(n) paths on tiny, exactly known inputs."""

from __future__ import annotations

import math

import pytest
import torch

from interp.kernels.attention_stats import VALID_STATS, compute_attention_stats

L2, L3 = math.log(2), math.log(3)

# 3 tokens, d_head 1, q_i = 1 and k = (0, ln 2, 0) with scale 1 -> s_ij = k_j.
# Row 0: A = (1); row 1: A = (1/3, 2/3); row 2: exps (1, 2, 1) -> A = (1/4, 1/2, 1/4).
Q3 = torch.ones(1, 1, 3, 1, dtype=torch.float64)
K3 = torch.tensor([0.0, L2, 0.0], dtype=torch.float64).view(1, 1, 3, 1)
TOK3 = torch.tensor([[5, 7, 5]])
EXPECTED = {
    "lse": [0.0, L3, math.log(4)],
    "max": [0.0, L2, L2],
    "entropy": [0.0, L3 - 2 / 3 * L2, 1.5 * L2],
    "entropy_norm": [0.0, (L3 - 2 / 3 * L2) / L2, 1.5 * L2 / L3],
    "argmax": [0, 1, 1],
    "topk_idx": [[0, -1], [1, 0], [1, 0]],  # row 2: tie between keys 0 and 2 -> smaller index first
    "topk_prob": [[1.0, 0.0], [2 / 3, 1 / 3], [1 / 2, 1 / 4]],
    "mass_first": [1.0, 1 / 3, 1 / 4],  # sink_k = 1
    "mass_recent": [1.0, 1.0, 3 / 4],  # recent_w = 2
    "mass_self": [1.0, 2 / 3, 1 / 4],
    "prev_token": [0.0, 1 / 3, 1 / 2],
    "attn_distance": [0.0, 1 / 3, 3 / 4],  # distance_cap = 1
    "duplicate": [0.0, 0.0, 1 / 4],  # row 2 (token 5) -> key 0 (token 5)
    "induction": [0.0, 0.0, 1 / 2],  # row 2 -> key 1, whose previous token is 5
    "mass_keyset": [0.0, 2 / 3, 1 / 2],  # key_set = {1}
    "col_sum": [1 + 1 / 3 + 1 / 4, 2 / 3 + 1 / 2, 1 / 4],
    "col_alpha": [(1 + 1 / 3 + 1 / 4) / 3, (2 / 3 + 1 / 2) / 2, 1 / 4],
    "col_entropy": [
        -sum(p * math.log(p) for p in (12 / 19, 4 / 19, 3 / 19)),
        -(4 / 7 * math.log(4 / 7) + 3 / 7 * math.log(3 / 7)),
        0.0,
    ],
}
KW3 = dict(
    scale=1.0,
    token_ids=TOK3,
    sink_k=1,
    recent_w=2,
    distance_cap=1,
    top_k=2,
    key_set=torch.tensor([[False, True, False]]),
)


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_three_token_hand_worked(impl):
    out = compute_attention_stats(Q3, K3, stats=VALID_STATS, impl=impl, **KW3)
    for name, want in EXPECTED.items():
        got = out[name][0, 0]
        want = torch.tensor(want, dtype=got.dtype)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_uncapped_distance_and_gqa_groups(impl):
    q = Q3.expand(1, 2, 3, 1)  # 2 query heads share the single kv head
    out = compute_attention_stats(q, K3, stats=["attn_distance", "lse"], scale=1.0, impl=impl)
    torch.testing.assert_close(
        out["attn_distance"][0], torch.tensor([[0.0, 1 / 3, 1.0]] * 2, dtype=torch.float64)
    )
    torch.testing.assert_close(out["lse"][0, 1], torch.tensor(EXPECTED["lse"], dtype=torch.float64))


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_left_padding_row_is_zero_and_column_unattended(impl):
    pad = torch.tensor([[False, True, True]])
    out = compute_attention_stats(Q3, K3, stats=VALID_STATS, impl=impl, key_padding_mask=pad, **KW3)
    assert out["lse"][0, 0, 0] == -math.inf and out["argmax"][0, 0, 0] == -1
    assert out["entropy"][0, 0, 0] == 0 and (out["topk_idx"][0, 0, 0] == -1).all()
    # row 1 sees key 1 only; row 2 sees keys 1, 2 with exps (2, 1)
    torch.testing.assert_close(out["mass_self"][0, 0], torch.tensor([0.0, 1.0, 1 / 3], dtype=torch.float64))
    torch.testing.assert_close(
        out["col_sum"][0, 0], torch.tensor([0.0, 1 + 2 / 3, 1 / 3], dtype=torch.float64)
    )
    torch.testing.assert_close(
        out["col_alpha"][0, 0], torch.tensor([0.0, (5 / 3) / 2, 1 / 3], dtype=torch.float64)
    )
    torch.testing.assert_close(
        out["entropy_norm"][0, 0, 1:], torch.tensor([0.0, 1.0 * (L3 - 2 / 3 * L2) / L2], dtype=torch.float64)
    )
    for v in out.values():
        assert not torch.isnan(v.double()).any()


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_window_and_decode_offset(impl):
    # window 2: row 2 sees keys 1, 2 only -> exps (2, 1)
    out = compute_attention_stats(
        Q3, K3, stats=["mass_self", "lse", "col_alpha"], scale=1.0, window=2, impl=impl
    )
    torch.testing.assert_close(out["mass_self"][0, 0], torch.tensor([1.0, 2 / 3, 1 / 3], dtype=torch.float64))
    # col_alpha: key 0 attended by rows 0, 1 (row 2 is out of window)
    torch.testing.assert_close(out["col_alpha"][0, 0, 0], torch.tensor((1 + 1 / 3) / 2, dtype=torch.float64))
    # decode: the last query alone (query_offset defaults to key_pos - query_pos = 2)
    dec = compute_attention_stats(Q3[:, :, -1:], K3, stats=["entropy", "col_sum"], scale=1.0, impl=impl)
    torch.testing.assert_close(dec["entropy"][0, 0], torch.tensor([1.5 * L2], dtype=torch.float64))
    torch.testing.assert_close(dec["col_sum"][0, 0], torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64))


def test_softcap_reference():
    s = 3.0 * math.tanh(L2 / 3.0)
    out = compute_attention_stats(
        Q3, K3, stats=["max", "mass_self"], scale=1.0, softcap=3.0, impl="reference"
    )
    torch.testing.assert_close(out["max"][0, 0, 1], torch.tensor(s, dtype=torch.float64))
    torch.testing.assert_close(
        out["mass_self"][0, 0, 1], torch.tensor(math.exp(s) / (1 + math.exp(s)), dtype=torch.float64)
    )


def test_matches_transformer_lens_detection_patterns():
    """duplicate / induction equal sum(A * pattern) with TransformerLens head_detector's patterns."""
    tok = torch.tensor([[3, 1, 2, 3, 1, 2, 3]])
    n = tok.shape[1]
    eq = (tok[0, :, None] == tok[0, None, :]).double()
    dup = torch.tril(eq, diagonal=-1)  # dup[i, j] = 1 iff j < i and tok_i == tok_j
    ind = torch.zeros(n, n, dtype=torch.float64)
    ind[:, 1:] = dup[:, :-1]  # shift right by one
    ind = torch.tril(ind)
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 2, n, 8, generator=g), torch.randn(1, 1, n, 8, generator=g)
    from interp.kernels.attention_stats._spec import validate
    from interp.kernels.attention_stats.reference import reference_pattern

    A = reference_pattern(q, k, validate(q, k, stats=(), scale=0.3))[0]
    for impl in ("reference", "chunked"):
        out = compute_attention_stats(
            q, k, stats=["duplicate", "induction"], scale=0.3, token_ids=tok, impl=impl
        )
        torch.testing.assert_close(out["duplicate"].double(), (A * dup).sum(-1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out["induction"].double(), (A * ind).sum(-1), rtol=1e-5, atol=1e-6)
