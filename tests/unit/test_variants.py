"""run_variants (packed rows == one forward per variant, float64 tiny models), its byte budget, OnRows,
PositionMean and AttendToKey against hand computations."""

from __future__ import annotations

import pytest
import torch

from interp.ablations import AttendToKey, PositionMean
from interp.batching import position_ids
from interp.interventions import (
    Intervention,
    Patch,
    Scale,
    UniformAttention,
    Zero,
    compile_interventions,
    load_interventions,
    save_interventions,
)
from interp.row_interventions import OnRows
from interp.sites import Site
from interp.testing import tiny_model
from interp.variants import row_bytes, run_variants, variants_per_chunk


def _ids(batch=2, n=7, seed=0, vocab=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (batch, n), generator=g)


@pytest.fixture(scope="module")
def m64():
    return tiny_model("llama", n_layers=3, dtype=torch.float64)


def _variants(m, ids):
    clean_z = torch.randn(ids.shape[0], ids.shape[1], m.shape.d_head, dtype=torch.float64)
    return [
        [],
        [Zero(Site(2, "z", 1))],
        Scale(Site(1, "q", 0), 1e-5),
        [UniformAttention(0, head=2), Zero(Site(2, "mlp_out"), pos=3)],
        [Patch(Site(1, "z", 3), clean_z)],
        [AttendToKey(1, 2)],
        [PositionMean(Site(2, "z", 0))],
    ]


def _one_by_one(m, ids, variants, mask=None):
    kw = {} if mask is None else {"position_ids": position_ids(mask)}
    out = []
    for v in variants:
        with torch.no_grad(), m.intervene(*([v] if isinstance(v, Intervention) else v)):
            out.append(m.forward(ids, mask, **kw).logits)
    return torch.stack(out)


@pytest.mark.parametrize("reuse_prefix", [True, False])
@pytest.mark.parametrize("max_variants", [1, 3, None])
def test_packed_rows_equal_one_forward_per_variant(m64, reuse_prefix, max_variants):
    ids = _ids()
    vs = _variants(m64, ids)
    want = _one_by_one(m64, ids, vs)
    got = run_variants(m64, ids, vs, max_variants=max_variants, reuse_prefix=reuse_prefix)
    assert got.shape == (len(vs), *ids.shape, m64.shape.d_vocab)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert (want[1:] - want[0]).abs().amax(dim=(1, 2, 3)).min() > 1e-6  # every variant changes the logits


def test_left_padded_batch_and_hidden_states(m64):
    ids = _ids(3, 6, seed=1)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    mask[2, :1] = 0
    vs = [[], [Zero(Site(1, "z", 1))], [PositionMean(Site(2, "z", 2), attention_mask=mask)]]
    want = _one_by_one(m64, ids, vs, mask)
    got = run_variants(m64, ids, vs, attention_mask=mask, max_variants=2, logits_to_keep=1)
    torch.testing.assert_close(got, want[:, :, -1:], rtol=1e-10, atol=1e-10)
    last = run_variants(m64, ids, vs, lambda o: o.hidden_states[-1][:, -1], attention_mask=mask, hidden_states=True)
    for v, variant in enumerate(vs):
        with torch.no_grad(), m64.intervene(*variant):
            hs = m64.forward(ids, mask, output_hidden_states=True, position_ids=position_ids(mask)).hidden_states
        torch.testing.assert_close(last[v], hs[-1][:, -1], rtol=1e-10, atol=1e-10)


def test_budget_sets_rows_per_forward():
    m = tiny_model("llama", n_layers=2)
    ids = _ids(2, 8)
    rows = []
    seen = lambda x, s: rows.append(x.shape[0])  # noqa: E731
    per_row = row_bytes(m, 8)
    budget = 5 * 2 * per_row / 2**20  # exactly 5 variants of 2 rows
    assert variants_per_chunk(m, 2, 8, budget) == 5
    vs = [[Zero(Site(1, "z", h % m.shape.n_heads))] for h in range(12)]
    forward = m.forward
    m.forward = lambda ids, mask=None, **kw: seen(ids, None) or forward(ids, mask, **kw)
    try:
        run_variants(m, ids, vs, memory_budget_mb=budget, reuse_prefix=False)
    finally:
        del m.forward
    assert rows == [10, 10, 4]  # 12 variants × 2 rows, 5 variants per forward
    assert variants_per_chunk(m, 2, 8, 1e-9) == 1  # one variant is never split
    assert row_bytes(m, 8, hidden_states=True) > per_row > row_bytes(m, 8, logits_to_keep=1)


def test_bad_inputs_get_one_clear_line(m64):
    ids = _ids()
    with pytest.raises(ValueError, match="no variants"):
        run_variants(m64, ids, [])
    with pytest.raises(TypeError, match="variant 1"):
        run_variants(m64, ids, [[], ["zero"]])
    with pytest.raises(ValueError, match="memory_budget_mb"):
        run_variants(m64, ids, [[]], memory_budget_mb=0)
    with pytest.raises(ValueError, match=r"\[batch, pos\]"):
        run_variants(m64, ids[0], [[]])


