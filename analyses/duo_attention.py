"""Retrieval vs streaming KV heads by a learned gate (DuoAttention, Xiao et al. 2024).

Every KV head g of layer l gets a gate α_{l,g} ∈ [0, 1] mixing two attention outputs of its query heads:

    out = α · softmax_causal(q kᵀ·s) v  +  (1 − α) · softmax_stream(q kᵀ·s) v

where the streaming softmax only keeps keys j with ``j < sink`` or ``i − j < recent`` (sizes configurable;
the paper uses 128 sink + 256 recent at 32K, we default to 16 + 64 at ~1K tokens). Only α is trained, on
synthetic multi-passkey prompts (filler text with several passkeys, question at the end), with

    loss = mean_{answer positions} ‖h_gated − h_full‖² / d_model  +  λ · mean |α|      (λ = 0.05, lr 0.02)

(h = final hidden states; α clamped to [0, 1] after each Adam step). Deployment: a KV head is a retrieval
head iff α ≥ threshold, or the top ``1 − sparsity`` share of heads by α. α reads/writes the official TSV
(rows = layers, columns = KV heads, tab-separated).

The gated attention is a dense (eager) attention function registered with transformers as ``"duo"``: fine
for training at ~1K tokens. ``streaming_proxy`` gives the statistics-engine proxy (attention mass outside
sink + recent per KV head, mean over its query heads) to compare with α by Spearman correlation; per-query-head
scores such as retrieval scores are reduced to KV heads by ``kv_aggregate`` (max or mean over the group).
``experiments/duo_compare.py`` trains α on the real model and writes the comparison.
Validated in ``tests/unit/test_duo_attention.py``: α = 1 reproduces SDPA causal attention, α = 0 equals a
dense float64 sink+recent masked computation, and TSV round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from interp.kernels.attention_stats import causal_mask
from interp.params import ParamError, Params, check_context, param

_ALPHA_ATTR = "_duo_alpha"


def streaming_mask(q_len: int, k_len: int, sink: int, recent: int, device=None) -> torch.Tensor:
    """``[query_pos, key_pos]`` bool: causal and (key < sink or query − key < recent)."""
    sinks = torch.arange(k_len, device=device)[None, :] < sink
    return (causal_mask(q_len, k_len, device=device) & sinks) | causal_mask(q_len, k_len, window=recent, device=device)


def gated_attention(query, key, value, alpha, *, scale: float, sink: int, recent: int):
    """Gated full/streaming attention.

    Args: query ``[batch, head, query_pos, d_head]``; key, value ``[batch, kv_head, key_pos, d_head]``;
    alpha ``[kv_head]`` in [0, 1]. Returns ``[batch, head, query_pos, d_head]``.
    """
    b, h, n, d = query.shape
    g = key.shape[1]
    if h % g or alpha.shape != (g,):
        raise ValueError(f"alpha must have one gate per KV head ({g}), got shape {tuple(alpha.shape)}")
    k = key.repeat_interleave(h // g, dim=1)
    v = value.repeat_interleave(h // g, dim=1)
    dt = torch.promote_types(query.dtype, torch.float32)  # softmax in ≥ fp32
    s = (query.to(dt) @ k.to(dt).transpose(-1, -2)) * scale
    m = key.shape[2]
    causal = causal_mask(n, m, device=query.device)
    stream = streaming_mask(n, m, sink, recent, query.device)
    full = torch.softmax(s.masked_fill(~causal, float("-inf")), -1) @ v.to(dt)
    strm = torch.softmax(s.masked_fill(~stream, float("-inf")), -1) @ v.to(dt)
    a = alpha.repeat_interleave(h // g).view(1, h, 1, 1).to(full.dtype)
    return (a * full + (1 - a) * strm).to(query.dtype)


def _duo_attention_fn(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    cfg = getattr(module, _ALPHA_ATTR)
    alpha, sink, recent = cfg
    out = gated_attention(query, key, value, alpha, scale=module.scaling if scaling is None else scaling,
                          sink=sink, recent=recent)
    return out.transpose(1, 2).contiguous(), None


class DuoGates:
    """α ``[layer, kv_head]`` on a model: ``with gates.active(): model.hf(...)`` runs gated attention."""

    def __init__(self, model, *, sink: int = 16, recent: int = 64, init: float = 1.0):
        s = model.shape
        self.model, self.sink, self.recent = model, int(sink), int(recent)
        if self.sink < 0 or self.recent < 1:
            raise ValueError(f"need sink ≥ 0 and recent ≥ 1, got sink={sink}, recent={recent}")
        self.alpha = torch.nn.Parameter(torch.full((s.n_layers, s.n_kv_heads), float(init)))

    def active(self):
        import contextlib

        from transformers import AttentionInterface

        AttentionInterface.register("duo", _duo_attention_fn)
        hf, arch = self.model.hf, self.model.arch

        @contextlib.contextmanager
        def ctx():
            prev = hf.config._attn_implementation
            for layer in range(self.model.shape.n_layers):
                setattr(arch.attn(layer), _ALPHA_ATTR, (self.alpha[layer], self.sink, self.recent))
            hf.set_attn_implementation("duo")
            try:
                yield
            finally:
                hf.set_attn_implementation(prev)
                for layer in range(self.model.shape.n_layers):
                    delattr(arch.attn(layer), _ALPHA_ATTR)

        return ctx()


def passkey_batch(tokenizer, *, n_tokens: int = 1024, n_keys: int = 3, seed: int = 0,
                  filler: str | None = None):
    """One synthetic multi-passkey prompt: filler text with ``n_keys`` "The pass key for <name> is <5 digits>."
    sentences at random depths, then a question and the answers. Returns ``(ids [1, pos], answer_pos [n])``."""
    rng = np.random.default_rng(seed)
    if filler is None:
        from .niah import load_needles

        filler = load_needles()[0].haystack
    words = filler.split()
    names = ["red", "blue", "green", "gold", "grey", "pink", "teal", "navy"][:n_keys]
    keys = [str(x) for x in rng.integers(10000, 99999, size=n_keys)]
    start = int(rng.integers(0, max(1, len(words) - 4 * n_tokens)))
    body = words[start: start + n_tokens]
    cut = sorted(rng.choice(len(body), size=n_keys, replace=False))
    parts, prev = [], 0
    for c, name, key in zip(cut, names, keys):
        parts += body[prev:c] + [f"The pass key for {name} is {key}."]
        prev = c
    parts += body[prev:]
    prefix = " ".join(parts) + " What are the pass keys? Answer:"
    answer = " ".join(f"{n}: {k}." for n, k in zip(names, keys))
    ids_p = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    ids_a = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    ids = (ids_p + ids_a)[-n_tokens:]
    pos = torch.arange(len(ids) - len(ids_a), len(ids))
    return torch.tensor([ids]), pos


def train_gates(model, *, steps: int = 30, n_tokens: int = 1024, n_keys: int = 3, sink: int = 16,
                recent: int = 64, lam: float = 0.05, lr: float = 0.02, seed: int = 0, filler: str | None = None,
                log=None, alpha_init=None, start_step: int = 0, max_seconds: float | None = None) -> DuoGates:
    """Train α only (model weights frozen) to match full-attention final hidden states at the answer tokens.

    Step t uses the passkey prompt of seed ``seed + t``. ``log(record)`` gets, after every step, ``step``,
    ``loss``, ``distill``, ``mean_alpha``, ``seconds`` and ``alpha`` (``[layer, kv_head]`` nested list).
    Resume a stopped run with ``alpha_init`` (``[layer, kv_head]``) and ``start_step`` (Adam's moments restart
    from zero). ``max_seconds``: stop after the step during which this wall time was exceeded.
    """
    import time

    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    gates = DuoGates(model, sink=sink, recent=recent)
    if alpha_init is not None:
        a0 = torch.as_tensor(np.asarray(alpha_init, dtype=np.float32))
        if a0.shape != gates.alpha.shape:
            raise ValueError(f"alpha_init must be [layer, kv_head] = {tuple(gates.alpha.shape)}, "
                             f"got {tuple(a0.shape)}")
        with torch.no_grad():
            gates.alpha.copy_(a0.clamp(0.0, 1.0))
    opt = torch.optim.Adam([gates.alpha], lr=lr)
    hf = model.hf
    req = [p.requires_grad for p in hf.parameters()]
    for p in hf.parameters():
        p.requires_grad_(False)
    t_start = time.perf_counter()
    try:
        for step in range(start_step, start_step + steps):
            t0 = time.perf_counter()
            ids, pos = passkey_batch(model.tokenizer, n_tokens=n_tokens, n_keys=n_keys, seed=seed + step,
                                     filler=filler)
            ids = ids.to(model.device)
            with torch.no_grad():
                target = hf.model(input_ids=ids).last_hidden_state[0, pos]
            with gates.active():
                h = hf.model(input_ids=ids).last_hidden_state[0, pos]
            distill = ((h - target) ** 2).mean()
            loss = distill + lam * gates.alpha.abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                gates.alpha.clamp_(0.0, 1.0)
            if log is not None:
                log({"step": step, "loss": float(loss.detach()), "distill": float(distill.detach()),
                     "mean_alpha": float(gates.alpha.detach().mean()), "seconds": round(time.perf_counter() - t0, 2),
                     "alpha": gates.alpha.detach().cpu().tolist()})
            if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
                break
    finally:
        for p, r in zip(hf.parameters(), req):
            p.requires_grad_(r)
    return gates


def retrieval_kv_heads(alpha, *, threshold: float | None = 0.5, sparsity: float | None = None) -> np.ndarray:
    """``[layer, kv_head]`` bool: retrieval (full-attention) heads by ``α ≥ threshold`` or, with ``sparsity``
    s ∈ [0, 1], the heads above the s-quantile of α (a share s of heads become streaming)."""
    a = np.asarray(alpha.detach().cpu() if hasattr(alpha, "detach") else alpha, dtype=float)
    if sparsity is not None:
        if not 0 <= sparsity <= 1:
            raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
        return a > np.quantile(a, sparsity) if sparsity > 0 else np.ones_like(a, dtype=bool)
    return a >= threshold


def save_duo_tsv(alpha, path) -> None:
    """Official format: one row per layer, one tab-separated column per KV head (written atomically)."""
    from interp import io

    a = np.asarray(alpha.detach().cpu() if hasattr(alpha, "detach") else alpha, dtype=float)
    if a.ndim != 2:
        raise ValueError(f"alpha must be [layer, kv_head], got shape {a.shape}")
    with io.atomic_path(path) as tmp:
        np.savetxt(tmp, a, delimiter="\t", fmt="%.6f")


def load_duo_tsv(path) -> np.ndarray:
    a = np.loadtxt(path, delimiter="\t", ndmin=2)
    return a


def streaming_proxy(model, ids, *, sink: int = 16, recent: int = 64) -> np.ndarray:
    """Engine proxy ``[layer, kv_head]``: attention mass outside sink + recent, over query rows
    ≥ sink + recent (where the two sets do not overlap), mean over each KV head's query heads."""
    import interp

    st = interp.attention_stats(model, ids, ["mass_first", "mass_recent"], sink_k=sink, recent_w=recent)
    outside = 1 - st.head_mean("mass_first", from_pos=sink + recent) - st.head_mean("mass_recent",
                                                                                     from_pos=sink + recent)
    s = model.shape
    return outside.numpy().reshape(s.n_layers, s.n_kv_heads, s.group_size).mean(-1)


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(np.ravel(a), np.ravel(b)).statistic)


