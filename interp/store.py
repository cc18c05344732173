"""``collect(model, data, sites, ...)`` → ``ActivationStore``: activations over a dataset, kept or reduced.

The model runs over left-padded batches (``interp.batching``) with ``position_ids = mask.cumsum - 1``, so
every prompt sees the positions it would see alone. A handler per requested site copies only what is kept
(requested heads, then requested positions of the *real* tokens, cast to ``dtype``) into a buffer laid out
left-aligned: slot ``t`` of example ``b`` is its ``t``-th kept position, unused slots are 0 and ``store.mask``
says which slots are real. Layout of ``store[site]`` per component (``interp.sites`` has the hook shapes)::

    reduce=None     [n_examples, pos, *rest]  rest: d_model | head, d_head | head, d_model (head_out)
                                              | d_vocab (logits)
                    pattern:  [n_examples, head, query_pos, key_pos]
    "mean" / "sum"  [pos, *rest]              mean over the examples that have that slot (padding excluded)
    "mean_token"    {token_id: [*rest]}       mean over every kept position holding that token
    ("topk", k)     [k, pos, *rest]           the k examples of largest norm (``store.topk_indices``)

``head`` is the number of kept heads (``heads=``; k/v keep the KV heads of those heads); a ``Site`` with a
head index drops the head axis. For ``pattern`` the key axis holds the example's real keys (left-aligned too).
Positions: ints count real tokens (``-1`` = last real token, ``0`` = first), a slice selects from each
prompt's real tokens. ``z`` is the per-head output before W_O; the per-head residual write is ``z[..., h, :] @
W_O[:, h]`` (component ``head_out``, d_model per head: 12x more memory on the default model).

Beyond ``memory_budget_mb`` of kept tensors, batches spill to safetensors files under ``spill_dir`` (written
atomically by ``interp.io``) and are read back lazily. Validated in ``tests/unit/test_store.py``
against one-prompt-at-a-time ``run_with_cache`` runs and dense by-hand reductions.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from . import io
from .batching import PromptDataset, position_ids
from .sites import GLOBAL, KV_HEAD, QUERY_HEAD, Site

REDUCES = ("None", "'mean'", "'mean_token'", "'sum'", "('topk', k)")


@dataclass(frozen=True)
class _Ref:
    """One chunk of kept activations in a safetensors file."""

    path: str
    key: str
    shape: tuple
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * torch.empty((), dtype=self.dtype).element_size()

    def load(self) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self.path, framework="pt") as f:
            return f.get_tensor(self.key)


def _pad_to(t: torch.Tensor, shape) -> torch.Tensor:
    """``t`` zero-padded at the end of each axis to ``shape``."""
    if tuple(t.shape) == tuple(shape):
        return t
    out = t.new_zeros(shape)
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


def _max_shape(*shapes) -> tuple:
    return tuple(max(s) for s in zip(*shapes, strict=True))


def _parse_reduce(reduce):
    if reduce is None or reduce in ("mean", "mean_token", "sum"):
        return reduce, None
    if isinstance(reduce, (tuple, list)) and len(reduce) == 2 and reduce[0] == "topk":
        k = reduce[1]
        if isinstance(k, int) and not isinstance(k, bool) and k >= 1:
            return "topk", k
        raise ValueError(f"topk needs a positive int k, got {k!r}")
    raise ValueError(f"unknown reduce {reduce!r}; choose one of {', '.join(REDUCES)}")


def _parse_positions(positions):
    if positions is None or isinstance(positions, slice):
        return positions
    if isinstance(positions, int) and not isinstance(positions, bool):
        return [positions]
    if isinstance(positions, (list, tuple, range)) and positions and all(
            isinstance(p, int) and not isinstance(p, bool) for p in positions):
        return list(positions)
    raise TypeError(f"positions must be an int, a non-empty list of ints or a slice, got {positions!r}")


def _resolve_sites(model, sites, layers) -> list[Site]:
    n = model.shape.n_layers
    if layers is None:
        layers = list(range(n))
    elif isinstance(layers, int):
        layers = [layers]
    layers = list(layers)
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
            raise ValueError(f"layer {layer!r} out of range (model has {n} layers: 0..{n - 1})")
    sites = [sites] if isinstance(sites, (str, Site)) else list(sites or [])
    if not sites:
        raise ValueError("no sites requested: pass Site values or component names such as 'z', 'resid_post'")
    out: list[Site] = []
    for s in sites:
        if isinstance(s, str):
            expanded = [Site(0, s)] if s in GLOBAL else [Site(layer, s) for layer in layers]
        elif isinstance(s, Site):
            expanded = [Site(0, s.component) if s.component in GLOBAL else s]
        else:
            raise TypeError(f"sites must be interp.Site values or component names, got {s!r}")
        for site in expanded:
            site.validate(model.shape)
            if site not in out:
                out.append(site)
    return out


def _head_index(model, site: Site, heads) -> torch.Tensor | None:
    if site.head is not None:
        return torch.tensor([site.head])
    if heads is None or site.component not in QUERY_HEAD | KV_HEAD:
        return None
    if site.component in KV_HEAD:
        return torch.tensor(sorted({model.shape.kv_head_of(h) for h in heads}))
    return torch.tensor(list(heads))


def _extract(x, site, head_idx, cols, pads, lens, dtype):
    """Kept part of hook tensor ``x`` as ``[batch, kept_pos, *rest]`` (pattern: ``[batch, q, head, key]``)."""
    x = x.detach()
    if site.component == "pattern":
        x = x.transpose(1, 2)
    rest = list(x.shape[2:])
    if head_idx is not None:
        rest[0] = len(head_idx)
    if site.component == "pattern":
        rest[-1] = max(lens)
    kpos = max(len(range(x.shape[1])[c]) if isinstance(c, slice) else len(c) for c in cols)
    out = torch.zeros((x.shape[0], kpos, *rest), dtype=dtype or x.dtype)
    for b in range(x.shape[0]):
        xb = x[b][cols[b]]
        if head_idx is not None:
            xb = xb.index_select(1, head_idx.to(xb.device))
        if site.component == "pattern":
            out[b, :xb.shape[0], ..., :lens[b]].copy_(xb[..., pads[b]:])
        else:
            out[b, :xb.shape[0]].copy_(xb)
    return out.squeeze(2) if site.head is not None else out


def _columns(lens, width, positions):
    """Per example the hook columns to keep (a slice or LongTensor) and the number kept."""
    cols = []
    for i, n in enumerate(lens):
        pad = width - n
        if positions is None:
            cols.append(slice(pad, width))
        elif isinstance(positions, slice):
            cols.append(torch.tensor(list(range(n)[positions]), dtype=torch.long) + pad)
        else:
            bad = [p for p in positions if not -n <= p < n]
            if bad:
                raise ValueError(f"position {bad[0]} is outside a prompt of {n} tokens (batch row {i}); "
                                 f"use positions within -{n}..{n - 1} or a slice")
            cols.append(torch.tensor([p % n for p in positions], dtype=torch.long) + pad)
    return cols


def _update(kind, k, state, t, mask, tokens, index):
    """Fold one batch ``t [batch, kept_pos, *rest]`` into the running reduction ``state``."""
    if kind in ("mean", "sum"):
        shape = _max_shape(state["sum"].shape, t.shape[1:]) if "sum" in state else t.shape[1:]
        state["sum"] = _pad_to(state.get("sum", torch.zeros(shape, dtype=torch.float64)), shape)
        state["sum"][tuple(slice(0, s) for s in t.shape[1:])] += t.sum(0, dtype=torch.float64)
        cnt = mask.sum(0)
        state["count"] = _pad_to(state.get("count", torch.zeros(0, dtype=torch.long)), shape[:1])
        state["count"][: len(cnt)] += cnt
    elif kind == "mean_token":
        rows = state.setdefault("rows", {})
        flat, tok = t[mask].double(), tokens[mask]
        uniq, inv = tok.unique(return_inverse=True)
        for u in uniq.tolist():
            rows.setdefault(u, len(rows))
        rest = flat.shape[1:]
        empty = torch.zeros((0, *rest), dtype=torch.float64)
        state["sum"] = _pad_to(state.get("sum", empty), (len(rows), *rest))
        state["count"] = _pad_to(state.get("count", torch.zeros(0, dtype=torch.long)), (len(rows),))
        r = torch.tensor([rows[u] for u in uniq.tolist()], dtype=torch.long)[inv]
        state["sum"].index_add_(0, r, flat)
        state["count"].index_add_(0, r, torch.ones_like(r))
    elif kind == "topk":
        norms = t.flatten(1).double().norm(dim=1)
        if "data" in state:
            shape = _max_shape(state["data"].shape[1:], t.shape[1:])
            old = _pad_to(state["data"], (len(state["data"]), *shape))
            t = torch.cat([old, _pad_to(t, (len(t), *shape))])
            norms = torch.cat([state["norms"], norms])
            index = torch.cat([state["indices"], index])
        best = norms.topk(min(k, len(norms))).indices
        state.update(data=t[best].clone(), norms=norms[best], indices=index[best])


def _finish(kind, state, dtype):
    if kind == "mean":
        c = state["count"].clamp(min=1).view(-1, *[1] * (state["sum"].ndim - 1))
        return {"data": (state["sum"] / c).to(dtype), "count": state["count"]}
    if kind == "sum":
        return {"data": state["sum"].to(dtype), "count": state["count"]}
    if kind == "mean_token":
        ids = torch.tensor(list(state["rows"]), dtype=torch.long)
        order = ids.argsort()
        mean = state["sum"] / state["count"].view(-1, *[1] * (state["sum"].ndim - 1))
        return {"token_ids": ids[order], "data": mean[order].to(dtype), "count": state["count"][order]}
    return state


class ActivationStore:
    """Activations from ``interp.collect``; ``store[site]`` takes a ``Site`` or its string (``"L3.z"``)."""

    def __init__(self, meta: dict, sites: list[Site], data: dict, tokens, mask):
        self.meta = meta
        self.sites = list(sites)
        self._data = data  # Site -> list of chunks (reduce=None) or dict of tensors
        self.tokens = tokens  # [n_examples, pos] kept token ids (0 on unused slots)
        self.mask = mask  # [n_examples, pos] bool, True on real kept slots

    @property
    def reduce(self):
        r = self.meta["reduce"]
        return tuple(r) if isinstance(r, list) else r

    @property
    def kind(self) -> str | None:
        """None, "mean", "sum", "mean_token" or "topk"."""
        return self.reduce[0] if isinstance(self.reduce, tuple) else self.reduce

    n_examples = property(lambda self: self.meta["n_examples"])
    lengths = property(lambda self: torch.tensor(self.meta["lengths"]))

    def __repr__(self) -> str:
        return (f"ActivationStore({self.meta['model']}, {len(self.sites)} sites, reduce={self.reduce!r}, "
                f"{self.n_examples} examples, {self.nbytes / 2**20:.1f} MiB)")

    def _key(self, site) -> Site:
        for s in self.sites:
            if s == site or str(s) == str(site):
                return s
        raise KeyError(f"{site} was not collected; this store has {', '.join(map(str, self.sites))}")

    def __contains__(self, site) -> bool:
        return any(s == site or str(s) == str(site) for s in self.sites)

    @staticmethod
    def _public(site: Site, t: torch.Tensor, has_examples: bool) -> torch.Tensor:
        if site.component == "pattern" and site.head is None:
            return t.transpose(1, 2).contiguous() if has_examples else t.transpose(0, 1).contiguous()
        return t

    def __getitem__(self, site):
        key = self._key(site)
        d = self._data[key]
        if self.kind is None:
            shapes = [c.shape for c in d]
            n = sum(s[0] for s in shapes)
            out = torch.zeros((n, *_max_shape(*[s[1:] for s in shapes])), dtype=d[0].dtype)
            i = 0
            for c, s in zip(d, shapes, strict=True):
                part = c.load() if isinstance(c, _Ref) else c
                out[(slice(i, i + s[0]), *[slice(0, m) for m in s[1:]])] = part
                i += s[0]
            return self._public(key, out, True)
        if self.kind == "mean_token":
            return dict(zip(d["token_ids"].tolist(), d["data"], strict=True))
        return self._public(key, d["data"], self.kind == "topk")

    def counts(self, site):
        """Examples per slot (mean/sum: ``[pos]``) or kept positions per token id (mean_token: dict)."""
        d = self._data[self._key(site)]
        if self.kind == "mean_token":
            return dict(zip(d["token_ids"].tolist(), d["count"].tolist(), strict=True))
        if self.kind not in ("mean", "sum"):
            raise ValueError(f"counts need reduce 'mean', 'sum' or 'mean_token'; this store: {self.reduce!r}")
        return d["count"]

    def token_means(self, site):
        """``(token_ids [n_tokens], means [n_tokens, *rest], counts [n_tokens])`` of a mean_token store."""
        if self.kind != "mean_token":
            raise ValueError(f"token_means needs reduce='mean_token', this store has {self.reduce!r}")
        d = self._data[self._key(site)]
        return d["token_ids"], d["data"], d["count"]

    def topk_indices(self, site) -> torch.Tensor:
        """Dataset indices ``[k]`` of the examples kept by ``("topk", k)``, largest norm first."""
        if self.kind != "topk":
            raise ValueError(f"topk_indices needs reduce=('topk', k), this store has {self.reduce!r}")
        return self._data[self._key(site)]["indices"]

    @property
    def nbytes(self) -> int:
        """Bytes of kept tensors, in memory and spilled to disk."""
        total = 0
        for d in self._data.values():
            for c in (d if isinstance(d, list) else d.values()):
                if isinstance(c, (torch.Tensor, _Ref)):
                    total += c.nbytes if isinstance(c, _Ref) else c.numel() * c.element_size()
        return total

    # -- persistence ----------------------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the store to folder ``path`` (a safetensors file per site + ``store.json``), atomically."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        io.save_safetensors(path / "index.safetensors", {"tokens": self.tokens, "mask": self.mask})
        for i, site in enumerate(self.sites):
            d = self._data[site]
            tensors = {"data": self[site]} if self.kind is None else {
                k: v for k, v in d.items() if isinstance(v, torch.Tensor)}
            if self.kind is None and site.component == "pattern" and site.head is None:
                tensors["data"] = tensors["data"].transpose(1, 2)  # back to the internal layout
            io.save_safetensors(path / f"site_{i:04d}.safetensors", tensors)
        meta = dict(self.meta, sites=[[s.layer, s.component, s.head] for s in self.sites])
        io.write_json(path / "store.json", meta, indent=1, sort_keys=False)
        return path

    @classmethod
    def load(cls, path) -> ActivationStore:
        """Open a store written by ``save``; reduce=None data stays on disk until ``store[site]``."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "store.json").exists():
            raise FileNotFoundError(f"{path} is not a saved ActivationStore (no store.json)")
        meta = json.loads((path / "store.json").read_text())
        sites = [Site(*s) for s in meta.pop("sites")]
        index = load_file(str(path / "index.safetensors"))
        data = {}
        for i, site in enumerate(sites):
            f = path / f"site_{i:04d}.safetensors"
            if meta["reduce"] is None:
                from safetensors import safe_open

                with safe_open(str(f), framework="pt") as h:
                    sl = h.get_slice("data")
                    shape, dt = tuple(sl.get_shape()), getattr(torch, _ST_DTYPES[sl.get_dtype()])
                data[site] = [_Ref(str(f), "data", shape, dt)]
            else:
                data[site] = load_file(str(f))
        return cls(meta, sites, data, index["tokens"], index["mask"])


