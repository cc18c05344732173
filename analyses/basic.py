"""Basic attention statistics per head: first-token ("sink") mass and attention entropy.

For a text of ``n`` tokens and head ``(l, h)`` with attention pattern ``A[query_pos, key_pos]``
(rows sum to 1):

    first_token_mass(l, h) = mean_{i=1..n-1} A[i, 0]                  (Xiao et al. 2023, "attention sinks")
    entropy(l, h)          = mean_{i=1..n-1} -sum_j A[i, j] log A[i, j]   (nats; Vig & Belinkov 2019)

Query position 0 is left out (its row is trivially ``[1]``). Means run over all query positions of all texts
(``n_samples`` = number of query positions). Both come from the statistics engine (``interp.attention_stats``
with ``mass_first`` at ``sink_k = 1`` and ``entropy``), which never builds the ``[query_pos, key_pos]`` pattern:
memory is O(n) up to the model's context (``benchmarks/attention_basics_memory.py``). Validated in
``tests/integration/test_cli.py`` against an independent float64 recomputation from HF eager attention weights
(``output_attentions=True``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from interp.params import ParamError, Params, param


@dataclass(frozen=True)
class BasicParams(Params):
    """Parameters of ``attention_basics``."""

    n_tokens: int = param(128, "tokens per text (clamped to the model's context)", ge=2)
    n_texts: int = param(4, "texts used (the first n)", ge=1)
    texts_file: str | None = param(None, "UTF-8 file of texts separated by blank lines (default: built-in texts)")

    def check(self, where):
        if self.texts_file is None:
            return
        path = Path(self.texts_file).expanduser()
        if not path.is_file():
            raise ParamError(f"{where}.texts_file = {self.texts_file!r}: no such file; give a UTF-8 text file "
                             "with texts separated by blank lines")
        try:
            texts = _split(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise ParamError(f"{where}.texts_file = {self.texts_file!r}: cannot be read as UTF-8 text "
                             f"({type(e).__name__})") from None
        if not texts:
            raise ParamError(f"{where}.texts_file = {self.texts_file!r}: the file holds no text; give texts "
                             "separated by blank lines")

TEXTS = [
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based ink and a wooden screw press into a system that could "
    "produce books far faster than scribes. Within fifty years, presses were operating in more than "
    "two hundred European cities, and millions of volumes had been printed. Prices fell, literacy "
    "rose, and ideas travelled further than ever before, reshaping religion, science and politics "
    "across the continent.",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n    for _ in '
    "range(n):\n        a, b = b, a + b\n    return a\n\n\ndef is_prime(k):\n    if k < 2:\n        "
    "return False\n    for d in range(2, int(k ** 0.5) + 1):\n        if k % d == 0:\n            "
    "return False\n    return True\n\n\nprint([fibonacci(i) for i in range(10) if "
    "is_prime(fibonacci(i))])\n",
    "Mary went to the market on Saturday morning to buy apples, bread and cheese. At the market she "
    "met her old friend John, who was selling honey from his farm. John gave Mary a small jar of honey "
    "as a gift, and Mary promised to bring him a loaf of her homemade bread the following week. When "
    "she came back, John had saved the best jar of the season for her, and they talked for an hour "
    "about the weather and the harvest.",
    "Photosynthesis converts light energy into chemical energy. In the light-dependent reactions, "
    "chlorophyll absorbs photons and water molecules are split, releasing oxygen. The energy is stored "
    "as ATP and NADPH, which drive the Calvin cycle, where carbon dioxide is fixed into three-carbon "
    "sugars. These sugars are the starting point for glucose, starch and cellulose, the molecules on "
    "which nearly all life on Earth depends for food, fuel and structure.",
]


def _split(raw: str) -> list[str]:
    return [t.strip() for t in raw.split("\n\n") if t.strip()]


def _texts(params: BasicParams) -> list[str]:
    if params.texts_file:
        texts = _split(Path(params.texts_file).expanduser().read_text(encoding="utf-8"))
    else:
        texts = TEXTS
    return texts[:params.n_texts]


def data_files(params) -> list[dict]:
    """Data read by this analysis: the texts file if given, else the built-in texts (hashed as one blob)."""
    params = BasicParams.coerce(params, where="attention_basics")
    if params.texts_file:
        return [{"path": str(params.texts_file)}]
    blob = "\n\n".join(_texts(params)).encode()
    return [{"path": "builtin:interp.analyses.basic.TEXTS", "sha256": hashlib.sha256(blob).hexdigest()}]


def head_stats(stats) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query first-token mass and entropy, ``[layer, head, query_pos - 1]`` each (float64).

    ``stats``: an ``interp.AttentionStats`` of one text with ``mass_first`` (``sink_k = 1``) and ``entropy``
    (``[layer, 1, head, query_pos]``); query position 0 is dropped.
    """
    return stats["mass_first"][:, 0, :, 1:].double(), stats["entropy"][:, 0, :, 1:].double()


