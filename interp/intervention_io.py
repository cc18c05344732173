"""Saving and loading interventions (``interp.interventions``) as JSON, large tensors in safetensors beside it.

``save_interventions(path, items)`` writes JSON; tensors with at most ``INLINE_MAX`` elements are stored inline
as nested lists with their dtype, larger ones in ``<path>.safetensors`` (both written atomically by ``interp.io``,
so a kill never leaves a half-written file). ``load_interventions(path)`` reads them back.
Round trips are tested in ``tests/unit/test_interventions.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .sites import Site

INLINE_MAX = 4096  # tensors with at most this many elements are stored inline in JSON


def encode(v, tensors):
    if isinstance(v, Site):
        return {"site": [v.layer, v.component, v.head]}
    if isinstance(v, torch.Tensor):
        if tensors is not None and v.numel() > INLINE_MAX:
            key = f"t{len(tensors)}"
            tensors[key] = v.detach().cpu().contiguous()
            return {"tensor_ref": key}
        return {"tensor": v.detach().cpu().tolist(), "dtype": str(v.dtype).replace("torch.", "")}
    if isinstance(v, slice):
        return {"slice": [v.start, v.stop, v.step]}
    if isinstance(v, tuple):
        return [encode(x, tensors) for x in v]
    if isinstance(v, _iv().Intervention):
        return v.to_json(tensors)
    return v


def decode(v, tensors):
    if isinstance(v, dict):
        if "type" in v:
            return _iv().Intervention.from_json(v, tensors)
        if "site" in v:
            return Site(*v["site"])
        if "tensor" in v:
            return torch.tensor(v["tensor"], dtype=getattr(torch, v["dtype"]))
        if "tensor_ref" in v:
            if tensors is None or v["tensor_ref"] not in tensors:
                raise ValueError(f"tensor {v['tensor_ref']!r} is stored beside the JSON; load it with "
                                 "load_interventions(path) so the .safetensors file is read too")
            return tensors[v["tensor_ref"]]
        if "slice" in v:
            return slice(*v["slice"])
    if isinstance(v, list):
        return tuple(decode(x, tensors) for x in v)
    return v



def _iv():
    from . import interventions

    return interventions


def save_interventions(path, interventions) -> None:
    """Write ``interventions`` to ``path`` (JSON); large tensors to ``path + '.safetensors'`` beside it."""
    from . import io

    path = Path(path)
    items = list(interventions) if isinstance(interventions, (list, tuple)) else [interventions]
    items = [it if isinstance(it, _iv().Intervention) else _iv().compose(it) for it in items]  # compose type-checks
    tensors: dict = {}
    doc = {"format": "interp.interventions/1", "items": [it.to_json(tensors) for it in items]}
    text = json.dumps(doc, indent=1)
    side = path.with_name(path.name + ".safetensors")
    if tensors:
        io.save_safetensors(side, tensors)
    elif side.exists():
        os.remove(side)
    io.write_text(path, text)


def load_interventions(path) -> list:
    """Read interventions written by ``save_interventions``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no intervention file at {path}")
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or doc.get("format") != "interp.interventions/1":
        raise ValueError(f"{path} is not an interp interventions file (missing format 'interp.interventions/1')")
    side = path.with_name(path.name + ".safetensors")
    tensors = None
    if side.exists():
        from safetensors.torch import load_file

        tensors = load_file(str(side))
    return [_iv().Intervention.from_json(d, tensors) for d in doc["items"]]