_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "BOOL": "bool"}


def _check_collect(model, ds, keys, heads, kind) -> list[int] | None:
    """Up-front checks of ``collect``'s inputs; returns the query heads kept (None: all)."""
    if heads is not None:
        heads = [heads] if isinstance(heads, int) else list(heads)
        for h in heads:
            if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < model.shape.n_heads:
                raise ValueError(f"head {h!r} out of range "
                                 f"(model has {model.shape.n_heads} query heads per layer)")
    if kind == "mean_token" and any(s.component == "pattern" for s in keys):
        raise ValueError("reduce='mean_token' does not apply to 'pattern' (its key axis varies per prompt)")
    n_ctx = model.shape.n_ctx
    for i, n in enumerate(ds.lengths):
        if n_ctx and n > n_ctx:
            raise ValueError(f"prompt {i} has {n} tokens, longer than {model.name}'s context of {n_ctx}; "
                             "truncate it or pick a model with a longer context")
    return heads


def _kept_tokens(ids, attn, positions):
    """The kept columns of one batch: ``(cols, pads, lens, mask [batch, kept], tok [batch, kept])``."""
    lens = attn.sum(1).tolist()
    cols = _columns(lens, ids.shape[1], positions)
    pads = [ids.shape[1] - n for n in lens]
    kept = [len(range(ids.shape[1])[c]) if isinstance(c, slice) else len(c) for c in cols]
    mask = torch.arange(max(kept))[None] < torch.tensor(kept)[:, None]
    tok = torch.zeros(mask.shape, dtype=torch.long)
    for b, c in enumerate(cols):
        tok[b, :kept[b]] = ids[b][c]
    return cols, pads, lens, mask, tok


