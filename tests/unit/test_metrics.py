"""interp.metrics against float64 arithmetic written out element by element; per-row vs mean forms; the exact
arithmetic of the copies they replace (sinks.next_token_loss, ships.kl_divergence, circuits.tasks metrics)."""

from __future__ import annotations

import math

import pytest
import torch

from interp import metrics as M


def _logits(seed=0, shape=(3, 5, 13), dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_per_row_and_mean_forms_have_distinct_names_and_shapes():
    lg, cl = _logits(1), _logits(2)
    ids = torch.randint(0, 13, (3, 5), generator=torch.Generator().manual_seed(3))
    pairs = [
        (M.logit_diff(lg, [1, 2, 3], 4), M.mean_logit_diff(lg, [1, 2, 3], 4)),
        (M.answer_prob(lg, [1, 2, 3]), M.mean_answer_prob(lg, [1, 2, 3])),
        (M.kl_to_clean(lg, cl), M.mean_kl_to_clean(lg, cl)),
        (M.next_token_loss(lg, ids), M.mean_next_token_loss(lg, ids)),
    ]
    for row, mean in pairs:
        assert row.shape == (3,) and mean.shape == ()
        assert float(mean) == pytest.approx(float(row.mean()), rel=1e-12)


def test_logit_diff_and_answer_prob_by_hand():
    lg = _logits(0, dtype=torch.float64)
    d = M.logit_diff(lg, [1, 2, 3], [4, 5, 6], pos=2)
    assert d.dtype == torch.float64  # float64 logits are not rounded down
    for b in range(3):
        assert float(d[b]) == float(lg[b, 2, 1 + b] - lg[b, 2, 4 + b])
    multi = M.logit_diff(lg, [[1, 2]] * 3, [[3, 4]] * 3)  # several answers per row: logits summed
    torch.testing.assert_close(multi, lg[:, -1, 1] + lg[:, -1, 2] - lg[:, -1, 3] - lg[:, -1, 4])
    p = M.answer_prob(lg, [[0, 1]] * 3, pos=1)
    x = lg[:, 1]
    ref = (x[:, 0].exp() + x[:, 1].exp()) / x.exp().sum(-1)
    torch.testing.assert_close(p, ref, atol=1e-14, rtol=0)
    half = M.logit_diff(lg.to(torch.bfloat16), 1, 2)
    assert half.dtype == torch.float32  # half precision is upcast


def test_mean_logit_diff_is_the_circuits_task_arithmetic_and_differentiable():
    lg = _logits(4).requires_grad_(True)
    answer, wrong = torch.tensor([1, 5, 7]), torch.tensor([2, 6, 0])
    last = lg[:, -1]
    idx = torch.arange(3)
    old = (last[idx, answer] - last[idx, wrong]).mean()  # analyses/circuits/tasks.py before interp.metrics
    new = M.mean_logit_diff(lg, answer, wrong)
    assert torch.equal(new, old)
    new.backward()
    g = torch.zeros_like(lg)
    g[idx, -1, answer] += 1 / 3
    g[idx, -1, wrong] -= 1 / 3
    torch.testing.assert_close(lg.grad, g)


def test_kl_div_by_hand_clamped_and_any_shape():
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    want = sum(float(p[i] * math.log(p[i] / q[i])) for i in range(3))
    assert float(M.kl_div(p.log(), q.log())) == pytest.approx(want, rel=1e-14)
    assert float(M.kl_div(q.log(), p.log())) != pytest.approx(want, rel=1e-3)  # the direction matters
    lp = torch.log_softmax(_logits(5, shape=(2, 4, 7)), -1)
    kl = M.kl_div(lp, lp.flip(0))
    assert kl.shape == (2, 4) and kl.dtype == torch.float64 and bool((kl > 0).all())
    same = M.kl_div(lp, lp + 1e-9 * torch.randn(lp.shape, generator=torch.Generator().manual_seed(0)))
    assert bool((same >= 0).all())  # rounding would give tiny negatives: clamped
    old = (lp.double().exp() * (lp.double() - lp.flip(0).double())).sum(-1).clamp(min=0)  # ships.kl_divergence
    assert torch.equal(kl, old)


def test_kl_to_clean_by_hand():
    lg, cl = _logits(1), _logits(2)
    kl = M.kl_to_clean(lg, cl, pos=3)
    for b in range(3):
        pc = torch.softmax(cl[b, 3].double(), -1)
        pp = torch.softmax(lg[b, 3].double(), -1)
        assert float(kl[b]) == pytest.approx(float((pc * (pc / pp).log()).sum()), rel=1e-10)
    every = M.kl_to_clean(lg, cl, pos=None)
    torch.testing.assert_close(every, torch.stack([M.kl_to_clean(lg, cl, pos=t) for t in range(5)], 1).mean(1))
    assert float(M.kl_to_clean(cl, cl).abs().max()) == 0.0
    lp = torch.log_softmax(lg[:, -1].double(), -1)
    lc = torch.log_softmax(cl[:, -1].double(), -1)
    old = (lc.exp() * (lc - lp)).sum(-1).mean()  # analyses/circuits/tasks.py kl_to_clean before interp.metrics
    torch.testing.assert_close(M.mean_kl_to_clean(lg, cl), old, atol=1e-15, rtol=0)


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_summed_next_token_loss_equals_the_elementwise_sum_and_its_gradient(chunk):
    torch.manual_seed(0)
    logits = torch.randn(2, 8, 11, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 11, (2, 8))
    by_hand = sum(-(logits[b, t, ids[b, t + 1]] - torch.logsumexp(logits[b, t], -1))
                  for b in range(2) for t in range(7))
    want = torch.autograd.grad(by_hand, logits)[0]
    got = M.summed_next_token_loss(logits, ids, chunk=chunk)
    assert got.dtype == torch.float64 and abs(got.item() - by_hand.item()) < 1e-12
    assert torch.allclose(torch.autograd.grad(got, logits)[0], want, atol=1e-14, rtol=0)
    assert want[:, -1].abs().max() == 0  # the last position predicts nothing
    with torch.no_grad():
        assert abs(float(M.summed_next_token_loss(logits.float(), ids, chunk=chunk)) - float(by_hand)) < 1e-4
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        M.summed_next_token_loss(logits, ids, chunk=0)


def test_next_token_loss_by_hand_with_mask_and_from_pos():
    lg = _logits(6)
    ids = torch.randint(0, 13, (3, 5), generator=torch.Generator().manual_seed(1))
    per = M.next_token_loss_per_token(lg, ids)
    assert per.shape == (3, 4) and per.dtype == torch.float64
    for b in range(3):
        for t in range(4):
            ref = -torch.log_softmax(lg[b, t].double(), -1)[ids[b, t + 1]]
            assert float(per[b, t]) == pytest.approx(float(ref), rel=1e-12)
    lp = torch.log_softmax(lg[:, :-1].double(), -1)  # analyses/sinks.py next_token_loss before interp.metrics
    old = -lp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    for from_pos in (0, 2):
        assert torch.equal(M.next_token_loss(lg, ids, from_pos=from_pos), old[:, from_pos:].mean(-1))
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1]])  # left padding
    got = M.next_token_loss(lg, ids, mask=mask)  # a prediction counts when its target ids[b, t + 1] is real
    torch.testing.assert_close(got, torch.stack([per[0].mean(), per[1, 1:].mean(), per[2, 2:].mean()]))
    torch.testing.assert_close(M.next_token_loss(lg, ids, mask=mask, from_pos=2)[1], per[1, 2:].mean())


def test_bad_input_says_what_is_wrong():
    lg = _logits()
    with pytest.raises(ValueError, match="answer_ids has 2 ids but the logits have 3 batch rows"):
        M.logit_diff(lg, [1, 2], 3)
    with pytest.raises(ValueError, match="pos=7 is not one of the 5 positions"):
        M.answer_prob(lg, 1, pos=7)
    with pytest.raises(ValueError, match=r"logits must be a tensor \[batch, pos, d_vocab\]"):
        M.logit_diff(lg[0], 1, 2)
    with pytest.raises(ValueError, match="do not match"):
        M.kl_to_clean(lg, lg[:2])
    with pytest.raises(ValueError, match="must be \\[batch, pos\\] matching"):
        M.next_token_loss(lg, torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="leaves no target"):
        M.next_token_loss(lg, torch.zeros(3, 5, dtype=torch.long), from_pos=4)
    with pytest.raises(ValueError, match="differ in their last axis"):
        M.kl_div(torch.zeros(3), torch.zeros(4))
