"""The one greedy decoder: KV cache, left-padded batches, hooks/interventions, per-step capture, stop rules.

``generate(model, prompts, max_new_tokens=..., stop=...)`` runs, for a batch of prompts ``[batch, pos]`` (left
padded, attention mask + position ids ``mask.cumsum(-1) - 1`` so every row equals its run alone), one prefill
forward and then one forward per new token, each row taking ``w_t = argmax_v logits_t[v]`` (plain argmax: a
model's ``generation_config`` processors such as repetition penalties are not applied). The forwards go through
``model.hooks`` (interp's attention function), so ``handlers`` ``{Site: fn}`` and ``interventions`` act during
the prefill and every decode step; a statistics ``capture`` (``model.hooks(stats=...)``) is installed for the
decode steps only; ``on_step(DecodeStep)`` is called after every step and its return values are collected.

Steps: step t is the forward whose last-position logits ``[batch, d_vocab]`` give token t. By default step 0
is the prefill; with ``feed_last=True`` (the retrieval paper's loop) the prompt minus its last token is
prefilled and the last prompt token is fed at step 0, so every token comes from a one-query decode step.

Stop rules (``stop``: a name, a rule, or a list of them; a row stops after the first token a rule fires on,
that token included; finished rows are fed padding and ignored):

- ``"eos"``: an end-of-sequence id (the tokenizer's and the generation config's, or ``eos_ids``);
- ``"newline"``: eos, or a token whose decoded text contains ``"\\n"`` (today's retrieval rule);
- ``"paper"``: the official retrieval-head code (Wu et al. 2024, ``retrieval_head_detection.py``): stop only
  when ``convert_ids_to_tokens(w) == "<0x0A>"`` or ``w == 144`` — the Llama-2 newline byte token. On BPE
  vocabularies it never fires on a newline (SmolLM2's and Qwen's newline is ``"Ċ"``, id 198; id 144 is an
  unrelated byte token there, ``"Å"`` in SmolLM2), so decoding runs to ``max_new_tokens`` or that byte; kept to
  reproduce the paper's loop on Llama-2-style tokenizers;
- ``"none"``: only ``max_new_tokens``; ``stop_strings``: stop once the decoded new text contains one of them.

Returns a ``Generation`` (tokens per row, decoded texts, steps run, captures, which rule stopped each row).
Validated in ``tests/unit/test_generation.py`` against a naive no-cache argmax loop on tiny llama / qwen2 /
gemma3 models, left-padded batches against one prompt at a time, each stop rule on planted tokens, and
per-step captures against the step count; the retrieval, refusal, divergence and VHD tests and the goldens
check the analyses built on it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .arch import cache_kwarg, output_cache

STOP_RULES = ("eos", "newline", "paper", "none")
PAPER_NEWLINE_TOKEN, PAPER_NEWLINE_ID = "<0x0A>", 144


@dataclass
class DecodeStep:
    """What ``on_step`` sees after step ``index``: ``tokens [batch]`` chosen (padding for finished rows),
    ``logits [batch, d_vocab]`` of the step's last position, ``finished [batch]`` bool (rows stopped before
    this step), and the installed ``capture`` (or None)."""

    index: int
    tokens: torch.Tensor
    logits: torch.Tensor
    finished: torch.Tensor
    capture: object = None


@dataclass
class Generation:
    """``tokens[row]``: generated ids (the stop token included); ``texts[row]``: their decoded text;
    ``n_steps``: steps run (= the longest row); ``captures``: ``on_step``'s return value per step;
    ``stopped[row]``: name of the rule that stopped the row, None if it ran to ``max_new_tokens``."""

    tokens: list[list[int]]
    texts: list[str]
    n_steps: int
    captures: list = field(default_factory=list)
    stopped: list[str | None] = field(default_factory=list)


# --- stop rules ---------------------------------------------------------------------------------------------------


class StopRule:
    """A row stops after token ``token`` when ``rule(token, row)`` is true (``row``: the row's tokens so far,
    ``token`` last). Subclasses set ``name``."""

    name = "rule"

    def __call__(self, token: int, row: list[int]) -> bool:
        raise NotImplementedError


class EosStop(StopRule):
    name = "eos"

    def __init__(self, ids):
        self.ids = frozenset(int(i) for i in ids)

    def __call__(self, token, row):
        return token in self.ids


class NewlineStop(StopRule):
    """Any token whose decoded text contains a newline."""

    name = "newline"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._seen: dict[int, bool] = {}

    def __call__(self, token, row):
        if token not in self._seen:
            self._seen[token] = "\n" in self.tokenizer.decode([token])
        return self._seen[token]


class PaperNewlineStop(StopRule):
    """The retrieval paper's rule: the token is ``<0x0A>`` (Llama-2's newline byte) or has id 144."""

    name = "paper"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, token, row):
        if token == PAPER_NEWLINE_ID:
            return True
        conv = getattr(self.tokenizer, "convert_ids_to_tokens", None)
        return conv is not None and conv([token])[0] == PAPER_NEWLINE_TOKEN


class StopStrings(StopRule):
    name = "stop_string"

    def __init__(self, tokenizer, strings):
        self.tokenizer, self.strings = tokenizer, tuple(strings)

    def __call__(self, token, row):
        text = self.tokenizer.decode(row)
        return any(s in text for s in self.strings)


def eos_ids(model) -> list[int]:
    """End-of-sequence ids: the tokenizer's ``eos_token_id`` and the generation config's (either may be a list)."""
    gc = getattr(model.hf, "generation_config", None)
    found = [getattr(model.tokenizer, "eos_token_id", None), getattr(gc, "eos_token_id", None)]
    out = []
    for e in found:
        for x in e if isinstance(e, (list, tuple)) else [e]:
            if x is not None and int(x) not in out:
                out.append(int(x))
    return out


def stop_rules(model, stop="eos", *, eos: Sequence[int] | None = None, stop_strings: Sequence[str] = ()) -> list:
    """The ``StopRule`` list for ``stop`` (a name of ``STOP_RULES``, a ``StopRule``, or a list of them)."""
    items = [stop] if isinstance(stop, (str, StopRule)) or stop is None else list(stop)
    tok = model.tokenizer
    ids = eos_ids(model) if eos is None else list(eos)
    named = {"eos": lambda: [EosStop(ids)], "newline": lambda: [EosStop(ids), NewlineStop(tok)],
             "paper": lambda: [PaperNewlineStop(tok)], "none": lambda: []}
    rules = []
    for item in items:
        if isinstance(item, StopRule):
            rules.append(item)
        elif isinstance(item, str) and item in named:
            rules += named[item]()
        elif item is not None:
            raise ValueError(f"unknown stop rule {item!r}; choose one of {', '.join(map(repr, STOP_RULES))} "
                             "or pass a StopRule")
    if stop_strings:
        rules.append(StopStrings(tok, stop_strings))
    return rules


# --- inputs ---------------------------------------------------------------------------------------------------------


def _batch(model, prompts, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [batch, pos], mask [batch, pos])`` long, left padded."""
    from .batching import pad_batch

    if isinstance(prompts, torch.Tensor) and prompts.ndim == 2:
        ids = prompts.long()
        mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask).long()
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask {tuple(mask.shape)} must match the ids {tuple(ids.shape)}")
        if bool((mask[:, -1] == 0).any()):
            raise ValueError("the batch must be left padded (the last column real in every row); "
                             "build it with interp.batching.pad_batch")
        return ids.cpu(), mask.cpu()
    if attention_mask is not None:
        raise ValueError("attention_mask goes with a [batch, pos] tensor of ids, not with a list of prompts")
    return pad_batch(model, prompts)