def kv_aggregate(scores, n_kv_heads: int, how: str = "max") -> np.ndarray:
    """Per-query-head scores ``[layer, head]`` → ``[layer, kv_head]`` by the max or mean over each KV head's
    query heads (query head h belongs to KV head ``h // (head / kv_head)``, as ``repeat_interleave``)."""
    s = np.nan_to_num(np.asarray(scores, dtype=float))
    if s.ndim != 2 or s.shape[1] % n_kv_heads:
        raise ValueError(f"scores must be [layer, head] with head divisible by n_kv_heads={n_kv_heads}, "
                         f"got shape {s.shape}")
    g = s.reshape(s.shape[0], n_kv_heads, -1)
    if how == "max":
        return g.max(-1)
    if how == "mean":
        return g.mean(-1)
    raise ValueError(f"how must be 'max' or 'mean', got {how!r}")


def compare(model, alpha, *, retrieval_scores=None, n_tokens: int = 1024, sink: int = 16, recent: int = 64,
            seed: int = 1000, n_prompts: int = 1) -> dict:
    """Spearman rank correlations over KV heads of α ``[layer, kv_head]``, the engine proxy (mean over
    ``n_prompts`` fresh passkey prompts, seeds ``seed, seed + 1, …``) and, if given, retrieval scores
    ``[layer, head]`` reduced to KV heads by the max and by the mean over each group's query heads."""
    a = np.asarray(alpha.detach().cpu() if hasattr(alpha, "detach") else alpha, dtype=float)
    s = model.shape
    if a.shape != (s.n_layers, s.n_kv_heads):
        raise ValueError(f"alpha must be [layer, kv_head] = {(s.n_layers, s.n_kv_heads)}, got {a.shape}")
    proxies = []
    for i in range(n_prompts):
        ids, _ = passkey_batch(model.tokenizer, n_tokens=n_tokens, seed=seed + i)
        proxies.append(streaming_proxy(model, ids, sink=sink, recent=recent))
    proxy = np.mean(proxies, 0)
    out = {"spearman_alpha_proxy": spearman(a, proxy), "proxy": proxy.tolist()}
    if retrieval_scores is not None:
        for how in ("max", "mean"):
            r = kv_aggregate(retrieval_scores, s.n_kv_heads, how)
            out[f"retrieval_{how}"] = r.tolist()
            out[f"spearman_alpha_retrieval_{how}"] = spearman(a, r)
            out[f"spearman_proxy_retrieval_{how}"] = spearman(proxy, r)
    return out


