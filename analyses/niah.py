"""Needle-in-a-haystack (NIAH) harness of the retrieval-head paper (Wu et al. 2024, "Retrieval Head
Mechanistically Explains Long-Context Factuality"), matching its official ``retrieval_head_detection.py``.

Building one sample (``build_sample``), as the official code does:

1. the haystack text of needle i (``haystack_part{i+1}.txt``) is repeated until it has ≥ ``length`` words,
   then trimmed to ``length`` tokens;
2. ``length - buffer`` tokens (buffer 200) are kept, minus the needle's tokens; the needle goes in at token
   ``int(n · depth / 100)``, moved back to just after the previous ``'.'`` token (depth 100 → at the end);
3. the prompt is ``context + "Based on the content of the book, Question: {q}\\nAnswer:"`` (the official
   plain prompt has no separator) or, for a model with a chat template, the user turn
   ``"<book>{context}</book>\\nBased on the content of the book, Question: {q}\\nAnswer:"`` with the
   generation prompt (the official prompt for its instruct models);
4. the needle span is the first window of ``|real_needle|`` prompt tokens whose token *set* covers more than
   90 % of the set of ``real_needle`` tokens (``find_needle_span``; the official code searches for the
   *answer* part ``real_needle``, not the whole needle).

The answer is scored with ROUGE-1 recall of ``real_needle`` against the response (``rouge1_recall``);
a sample counts as found when recall > 0.5. Paper grid: 20 lengths ``linspace(1000, 50000)`` × 10 depths
``round(linspace(0, 100, 10))`` × 3 needles. Validated by hand-made cases in
``tests/unit/test_retrieval_niah.py``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

QUESTION = "Based on the content of the book, Question: {question}\nAnswer:"


def paper_lengths(lo: int = 1000, hi: int = 50000, n: int = 20) -> list[int]:
    """The official context lengths: ``round(linspace(lo, hi, n))``."""
    return [int(x) for x in np.round(np.linspace(lo, hi, num=n, endpoint=True)).astype(int)]


def paper_depths(n: int = 10) -> list[int]:
    """The official depth percents: ``round(linspace(0, 100, n))`` → 0, 11, 22, …, 100."""
    return [int(x) for x in np.round(np.linspace(0, 100, num=n, endpoint=True)).astype(int)]


@dataclass(frozen=True)
class Needle:
    needle: str
    question: str
    real_needle: str
    haystack: str = field(repr=False)


def load_needles() -> list[Needle]:
    """The 3 needles of the paper's detection set with their haystacks (``interp/data/niah``)."""
    root = resources.files("interp") / "data" / "niah"
    try:
        lines = (root / "needles.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"NIAH data not found under {root}; reinstall interp with its data") from None
    out = []
    for i, line in enumerate(x for x in lines if x.strip()):
        d = json.loads(line)
        hay = (root / f"haystack_part{i + 1}.txt").read_text(encoding="utf-8")
        out.append(Needle(d["needle"], d["question"], d["real_needle"], hay))
    return out


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_context(tokenizer, haystack: str, needle: str, length: int, depth: float, *,
                  buffer: int = 200) -> str:
    """Haystack trimmed to ``length`` tokens, ``needle`` inserted at ``depth`` % (official
    ``generate_context``).

    ``length`` counts tokens of the raw context (BOS / chat tokens not included, as in the official code).
    """
    if not isinstance(length, (int, np.integer)) or length <= buffer:
        raise ValueError(f"context length must be an int larger than the buffer ({buffer}), got {length!r}")
    if not 0 <= depth <= 100:
        raise ValueError(f"depth must be a percent in [0, 100], got {depth!r}")
    if not haystack.split():
        raise ValueError("haystack text is empty")
    context = ""
    while len(context.split()) < length:
        context += haystack
    tokens = _encode(tokenizer, context)
    if len(tokens) > length:
        context = tokenizer.decode(tokens[:length])
    tokens_needle = _encode(tokenizer, needle)
    tokens_context = _encode(tokenizer, context)
    budget = length - buffer
    if len(tokens_context) + len(tokens_needle) > budget:
        tokens_context = tokens_context[: budget - len(tokens_needle)]
    if depth == 100:
        new = tokens_context + tokens_needle
    else:
        period = set(_encode(tokenizer, "."))
        point = int(len(tokens_context) * (depth / 100))
        while point > 0 and tokens_context[point - 1] not in period:
            point -= 1
        new = tokens_context[:point] + tokens_needle + tokens_context[point:]
    return tokenizer.decode(new)


def build_prompt_text(model, context: str, question: str, *, chat: bool | None = None) -> str:
    """The prompt string (chat template for models that have one unless ``chat=False``)."""
    tmpl = getattr(model.tokenizer, "chat_template", None)
    chat = bool(tmpl) if chat is None else chat
    if chat:
        return model.apply_chat_template(f"<book>{context}</book>\n" + QUESTION.format(question=question))
    return context + QUESTION.format(question=question)


def find_needle_span(prompt_ids, needle_ids, threshold: float = 0.9) -> tuple[int, int]:
    """First ``(start, end)`` window of ``len(needle_ids)`` prompt tokens whose token set overlaps the
    needle's token set by more than ``threshold`` (fraction of the needle's distinct tokens); ``(-1, -1)``
    if none.

    Shapes: ``prompt_ids`` [pos] (list or tensor), ``needle_ids`` [needle_pos].
    """
    prompt = [int(x) for x in (prompt_ids.tolist() if hasattr(prompt_ids, "tolist") else prompt_ids)]
    needle = [int(x) for x in (needle_ids.tolist() if hasattr(needle_ids, "tolist") else needle_ids)]
    if not needle:
        raise ValueError("needle_ids is empty: the needle tokenised to nothing")
    want = set(needle)
    n = len(needle)
    for i in range(len(prompt)):
        if len(set(prompt[i: i + n]) & want) / len(want) > threshold:
            return i, i + n
    return -1, -1


def rouge1_recall(reference: str, prediction: str) -> float:
    """ROUGE-1 recall: clipped unigram overlap / number of reference unigrams.

    Tokens are lowercase alphanumeric words (``[a-z0-9]+``, as the ``rouge_score`` tokenizer); unlike the
    official ``rouge_score`` call we do not apply the Porter stemmer (no extra dependency), so "walks" and
    "walk" do not match. Empty reference → 0.
    """
    ref = re.findall(r"[a-z0-9]+", reference.lower())
    pred = Counter(re.findall(r"[a-z0-9]+", prediction.lower()))
    if not ref:
        return 0.0
    overlap = sum(min(c, pred[w]) for w, c in Counter(ref).items())
    return overlap / len(ref)


@dataclass(frozen=True)
class NiahSample:
    """One NIAH prompt: ``prompt_ids`` [pos] and the needle span ``[start, end)`` in prompt positions."""

    length: int
    depth: float
    needle_idx: int
    prompt_ids: tuple[int, ...] = field(repr=False)
    span: tuple[int, int]
    real_needle: str

    @property
    def key(self) -> str:
        return f"{self.length}|{self.depth:g}|{self.needle_idx}"


def build_sample(model, needle: Needle, length: int, depth: float, *, needle_idx: int = 0, buffer: int = 200,
                 chat: bool | None = None) -> NiahSample:
    """Context, prompt, token ids and needle span of one (length, depth, needle) cell."""
    tok = model.tokenizer
    context = build_context(tok, needle.haystack, needle.needle, int(length), depth, buffer=buffer)
    text = build_prompt_text(model, context, needle.question, chat=chat)
    is_chat = text != context + QUESTION.format(question=needle.question)
    ids = list(tok(text, add_special_tokens=not is_chat)["input_ids"])
    span = find_needle_span(ids, _encode(tok, needle.real_needle))
    return NiahSample(int(length), float(depth), needle_idx, tuple(ids), span, needle.real_needle)


# --- sweeps with per-sample checkpoints ---------------------------------------------------------------------

def grid(lengths, depths, needles) -> list[tuple[int, float, int]]:
    """(length, depth, needle_idx) cells in the official order: needle, then length, then depth."""
    return [(int(L), float(d), int(n)) for n in needles for L in lengths for d in depths]


def sample_key(length: int, depth: float, needle_idx: int) -> str:
    return f"{int(length)}|{float(depth):g}|{int(needle_idx)}"


def run_sweep(model, score_fn, *, lengths, depths, needles=None, checkpoint=None, meta=None, on_sample=None,
              buffer: int = 200, chat: bool | None = None, progress: bool = False) -> list[dict]:
    """Run ``score_fn(model, sample) -> dict`` (JSON-serialisable) on every (needle, length, depth) cell.

    ``needles``: indices into ``load_needles()`` (default all). With ``checkpoint`` (a ``.jsonl`` path) each
    finished sample is appended (fsync'd) and a rerun skips the cells already there, so a killed sweep resumes
    with the same final records. ``on_sample(record)`` is called after each newly computed sample (it may
    raise to stop the sweep). Returns the records in grid order.
    """
    import time

    from interp.io import JsonlCheckpoint

    all_needles = load_needles()
    needles = list(range(len(all_needles))) if needles is None else [int(n) for n in needles]
    for n in needles:
        if not 0 <= n < len(all_needles):
            raise ValueError(f"needle index {n} out of range (there are {len(all_needles)} needles)")
    if not lengths or not depths:
        raise ValueError(f"lengths and depths must be non-empty, got {lengths!r} and {depths!r}")
    meta = dict(meta or {}, model=model.name, buffer=buffer, chat=chat)
    ckpt = JsonlCheckpoint(checkpoint, meta) if checkpoint else None
    out = []
    for length, depth, n in grid(lengths, depths, needles):
        key = sample_key(length, depth, n)
        if ckpt is not None and key in ckpt:
            out.append(ckpt.get(key))
            continue
        t0 = time.perf_counter()
        sample = build_sample(model, all_needles[n], length, depth, needle_idx=n, buffer=buffer, chat=chat)
        rec = dict(score_fn(model, sample), key=key, length=length, depth=depth, needle_idx=n,
                   n_tokens=len(sample.prompt_ids), span=list(sample.span))
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        if ckpt is not None:
            ckpt.add(rec)
        out.append(rec)
        if progress:
            print(f"  {key}: {rec['n_tokens']} tokens, rouge {rec.get('rouge', float('nan')):.2f}, "
                  f"{rec['seconds']:.1f}s  {rec.get('response', '')[:60]!r}", flush=True)
        if on_sample is not None:
            on_sample(rec)
    return out
