"""Retrieval heads (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context Factuality").

Retrieval score of head (l, h) on one NIAH sample (official ``retrieval_head_detection.py``): the prompt minus
its last token is prefilled, then greedy decoding feeds that last token and each generated token in turn.
At decode step t the query is the token fed at step t and the model emits ``w_t = argmax logits_t``; with
``j_t(l, h) = argmax_j A_t(l, h)[j]`` the argmax key of that *same* forward (cache included),

    score(l, h) = Σ_t [start ≤ j_t < end  and  prompt[j_t] = w_t] / (end − start)

where ``[start, end)`` is the needle span (``niah.find_needle_span``). That is, the key a head looks at most
while producing ``w_t`` is compared with ``w_t`` itself (the official code compares the argmax of step t's
attention with the token generated from step t's logits). Decoding stops after 50 tokens or after a token
containing a newline (``stop_rule="newline"``, the default; it also stops at end-of-sequence tokens, which carry
no answer). The official code's own rule, ``stop_rule="paper"``, stops only on Llama-2's newline byte token
``<0x0A>`` or id 144, so on BPE vocabularies it runs to the token limit (see ``interp.generation``).
A sample's scores are kept only when ROUGE-1 recall of the answer vs ``real_needle`` > 0.5; the head score is
the mean over kept samples and heads scoring > 0.1 are retrieval heads. Results read/write the paper's JSON
``{"l-h": [per-sample scores]}``.

Implementation: ``interp.generation.generate(feed_last=True)`` decodes; prefill uses SDPA (no pattern); at every
decode step the interp attention function hands each
layer's post-RoPE ``query [1, head, 1, d_head]`` and cached ``key [1, kv_head, key_pos, d_head]`` to
``ArgmaxCapture``, which asks the statistics engine for the argmax key only. Validated in
``tests/unit/test_retrieval*.py`` against an eager decode with ``output_attentions`` scored by a direct
transcription of the official loop, and on hand-worked argmax sequences.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from interp.capture import Capture
from interp.heads import random_heads
from interp.params import ParamError, Params, check_context, param

from .niah import rouge1_recall

N_NEEDLES = 3  # interp/data/niah/needles.jsonl


@dataclass(frozen=True)
class RetrievalParams(Params):
    """Parameters of ``retrieval`` (the NIAH grid: needles × lengths × depths)."""

    lengths: tuple[int, ...] = param((500, 1000), "context lengths in tokens (each > buffer; non-empty)", ge=1)
    depths: tuple[float, ...] = param((0.0, 50.0, 100.0), "needle depths in % (non-empty)", ge=0, le=100)
    needles: tuple[int, ...] = param((0, 1, 2), "needle indices (non-empty)", ge=0, lt=N_NEEDLES)
    max_new_tokens: int = param(50, "greedy decoding steps per sample", ge=1)
    threshold: float = param(0.1, "score above which a head is a retrieval head", ge=0, le=1)
    buffer: int = param(200, "tokens kept free for the question (official buffer)", ge=0)
    checkpoint: str | None = param(None, "JSONL file to checkpoint/resume the sweep")
    stop_rule: str = param("newline", "when decoding stops (interp.generation stop rules; 'paper' is the official "
                           "code's Llama-2 newline rule, which never fires on BPE vocabularies)",
                           choices=("newline", "paper", "eos", "none"))

    def check(self, where):
        for key in ("lengths", "depths", "needles"):
            if not getattr(self, key):
                raise ParamError(f"{where}.{key} = []: give at least one value")
        short = [n for n in self.lengths if n <= self.buffer]
        if short:
            raise ParamError(f"{where}.lengths = {list(self.lengths)}: {short[0]} is not larger than "
                             f"buffer = {self.buffer}")

    def check_model(self, model, where=""):
        check_context(model, f"{where}.lengths", max(self.lengths) + self.max_new_tokens,
                      f"tokens (length {max(self.lengths)} + max_new_tokens {self.max_new_tokens})",
                      value=self.lengths, hint=f"choose lengths <= {model.shape.n_ctx - self.max_new_tokens}")


class ArgmaxCapture(Capture):
    """Attention capture (``interp.capture.Capture``): per decode step, the argmax key of every head of every layer.

    ``step`` maps layer → ``[head]`` int64 argmax key positions of the current decode step; prefill forwards
    (``active`` False, or more than one query row) are ignored.
    """

    def __init__(self, n_layers: int, impl: str = "auto"):
        super().__init__(stats=("argmax",), impl=impl)
        self._layers = list(range(n_layers))
        self.active = False
        self.step: dict[int, torch.Tensor] = {}

    def layers(self, model):
        return self._layers

    def capture(self, layer, module, query, key, attention_mask, *, scaling, softcap, window, row_lse=None):
        if not self.active or query.shape[2] != 1:
            return
        if query.shape[0] != 1:
            raise ValueError(f"retrieval scoring decodes one prompt at a time, got batch {query.shape[0]}")
        from interp.kernels.attention_stats import compute_attention_stats

        res = compute_attention_stats(query.detach(), key.detach(), stats=["argmax"], scale=scaling,
                                      window=window, softcap=softcap, impl=self.impl)
        self.step[layer] = res["argmax"][0, :, 0].long().cpu()


def decode_with_argmax(model, prompt_ids, *, max_new_tokens: int = 50, handlers=None, capture: bool = True,
                       stop_rule: str = "newline"):
    """Greedy decode after ``prompt_ids`` [pos] exactly as the official code (prefill all but the last token).

    Returns ``(generated [step] list[int], argmax [step, layer, head] int64 array)`` (``argmax`` is ``None``
    when ``capture=False``). ``handlers``: extra ``{Site: fn}`` hooks active during prefill and decode.
    ``stop_rule``: ``"newline"`` (default), ``"paper"``, ``"eos"`` or ``"none"`` (``interp.generation``).
    """
    from interp.generation import generate

    ids = [int(x) for x in (prompt_ids.tolist() if hasattr(prompt_ids, "tolist") else prompt_ids)]
    if len(ids) < 2:
        raise ValueError(f"the prompt needs at least 2 tokens (prefill + first decode step), got {len(ids)}")
    cap = None
    if capture:
        cap = ArgmaxCapture(model.shape.n_layers)
        cap.active = True  # generate installs it for the one-token decode steps only

    def read(step):  # the argmax keys of this step, every layer: [layer, head]
        row = torch.stack([cap.step[layer] for layer in range(model.shape.n_layers)])
        cap.step = {}
        return row

    out = generate(model, [ids], max_new_tokens=max_new_tokens, stop=stop_rule, handlers=handlers,
                   capture=cap, on_step=read if cap is not None else None, feed_last=True)
    argmax = torch.stack(out.captures).numpy() if cap is not None else None
    return out.tokens[0], argmax


def retrieval_scores_from_argmax(argmax, generated, prompt_ids, span) -> np.ndarray:
    """Per-sample retrieval score ``[layer, head]`` (float64) from argmax keys ``[step, layer, head]``.

    ``generated[t]`` is the token produced from step t's logits; ``prompt_ids`` [pos]; ``span = (start, end)``
    (``(-1, -1)``: needle not found → all zeros, as in the official code).
    """
    a = np.asarray(argmax)
    gen = np.asarray(generated, dtype=np.int64)
    if a.ndim != 3 or a.shape[0] != gen.shape[0]:
        raise ValueError(f"argmax must be [step, layer, head] with one step per generated token, got "
                         f"{a.shape} for {gen.shape[0]} tokens")
    start, end = int(span[0]), int(span[1])
    out = np.zeros(a.shape[1:], dtype=np.float64)
    if end <= start:
        return out
    prompt = np.asarray(prompt_ids, dtype=np.int64)
    in_span = (a >= start) & (a < end)
    tok_at = prompt[np.clip(a, 0, len(prompt) - 1)]
    hits = in_span & (tok_at == gen[:, None, None])
    return hits.sum(0) / (end - start)


def score_sample(model, sample, *, max_new_tokens: int = 50, handlers=None, capture: bool = True,
                 stop_rule: str = "newline") -> dict:
    """Decode one ``NiahSample``; returns response, ROUGE-1 recall, ``kept`` and per-head ``scores``."""
    gen, argmax = decode_with_argmax(model, sample.prompt_ids, max_new_tokens=max_new_tokens,
                                     handlers=handlers, capture=capture, stop_rule=stop_rule)
    response = model.tokenizer.decode(gen, skip_special_tokens=True).strip()
    rouge = rouge1_recall(sample.real_needle, response)
    rec = {"response": response, "rouge": rouge, "kept": rouge > 0.5, "n_generated": len(gen)}
    if capture:
        rec["scores"] = retrieval_scores_from_argmax(argmax, gen, sample.prompt_ids, sample.span).tolist()
    return rec


# --- the paper's head counter and JSON --------------------------------------------------------------------

def head_counter(records) -> dict[str, list[float]]:
    """``{"l-h": [score of each kept sample]}`` in record order (the official ``head_counter``)."""
    kept = [r for r in records if r["kept"]]
    if not records:
        return {}
    s = np.asarray(records[0]["scores"])
    return {f"{l}-{h}": [float(r["scores"][l][h]) for r in kept]
            for l in range(s.shape[0]) for h in range(s.shape[1])}


def retrieval_head_scores(counter: dict, n_layers: int, n_heads: int) -> np.ndarray:
    """``[layer, head]`` mean score over kept samples (NaN for a head with no kept sample)."""
    out = np.full((n_layers, n_heads), np.nan)
    for key, vals in counter.items():
        l, h = (int(x) for x in key.split("-"))
        if not (0 <= l < n_layers and 0 <= h < n_heads):
            raise ValueError(f"head {key!r} is outside a model of {n_layers} layers × {n_heads} heads")
        if vals:
            out[l, h] = float(np.mean(vals))
    return out


def top_heads(scores, *, threshold: float | None = 0.1, k: int | None = None) -> list[tuple[int, int]]:
    """Heads ``(layer, head)`` by descending score: those above ``threshold`` and/or the top ``k``
    (``interp.heads.top_heads`` with the paper's threshold 0.1 as default)."""
    from interp import heads

    return heads.top_heads(scores, k, threshold=threshold)


def save_retrieval_json(counter: dict, path) -> None:
    """Write ``{"l-h": [scores]}`` atomically (``interp.io``), as the official ``head_score/*.json``."""
    from interp import io

    for key, vals in counter.items():
        if not isinstance(vals, (list, tuple)):
            raise TypeError(f"value of {key!r} must be a list of per-sample scores, not "
                            f"{type(vals).__name__}")
    io.write_text(path, json.dumps({k: [float(v) for v in vals] for k, vals in counter.items()}))


def load_retrieval_json(path) -> dict[str, list[float]]:
    """Read a ``{"l-h": [scores]}`` file (ours or the official ``head_score/<model>.json``)."""
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{'layer-head': [scores]}}, "
                         f"not {type(data).__name__}")
    for key, vals in data.items():
        parts = key.split("-")
        if len(parts) != 2 or not all(p.isdigit() for p in parts) or not isinstance(vals, list):
            raise ValueError(f"{path}: bad entry {key!r}; keys must be 'layer-head' and values lists")
    return {k: [float(v) for v in vals] for k, vals in data.items()}


