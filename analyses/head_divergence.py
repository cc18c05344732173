"""Context-aware head divergence: how much each head's output depends on a context segment.

For head (l, h) and a token t of the shared suffix (prompt + a teacher-forced generated continuation),
with o^{l,h}_t = z^{l,h}_t W_O^{h} the head's write to the residual stream::

    D_L2  = ‖o_t(with context) − o_t(without)‖₂
    D_cos = 1 − cos(o_t(with), o_t(without))
    D_rel = D_L2 / ‖o_t(with)‖₂

This is the text analogue of VHD (He et al., "Cracking the Code of Hallucination in LVLMs with Vision-aware
Head Divergence", 2025), where the context is the image (``analyses/vhd.py``). Positions are aligned by
construction: the context and the suffix are tokenised separately and the suffix ids are appended unchanged to
both runs (the no-context run keeps the BOS token if the tokenizer adds one), so suffix token t sits at the
last-S positions of both sequences. The continuation is generated greedily from the with-context run and fed
to both runs (teacher forcing). Head scores = mean over suffix tokens (or over generated tokens only).

Validated in tests/unit/test_head_divergence.py against an explicit per-head computation from cached z and
W_O, and on a hand-built case where only one head can see the context.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from interp.arch import head_outputs
from interp.params import Params, param
from interp.scores import ScoreTable
from interp.sites import Site


def _bos(tokenizer) -> list[int]:
    with_sp = tokenizer("x", add_special_tokens=True)["input_ids"]
    without = tokenizer("x", add_special_tokens=False)["input_ids"]
    return list(with_sp[: len(with_sp) - len(without)])


@torch.no_grad()
def suffix_head_outputs(model, ids: torch.Tensor, n_suffix: int, **forward_kw) -> torch.Tensor:
    """Per-head residual writes at the last ``n_suffix`` positions.

    ids: [1, pos]. Returns [layer, n_suffix, head, d_model] (float32). Only the suffix slice of z is kept.
    """
    kept: dict[int, torch.Tensor] = {}

    def keep(z, site):
        kept[site.layer] = z[0, -n_suffix:].detach().float()  # [n_suffix, head, d_head]

    s = model.shape
    with model.hooks({Site(layer, "z"): keep for layer in range(s.n_layers)}):
        model.forward(ids, **forward_kw)
    outs = []
    for layer in range(s.n_layers):
        outs.append(head_outputs(kept[layer], model.w_o(layer, torch.float32)))
    return torch.stack(outs)


def divergence_of(o_with: torch.Tensor, o_without: torch.Tensor) -> dict[str, torch.Tensor]:
    """Distances between per-head outputs. Inputs: [..., d_model]. Returns l2, cos, rel: [...]."""
    diff = (o_with - o_without).norm(dim=-1)
    cos = torch.nn.functional.cosine_similarity(o_with, o_without, dim=-1, eps=1e-12)
    return {"l2": diff, "cos": 1 - cos, "rel": diff / o_with.norm(dim=-1).clamp_min(1e-12)}


def greedy_continuation(model, ids: torch.Tensor, n: int, **prefill_kw) -> list[int]:
    """``n`` greedy tokens after ``ids`` [1, pos] (``interp.generation``: KV cache; stops early at the generation
    config's EOS, the token included). ``prefill_kw``: extra forward arguments of the prompt (``pixel_values``)."""
    if n <= 0:
        return []
    from interp.generation import generate

    eos = getattr(getattr(model.hf, "generation_config", None), "eos_token_id", None)
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return generate(model, ids, max_new_tokens=n, stop="eos", eos=eos, prefill_kwargs=prefill_kw).tokens[0]


def context_divergence(model, samples, *, n_generate: int = 8, generated_only: bool = False):
    """Score every head by how much its output changes when a context segment is removed.

    samples: list of ``(context, prompt)`` strings. Returns ``(scores, per_token)``: the score table (scores
    ``context_l2``, ``context_cos``, ``context_rel``; mean over suffix tokens) and a per-token DataFrame
    (sample, token_index, is_generated, layer, head, l2, cos, rel).
    """
    if not samples:
        raise ValueError("context_divergence needs at least one (context, prompt) sample")
    per_token = [sample_divergence(model, i, context, prompt, n_generate=n_generate)
                 for i, (context, prompt) in enumerate(samples)]
    return divergence_tables(per_token, model.name, generated_only=generated_only)


def sample_divergence(model, i: int, context: str, prompt: str, *, n_generate: int = 8) -> pd.DataFrame:
    """Per-token divergences of sample ``i`` (one row per suffix token × layer × head)."""
    tok = model.tokenizer
    bos = _bos(tok)
    if not prompt:
        raise ValueError(f"sample {i}: the prompt (the shared suffix) is empty")
    ctx = list(tok(context, add_special_tokens=True)["input_ids"])
    suffix = tok(prompt, add_special_tokens=False)["input_ids"]
    room = model.shape.n_ctx - len(suffix) - n_generate - len(bos) if model.shape.n_ctx else None
    if room is not None and room < 1:
        raise ValueError(f"sample {i}: prompt ({len(suffix)} tokens) + {n_generate} generated tokens leave no "
                         f"room for a context in {model.name}'s {model.shape.n_ctx}-token window")
    if room is not None and len(ctx) - len(bos) > room:  # keep the context's end (and BOS)
        ctx = ctx[:len(bos)] + ctx[len(ctx) - room:]
    with_ids = torch.tensor([ctx + suffix])
    model.check_tokens(with_ids)
    gen = greedy_continuation(model, with_ids, n_generate)
    suffix = suffix + gen
    a = suffix_head_outputs(model, torch.tensor([ctx + suffix]), len(suffix))
    b = suffix_head_outputs(model, torch.tensor([bos + suffix]), len(suffix))
    d = divergence_of(a, b)  # each [layer, token, head]
    L, T, H = d["l2"].shape
    li, ti, hi = torch.meshgrid(torch.arange(L), torch.arange(T), torch.arange(H), indexing="ij")
    return pd.DataFrame({
        "sample": i, "token_index": ti.reshape(-1).numpy(),
        "is_generated": (ti >= T - len(gen)).reshape(-1).numpy(),
        "layer": li.reshape(-1).numpy(), "head": hi.reshape(-1).numpy(),
        **{k: v.reshape(-1).double().numpy() for k, v in d.items()}})


def divergence_tables(per_token: list[pd.DataFrame], model_name: str, *, generated_only: bool = False):
    """``(scores, per_token)`` from the per-sample frames of ``sample_divergence`` (in sample order)."""
    n_samples = len(per_token)
    per_token = pd.concat(per_token, ignore_index=True)
    rows = per_token[per_token["is_generated"]] if generated_only else per_token
    means = rows.groupby(["layer", "head"])[["l2", "cos", "rel"]].mean()
    tables = []
    for name in ("l2", "cos", "rel"):
        m = means[name].unstack("head").to_numpy()
        tables.append(ScoreTable.from_matrix(m, model=model_name, analysis="divergence", score=f"context_{name}",
                                             n_samples=n_samples))
    return ScoreTable.concat(tables), per_token


def top_heads(scores: pd.DataFrame, score: str, k: int = 10) -> list[tuple[int, int]]:
    """The k (layer, head) pairs with the largest value of ``score`` (``interp.heads.top_heads``)."""
    from interp import heads

    return heads.top_heads(scores, k, score=score)


@dataclass(frozen=True)
class DivergenceParams(Params):
    """Parameters of ``divergence`` (context-aware head divergence on the needle prompts)."""

    context_tokens: int = param(300, "haystack tokens of each context (trimmed to fit the model's context)",
                                ge=1)
    n_generate: int = param(8, "greedy tokens generated and teacher-forced into both runs", ge=0)
    depth: float = param(0.5, "needle depth in the context (0 = start, 1 = end)", ge=0, le=1)
    generated_only: bool = param(False, "average over generated tokens only (else the whole suffix)")


def needle_samples(model, *, context_tokens: int = 300, depth: float = 0.5):
    """(context, prompt) pairs from the retrieval-head needles: the context is a haystack excerpt with the
    needle inserted at ``depth``; the prompt is the paper's question (plain text: the suffix must be the same
    token ids in both runs, so no chat template wraps it)."""
    from .niah import build_context, load_needles

    samples = []
    for needle in load_needles():
        context = build_context(model.tokenizer, needle.haystack, needle.needle, context_tokens, depth * 100,
                                buffer=0)
        prompt = f"\nBased on the content of the book, Question: {needle.question}\nAnswer:"
        samples.append((context, prompt))
    return samples


def run(model, params: DivergenceParams | dict | None = None, out_dir=None):
    """Report entry: context-aware divergence of every head on the needle prompts."""
    p = DivergenceParams.coerce(params, where="divergence")
    samples = needle_samples(model, context_tokens=p.context_tokens, depth=p.depth)
    scores, per_token = context_divergence(model, samples, n_generate=p.n_generate,
                                           generated_only=p.generated_only)
    return {"scores": scores, "per_token": per_token}