def _check(model, ids, mask, max_new_tokens, feed_last, use_cache) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    model.check_tokens(ids)
    n_ctx = model.shape.n_ctx
    if n_ctx and ids.shape[1] + max_new_tokens > n_ctx:
        raise ValueError(f"prompt + {max_new_tokens} new tokens = {ids.shape[1] + max_new_tokens} exceeds "
                         f"{model.name}'s context of {n_ctx}; shorten the prompts or max_new_tokens")
    from .plan import check_run

    check_run(model, ids.shape[1] + max_new_tokens, ids.shape[0], kv_cache=use_cache)
    if feed_last and not use_cache:
        raise ValueError("feed_last=True needs the KV cache (use_cache=True)")
    if feed_last and int(mask.sum(1).min()) < 2:
        raise ValueError(f"feed_last=True needs prompts of at least 2 tokens (prefill + first decode step), "
                         f"got one of {int(mask.sum(1).min())}")


def _hooks(model, handlers, interventions) -> dict:
    out: dict = {}
    for site, fns in (handlers or {}).items():
        out.setdefault(site, []).extend(fns if isinstance(fns, (list, tuple)) else [fns])
    if interventions:
        from .interventions import compile_interventions

        for site, fns in compile_interventions(model, interventions).items():
            out.setdefault(site, []).extend(fns)
    return out


# --- the decoder ----------------------------------------------------------------------------------------------------