# --- sweep, causal check and the report entry ------------------------------------------------------------

def uniform_attention(heads, eps: float = 1e-5) -> list:
    """The paper's masking of ``heads`` [(layer, head)] as intervention values: ``UniformAttention`` (the head's
    post-RoPE query scaled by ``eps``, so its attention is almost exactly uniform over its causal prefix)."""
    from interp.interventions import UniformAttention

    return [UniformAttention(int(l), head=int(h), eps=eps) for l, h in heads]


def niah_sweep(model, *, lengths, depths, needles=None, max_new_tokens: int = 50, checkpoint=None,
               on_sample=None, masked_heads=(), capture: bool = True, buffer: int = 200,
               progress: bool = False, stop_rule: str = "newline") -> list[dict]:
    """Retrieval-score every (needle, length, depth) cell; see ``niah.run_sweep`` for checkpoint/resume.

    ``masked_heads``: [(layer, head)] given uniform attention throughout (for the causal check).
    ``stop_rule``: when decoding stops (``interp.generation.STOP_RULES``; default today's ``"newline"``).
    """
    from interp.generation import STOP_RULES

    from .niah import run_sweep

    if stop_rule not in STOP_RULES:
        raise ValueError(f"unknown stop_rule {stop_rule!r}; choose one of {', '.join(map(repr, STOP_RULES))}")
    masked = sorted((int(l), int(h)) for l, h in masked_heads)
    from interp.interventions import compile_interventions

    handlers = compile_interventions(model, uniform_attention(masked)) if masked else None
    meta = {"max_new_tokens": max_new_tokens, "masked": [list(x) for x in masked], "capture": capture}
    if stop_rule != "newline":  # the default is left out so checkpoints written before stop rules still resume
        meta["stop_rule"] = stop_rule
    fn = lambda m, s: score_sample(m, s, max_new_tokens=max_new_tokens, handlers=handlers, capture=capture,
                                   stop_rule=stop_rule)
    return run_sweep(model, fn, lengths=lengths, depths=depths, needles=needles, checkpoint=checkpoint,
                     meta=meta, on_sample=on_sample, buffer=buffer, progress=progress)


