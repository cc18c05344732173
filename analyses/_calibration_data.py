"""Evaluation sets for the attention-calibration analyses (``zerotuning``, ``act``, ``attention_redistribution``,
``context_attention``): how they are built, and the loader.

All items are synthetic, written for this repo (Apache-2.0), from the hand-checked word lists and facts
below; ``build_sets()`` regenerates the shipped files ``interp/data/calibration/*.jsonl`` byte for byte
(``tests/unit/test_calibration_data.py`` checks it, and checks every label against its construction rule).

Classification / multiple-choice tasks (one item: ``prompt``, ``choices`` with distinct first tokens,
``label`` = index of the right choice, ``split``):

- ``sentiment`` (200): "Review: The {subject} was {adj1}, and the {subject2} was {adj2}." with both adjectives
  drawn from the same polarity list (POSITIVE / NEGATIVE); choices " positive" / " negative".
- ``category`` (200): "Is a {word} an animal or a plant?"; ANIMALS / PLANTS are hand-sorted common nouns;
  choices " animal" / " plant".
- ``compare`` (160): "Is {a} larger or smaller than {b}?" with two different two-digit numbers; the label is
  computed; choices " larger" / " smaller".

Context-grounded QA (``context_qa``, 64): a passage states a counterfactual version of a well-known fact
(FACTS: question, the world answer the model's prior holds, the passage's answer); the prompt is
"Read the passage and answer from it.\\nPassage: {passage}\\nQuestion: {q}\\nAnswer:"; choices =
(passage answer, world answer), label 0; ``span`` = character offsets of the passage in the prompt.
Each fact appears in two passage wordings.

Splits (per task, after a seeded shuffle): ``calibration`` (first quarter: head selection, γ sweep), ``validation``
(second quarter: supervised γ), ``test`` (second half: every reported accuracy). ``context_qa``: calibration /
test halves.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = ("wonderful", "delightful", "excellent", "superb", "charming", "fantastic", "pleasant", "brilliant",
            "lovely", "outstanding", "enjoyable", "marvelous", "impressive", "terrific", "great", "satisfying")
NEGATIVE = ("terrible", "awful", "dreadful", "boring", "disappointing", "horrible", "unpleasant", "poor",
            "miserable", "annoying", "dull", "nasty", "mediocre", "tedious", "bad", "frustrating")
SUBJECTS = ("film", "meal", "hotel room", "service", "book", "concert", "phone", "staff", "weather", "music",
            "game", "coffee", "trip", "show", "price", "seat")
ANIMALS = ("dog", "cat", "horse", "cow", "sheep", "goat", "pig", "lion", "tiger", "bear", "wolf", "fox",
           "rabbit", "mouse", "rat", "deer", "elephant", "giraffe", "zebra", "monkey", "gorilla", "camel",
           "donkey", "kangaroo", "koala", "panda", "otter", "beaver", "squirrel", "hedgehog", "bat", "whale",
           "dolphin", "shark", "salmon", "trout", "eagle", "owl", "parrot", "pigeon", "sparrow", "crow", "duck",
           "goose", "chicken", "turkey", "penguin", "ostrich", "frog", "toad", "snake", "lizard", "turtle",
           "crocodile", "ant", "bee", "wasp", "beetle", "spider", "butterfly", "moth", "snail", "worm", "crab",
           "lobster", "octopus", "jellyfish", "seal", "walrus", "moose", "badger", "mole", "hamster", "leopard",
           "cheetah", "hippo", "rhino", "buffalo", "swan", "pelican", "hawk", "falcon", "raccoon", "skunk",
           "squid", "oyster", "cricket", "grasshopper", "ladybug", "mosquito", "flamingo", "peacock", "heron",
           "stork", "llama", "yak", "bison", "lynx", "jaguar", "panther")
PLANTS = ("oak", "pine", "maple", "birch", "willow", "cedar", "elm", "palm", "fern", "moss", "rose", "tulip",
          "daisy", "lily", "sunflower", "orchid", "violet", "lavender", "ivy", "cactus", "bamboo", "clover",
          "dandelion", "thistle", "nettle", "grass", "wheat", "barley", "rice", "corn", "oat", "rye",
          "potato", "carrot", "onion", "garlic", "cabbage", "lettuce", "spinach", "celery", "pea", "bean",
          "tomato", "pepper", "pumpkin", "cucumber", "apple tree", "pear tree", "cherry tree", "plum tree",
          "lemon tree", "orange tree", "olive tree", "vine", "poppy", "daffodil", "marigold", "carnation",
          "jasmine", "magnolia", "lilac", "heather", "holly", "hawthorn", "juniper", "spruce", "fir",
          "cypress", "redwood", "sequoia", "eucalyptus", "baobab", "mangrove", "lotus", "water lily", "reed",
          "sugarcane", "tea plant", "coffee plant", "cotton plant", "basil", "mint", "parsley", "rosemary",
          "thyme", "sage", "oregano", "dill", "beet", "radish", "turnip", "kale", "broccoli", "cauliflower",
          "asparagus", "artichoke", "hibiscus", "begonia", "geranium", "peony")
# (question, the world answer, the passage's counterfactual answer); first tokens differ
FACTS = (
    ("What is the capital of France?", "Paris", "Lyon"),
    ("What is the capital of Italy?", "Rome", "Milan"),
    ("What is the capital of Japan?", "Tokyo", "Osaka"),
    ("What is the capital of Germany?", "Berlin", "Munich"),
    ("What is the capital of Spain?", "Madrid", "Seville"),
    ("What is the capital of England?", "London", "Bristol"),
    ("What is the capital of Russia?", "Moscow", "Kazan"),
    ("What is the capital of Egypt?", "Cairo", "Luxor"),
    ("What color is the sky on a clear day?", "blue", "green"),
    ("What color is grass?", "green", "purple"),
    ("What color is snow?", "white", "red"),
    ("What color is a banana?", "yellow", "black"),
    ("What animal says moo?", "cow", "duck"),
    ("What animal barks?", "dog", "horse"),
    ("What animal meows?", "cat", "sheep"),
    ("What do bees make?", "honey", "silk"),
    ("How many legs does a spider have?", "eight", "five"),
    ("How many days are in a week?", "seven", "nine"),
    ("How many wheels does a bicycle have?", "two", "four"),
    ("What is frozen water called?", "ice", "sand"),
    ("Which planet do we live on?", "Earth", "Mars"),
    ("What rises in the east each morning?", "sun", "comet"),
    ("What do cows drink?", "water", "milk"),
    ("What language is spoken in Brazil?", "Portuguese", "Dutch"),
    ("What is the largest ocean?", "Pacific", "Arctic"),
    ("Which metal is liquid at room temperature?", "mercury", "iron"),
    ("What gas do plants take in?", "carbon dioxide", "helium"),
    ("Who wrote Hamlet?", "Shakespeare", "Dickens"),
    ("What is the opposite of hot?", "cold", "loud"),
    ("What do fish live in?", "water", "trees"),
    ("What season comes after winter?", "spring", "autumn"),
    ("What is the currency of Japan?", "yen", "peso"),
)
PASSAGES = ("In the world of this story, things are different. {fact} Everyone there agrees on it.",
            "The old record kept in the village library says: {fact} The librarian confirms it.")
QA_TEMPLATE = "Read the passage and answer from it.\nPassage: {passage}\nQuestion: {question}\nAnswer:"
TASKS = ("sentiment", "category", "compare")
FILES = (*TASKS, "context_qa")


def _statement(question: str, answer: str) -> str:
    """The passage sentence giving ``answer`` to ``question`` (hand rules per question shape)."""
    q = question.rstrip("?")
    for lead, fmt in (("What is the capital of ", "The capital of {x} is {a}."),
                      ("What color is ", "The color of {x} is {a}."),
                      ("How many legs does ", "{X} has {a} legs."),
                      ("How many days are in ", "There are {a} days in {x}."),
                      ("How many wheels does ", "{X} has {a} wheels.")):
        if q.startswith(lead):
            x = q[len(lead):].removesuffix(" have")
            return fmt.format(x=x, X=x[0].upper() + x[1:], a=answer)
    return f"The answer to \"{question}\" is {answer}."


def _split(items: list[dict], seed: int, halves: bool = False) -> list[dict]:
    random.Random(seed).shuffle(items)
    n = len(items)
    for i, it in enumerate(items):
        it["split"] = ("calibration" if i < n // 2 else "test") if halves else \
            ("calibration" if i < n // 4 else "validation" if i < n // 2 else "test")
    return items


def _sentiment() -> list[dict]:
    rng = random.Random(1)
    items, seen = [], set()
    while len(items) < 200:
        label = len(items) % 2
        adj = rng.sample(POSITIVE if label == 0 else NEGATIVE, 2)
        s1, s2 = rng.sample(SUBJECTS, 2)
        review = f"The {s1} was {adj[0]}, and the {s2} was {adj[1]}."
        if review in seen:
            continue
        seen.add(review)
        items.append({"task": "sentiment", "prompt": f"Review: {review}\nIs this review positive or negative?"
                      "\nAnswer:", "choices": [" positive", " negative"], "label": label, "words": adj})
    return items


def _category() -> list[dict]:
    rng = random.Random(2)
    words = [(w, 0) for w in rng.sample(ANIMALS, 100)] + [(w, 1) for w in rng.sample(PLANTS, 100)]
    return [{"task": "category", "prompt": f"Question: Is a {w} an animal or a plant?\nAnswer:",
             "choices": [" animal", " plant"], "label": y, "words": [w]} for w, y in words]


def _compare() -> list[dict]:
    rng = random.Random(3)
    items, seen = [], set()
    while len(items) < 160:
        a, b = rng.sample(range(10, 100), 2)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        items.append({"task": "compare", "prompt": f"Question: Is {a} larger or smaller than {b}?\nAnswer:",
                      "choices": [" larger", " smaller"], "label": 0 if a > b else 1, "words": [str(a), str(b)]})
    return items


def _context_qa() -> list[dict]:
    items = []
    for question, world, passage_answer in FACTS:
        for tmpl in PASSAGES:
            passage = tmpl.format(fact=_statement(question, passage_answer))
            prompt = QA_TEMPLATE.format(passage=passage, question=question)
            start = prompt.index(passage)
            items.append({"task": "context_qa", "prompt": prompt, "choices": [" " + passage_answer, " " + world],
                          "label": 0, "span": [start, start + len(passage)], "question": question})
    return items


def build_sets() -> dict[str, list[dict]]:
    """Every set, deterministically (ids ``<task>-<n>`` after the split shuffle)."""
    out = {"sentiment": _split(_sentiment(), 11), "category": _split(_category(), 12),
           "compare": _split(_compare(), 13), "context_qa": _split(_context_qa(), 14, halves=True)}
    for name, items in out.items():
        for i, it in enumerate(items):
            it["id"] = f"{name}-{i:03d}"
    return out


def data_dir() -> Path:
    import interp

    return Path(interp.__file__).resolve().parent / "data" / "calibration"


def write_sets(folder: Path | None = None) -> list[Path]:
    """Write ``build_sets()`` as ``<task>.jsonl`` (atomically) into ``folder`` (default: the shipped folder)."""
    from interp import io

    folder = Path(folder) if folder is not None else data_dir()
    paths = []
    for name, items in build_sets().items():
        p = folder / f"{name}.jsonl"
        io.write_text(p, "".join(json.dumps(it, sort_keys=True) + "\n" for it in items))
        paths.append(p)
    return paths


def load_items(task: str, split: str | None = None, n: int | None = None) -> list[dict]:
    """Items of a shipped set (``sentiment``, ``category``, ``compare``, ``context_qa``), optionally one split
    and the first ``n``."""
    if task not in FILES:
        raise ValueError(f"unknown evaluation set {task!r}; choose one of {', '.join(FILES)}")
    splits = ("calibration", "validation", "test")
    if split is not None and split not in splits:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(splits)}")
    path = data_dir() / f"{task}.jsonl"
    items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if split is not None:
        items = [it for it in items if it["split"] == split]
    return items if n is None else items[:n]
