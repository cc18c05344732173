"""Prompts for the safety-head analyses (Zhou et al., "On the Role of Attention Heads in Large Language Model
Safety", ICLR 2025): the built-in harmful / harmless request sets, the paper's prompt template and the chat
template, tokenisation with clear errors, and the head ablations (intervention values; ``row_ablation_handlers`` for
one head set per batch row) shared by ``ships``, ``sahara`` and ``refusal``.

Data (``interp/data/safety/``, attribution in ``interp/data/README.md``): ``advbench`` (520 AdvBench harmful
behaviours, from llm-attacks), ``maliciousinstruct`` (100), ``harmless`` (50 benign requests phrased like
AdvBench). Any CSV with an ``input`` column, or a text file with one request a line, also works.

Templates: ``"paper"`` = ``"## Query:{q}\\n## Answer:"`` (the official code's Sahara prompt, tokenised with the
tokenizer's special tokens), ``"chat"`` = ``model.apply_chat_template(q)`` (a user turn plus the generation
prompt; raises ``ValueError`` for models without a chat template), ``"none"`` = the raw request.

Head ablation (one set of heads per batch row; all three act only on the rows that list the head):

- ``"scale"`` (default, the official code's ``scale_mask`` on ``q``): the head's query is multiplied by
  ``eps`` (1e-5), so its scores ``eps * q.k / sqrt(d)`` are ~0 and its attention is ~uniform over the
  (unmasked) prefix. Scaling after RoPE equals scaling before it (RoPE is linear), as the official code does.
- ``"zero"``: the head's output ``z`` is set to 0.
- ``"mean"``: the head's ``z`` is replaced by its mean over the row's real (unpadded) positions.

Validated in ``tests/unit/test_safety_ships.py`` (batched per-row hooks vs one-head-at-a-time weight surgery).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import torch

PAPER_TEMPLATE = "## Query:{q}\n## Answer:"
TEMPLATES = ("paper", "chat", "none")
METHODS = ("scale", "zero", "mean")
BUILTIN = ("advbench", "maliciousinstruct", "harmless")


def data_path(name: str) -> Path:
    """Path of a built-in prompt set (``advbench``, ``maliciousinstruct``, ``harmless``)."""
    import interp

    return Path(interp.__file__).resolve().parent / "data" / "safety" / f"{name}.csv"


def load_prompts(source: str | Path | Sequence[str] = "advbench", n: int | None = None) -> list[str]:
    """Requests from a built-in set name, a CSV file with an ``input`` column, a ``.txt`` file (one a line)
    or a list of strings; the first ``n`` if given. Raises ``ValueError`` for an empty or malformed source."""
    if isinstance(source, (list, tuple)):
        prompts, where = [str(p) for p in source], "the prompt list"
    else:
        path = data_path(str(source)) if str(source) in BUILTIN else Path(source).expanduser()
        where = str(path)
        if not path.exists():
            raise ValueError(f"prompt file {path} does not exist; pass one of {', '.join(BUILTIN)}, "
                             "a CSV with an 'input' column or a .txt file with one request a line")
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None:
                    raise ValueError(f"prompt file {path} is empty: it needs a header 'input' and one request a row")
                if "input" not in reader.fieldnames:
                    raise ValueError(f"prompt file {path} has columns {reader.fieldnames}; it needs an 'input' column")
                prompts = [row["input"] for row in reader]
        else:
            prompts = path.read_text(encoding="utf-8").splitlines()
        prompts = [p for p in prompts if p and p.strip()]  # blank lines of a file; list items are kept as given
    if not prompts:
        raise ValueError(f"{where} holds no prompts; give at least one non-empty request")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        prompts = prompts[:n]
    return prompts


def format_prompt(model, query: str, template: str = "paper") -> str:
    """The text fed to the model for one request (see the module docstring for the templates)."""
    if not isinstance(query, str):
        raise TypeError(f"a request must be a string, got {type(query).__name__}")
    if template == "paper":
        return PAPER_TEMPLATE.format(q=query)
    if template == "chat":
        return model.apply_chat_template(query)  # ValueError with a clear message when there is none
    if template == "none":
        return query
    raise ValueError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")


def encode(model, queries: Sequence[str], template: str = "paper") -> list[list[int]]:
    """Token ids of each formatted request; ``ValueError`` for an empty list, an empty request or one longer
    than the model's context."""
    if isinstance(queries, str):
        queries = [queries]
    if not queries:
        raise ValueError("no prompts given; pass at least one request")
    rows = []
    for i, q in enumerate(queries):
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"prompt {i} is empty ({q!r}); drop it or give it some text")
        text = format_prompt(model, q, template)
        rows.append(list(model.tokenizer(text, add_special_tokens=template != "chat")["input_ids"]))
        n_ctx = model.shape.n_ctx
        if n_ctx and len(rows[-1]) > n_ctx:
            raise ValueError(f"prompt {i} is {len(rows[-1])} tokens long, longer than {model.name}'s context of "
                             f"{n_ctx}; shorten it or pick a model with a longer context")
    return rows


