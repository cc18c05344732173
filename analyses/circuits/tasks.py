"""Tasks for circuit discovery: the IOI generator and a ``Task`` dataclass for your own prompts. The metrics
circuit methods use are ``interp.metrics.mean_logit_diff`` (``TaskTokens.metric``) and ``mean_kl_to_clean``.

IOI (Wang et al. 2022, "Interpretability in the Wild"): "When Mary and John went to the store, John gave a
drink to" → " Mary" (indirect object, the answer) vs " John" (subject, the wrong answer). Templates come in
BABA and ABBA order; the corrupt prompt is the same template with three fresh distinct names (the "ABC"
distribution), so no name is repeated and the IO/S signal is gone while the sentence shape is kept. Names,
places and objects are filtered to words that are single tokens of the model's tokenizer with a leading space,
so clean and corrupt prompts tokenise to the same length.

    mean_logit_diff  = mean_batch( logits[b, pos, answer_b] − logits[b, pos, wrong_b] )
    mean_kl_to_clean = mean_batch KL( softmax(clean[b, pos]) ‖ softmax(patched[b, pos]) )
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from interp.metrics import mean_logit_diff

NAMES = ["Mary", "John", "Tom", "James", "Paul", "Mark", "David", "Michael", "Sarah", "Anna", "Alice", "Bob",
         "Peter", "Kate", "Laura", "Emma", "Daniel", "Chris", "Ryan", "Jack", "Sam", "Lisa", "Andrew", "George",
         "Eric", "Ben", "Steve", "Jane", "Amy", "Adam", "Kevin", "Rachel", "Jason", "Brian", "Lucy", "Tim",
         "Helen", "Joe", "Matt", "Dan"]
PLACES = ["store", "park", "school", "office", "garden", "house", "hospital", "station", "restaurant", "beach",
          "market", "church", "library", "bank"]
OBJECTS = ["drink", "book", "ball", "key", "letter", "ring", "bottle", "bag", "gift", "pen", "phone", "cake",
           "flower", "hat"]
# {A} = IO (answer), {B} = subject; BABA first, then ABBA orders of the first clause
TEMPLATES = [
    "When {B} and {A} went to the {P}, {B} gave a {O} to",
    "When {A} and {B} went to the {P}, {B} gave a {O} to",
    "After {B} and {A} went to the {P}, {B} gave a {O} to",
    "After {A} and {B} went to the {P}, {B} gave a {O} to",
    "Then, {B} and {A} had a long day at the {P}. {B} gave a {O} to",
    "Then, {A} and {B} had a long day at the {P}. {B} gave a {O} to",
]


@dataclass
class TaskTokens:
    clean: torch.Tensor  # [batch, pos]
    corrupt: torch.Tensor  # [batch, pos]
    answer: torch.Tensor  # [batch]
    wrong: torch.Tensor  # [batch]

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        """Logit difference answer − wrong at the last position, mean over the batch (a scalar tensor)."""
        return mean_logit_diff(logits, self.answer, self.wrong)


@dataclass
class Task:
    """A user task: clean and corrupt prompts (pairwise equal length in tokens), the answer and a wrong answer
    (single tokens, usually with a leading space)."""

    clean: list[str]
    corrupt: list[str]
    answer: list[str]
    wrong: list[str]
    name: str = "task"

    def __post_init__(self):
        for f in ("clean", "corrupt", "answer", "wrong"):
            v = getattr(self, f)
            if isinstance(v, str):
                setattr(self, f, [v])
            elif not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                raise TypeError(f"Task.{f} must be a string or a list of strings, got {type(v).__name__}")
        n = {f: len(getattr(self, f)) for f in ("clean", "corrupt", "answer", "wrong")}
        if len(set(n.values())) != 1 or n["clean"] == 0:
            raise ValueError(f"Task needs the same non-zero number of clean, corrupt, answer and wrong items, got {n}")

    def tokens(self, model) -> TaskTokens:
        """Token ids for ``model``; raises a clear error for length mismatches or multi-token answers."""
        tok = model.tokenizer
        rows_c = [tok(t)["input_ids"] for t in self.clean]
        rows_x = [tok(t)["input_ids"] for t in self.corrupt]
        for i, (a, b) in enumerate(zip(rows_c, rows_x, strict=True)):
            if len(a) != len(b):
                raise ValueError(f"{self.name}: clean prompt {i} has {len(a)} tokens but its corrupt prompt has "
                                 f"{len(b)} ({self.clean[i]!r} vs {self.corrupt[i]!r}); edge patching needs "
                                 "equal lengths — pick words that tokenise alike")
        if len({len(r) for r in rows_c}) != 1:
            raise ValueError(f"{self.name}: prompts have different token lengths {sorted({len(r) for r in rows_c})}"
                             "; split the task by length (padding is not supported for circuits)")

        def single(words, what):
            out = []
            for w in words:
                ids = tok(w, add_special_tokens=False)["input_ids"]
                if len(ids) != 1:
                    raise ValueError(f"{self.name}: {what} {w!r} is {len(ids)} tokens; answers must be one token "
                                     "(try a leading space, e.g. ' Mary')")
                out.append(ids[0])
            return torch.tensor(out)

        ids_c, ids_x = torch.tensor(rows_c), torch.tensor(rows_x)
        model.check_tokens(ids_c)
        return TaskTokens(ids_c, ids_x, single(self.answer, "answer"), single(self.wrong, "wrong answer"))


def single_token_words(tokenizer, words) -> list[str]:
    """The words that are exactly one token with a leading space (returned without the space)."""
    return [w for w in words if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]


def ioi_task(model, n: int = 16, *, seed: int = 0, templates=None) -> Task:
    """``n`` IOI prompts (alternating BABA/ABBA templates) with ABC corruptions, all of one token length."""
    tok = model.tokenizer
    names = single_token_words(tok, NAMES)
    places, objects = single_token_words(tok, PLACES), single_token_words(tok, OBJECTS)
    if len(names) < 5 or not places or not objects:
        raise ValueError(f"the tokenizer of {model.name} has too few single-token names/places/objects "
                         f"({len(names)}, {len(places)}, {len(objects)}); IOI needs a word-level tokenizer")
    templates = list(templates or TEMPLATES)
    rng = random.Random(seed)
    by_len: dict[int, list] = {}
    for i in range(n * 4):
        t = templates[i % len(templates)]
        a, b, c, d, e = rng.sample(names, 5)
        p, o = rng.choice(places), rng.choice(objects)
        clean = t.format(A=a, B=b, P=p, O=o)
        corrupt = t.replace("{B}", "{C}", 1).format(A=d, B=e, C=c, P=p, O=o)
        length = len(tok(clean)["input_ids"])
        if length == len(tok(corrupt)["input_ids"]):
            by_len.setdefault(length, []).append((clean, corrupt, " " + a, " " + b))
    rows = max(by_len.values(), key=len)[:n]
    if len(rows) < n:
        raise ValueError(f"could only make {len(rows)} equal-length IOI prompts (asked for {n}); pass "
                         "templates of one shape or a smaller n")
    return Task([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows], name="ioi")
