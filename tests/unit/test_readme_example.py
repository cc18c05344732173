"""The README's "How to add a head score" example runs as written (on a tiny model instead of the default one)
and its numbers mean what it says: the loss rise of each head equals a separate forward with that head zeroed,
and the prev-token score equals the dense attention pattern's previous-token mass."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def _example_namespace():
    text = README.read_text()
    block = re.search(r"<!-- readme-example: add-a-head-score -->\n```python\n(.*?)```", text, re.S).group(1)
    definitions = block.split("\nmodel = interp.load_model")[0]  # the function; the last lines load the real model
    ns: dict = {}
    exec(compile(definitions, str(README), "exec"), ns)
    return ns, block


def test_readme_example_runs_and_its_scores_are_right(tiny_llama):
    import interp
    from interp import Site, Zero
    from interp.metrics import next_token_loss

    ns, block = _example_namespace()
    assert 'interp.load_model("default")' in block and len(block.splitlines()) <= 40
    model = tiny_llama
    text = "a b c d a b c d e f a b"
    table, top, check = ns["previous_token_heads"](model, text, k=2)
    s = model.shape
    assert set(table["score"]) == {"prev_token", "dloss_zero"} and len(table) == 2 * s.n_layers * s.n_heads
    ids = model.to_tokens(text)
    with torch.no_grad():
        clean = float(next_token_loss(model.logits(ids), ids)[0])
        for layer, h in [(0, 0), (s.n_layers - 1, s.n_heads - 1)]:
            with model.intervene(Zero(Site(layer, "z", h))):
                ablated = float(next_token_loss(model.logits(ids), ids)[0])
            row = table[(table.score == "dloss_zero") & (table.layer == layer) & (table["head"] == h)]
            assert abs(float(row.value.iloc[0]) - (ablated - clean)) < 1e-4
    _, cache = interp.run_with_cache(model, ids, [Site(layer, "pattern") for layer in range(s.n_layers)])
    for layer in range(s.n_layers):
        p = cache[Site(layer, "pattern")][0].double()  # [head, query_pos, key_pos]
        dense = torch.diagonal(p, offset=-1, dim1=-2, dim2=-1)  # A[i, i-1], query_pos >= 1
        want = torch.cat([torch.zeros(s.n_heads, 1, dtype=torch.float64), dense], 1).mean(-1)
        got = table[(table.score == "prev_token") & (table.layer == layer)].sort_values("head").value.to_numpy()
        assert torch.allclose(torch.tensor(got.copy()), want, atol=1e-5), (layer, got, want)
    assert len(top) == 2 and len(check.d_random_draws) == 5