def left_pad(model, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [batch, pos], attention_mask [batch, pos])`` with left padding (last column = last real token)."""
    from interp.batching import pad_batch

    return pad_batch(model, [list(r) for r in rows])


def check_method(method: str, eps: float) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown ablation {method!r}; choose one of {', '.join(METHODS)}")
    if method == "scale" and not (isinstance(eps, (int, float)) and 0 <= eps < 1):
        raise ValueError(f"eps must be a number in [0, 1) (the query scale), got {eps!r}")


def check_heads(model, heads) -> list[tuple[int, int]]:
    """Validate ``[(layer, head), ...]`` against the model's shape; returns a list of int pairs."""
    s = model.shape
    out = []
    for lh in heads:
        if not (isinstance(lh, (tuple, list)) and len(lh) == 2):
            raise ValueError(f"a head is a (layer, head) pair, got {lh!r}")
        layer, head = int(lh[0]), int(lh[1])
        if not (0 <= layer < s.n_layers and 0 <= head < s.n_heads):
            raise ValueError(f"head L{layer}H{head} does not exist: {model.name} has {s.n_layers} layers × "
                             f"{s.n_heads} heads")
        out.append((layer, head))
    return out


def head_ablation(layer: int, head: int, *, method: str = "scale", eps: float = 1e-5,
                  attention_mask: torch.Tensor | None = None):
    """The intervention ablating head ``L{layer}H{head}`` (see the module docstring): ``"scale"`` =
    ``Scale(Site(layer, "q", head), eps)``, ``"zero"`` = ``Zero(Site(layer, "z", head))``, ``"mean"`` =
    ``PositionMean(Site(layer, "z", head), attention_mask)`` (``attention_mask [batch, pos]`` of the rows it
    acts on)."""
    from interp.ablations import PositionMean
    from interp.interventions import Scale, Zero
    from interp.sites import Site

    check_method(method, eps)
    if method == "scale":
        return Scale(Site(layer, "q", head), float(eps))
    if method == "zero":
        return Zero(Site(layer, "z", head))
    return PositionMean(Site(layer, "z", head), attention_mask)


def set_ablation(model, heads, *, method: str = "scale", eps: float = 1e-5,
                 attention_mask: torch.Tensor | None = None) -> list:
    """The interventions ablating every head of ``heads`` (``[(layer, head), ...]``, validated)."""
    return [head_ablation(layer, head, method=method, eps=eps, attention_mask=attention_mask)
            for layer, head in check_heads(model, heads)]


def row_ablation_handlers(model, row_sets: Sequence[Sequence[tuple[int, int]]], *, method: str = "scale",
                          eps: float = 1e-5, attention_mask: torch.Tensor | None = None) -> dict:
    """Hook handlers ``{Site: [fn]}`` ablating head set ``row_sets[r]`` in batch row ``r`` only.

    ``row_sets``: one list of ``(layer, head)`` per batch row (empty = clean row); rows sharing a set share one
    ``interp.row_interventions.OnRows`` of ``set_ablation``. ``attention_mask [batch, pos]`` (left padding)
    restricts the mean to real positions. Under generation with a KV cache the q hook sees only the new
    positions, which is what q scaling needs; the mean ablation then averages over the current step only.
    """
    from interp.interventions import compile_interventions
    from interp.row_interventions import OnRows

    check_method(method, eps)
    rows_of: dict[tuple, list[int]] = {}
    for r, heads in enumerate(row_sets):
        key = tuple(check_heads(model, heads))
        if key:
            rows_of.setdefault(key, []).append(r)
    items = [OnRows(set_ablation(model, key, method=method, eps=eps,
                                 attention_mask=None if attention_mask is None else attention_mask[rows]), rows)
             for key, rows in rows_of.items()]
    return compile_interventions(model, items)