def _run_batch(model, ids, attn, by_whole, head_idx, cols, pads, lens, dtype) -> dict:
    """One forward over the batch, returning the kept slice of every site."""
    batch: dict = {}

    def keep(x, site):
        for s in by_whole[site]:
            batch[s] = _extract(x, s, head_idx[s], cols, pads, lens, dtype)

    with torch.no_grad(), model.hooks({w: keep for w in by_whole}):
        if bool(attn.all()):  # no padding: let attention take its causal fast path
            model.forward(ids)
        else:
            model.forward(ids, attn, position_ids=position_ids(attn))
    return batch


def _spill_state(state, keys, spill: Path, run_id: str, n_spill: int) -> None:
    """Write every in-memory chunk of ``state`` to one safetensors file; the state keeps references."""
    f = spill / f"collect-{run_id}-{n_spill:05d}.safetensors"
    chunks = {f"{i}:{j}": c for i, s in enumerate(keys) for j, c in enumerate(state[s]) if isinstance(c, torch.Tensor)}
    io.save_safetensors(f, chunks)
    for i, s in enumerate(keys):
        state[s] = [_Ref(str(f), f"{i}:{j}", tuple(c.shape), c.dtype) if isinstance(c, torch.Tensor)
                    else c for j, c in enumerate(state[s])]