def test_on_rows_touches_only_its_rows(m64):
    ids = _ids(3, 6, seed=2)
    with torch.no_grad():
        clean = m64.forward(ids).logits
        with m64.intervene(OnRows([Zero(Site(0, "z", 1)), Scale(Site(1, "q", 2), 0.0)], rows=[0, 2])):
            got = m64.forward(ids).logits
        with m64.intervene(Zero(Site(0, "z", 1)), Scale(Site(1, "q", 2), 0.0)):
            alone = m64.forward(ids[[0, 2]]).logits
    assert torch.equal(got[1], clean[1])
    torch.testing.assert_close(got[[0, 2]], alone, rtol=1e-12, atol=1e-12)
    assert (got[0] - clean[0]).abs().max() > 1e-6
    with pytest.raises(ValueError, match="row 5 but the forward has 3 batch rows"), torch.no_grad():
        with m64.intervene(OnRows(Zero(Site(0, "z", 1)), rows=5)):
            m64.forward(ids)
    with pytest.raises(TypeError, match="rows must be"):
        OnRows(Zero(Site(0, "z", 1)), rows="all")


def test_on_rows_round_trips_through_json(tmp_path):
    from interp.analyses.vhd import VHR

    items = [OnRows([Zero(Site(0, "z", 1)), PositionMean(Site(1, "z", 0), torch.ones(2, 5))], rows=slice(2, 4)),
             AttendToKey(1, 2, key_pos=0), VHR(alpha=1.5, layers=(0, 2))]
    save_interventions(tmp_path / "iv.json", items)
    back = load_interventions(tmp_path / "iv.json")
    assert back == items and back[2].layers == (0, 2)
    assert back != items[:2] + [VHR(alpha=1.5)]
    with pytest.raises(TypeError, match="vhr.apply"):
        VHR().compile(None)


def test_attend_to_key_equals_one_hot_pattern(m64):
    ids = _ids(2, 6, seed=3)
    n = ids.shape[1]
    one_hot = torch.zeros(n, n, dtype=torch.float64)
    one_hot[:, 0] = 1.0
    with torch.no_grad():
        with m64.intervene(AttendToKey(1, 2)):
            got = m64.forward(ids).logits
        with m64.hooks({Site(1, "pattern", 2): lambda p, s: one_hot.expand_as(p).clone()}):
            want = m64.forward(ids).logits  # a pattern hook runs every head's attention in fp32 (eager_pattern)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (got - m64.forward(ids).logits).abs().max() > 1e-4  # the edit matters


def test_position_mean_by_hand(m64):
    ids = _ids(2, 5, seed=4)
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    seen = {}
    with torch.no_grad(), m64.hooks({Site(1, "z", 0): lambda z, s: seen.setdefault("before", z.clone())}):
        m64.forward(ids, mask)
    handlers = compile_interventions(m64, [PositionMean(Site(1, "z", 0), mask)])
    handlers[Site(1, "z", 0)].append(lambda z, s: seen.setdefault("after", z.clone()))
    with torch.no_grad(), m64.hooks(handlers):
        m64.forward(ids, mask)
    z = seen["before"]  # [batch, pos, d_head]
    want0 = z[0, 1:].mean(0)
    want1 = z[1].mean(0)
    torch.testing.assert_close(seen["after"][0], want0.expand(5, -1))
    torch.testing.assert_close(seen["after"][1], want1.expand(5, -1))


def test_hidden_states_after_a_reused_prefix(m64):
    ids = _ids(2, 5, seed=5)
    vs = [[Zero(Site(2, "z", 1))], [Scale(Site(2, "q", 0), 0.5)]]
    got = run_variants(m64, ids, vs, lambda o: torch.stack([h for h in o.hidden_states if h is not None]),
                       hidden_states=True)
    shown = run_variants(m64, ids, vs[:1], lambda o: torch.tensor([h is None for h in o.hidden_states]),
                         hidden_states=True)
    assert shown[0].tolist() == [True, True, True, False]  # layers 0, 1 skipped: entries 0..2 not computed
    for v, variant in enumerate(vs):
        with torch.no_grad(), m64.intervene(*variant):
            hs = m64.forward(ids, output_hidden_states=True).hidden_states
        torch.testing.assert_close(got[v], hs[-1][None], rtol=1e-10, atol=1e-10)


def test_chunks_group_by_start_layer():
    from interp.variants import _chunks

    starts = [3, 0, 5, 0, 1, 2, 4, 5, 3]
    chunks = _chunks(starts, per=2, max_groups=3)
    assert sorted(i for c in chunks for i in c) == list(range(len(starts)))
    assert all(len(c) <= 2 for c in chunks)
    # groups [0, 1], [2, 3], [4, 5] by the distinct start layers: a chunk never mixes groups
    group = lambda i: min(starts[i] // 2, 2)  # noqa: E731
    assert all(len({group(i) for i in c}) == 1 for c in chunks)
    assert [starts[c[0]] for c in _chunks(starts, per=100, max_groups=3)] == [0, 2, 4]
