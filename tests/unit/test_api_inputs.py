"""``interp.attention_stats`` checks every argument before the forward (issue 15): one ``ValueError`` that names
the bad value, raised from the argument checks (not from inside torch or transformers)."""

import pytest
import torch

import interp
from interp.testing import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", n_layers=2)


IDS = torch.arange(2, 12)[None]  # [1, 10]

CASES = [
    (dict(inputs=torch.tensor([[1, -3, 4]])), "token id -3 at [batch, pos] = (0, 1) is outside the vocabulary"),
    (dict(inputs=torch.tensor([[1, 99, 4]])), "token id 99 at [batch, pos] = (0, 1)"),
    (dict(inputs=IDS[None]), "got shape (1, 1, 10)"),
    (dict(bogus=3), "unknown keyword argument(s) ['bogus']"),
    (dict(attention_mask=torch.ones(1, 7)), "attention_mask has shape (1, 7)"),
    (dict(attention_mask=torch.zeros(1, 10)), "attention_mask row(s) [0] are all zero"),
    (dict(attention_mask=torch.full((1, 10), 2)), "only 0 (padding) and 1"),
    (dict(stats=[]), "got []"),
    (dict(stats=["entropy", "nope"]), "unknown statistic(s) ['nope']"),
    (dict(layers=[]), "layers = [] selects no layer"),
    (dict(layers=[2]), "layer 2 out of range"),
    (dict(layers=["0"]), "layer '0' out of range"),
    (dict(inputs=""), "empty text"),
    (dict(inputs=["a text", "  "]), "empty text"),
    (dict(impl="nonsense"), "got 'nonsense'"),
]


@pytest.mark.parametrize("kw, needle", CASES, ids=[c[1][:30] for c in CASES])
def test_bad_argument_one_clear_line_before_the_forward(model, monkeypatch, kw, needle):
    def no_forward(*a, **k):
        raise AssertionError("the forward ran before the arguments were checked")

    monkeypatch.setattr(model, "forward", no_forward)
    kw = dict(kw)
    inputs, stats = kw.pop("inputs", IDS), kw.pop("stats", ["entropy"])
    with pytest.raises(ValueError) as e:
        interp.attention_stats(model, inputs, stats, **kw)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_one_stat_name_is_one_name_not_letters(model):
    one = interp.attention_stats(model, IDS, "entropy")
    listed = interp.attention_stats(model, IDS, ["entropy"])
    assert list(one.values) == ["entropy"]
    torch.testing.assert_close(one["entropy"], listed["entropy"], rtol=0, atol=0)
    assert one.layers == [0, 1] and interp.attention_stats(model, IDS, ["entropy"], layers=1).layers == [1]