def causal_check(model, scores, *, k: int, lengths, depths, needles=None, n_random: int = 2, seed: int = 0,
                 seeds=None, threshold: float = 0.1, max_new_tokens: int = 50, baseline=None, buffer: int = 200,
                 checkpoint_prefix=None, progress: bool = False):
    """NIAH accuracy (share of samples with ROUGE-1 recall > 0.5) with no head masked, with the top-``k``
    retrieval heads masked, and with ``k`` random non-retrieval heads (score ≤ ``threshold``) masked.

    Random draws: one per seed in ``seeds`` (draw i is ``interp.heads.random_heads(seed=seeds[i])`` over the
    non-retrieval heads); default
    ``seeds = [seed, seed + 1, …]`` (``n_random`` of them). ``scores``: ``[layer, head]`` retrieval scores;
    ``baseline``: records of an unmasked run on the same grid (reused instead of decoding again).
    ``checkpoint_prefix``: each condition checkpoints its samples to ``{prefix}_{top|rand_s<seed>}.jsonl``
    (resumable, see ``niah.run_sweep``). Returns a DataFrame (condition, seed, heads, accuracy, mean_rouge, n,
    rouge = per-sample ROUGE-1 recalls in grid order).
    """
    s = np.nan_to_num(np.asarray(scores, dtype=float))
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    top = top_heads(s, threshold=None, k=k)
    non = [(l, h) for l in range(s.shape[0]) for h in range(s.shape[1]) if s[l, h] <= threshold]
    if len(non) < k:
        raise ValueError(f"only {len(non)} non-retrieval heads (score ≤ {threshold}); choose k ≤ {len(non)}")
    seeds = [seed + i for i in range(n_random)] if seeds is None else [int(x) for x in seeds]
    conds = [("none", None, [], "none")] if baseline is None else []
    conds.append((f"top-{k} retrieval", None, top, "top"))
    retrieval_heads = [(l, h) for l in range(s.shape[0]) for h in range(s.shape[1]) if s[l, h] > threshold]
    for i, sd in enumerate(seeds):
        conds.append((f"random-{k} non-retrieval #{i}", sd, random_heads(model, k, exclude=retrieval_heads, seed=sd),
                      f"rand_s{sd}"))
    rows = []
    if baseline is not None:
        rows.append(_acc_row("none", None, [], baseline))
    for name, sd, heads, slug in conds:
        if progress:
            print(f"causal check: {name} {heads}", flush=True)
        ckpt = None if checkpoint_prefix is None else f"{os.fspath(checkpoint_prefix)}_{slug}.jsonl"
        recs = niah_sweep(model, lengths=lengths, depths=depths, needles=needles,
                          max_new_tokens=max_new_tokens, masked_heads=heads, capture=False, buffer=buffer,
                          checkpoint=ckpt, progress=progress)
        rows.append(_acc_row(name, sd, heads, recs))
    return pd.DataFrame(rows)


