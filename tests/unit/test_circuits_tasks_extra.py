"""Colored Objects / numeric comparison generators, the task-file loader and component reuse."""

import json
import re

import pytest

from interp.analyses.circuits.circuit import Circuit
from interp.analyses.circuits.tasks_extra import (
    colored_objects_task,
    component_reuse,
    load_tasks,
    numeric_comparison_task,
)
from interp.testing import CharTokenizer


class WordTokenizer:
    """Word-level tokenizer: ' word', punctuation and digits runs are one token each; BOS = 0."""

    def __init__(self):
        self.vocab = {}

    def _ids(self, text):
        return [self.vocab.setdefault(t, len(self.vocab) + 1) for t in re.findall(r" ?\w+| ?[^\w\s]| ", text)]

    def __call__(self, text, add_special_tokens=True, **_):
        return {"input_ids": ([0] if add_special_tokens else []) + self._ids(text)}


class FakeModel:
    def __init__(self, tok):
        self.tokenizer, self.name = tok, "fake"

    def check_tokens(self, ids):
        pass


SCENE = re.compile(r"a (\w+) (\w+), a (\w+) (\w+) and a (\w+) (\w+)\. What color is the (\w+)\?")


def test_colored_objects_answers_are_the_queried_colour():
    model = FakeModel(WordTokenizer())
    task = colored_objects_task(model, 12, seed=3)
    assert len(task.clean) == 12
    for clean, corrupt, ans, wrong in zip(task.clean, task.corrupt, task.answer, task.wrong, strict=True):
        c = SCENE.search(clean).groups()
        x = SCENE.search(corrupt).groups()
        colour = {c[1]: c[0], c[3]: c[2], c[5]: c[4]}
        assert c[:6] == x[:6] and c[6] != x[6]  # same scene, another object queried
        assert ans == " " + colour[c[6]] and wrong == " " + colour[x[6]]
        assert clean.endswith(f"The {c[6]} is")
    toks = task.tokens(model)
    assert toks.clean.shape == toks.corrupt.shape and toks.answer.shape == (12,)


def test_colored_objects_needs_word_tokens():
    with pytest.raises(ValueError, match="single-token"):
        colored_objects_task(FakeModel(CharTokenizer()), 4)


@pytest.mark.parametrize("tok,form", [(WordTokenizer(), "space"), (CharTokenizer(), "digit")])
@pytest.mark.parametrize("corrupt", ["numbers", "word"])
def test_numeric_comparison(tok, form, corrupt):
    model = FakeModel(tok)
    if form == "digit" and corrupt == "word":  # "larger"/"smaller" are 6/7 chars: lengths never match
        with pytest.raises(ValueError, match="corrupt='numbers'"):
            numeric_comparison_task(model, 8, seed=1, corrupt=corrupt)
        return
    task = numeric_comparison_task(model, 8, seed=1, corrupt=corrupt)
    pat = re.compile(r"The (larger|smaller) of (\d+) and (\d+) is ?$")
    for clean, bad, ans, wrong in zip(task.clean, task.corrupt, task.answer, task.wrong, strict=True):
        w, a, b = pat.match(clean).groups()
        wb, c, d = pat.match(bad).groups()
        a, b, c, d = int(a), int(b), int(c), int(d)
        assert w == "larger" and int(ans) == max(a, b) and int(wrong) == min(a, b)
        if corrupt == "word":
            assert wb == "smaller" and (c, d) == (a, b)
        else:
            assert wb == "larger" and (a < b) == (c > d)  # the larger number moved to the other slot
        if form == "digit":  # char tokenizer: digits only, answer after a trailing space
            assert 0 <= int(ans) <= 9 and clean.endswith(" ") and not ans.startswith(" ")
        else:
            assert ans.startswith(" ")
    toks = task.tokens(model)
    assert toks.clean.shape == toks.corrupt.shape


def test_load_tasks_jsonl_and_csv(tmp_path):
    rows = [{"clean": "A b", "corrupt": "C b", "answer": " x", "wrong": " y"},
            {"clean": "D e", "corrupt": "F e", "answer": " z", "wrong": " w"}]
    p = tmp_path / "mine.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    t = load_tasks(p)
    assert t.name == "mine" and t.clean == ["A b", "D e"] and t.wrong == [" y", " w"]
    q = tmp_path / "mine.csv"
    q.write_text("clean,corrupt,answer,wrong\nA b,C b, x, y\nD e,F e, z, w\n")
    t2 = load_tasks(q)
    assert t2.clean == t.clean and t2.answer == t.answer and t2.corrupt == t.corrupt


def test_load_tasks_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tasks(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"clean": "a", "corrupt": "b", "answer": " c", "wrong": " d"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_tasks(bad)
    miss = tmp_path / "miss.jsonl"
    miss.write_text('{"clean": "a", "corrupt": "b", "answer": " c"}\n')
    with pytest.raises(ValueError, match="'wrong'"):
        load_tasks(miss)
    col = tmp_path / "col.csv"
    col.write_text("clean,corrupt,answer\na,b,c\n")
    with pytest.raises(ValueError, match="wrong"):
        load_tasks(col)
    with pytest.raises(ValueError, match="unknown task file type"):
        (tmp_path / "x.txt").write_text("hi")
        load_tasks(tmp_path / "x.txt")


def test_component_reuse_by_hand():
    a = Circuit(["input", "L0H1", "L1H0", "M0", "logits"],
                [("input", "L0H1", "q"), ("L0H1", "M0", ""), ("M0", "L1H0", "q"), ("L1H0", "logits", "")],
                [1, 1, 1, 1], "test")
    b = {"input", "L1H0", "M0", "L2H3", "L2H2", "logits"}
    r = component_reuse(a, b)
    # A = {L0H1, L1H0, M0}, B = {L1H0, M0, L2H3, L2H2}: shared 2, union 5
    assert (r["n_a"], r["n_b"], r["n_shared"]) == (3, 4, 2)
    assert r["jaccard"] == pytest.approx(2 / 5) and r["frac_a_in_b"] == pytest.approx(2 / 3)
    assert r["frac_b_in_a"] == pytest.approx(2 / 4) and r["shared"] == ["L1H0", "M0"]
    h = component_reuse(a, b, heads_only=True)  # {L0H1, L1H0} vs {L1H0, L2H3, L2H2}
    assert (h["n_a"], h["n_b"], h["n_shared"], h["jaccard"]) == (2, 3, 1, pytest.approx(1 / 4))
    with pytest.raises(TypeError):
        component_reuse(a, 3)