# --- the report entry ("duo_attention" in interp.analyses.registry) -------------------------------------------
OFFICIAL_TSV = "full_attention_heads.tsv"  # the file name DuoAttention's own training writes


@dataclass(frozen=True)
class DuoParams(Params):
    """Parameters of ``duo_attention`` (gate training on synthetic multi-passkey prompts)."""

    steps: int = param(30, "training steps (the paper: 2000)", ge=0)
    n_tokens: int = param(1024, "tokens per passkey prompt (> sink + recent)", ge=2)
    n_keys: int = param(3, "passkeys per prompt", ge=1, le=8)
    sink: int = param(16, "streaming sink tokens", ge=0)
    recent: int = param(64, "streaming recent window", ge=1)
    lam: float = param(0.05, "L1 weight λ on the gates", ge=0)
    lr: float = param(0.02, "Adam learning rate", gt=0)
    seed: int = param(0, "prompt seed of step 0", ge=0)
    threshold: float = param(0.5, "gate α at or above which a KV head is a retrieval head", ge=0, le=1)
    max_seconds: float | None = param(None, "stop after the step that passes this wall time", gt=0)

    def check(self, where):
        if self.n_tokens <= self.sink + self.recent:
            raise ParamError(f"{where}.n_tokens = {self.n_tokens}: must exceed sink + recent = "
                             f"{self.sink + self.recent}")

    def check_model(self, model, where=""):
        check_context(model, f"{where}.n_tokens", self.n_tokens)


