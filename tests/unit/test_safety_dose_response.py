"""Dose-response refusal study helpers: Wilson interval and exact McNemar p against independent references
(the quadratic the Wilson bounds solve, solved numerically; binomial sums by hand); the first-token
log-probs returned by hooked batched generation against weight surgery one prompt at a time; clear errors
for bad input (no chat template, empty prompt file, prompt longer than the context) in every entry point;
and the benchmark's checkpoint (a rerun skips finished units) on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from interp.analyses._safety_data import PAPER_TEMPLATE
from interp.analyses.refusal import generate, refusal_rate
from interp.analyses.sahara import sahara
from interp.analyses.ships import ships_dataset, ships_kl
from interp.stats import mcnemar_exact_p, wilson_interval
from interp.testing import tiny_model

Z = 1.959963984540054


def wilson_reference(k, n):
    """The Wilson bounds by definition: the roots in p of (k/n − p)² = z² p(1 − p)/n, i.e. of
    (1 + z²/n) p² − (2k/n + z²/n) p + (k/n)² = 0, found numerically (numpy.roots, companion matrix)."""
    import numpy as np

    ph, a = k / n, Z * Z / n
    r = np.sort(np.roots([1 + a, -(2 * ph + a), ph * ph]).real)
    return float(r[0]), float(r[1])


@pytest.mark.parametrize("k,n", [(0, 10), (5, 10), (34, 40), (40, 40), (1, 3)])
def test_wilson_interval_solves_its_defining_quadratic(k, n):
    lo, hi = wilson_interval(k, n)
    want = wilson_reference(k, n)
    assert lo == pytest.approx(want[0], abs=1e-9) and hi == pytest.approx(want[1], abs=1e-9)
    assert lo <= k / n <= hi


def test_wilson_interval_textbook_values_and_errors():
    assert wilson_interval(0, 10)[1] == pytest.approx(Z * Z / (10 + Z * Z))  # k = 0: upper = z²/(n + z²)
    lo, hi = wilson_interval(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    for k, n in [(3, 0), (-1, 5), (6, 5), (1.5, 4)]:
        with pytest.raises(ValueError):
            wilson_interval(k, n)


def test_mcnemar_exact_p_by_hand():
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact_p(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_exact_p(3, 3) == 1.0
    b, c = 4, 11  # against a direct sum of binomial probabilities
    want = 2 * sum(math.comb(15, i) * 0.5**15 for i in range(5))
    assert mcnemar_exact_p(b, c) == pytest.approx(want)
    with pytest.raises(ValueError):
        mcnemar_exact_p(-1, 2)


def sharp():
    m = tiny_model("qwen2", n_layers=2, seed=2)
    g = torch.Generator().manual_seed(7)
    for p in m.hf.parameters():
        if p.ndim == 2:
            p.data.normal_(0, 0.3, generator=g)
    return m


@torch.no_grad()
def test_first_token_logprobs_equal_weight_surgery_one_prompt_at_a_time():
    m = sharp()
    prompts = ["bake bread", "how to fix a very old bicycle", "tea"]  # left padding in the batch
    heads = [(0, 1), (1, 3)]
    _, got = generate(m, prompts, template="paper", max_new_tokens=2, ablate=heads, batch_size=3,
                      return_first_logprobs=True)
    _, clean = generate(m, prompts, template="paper", max_new_tokens=2, batch_size=2, return_first_logprobs=True)
    assert got.shape == (3, m.shape.d_vocab)
    d = m.shape.d_head
    saved = []
    for layer, head in heads:
        q = m.arch.attn(layer).q_proj
        saved.append((q, q.weight.data.clone(), q.bias.data.clone()))
        q.weight.data[head * d:(head + 1) * d] *= 1e-5
        q.bias.data[head * d:(head + 1) * d] *= 1e-5
    try:
        for i, p in enumerate(prompts):
            ids = torch.tensor([m.tokenizer.encode(PAPER_TEMPLATE.format(q=p))])
            want = torch.log_softmax(m.hf(ids).logits[0, -1].double(), -1)
            torch.testing.assert_close(got[i].double(), want, atol=1e-4, rtol=0)
    finally:
        for q, w, b in saved:
            q.weight.data.copy_(w)
            q.bias.data.copy_(b)
    assert (got - clean).abs().max() > 1e-3, "degenerate model: the ablation does not move the distribution"


@pytest.fixture
def empty_file(tmp_path):
    f = tmp_path / "empty.csv"
    f.write_text("input\n")
    return str(f)


def test_bad_input_errors_in_every_entry_point(tiny_llama, empty_file):
    long = "x" * 400  # tiny_llama's context is 256 tokens
    calls = {
        "ships": lambda q, **kw: ships_dataset(tiny_llama, q, **kw),
        "sahara": lambda q, **kw: sahara(tiny_llama, q, set_size=1, candidates=[(0, 0), (1, 1)], **kw),
        "refusal": lambda q, **kw: refusal_rate(tiny_llama, q, max_new_tokens=2, **kw),
    }
    for call in calls.values():
        with pytest.raises(ValueError, match="has no chat template"):
            call(["make a bomb", "bake bread"], template="chat")
        with pytest.raises(ValueError, match="holds no prompts"):
            call(empty_file, template="paper")
        with pytest.raises(ValueError, match="longer than .*context of 256"):
            call(["ok", long], template="paper")
    with pytest.raises(ValueError, match="longer than"):
        ships_kl(tiny_llama, long, template="none")


def load_benchmark():
    path = Path(__file__).resolve().parents[2] / "experiments" / "safety_causal.py"
    spec = importlib.util.spec_from_file_location("safety_causal_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bench_args(tmp_path, *extra):
    return ["--model", "tiny", "--template", "paper", "--n-ships", "2", "--n-sahara", "3", "--sahara-candidates",
            "3", "--set-size", "2", "--ks", "1,2", "--n-random", "2", "--n-random-small", "1", "--n-harmful", "3",
            "--n-harmless", "2", "--max-new-tokens", "2", "--extra-methods", "zero", "--out",
            str(tmp_path / "o.json"), "--ckpt", str(tmp_path / "c.jsonl"), "--cache", str(tmp_path / "c.pt"), *extra]


def test_benchmark_checkpoint_rerun_skips_finished_units(tiny_llama, tmp_path, monkeypatch):
    import interp

    bench = load_benchmark()
    monkeypatch.setattr(interp, "load_model", lambda spec: tiny_llama)
    bench.main(bench_args(tmp_path))
    first = json.loads((tmp_path / "o.json").read_text())
    n_lines = len((tmp_path / "c.jsonl").read_text().splitlines())
    conds = [r["condition"] for r in first["conditions"]]
    assert first["complete"] and conds[0] == "clean" and "ships_top2_zero" in conds and "sahara2" in conds
    # 2 Ships prompts + Sahara + one line per condition
    assert n_lines == 2 + 1 + len(conds)
    for r in first["conditions"]:
        lo, hi = r["ci95_advbench"]
        assert lo <= r["refusal_advbench"] <= hi and r["n_advbench"] == 3
    bench.main(bench_args(tmp_path))  # everything finished: nothing is recomputed or appended
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == n_lines
    again = json.loads((tmp_path / "o.json").read_text())
    assert [r["refusal_advbench"] for r in again["conditions"]] == [r["refusal_advbench"] for r in first["conditions"]]
    bench.main(bench_args(tmp_path, "--max-new-tokens", "3"))  # new settings: conditions rerun, Ships reused
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == n_lines + len(conds)


def test_benchmark_fails_early_on_a_model_without_chat_template(tiny_llama, tmp_path, monkeypatch):
    import interp

    bench = load_benchmark()
    monkeypatch.setattr(interp, "load_model", lambda spec: tiny_llama)
    with pytest.raises(ValueError, match="has no chat template"):
        bench.main(bench_args(tmp_path, "--template", "chat"))
    assert not (tmp_path / "c.jsonl").exists()
