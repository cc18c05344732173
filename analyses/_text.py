"""Offline text sources for the sink and taxonomy analyses (no network, deterministic under ``seed``).

* ``prose``: the retrieval-head haystacks shipped in ``interp/data/niah/haystack_part{1,2,3}.txt``
  (public-domain novels; github nightdessert/Retrieval_Head, haystack_for_detect).
* ``code``: Python source of installed standard-library modules, read with ``inspect.getsource``.
* ``random``: token ids drawn uniformly from the vocabulary (special ids below ``min_id`` excluded).
* ``repeated``: one random token id repeated over the whole sequence.

All samplers return token ids ``[batch, pos]`` (int64). No BOS is added unless ``bos=True`` (the default
model's tokenizer does not add one; the sink analyses measure whatever token comes first).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

DATA_DIR = Path(__file__).resolve().parents[1] / "interp" / "data" / "niah"
HAYSTACKS = ("haystack_part1.txt", "haystack_part2.txt", "haystack_part3.txt")
CODE_MODULES = ("json.decoder", "json.encoder", "textwrap", "string", "shlex", "fractions", "heapq", "bisect",
                "csv", "argparse", "functools", "dataclasses")
DOMAINS = ("prose", "code", "random", "repeated")


def _data_dir() -> Path:
    import interp

    p = Path(interp.__file__).resolve().parent / "data" / "niah"
    return p if p.exists() else DATA_DIR


def haystack_paths() -> list[Path]:
    d = _data_dir()
    paths = [d / name for name in HAYSTACKS]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"haystack text missing: {missing}; reinstall interp (package data interp/data)")
    return paths


@functools.lru_cache(maxsize=4)
def prose_text(part: int | None = None) -> str:
    """Text of one haystack (``part`` in 1..3) or of all three joined."""
    paths = haystack_paths()
    if part is not None:
        if part not in (1, 2, 3):
            raise ValueError(f"haystack part must be 1, 2 or 3, got {part!r}")
        paths = [paths[part - 1]]
    return "\n\n".join(p.read_text(encoding="utf-8") for p in paths)


@functools.lru_cache(maxsize=2)
def code_text() -> str:
    """Python source of a fixed list of standard-library modules (available offline everywhere)."""
    import importlib
    import inspect

    return "\n\n".join(inspect.getsource(importlib.import_module(m)) for m in CODE_MODULES)


def _stream(tokenizer, text: str) -> list[int]:
    key = (id(tokenizer), hash(text))
    cache = _stream.__dict__.setdefault("cache", {})
    if key not in cache:
        cache[key] = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return cache[key]


def text_samples(tokenizer, text: str, n_samples: int, n_tokens: int, *, seed: int = 0,
                 bos: bool = False) -> torch.Tensor:
    """``n_samples`` windows of ``n_tokens`` consecutive tokens of ``text`` at random offsets → ``[batch, pos]``."""
    _check(n_samples, n_tokens)
    ids = _stream(tokenizer, text)
    body = n_tokens - 1 if bos else n_tokens
    if len(ids) < body + 1:
        raise ValueError(f"text has {len(ids)} tokens, fewer than the {body + 1} needed for one sample; "
                         "use fewer tokens per sample")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - body, (n_samples,), generator=g).tolist()
    rows = [ids[s:s + body] for s in starts]
    out = torch.tensor(rows, dtype=torch.long)
    if bos:
        out = torch.cat([torch.full((n_samples, 1), _bos_id(tokenizer), dtype=torch.long), out], 1)
    return out


def random_samples(vocab: int, n_samples: int, n_tokens: int, *, seed: int = 0, min_id: int = 0) -> torch.Tensor:
    """Uniformly random token ids in ``[min_id, vocab)`` → ``[batch, pos]``."""
    _check(n_samples, n_tokens)
    if not 0 <= min_id < vocab:
        raise ValueError(f"min_id must be in [0, vocab={vocab}), got {min_id}")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(min_id, vocab, (n_samples, n_tokens), generator=g)


def repeated_samples(vocab: int, n_samples: int, n_tokens: int, *, seed: int = 0, min_id: int = 0) -> torch.Tensor:
    """One random token id per sample repeated ``n_tokens`` times → ``[batch, pos]``."""
    _check(n_samples, n_tokens)
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(min_id, vocab, (n_samples, 1), generator=g)
    return tok.expand(n_samples, n_tokens).clone()


def repeated_random_halves(vocab: int, n_samples: int, half: int, *, seed: int = 0, min_id: int = 0,
                           bos_id: int | None = None) -> torch.Tensor:
    """Induction probe: ``[bos] + r + r`` with ``r`` ``half`` random tokens → ``[batch, (1) + 2 * half]``."""
    r = random_samples(vocab, n_samples, half, seed=seed, min_id=min_id)
    out = torch.cat([r, r], 1)
    if bos_id is not None:
        out = torch.cat([torch.full((n_samples, 1), bos_id, dtype=torch.long), out], 1)
    return out


def domain_samples(model, domain: str, n_samples: int, n_tokens: int, *, seed: int = 0,
                   bos: bool = False) -> torch.Tensor:
    """Samples of one domain (``"prose" | "code" | "random" | "repeated"``) for ``model`` → ``[batch, pos]``."""
    tok = model.tokenizer
    if domain == "prose":
        return text_samples(tok, prose_text(), n_samples, n_tokens, seed=seed, bos=bos)
    if domain == "code":
        return text_samples(tok, code_text(), n_samples, n_tokens, seed=seed, bos=bos)
    lo = _first_regular_id(model)
    if domain == "random":
        return random_samples(model.shape.d_vocab, n_samples, n_tokens, seed=seed, min_id=lo)
    if domain == "repeated":
        return repeated_samples(model.shape.d_vocab, n_samples, n_tokens, seed=seed, min_id=lo)
    raise ValueError(f"unknown text domain {domain!r}; choose one of {DOMAINS}")


def long_prose_ids(model, n_tokens: int) -> torch.Tensor:
    """The first ``n_tokens`` tokens of the three haystacks joined → ``[1, pos]`` (e.g. 8192 for the benchmark)."""
    ids = _stream(model.tokenizer, prose_text())
    if len(ids) < n_tokens:
        raise ValueError(f"the haystacks have only {len(ids)} tokens, fewer than {n_tokens}")
    return torch.tensor([ids[:n_tokens]], dtype=torch.long)


def _first_regular_id(model) -> int:
    """Skip the special ids at the start of the vocabulary (SmolLM2: 0..16; tiny models: 0, 1)."""
    tok = model.tokenizer
    special = getattr(tok, "all_special_ids", None) or [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]
    special = [s for s in special if s is not None and s < 1000]
    return min(max(special) + 1 if special else 0, model.shape.d_vocab - 1)


def _bos_id(tokenizer) -> int:
    b = getattr(tokenizer, "bos_token_id", None)
    if b is None:
        raise ValueError("bos=True but the tokenizer defines no bos_token_id; use bos=False")
    return int(b)


def _check(n_samples, n_tokens):
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if not isinstance(n_tokens, int) or n_tokens < 2:
        raise ValueError(f"n_tokens must be an int >= 2, got {n_tokens!r}")