def collect(model, data, sites, *, layers=None, heads=None, positions=None, reduce=None, batch_size: int = 8,
            memory_budget_mb: float | None = None, spill_dir=None, dtype: torch.dtype | None = None,
            progress: bool = True) -> ActivationStore:
    """Run ``model`` over ``data``, keeping (or reducing) the activations at ``sites``; see the module doc.

    data: strings, token-id lists or ``[batch, pos]`` LongTensor. sites: ``Site`` values and/or component
    names (expanded over ``layers``, default all). heads: query heads kept at head-indexed components.
    positions: int(s) over real tokens (-1 = last) or a slice. reduce: None, "mean", "mean_token", "sum",
    ("topk", k). memory_budget_mb / spill_dir: spill kept batches to disk beyond the budget (reduce=None;
    a spill_dir without a budget spills every batch). dtype: cast kept values (default: the hook's dtype).
    """
    from tqdm.auto import tqdm

    kind, k = _parse_reduce(reduce)
    positions = _parse_positions(positions)
    ds = PromptDataset(data, model)
    keys = _resolve_sites(model, sites, layers)
    heads = _check_collect(model, ds, keys, heads, kind)
    head_idx = {s: _head_index(model, s, heads) for s in keys}
    by_whole: dict = {}
    for s in keys:
        by_whole.setdefault(s.whole(), []).append(s)
    budget = None if memory_budget_mb is None and spill_dir is None else float(memory_budget_mb or 0) * 2**20
    if budget is not None:
        spill = Path(spill_dir) if spill_dir is not None else Path(tempfile.mkdtemp(prefix="interp-spill-"))
        spill.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:8]
    state: dict = {s: [] if kind is None else {} for s in keys}
    tokens, masks, in_mem, n_spill, seen_dtype = [], [], 0, 0, dtype
    bar = tqdm(total=len(ds), unit="prompt", disable=not progress, desc="collect")
    for idx, ids, attn in ds.batches(batch_size):
        cols, pads, lens, mask, tok = _kept_tokens(ids, attn, positions)
        batch = _run_batch(model, ids, attn, by_whole, head_idx, cols, pads, lens, dtype)
        for s in keys:
            t = batch.pop(s)
            seen_dtype = t.dtype
            if kind is None:
                state[s].append(t)
                in_mem += t.numel() * t.element_size()
            else:
                _update(kind, k, state[s], t, mask, tok, torch.tensor(idx))
        del batch
        tokens.append(tok)
        masks.append(mask)
        if kind is None and budget is not None and in_mem > budget:
            _spill_state(state, keys, spill, run_id, n_spill)
            n_spill, in_mem = n_spill + 1, 0
        bar.update(len(idx))
    bar.close()
    width = max(m.shape[1] for m in masks)
    tokens = torch.cat([_pad_to(t, (len(t), width)) for t in tokens])
    mask = torch.cat([_pad_to(m, (len(m), width)) for m in masks])
    if kind is not None:
        state = {s: _finish(kind, state[s], seen_dtype) for s in keys}
    meta = {"model": model.name, "weights_hash": model.weights_hash, "sites": [str(s) for s in keys],
            "reduce": list(reduce) if kind == "topk" else reduce,
            "dtype": str(seen_dtype).replace("torch.", ""),
            "n_examples": len(ds), "lengths": ds.lengths, "heads": heads,
            "positions": repr(positions), "spill_dir": str(spill) if budget is not None else None}
    store = ActivationStore(meta, keys, state, tokens, mask)
    if budget is not None and spill_dir is None:
        weakref.finalize(store, shutil.rmtree, str(spill), True)
    return store