class _Runner:
    """Runs the forwards: the prefill (or a full re-run without cache) and one-token cached steps."""

    def __init__(self, model, use_cache: bool, extra: dict | None, *, padded: bool):
        self.hf, self.dev = model.hf, model.device
        self.use_cache, self.extra, self.padded = use_cache, dict(extra or {}), padded
        params = inspect.signature(self.hf.forward).parameters
        self.cache_kw = cache_kwarg(self.hf)
        self.keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.cache = None

    def _kw(self, mask, positions) -> dict:
        if not self.padded:  # no padding: let the model use its default positions and causal mask
            return {}
        return {"attention_mask": mask.to(self.dev), "position_ids": positions.to(self.dev)}

    def full(self, ids, mask) -> torch.Tensor:
        """Forward over whole sequences ``ids [batch, n]``; returns the last position's logits."""
        from .batching import position_ids

        out = self.hf(input_ids=ids.to(self.dev), use_cache=self.use_cache, **self._kw(mask, position_ids(mask)),
                      **self.keep, **self.extra)
        if self.use_cache:
            self.cache = output_cache(out)
        return out.logits[:, -1]

    def step(self, tokens, mask) -> torch.Tensor:
        """One cached step feeding ``tokens [batch]``; ``mask`` covers the cache plus this token."""
        from .batching import position_ids

        out = self.hf(input_ids=tokens[:, None].to(self.dev), use_cache=True,
                      **{self.cache_kw: self.cache}, **self._kw(mask, position_ids(mask)[:, -1:]))
        self.cache = output_cache(out)
        return out.logits[:, -1]


class _Rows:
    """Per-row bookkeeping: tokens so far, which rows finished and why."""

    def __init__(self, n: int, rules: list, pad: int):
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.stopped: list[str | None] = [None] * n
        self.finished = torch.zeros(n, dtype=torch.bool)
        self.rules, self.pad = rules, pad

    def take(self, logits: torch.Tensor) -> torch.Tensor:
        """Greedy tokens ``[batch]`` from ``logits [batch, d_vocab]`` (padding in finished rows)."""
        tok = logits.argmax(-1).cpu()
        return torch.where(self.finished, torch.full_like(tok, self.pad), tok)

    def record(self, tok: torch.Tensor) -> torch.Tensor:
        """Append each unfinished row's token, apply the stop rules; returns the finished mask before the step."""
        before = self.finished.clone()
        for r in (~before).nonzero().flatten().tolist():
            t = int(tok[r])
            self.tokens[r].append(t)
            fired = next((rule.name for rule in self.rules if rule(t, self.tokens[r])), None)
            if fired is not None:
                self.stopped[r], self.finished[r] = fired, True
        return before


@torch.no_grad()
def generate(model, prompts, *, attention_mask=None, max_new_tokens: int = 32, stop="eos",
             stop_strings: Sequence[str] = (), eos: Sequence[int] | None = None, handlers: dict | None = None,
             interventions=(), capture=None, on_step: Callable[[DecodeStep], object] | None = None,
             feed_last: bool = False, use_cache: bool = True, prefill_kwargs: dict | None = None,
             skip_special_tokens: bool = True) -> Generation:
    """Greedy continuations of ``prompts`` (see the module docstring).

    ``prompts``: strings, token-id lists or 1D tensors (left padded here), or ids ``[batch, pos]`` with
    ``attention_mask [batch, pos]`` (left padded). ``stop``: a rule name (``STOP_RULES``), a ``StopRule`` or a
    list; ``eos``: the end-of-sequence ids (default ``eos_ids(model)``). ``handlers`` ``{Site: fn}`` /
    ``interventions``: active in every forward. ``capture``: a statistics capture installed for the decode
    steps. ``on_step(step) -> value``: called after each step, values in ``Generation.captures``.
    ``use_cache=False``: re-run the whole sequence at every step (for handlers that need every position).
    ``prefill_kwargs``: extra forward arguments for the forwards that see the prompt (e.g. ``pixel_values``).
    """
    ids, mask = _batch(model, prompts, attention_mask)
    _check(model, ids, mask, max_new_tokens, feed_last, use_cache)
    from .batching import pad_id

    rules = stop_rules(model, stop, eos=eos, stop_strings=stop_strings)
    hooks = _hooks(model, handlers, interventions)
    run = _Runner(model, use_cache, prefill_kwargs, padded=bool((mask == 0).any()))
    rows = _Rows(ids.shape[0], rules, pad_id(model.tokenizer))
    captures: list = []
    with model.hooks(hooks):  # step 0's prefill (without its last token under feed_last)
        if feed_last:
            seq, m, prev, logits = ids[:, :-1], mask[:, :-1], ids[:, -1], None
            run.full(seq, m)
        else:
            seq, m, prev, logits = ids, mask, None, run.full(ids, mask)
    with model.hooks(hooks, capture=capture):  # the decode steps
        for t in range(max_new_tokens):
            if prev is not None:
                seq, m = torch.cat([seq, prev[:, None]], 1), torch.cat([m, torch.ones_like(m[:, :1])], 1)
                logits = run.step(prev, m) if use_cache else run.full(seq, m)
            prev = rows.take(logits)
            before = rows.record(prev)
            if on_step is not None:
                captures.append(on_step(DecodeStep(t, prev, logits, before, capture)))
            if bool(rows.finished.all()):
                break
    texts = [model.tokenizer.decode(r, skip_special_tokens=skip_special_tokens) for r in rows.tokens]
    return Generation(rows.tokens, texts, max(len(r) for r in rows.tokens), captures, rows.stopped)