def _per_token(model, t: int, ids: torch.Tensor, mass: torch.Tensor):
    """Tidy per-token first-token mass of text ``t``: ``ids [1, pos]``, ``mass [layer, head, pos - 1]``.
    Compact dtypes (int32/int16 ids, categorical tokens): 22 bytes a row, 2.2M rows at 8192 tokens on 270 heads."""
    import numpy as np
    import pandas as pd

    n_layers, n_heads, n_q = mass.shape
    codes, uniques = pd.factorize(np.array(model.tokenizer.convert_ids_to_tokens(ids[0, 1:].tolist()), object))
    pos = np.tile(np.arange(1, n_q + 1, dtype=np.int32), n_layers * n_heads)
    return pd.DataFrame({
        "text": np.full(pos.size, t, np.int32), "pos": pos,
        "token": pd.Categorical.from_codes(np.tile(codes, n_layers * n_heads), categories=uniques),
        "layer": np.repeat(np.arange(n_layers, dtype=np.int16), n_heads * n_q),
        "head": np.tile(np.repeat(np.arange(n_heads, dtype=np.int16), n_q), n_layers),
        "value": mass.reshape(-1).numpy()})


@torch.no_grad()
def text_stats(model, t: int, text: str, n_tokens: int):
    """Text ``t``: ``(mass_sum [layer, head], ent_sum [layer, head], n_query, per_token rows)``: float64 sums over
    its query positions 1..n-1 (``run`` and its work units, ``interp.units``, add them text by text)."""
    from interp.attention import attention_stats

    ids = torch.tensor([model.tokenizer(text)["input_ids"][:n_tokens]], dtype=torch.long)  # [1, pos]
    if ids.shape[1] < 2:
        raise ValueError(f"text {t} has fewer than 2 tokens; give longer texts")
    mass, ent = head_stats(attention_stats(model, ids, ["mass_first", "entropy"], sink_k=1))
    return mass.sum(-1), ent.sum(-1), ids.shape[1] - 1, _per_token(model, t, ids, mass)


def effective_n_tokens(model, params: BasicParams) -> int:
    """``n_tokens`` clamped to the model's context."""
    return min(params.n_tokens, model.shape.n_ctx) if model.shape.n_ctx else params.n_tokens


def tables_from_stats(model_name: str, shape, stats) -> dict:
    """The report tables from ``text_stats`` results in text order (sums taken text by text from zero)."""
    import pandas as pd

    from interp.scores import ScoreTable

    mass_sum = torch.zeros(shape.n_layers, shape.n_heads, dtype=torch.float64)
    ent_sum = torch.zeros_like(mass_sum)
    n_q = 0
    for mass, ent, n, _ in stats:
        mass_sum += mass
        ent_sum += ent
        n_q += n
    common = dict(model=model_name, analysis="attention_basics", n_samples=n_q)
    scores = ScoreTable.concat([
        ScoreTable.from_matrix(mass_sum / n_q, score="first_token_mass", **common),
        ScoreTable.from_matrix(ent_sum / n_q, score="entropy", **common),
    ])
    pt = pd.concat([x[3] for x in stats], ignore_index=True)
    pt.insert(0, "score", "first_token_mass")
    pt.insert(0, "analysis", "attention_basics")
    pt.insert(0, "model", model_name)
    return {"scores": scores, "per_token": pt}


@torch.no_grad()
def run(model, params: BasicParams | dict | None = None, out_dir=None) -> dict:
    from tqdm.auto import tqdm

    params = BasicParams.coerce(params, where="attention_basics")
    n_tokens = effective_n_tokens(model, params)
    stats = [text_stats(model, t, text, n_tokens)
             for t, text in enumerate(tqdm(_texts(params), desc="attention_basics", leave=False))]
    return tables_from_stats(model.name, model.shape, stats)
