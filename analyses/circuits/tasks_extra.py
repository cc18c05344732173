"""More circuit tasks — Colored Objects and numeric comparison — user tasks from a file, and component reuse.

Colored Objects (BIG-bench "reasoning about colored objects"; the circuit-reuse study of Merullo, Eickhoff &
Pavlick 2024, "Circuit Component Reuse Across Tasks in Transformer Language Models", which finds IOI's
components reused here):

    "On the table, I see a red pen, a blue cup and a green book. What color is the cup? Answer: The cup is"
    → " blue";  corrupt: the same scene asking for another object (" pen"), wrong answer = that object's colour.

Numeric comparison: "The larger of 3 and 7 is" → " 7" (wrong " 3"). Corrupt: fresh numbers with the larger one in
the other slot (``corrupt="numbers"``), or the same numbers asking for "smaller" (``corrupt="word"``). Numbers
are kept only where the answer is a single token: " 37" if that is one token, else "37" after a prompt ending
in a space when that tokenises as the prompt plus one token (digit-split tokenizers such as SmolLM2's, where
only 0-9 qualify).

All words are filtered to single tokens (with a leading space) of the model's tokenizer and prompts to one
token length, so the tasks feed ``Task.tokens`` / edge patching directly.

``component_reuse(A, B)``: with N(C) the node set of a circuit (``input`` and ``logits`` excluded),

    jaccard = |N(A) ∩ N(B)| / |N(A) ∪ N(B)|,     frac_a_in_b = |N(A) ∩ N(B)| / |N(A)|

Validated in ``tests/unit/test_circuits_tasks_extra.py``: generated prompts are parsed back to check the answer
(the colour of the queried object, the larger number), lengths and single-token answers on the char
tokenizer; the file loader round-trips JSONL/CSV and names the bad line/column; reuse on hand-made sets.
"""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

from .tasks import Task, single_token_words

COLORS = ["red", "blue", "green", "yellow", "black", "white", "brown", "pink", "purple", "orange", "gray"]
ITEMS = ["pen", "cup", "book", "ball", "hat", "key", "box", "bag", "phone", "shoe", "plate", "ring", "clock",
         "lamp", "chair", "bowl", "card", "sock"]
COLOR_TEMPLATES = [
    "On the table, I see a {c0} {o0}, a {c1} {o1} and a {c2} {o2}. What color is the {q}? Answer: The {q} is",
    "On the floor, there is a {c0} {o0}, a {c1} {o1} and a {c2} {o2}. What color is the {q}? Answer: The {q} is",
]
NUMBER_TEMPLATE = "The {word} of {a} and {b} is"


def _group_equal_length(tok, rows, n, what, hint=""):
    by_len: dict[int, list] = {}
    for r in rows:
        length = len(tok(r[0])["input_ids"])
        if length == len(tok(r[1])["input_ids"]):
            by_len.setdefault(length, []).append(r)
    if not by_len:
        raise ValueError(f"no {what} prompt has a corrupt prompt of equal token length{hint}")
    best = max(by_len.values(), key=len)[:n]
    if len(best) < n:
        raise ValueError(f"could only make {len(best)} equal-length {what} prompts (asked for {n}); ask for fewer")
    return best


def colored_objects_task(model, n: int = 16, *, seed: int = 0, templates=None) -> Task:
    """``n`` Colored Objects prompts: three coloured objects, one queried; corrupt queries another object."""
    tok = model.tokenizer
    colors, items = single_token_words(tok, COLORS), single_token_words(tok, ITEMS)
    if len(colors) < 3 or len(items) < 3:
        raise ValueError(f"the tokenizer of {model.name} has too few single-token colours/objects "
                         f"({len(colors)}, {len(items)}); Colored Objects needs a word-level tokenizer")
    templates = list(templates or COLOR_TEMPLATES)
    rng = random.Random(seed)
    rows = []
    for i in range(n * 4):
        t = templates[i % len(templates)]
        cs, os_ = rng.sample(colors, 3), rng.sample(items, 3)
        qi, xi = rng.sample(range(3), 2)
        scene = {f"c{j}": cs[j] for j in range(3)} | {f"o{j}": os_[j] for j in range(3)}
        rows.append((t.format(q=os_[qi], **scene), t.format(q=os_[xi], **scene), " " + cs[qi], " " + cs[xi]))
    rows = _group_equal_length(tok, rows, n, "Colored Objects")
    return Task(*(list(col) for col in zip(*rows, strict=True)), name="colored_objects")


def _number_form(tok, stub: str, number: int):
    """``(prompt, answer)`` with a single-token answer for ``number`` after ``stub``, or None."""
    s = str(number)
    if len(tok(" " + s, add_special_tokens=False)["input_ids"]) == 1:
        return stub, " " + s
    ids = tok(s, add_special_tokens=False)["input_ids"]
    if len(ids) == 1 and tok(stub + " " + s)["input_ids"] == tok(stub + " ")["input_ids"] + ids:
        return stub + " ", s
    return None