def _acc_row(name, seed, heads, recs) -> dict:
    return {"condition": name, "seed": seed, "heads": " ".join(f"L{l}H{h}" for l, h in heads),
            "accuracy": float(np.mean([r["rouge"] > 0.5 for r in recs])),
            "mean_rouge": float(np.mean([r["rouge"] for r in recs])), "n": len(recs),
            "rouge": [round(float(r["rouge"]), 4) for r in recs]}


def run(model, params: RetrievalParams | dict | None = None, out_dir=None) -> dict:
    """Report entry: retrieval scores on the NIAH grid of ``params`` (``RetrievalParams``)."""
    p = RetrievalParams.coerce(params, where="retrieval")
    recs = niah_sweep(model, lengths=list(p.lengths), depths=list(p.depths), needles=list(p.needles),
                      max_new_tokens=p.max_new_tokens, checkpoint=p.checkpoint, buffer=p.buffer,
                      stop_rule=p.stop_rule)
    return tables_from_records(recs, model.name, model.shape)


def tables_from_records(recs, model_name: str, shape) -> dict:
    """The report tables from per-sample records in grid order (``run``; ``interp.units`` merges with it)."""
    from interp.scores import ScoreTable

    counter = head_counter(recs)
    n_kept = sum(r["kept"] for r in recs)
    mat = retrieval_head_scores(counter, shape.n_layers, shape.n_heads)
    scores = ScoreTable.concat([
        ScoreTable.from_matrix(np.nan_to_num(mat), model=model_name, analysis="retrieval",
                               score="retrieval_score", n_samples=n_kept),
        ScoreTable.scalar(np.mean([r["kept"] for r in recs]), model=model_name, analysis="retrieval",
                          score="niah_accuracy", n_samples=len(recs)),
    ])
    per_sample = pd.DataFrame([{k: v for k, v in r.items() if k != "scores"} for r in recs])
    return {"scores": scores, "per_sample": per_sample, "head_counter": pd.DataFrame(
        [{"head": k, "scores": json.dumps(v)} for k, v in counter.items()])}


def write_official(results, params, out_dir) -> list:
    """Write the paper's ``{"l-h": [scores]}`` JSON (``retrieval_heads.json``) into ``out_dir``."""
    from pathlib import Path

    hc = results["head_counter"]
    counter = {row["head"]: json.loads(row["scores"]) for _, row in hc.iterrows()}
    path = Path(out_dir) / "retrieval_heads.json"
    save_retrieval_json(counter, path)
    return [path]


def data_files(params) -> list:
    from importlib import resources

    root = resources.files("interp") / "data" / "niah"
    return [str(root / "needles.jsonl")] + [str(root / f"haystack_part{i}.txt") for i in (1, 2, 3)]
