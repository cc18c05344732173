"""Batching prompts of different lengths: left padding with an attention mask, and a small dataset wrapper.

Left padding puts every prompt's last real token in the last column, so ``ids[:, -1]`` is the next-token
position of every row. Padded columns get the tokenizer's pad id (its eos id if it has none) and mask 0.
Position ids for a padded batch are ``mask.cumsum(-1) - 1`` (``position_ids``), so each row sees the same
RoPE positions as when run alone; ``tests/unit/test_store.py`` checks padded runs against one-at-a-time runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

EMPTY_DATASET = "dataset is empty: pass at least one prompt"


def pad_id(tokenizer) -> int:
    """The id used for padding: the tokenizer's pad id, else its eos id, else 0."""
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, (list, tuple)):
            v = v[0] if v else None
        if v is not None:
            return int(v)
    return 0


def tokenize(model, text: str, *, chat: bool = False) -> list[int]:
    """Token ids of one prompt, with the tokenizer's special tokens (``chat=True``: the chat template)."""
    if not isinstance(text, str):
        raise TypeError(f"expected a prompt string, got {type(text).__name__}")
    if chat:
        return list(model.tokenizer(model.apply_chat_template(text), add_special_tokens=False)["input_ids"])
    return list(model.tokenizer(text, add_special_tokens=True)["input_ids"])


def _as_id_list(item, i: int) -> list[int]:
    if isinstance(item, torch.Tensor):
        if item.ndim != 1 or item.dtype.is_floating_point or item.dtype == torch.bool:
            raise TypeError(f"prompt {i}: expected a 1D integer tensor of token ids, got {item.dtype} "
                            f"of shape {tuple(item.shape)}")
        return item.tolist()
    if isinstance(item, (list, tuple)):
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            raise TypeError(f"prompt {i}: token id lists must hold ints, got {item[:5]!r}...")
        return list(item)
    raise TypeError(f"prompt {i}: expected a string, a list of token ids or a 1D tensor, "
                    f"got {type(item).__name__}")


def pad_batch(model, texts_or_id_lists, *, chat: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts into ``(ids [batch, pos], attention_mask [batch, pos])`` (both ``torch.long``).

    ``texts_or_id_lists``: strings (tokenised with ``model``'s tokenizer, ``chat=True`` for the chat
    template), lists of token ids or 1D integer tensors. Padding uses the pad id (eos if none) with mask 0.
    """
    items = [texts_or_id_lists] if isinstance(texts_or_id_lists, str) else list(texts_or_id_lists)
    if not items:
        raise ValueError(EMPTY_DATASET)
    rows = [tokenize(model, x, chat=chat) if isinstance(x, str) else _as_id_list(x, i)
            for i, x in enumerate(items)]
    for i, r in enumerate(rows):
        if not r:
            raise ValueError(f"prompt {i} has no tokens; drop it or give it some text")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id(model.tokenizer), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[batch, pos]`` positions counted from each row's first real token (0 on padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def iter_batches(items: Sequence, batch_size: int) -> Iterator:
    """Consecutive slices of ``items`` (a sequence or a tensor) of at most ``batch_size`` elements."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


class PromptDataset:
    """Prompts as token-id lists, from a list of strings, a list of token-id lists or a 2D LongTensor.

    ``len(ds)``, ``ds[i]`` (a list of ids), ``ds.lengths`` and ``ds.batches(batch_size)`` which yields
    ``(indices, ids [batch, pos], attention_mask [batch, pos])`` with left padding.
    """

    def __init__(self, data, model=None, *, chat: bool = False):
        self.pad = pad_id(model.tokenizer) if model is not None else 0
        if isinstance(data, PromptDataset):
            self.rows = list(data.rows)
            return
        if isinstance(data, str):
            data = [data]
        if isinstance(data, torch.Tensor):
            if data.dtype.is_floating_point or data.dtype == torch.bool:
                raise TypeError(f"a tensor dataset must hold integer token ids, got dtype {data.dtype}")
            if data.ndim == 1:
                data = data[None]
            if data.ndim != 2:
                raise ValueError(f"a tensor dataset must be [batch, pos] token ids, "
                                 f"got shape {tuple(data.shape)}")
            if data.numel() == 0:
                raise ValueError(EMPTY_DATASET)
            self.rows = data.long().tolist()
            return
        if not isinstance(data, Iterable):
            raise TypeError("expected a list of strings, a list of token-id lists or a [batch, pos] "
                            f"LongTensor, got {type(data).__name__}")
        items = list(data)
        if not items:
            raise ValueError(EMPTY_DATASET)
        if any(isinstance(x, str) for x in items) and model is None:
            raise ValueError("string prompts need a model (for its tokenizer); pass model=...")
        self.rows = [tokenize(model, x, chat=chat) if isinstance(x, str) else _as_id_list(x, i)
                     for i, x in enumerate(items)]
        for i, r in enumerate(self.rows):
            if not r:
                raise ValueError(f"prompt {i} has no tokens; drop it or give it some text")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> list[int]:
        return self.rows[i]

    @property
    def lengths(self) -> list[int]:
        return [len(r) for r in self.rows]

    def batches(self, batch_size: int) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        for idx in iter_batches(range(len(self.rows)), batch_size):
            rows = [self.rows[i] for i in idx]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, r in enumerate(rows):
                ids[j, width - len(r):] = torch.tensor(r, dtype=torch.long)
                mask[j, width - len(r):] = 1
            yield list(idx), ids, mask