def numeric_comparison_task(model, n: int = 16, *, seed: int = 0, lo: int = 0, hi: int = 99,
                            corrupt: str = "numbers") -> Task:
    """``n`` prompts "The larger of a and b is" → max(a, b) (wrong: min), numbers in [lo, hi] with single-token
    answers. ``corrupt="numbers"``: fresh numbers, larger one in the other slot; ``"word"``: "smaller"."""
    if corrupt not in ("numbers", "word"):
        raise ValueError(f"corrupt must be 'numbers' or 'word', got {corrupt!r}")
    tok = model.tokenizer
    stub = NUMBER_TEMPLATE.format(word="larger", a=lo, b=lo)
    nums = [k for k in range(lo, hi + 1) if _number_form(tok, stub, k) is not None]
    if len(nums) < 4:
        raise ValueError(f"only {len(nums)} numbers in [{lo}, {hi}] are single-token answers for {model.name}'s "
                         "tokenizer; widen the range (digit-split tokenizers allow only 0-9)")
    rng = random.Random(seed)
    rows = []
    for _ in range(n * 6):
        a, b = rng.sample(nums, 2)
        clean_stub = NUMBER_TEMPLATE.format(word="larger", a=a, b=b)
        if corrupt == "word":
            bad_stub = NUMBER_TEMPLATE.format(word="smaller", a=a, b=b)
        else:
            c, d = sorted(rng.sample([k for k in nums if k not in (a, b)], 2), reverse=a < b)
            bad_stub = NUMBER_TEMPLATE.format(word="larger", a=c, b=d)  # the larger one sits in the other slot
        fa, fw = _number_form(tok, clean_stub, max(a, b)), _number_form(tok, clean_stub, min(a, b))
        fb = _number_form(tok, bad_stub, max(a, b))
        if fa is None or fw is None or fb is None:
            continue
        rows.append((fa[0], fb[0], fa[1], fw[1]))
    hint = "; ' larger' and ' smaller' differ in tokens here: use corrupt='numbers'" if corrupt == "word" else ""
    rows = _group_equal_length(tok, rows, n, "numeric comparison", hint)
    return Task(*(list(col) for col in zip(*rows, strict=True)), name="numeric_comparison")


FIELDS = ("clean", "corrupt", "answer", "wrong")


def load_tasks(path, *, name: str | None = None) -> Task:
    """A ``Task`` from a ``.jsonl`` (one object per line) or ``.csv`` (header row) file with the fields
    ``clean, corrupt, answer, wrong`` (strings; answers usually with a leading space)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    rows = []
    if suffix in (".jsonl", ".ndjson"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e.msg}); each line must be an object with "
                                 f"{', '.join(FIELDS)}") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{i}: expected a JSON object with {', '.join(FIELDS)}, got "
                                 f"{type(obj).__name__}")
            rows.append((i, obj))
    elif suffix == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [k for k in FIELDS if k not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: CSV header lacks column(s) {missing}; it needs {', '.join(FIELDS)} "
                                 f"(found {reader.fieldnames})")
            rows = [(i, r) for i, r in enumerate(reader, 2)]
    else:
        raise ValueError(f"{path}: unknown task file type {suffix!r}; use .jsonl or .csv with columns "
                         f"{', '.join(FIELDS)}")
    if not rows:
        raise ValueError(f"{path}: no tasks in the file")
    cols = {k: [] for k in FIELDS}
    for i, r in rows:
        for k in FIELDS:
            v = r.get(k)
            if not isinstance(v, str) or v == "":
                raise ValueError(f"{path}:{i}: field {k!r} must be a non-empty string, got {v!r}")
            cols[k].append(v)
    return Task(**cols, name=name or path.stem)


def _node_set(c, exclude, heads_only) -> set:
    nodes = c.nodes if hasattr(c, "nodes") else c
    if isinstance(nodes, str) or not all(isinstance(x, str) for x in nodes):
        raise TypeError(f"component_reuse needs Circuits or collections of node names, got {type(c).__name__}")
    out = set(nodes) - set(exclude)
    return {x for x in out if re.match(r"^L\d+(H|KV)\d+$", x)} if heads_only else out


def component_reuse(circuit_a, circuit_b, *, exclude=("input", "logits"), heads_only: bool = False) -> dict:
    """Overlap of two circuits' node sets (``Circuit`` or node names): ``n_a, n_b, n_shared, jaccard,
    frac_a_in_b, frac_b_in_a, shared`` (sorted list). ``heads_only`` keeps attention nodes (``L{l}H{h}``,
    ``L{l}KV{j}``) and drops MLPs."""
    a, b = _node_set(circuit_a, exclude, heads_only), _node_set(circuit_b, exclude, heads_only)
    shared, union = a & b, a | b
    return {"n_a": len(a), "n_b": len(b), "n_shared": len(shared),
            "jaccard": len(shared) / len(union) if union else float("nan"),
            "frac_a_in_b": len(shared) / len(a) if a else float("nan"),
            "frac_b_in_a": len(shared) / len(b) if b else float("nan"), "shared": sorted(shared)}