def run(model, params: DuoParams | dict | None = None, out_dir=None) -> dict:
    """Report entry: train the gates; KV-head rows ``duo_alpha`` (α) and ``duo_retrieval_head`` (α ≥
    threshold), model-level ``duo_mean_alpha`` and ``duo_distill_loss`` (last step), the training log."""
    import pandas as pd

    from interp.scores import ScoreTable

    p = DuoParams.coerce(params, where="duo_attention")
    log: list[dict] = []
    gates = train_gates(model, steps=p.steps, n_tokens=p.n_tokens, n_keys=p.n_keys, sink=p.sink, recent=p.recent,
                        lam=p.lam, lr=p.lr, seed=p.seed, log=log.append, max_seconds=p.max_seconds)
    alpha = gates.alpha.detach().cpu().double()  # [layer, kv_head]
    common = dict(model=model.name, analysis="duo_attention", n_samples=len(log))
    tables = [ScoreTable.from_matrix(alpha, score="duo_alpha", kv=True, **common),
              ScoreTable.from_matrix(retrieval_kv_heads(alpha, threshold=p.threshold).astype(float),
                                     score="duo_retrieval_head", kv=True, **common),
              ScoreTable.scalar(float(alpha.mean()), score="duo_mean_alpha", **common)]
    if log:
        tables.append(ScoreTable.scalar(log[-1]["distill"], score="duo_distill_loss", **common))
    training = pd.DataFrame([{k: v for k, v in r.items() if k != "alpha"} for r in log],
                            columns=["step", "loss", "distill", "mean_alpha", "seconds"])
    return {"scores": ScoreTable.concat(tables), "training": training}


def write_official(results, params, out_dir) -> list:
    """The official TSV of the gates (one row per layer, one column per KV head) in ``out_dir``."""
    from pathlib import Path

    rows = results["scores"]
    rows = rows[rows["score"] == "duo_alpha"]
    alpha = np.full((int(rows["layer"].max()) + 1, int(rows["kv_head"].max()) + 1), np.nan)
    alpha[rows["layer"].to_numpy(), rows["kv_head"].to_numpy()] = rows["value"].to_numpy()
    path = Path(out_dir) / OFFICIAL_TSV
    save_duo_tsv(alpha, path)
    return [path]
