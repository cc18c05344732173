"""NIAH harness of the retrieval-head paper: needle span, ROUGE-1 recall, needle insertion, prompts, grids,
and checkpoint/resume of a sweep (hand-made cases worked out from the official code's definitions)."""

from __future__ import annotations

import re

import pytest

from interp.analyses import niah, retrieval
from interp.testing import tiny_model


def test_find_needle_span_hand_cases():
    assert niah.find_needle_span([1, 2, 3, 4, 5, 6, 7], [4, 5, 6]) == (3, 6)
    assert niah.find_needle_span([4, 5, 6, 0, 4, 5, 6], [4, 5, 6]) == (0, 3)  # first window wins
    assert niah.find_needle_span([1, 2, 3, 4, 5, 6, 7], [4, 5, 9]) == (-1, -1)  # overlap 2/3 ≤ 0.9
    assert niah.find_needle_span([9, 4, 5, 6], [4, 4, 5]) == (0, 3)  # sets: {4, 5} ⊂ first window [9, 4, 5]
    needle = list(range(10, 20))
    assert niah.find_needle_span([0] + needle[:9] + [0], needle) == (-1, -1)  # 9/10 = 0.9 is not > 0.9
    assert niah.find_needle_span([0] + needle, needle) == (1, 11)
    with pytest.raises(ValueError, match="empty"):
        niah.find_needle_span([1, 2], [])


def test_rouge1_recall_hand_cases():
    ref = "take a walk in Chaoyang Park"
    assert niah.rouge1_recall(ref, "You should take a walk in the park.") == pytest.approx(5 / 6)
    assert niah.rouge1_recall("the the cat", "the") == pytest.approx(1 / 3)  # clipped counts
    assert niah.rouge1_recall(ref, "") == 0.0
    assert niah.rouge1_recall("", "anything") == 0.0
    assert niah.rouge1_recall("Espresso, in the evening!", "espresso in THE evening") == 1.0


class WordTok:
    """Word-level tokenizer (``.`` is its own token) whose decode inverts encode: insertion is checkable."""

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, text, add_special_tokens=False):
        words = re.findall(r"[^\s.]+|\.", text)
        return {"input_ids": [self.vocab.setdefault(w, len(self.vocab)) for w in words]}

    def decode(self, ids):
        inv = {i: w for w, i in self.vocab.items()}
        return " ".join(inv[i] for i in ids)


@pytest.mark.parametrize("depth, expected", [
    (0, "N1 N2 . a b c . d e f . g h i ."),
    (50, "a b c . N1 N2 . d e f . g h i ."),   # int(12 · 0.5) = 6 → back to just after the '.' at 3
    (70, "a b c . d e f . N1 N2 . g h i ."),   # int(12 · 0.7) = 8 is already just after a '.'
    (100, "a b c . d e f . g h i . N1 N2 ."),
])
def test_build_context_inserts_at_previous_sentence_end(depth, expected):
    got = niah.build_context(WordTok(), "a b c. d e f. g h i. ", "N1 N2.", 15, depth, buffer=0)
    assert got == expected  # 15 tokens kept, minus the 3 needle tokens → 12 haystack tokens


def test_build_context_rejects_bad_arguments():
    with pytest.raises(ValueError, match="larger than the buffer"):
        niah.build_context(WordTok(), "a b.", "N.", 100, 50)
    with pytest.raises(ValueError, match="depth"):
        niah.build_context(WordTok(), "a b.", "N.", 300, 120)


def test_prompts_plain_and_chat():
    class Stub:
        class tokenizer:
            chat_template = "x"

        @staticmethod
        def apply_chat_template(text):
            return f"<user>{text}</user>"

    assert niah.build_prompt_text(Stub, "CTX", "Q?") == \
        "<user><book>CTX</book>\nBased on the content of the book, Question: Q?\nAnswer:</user>"
    assert niah.build_prompt_text(Stub, "CTX", "Q?", chat=False) == \
        "CTXBased on the content of the book, Question: Q?\nAnswer:"


def test_paper_grid_and_data():
    assert niah.paper_depths() == [0, 11, 22, 33, 44, 56, 67, 78, 89, 100]
    lengths = niah.paper_lengths()
    assert len(lengths) == 20 and lengths[0] == 1000 and lengths[-1] == 50000
    needles = niah.load_needles()
    assert len(needles) == 3
    for n in needles:
        assert len(n.haystack) > 100_000 and n.question.endswith("?")
        assert set(niah.rouge1_recall(n.real_needle, n.needle) for _ in [0]) == {1.0}  # answer ⊂ needle
    assert niah.grid([10, 20], [0, 100], [2])[:2] == [(10, 0.0, 2), (10, 100.0, 2)]


def test_sweep_resumes_after_a_kill_with_the_same_records(tmp_path):
    model = tiny_model("llama", n_layers=2, n_ctx=512, seed=1)
    kw = dict(lengths=[260], depths=[0, 50, 100], needles=[1], max_new_tokens=3, buffer=20)
    full = retrieval.niah_sweep(model, **kw)
    ck = tmp_path / "ck.jsonl"
    seen = []

    def kill_after_two(rec):
        seen.append(rec["key"])
        if len(seen) == 2:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        retrieval.niah_sweep(model, checkpoint=ck, on_sample=kill_after_two, **kw)
    with open(ck, "a") as f:
        f.write('{"key": "260|100|1", "resp')  # a kill in the middle of writing the third record
    again = []
    resumed = retrieval.niah_sweep(model, checkpoint=ck, on_sample=lambda r: again.append(r["key"]), **kw)
    assert again == ["260|100|1"]  # only the missing sample was computed
    strip = lambda recs: [{k: v for k, v in r.items() if k != "seconds"} for r in recs]
    assert strip(resumed) == strip(full)
    assert retrieval.head_counter(resumed) == retrieval.head_counter(full)
    assert len(full[0]["scores"]) == 2 and len(full[0]["scores"][0]) == 4  # [layer][head]
    with pytest.raises(ValueError, match="different settings"):
        retrieval.niah_sweep(model, checkpoint=ck, **dict(kw, max_new_tokens=4))


def test_report_entry_returns_a_score_table_and_writes_the_official_json(tmp_path):
    from interp.scores import COLUMNS

    model = tiny_model("llama", n_layers=2, n_ctx=512, seed=1)
    params = dict(lengths=[150], depths=[0], needles=[1], max_new_tokens=2, buffer=20)
    res = retrieval.run(model, params, tmp_path)
    scores = res["scores"]
    assert list(scores.columns[:len(COLUMNS)]) == COLUMNS
    assert len(scores[scores["score"] == "retrieval_score"]) == 2 * 4  # every (layer, head)
    acc = scores[scores["score"] == "niah_accuracy"]["value"].item()
    assert acc == float(res["per_sample"]["kept"].mean())
    (path,) = retrieval.write_official(res, params, tmp_path)
    counter = retrieval.load_retrieval_json(path)
    assert set(counter) == {f"{l}-{h}" for l in range(2) for h in range(4)}
    assert all(len(v) == int(res["per_sample"]["kept"].sum()) for v in counter.values())  # kept samples only
