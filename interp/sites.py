"""A typed vocabulary for places in the model: ``Site(layer, component, head)``.

Components and the shape of the tensor a hook sees there (``batch, pos`` first, as in TransformerLens):

| component   | shape                                   | indexed by | TransformerLens hook           |
|-------------|-----------------------------------------|------------|--------------------------------|
| embed       | [batch, pos, d_model]                   | –          | hook_embed                     |
| resid_pre   | [batch, pos, d_model]                   | –          | blocks.L.hook_resid_pre        |
| attn_in     | [batch, pos, d_model] (after the norm)  | –          | blocks.L.attn.hook_in          |
| q           | [batch, pos, head, d_head] (post-RoPE)  | head       | blocks.L.attn.hook_rot_q       |
| k           | [batch, pos, kv_head, d_head] (post-RoPE)| kv_head   | blocks.L.attn.hook_rot_k       |
| v           | [batch, pos, kv_head, d_head]           | kv_head    | blocks.L.attn.hook_v           |
| pattern     | [batch, head, query_pos, key_pos]       | head       | blocks.L.attn.hook_pattern     |
| z           | [batch, pos, head, d_head]              | head       | blocks.L.attn.hook_z           |
| head_out    | [batch, pos, head, d_model] (read-only) | head       | (z @ W_O per head)             |
| attn_out    | [batch, pos, d_model]                   | –          | blocks.L.hook_attn_out         |
| resid_mid   | [batch, pos, d_model]                   | –          | blocks.L.hook_resid_mid        |
| mlp_in      | [batch, pos, d_model] (after the norm)  | –          | blocks.L.mlp.hook_in           |
| mlp_out     | [batch, pos, d_model]                   | –          | blocks.L.hook_mlp_out          |
| resid_post  | [batch, pos, d_model]                   | –          | blocks.L.hook_resid_post       |
| logits      | [batch, pos, d_vocab]                   | –          | (model output)                 |

Heads print as ``L{layer}H{head}``; a site prints as ``L3.z[H5]`` or ``L3.k[KV1]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

COMPONENTS = ("embed", "resid_pre", "attn_in", "q", "k", "v", "pattern", "z", "head_out", "attn_out",
              "resid_mid", "mlp_in", "mlp_out", "resid_post", "logits")
QUERY_HEAD = frozenset({"q", "pattern", "z", "head_out"})
KV_HEAD = frozenset({"k", "v"})
ATTN_INTERNAL = frozenset({"q", "k", "v", "pattern", "z", "head_out"})
GLOBAL = frozenset({"embed", "logits"})

_TL = {
    "embed": "hook_embed", "resid_pre": "blocks.{L}.hook_resid_pre", "attn_in": "blocks.{L}.attn.hook_in",
    "q": "blocks.{L}.attn.hook_rot_q", "k": "blocks.{L}.attn.hook_rot_k", "v": "blocks.{L}.attn.hook_v",
    "pattern": "blocks.{L}.attn.hook_pattern", "z": "blocks.{L}.attn.hook_z",
    "attn_out": "blocks.{L}.hook_attn_out", "resid_mid": "blocks.{L}.hook_resid_mid",
    "mlp_in": "blocks.{L}.mlp.hook_in", "mlp_out": "blocks.{L}.hook_mlp_out",
    "resid_post": "blocks.{L}.hook_resid_post",
}
_HF = {
    "embed": ("embed", "output"), "resid_pre": ("layer", "input"), "attn_in": ("self_attn", "input"),
    "q": ("self_attn", "attention function: query after RoPE"),
    "k": ("self_attn", "attention function: key after RoPE"),
    "v": ("self_attn", "attention function: value"), "pattern": ("self_attn", "attention function: weights"),
    "z": ("self_attn.o_proj", "input"), "head_out": ("self_attn.o_proj", "input × W_O per head"),
    "attn_out": ("self_attn", "output"), "resid_mid": ("<pre-MLP norm>", "input"), "mlp_in": ("mlp", "input"),
    "mlp_out": ("mlp", "output"), "resid_post": ("layer", "output"), "logits": ("lm_head", "output"),
}


@dataclass(frozen=True, order=True)
class Site:
    """A place in the model. ``head`` is a query-head index for q/pattern/z/head_out, a KV-head index for k/v."""

    layer: int
    component: str
    head: int | None = None

    def __post_init__(self):
        if self.component not in COMPONENTS:
            raise ValueError(f"unknown component {self.component!r}; choose one of {', '.join(COMPONENTS)}")
        if self.head is not None and self.component not in QUERY_HEAD | KV_HEAD:
            raise ValueError(f"component {self.component!r} has no heads; drop head={self.head}")
        if not isinstance(self.layer, int):
            raise TypeError(f"layer must be an int, got {self.layer!r}")

    def __str__(self) -> str:
        if self.component in GLOBAL:
            return self.component
        h = "" if self.head is None else (f"[KV{self.head}]" if self.component in KV_HEAD else f"[H{self.head}]")
        return f"L{self.layer}.{self.component}{h}"

    @property
    def kv_indexed(self) -> bool:
        return self.component in KV_HEAD

    def whole(self) -> Site:
        """The same site without the head index."""
        return Site(self.layer, self.component)

    def tl_name(self) -> str:
        if self.component not in _TL:
            raise ValueError(f"{self.component!r} has no TransformerLens hook")
        return _TL[self.component].format(L=self.layer)

    def hf_path(self, model) -> str:
        """HF module path (and what is read there) of this site in ``model`` (an ``interp.Model``)."""
        part, what = _HF[self.component]
        if part == "<pre-MLP norm>":
            part = model.arch.pre_mlp_norm
        layer = None if self.component in GLOBAL else self.layer
        return f"{model.arch.path(layer, part)} ({what})"

    def validate(self, shape) -> Site:
        """Raise a clear error if this site does not exist in a model of ``shape`` (``interp.Shape``)."""
        if self.component not in GLOBAL and not 0 <= self.layer < shape.n_layers:
            raise ValueError(f"{self}: layer {self.layer} out of range (model has {shape.n_layers} layers)")
        if self.head is not None:
            n = shape.n_kv_heads if self.kv_indexed else shape.n_heads
            kind = "KV heads" if self.kv_indexed else "query heads"
            if not 0 <= self.head < n:
                raise ValueError(f"{self}: head {self.head} out of range (model has {n} {kind} per layer)")
        return self


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


_HEAD_RE = re.compile(r"^L(\d+)H(\d+)$")


def parse_head(name: str) -> tuple[int, int]:
    """``"L3H5"`` → ``(3, 5)``; also accepts the retrieval-head JSON key ``"3-5"``."""
    m = _HEAD_RE.match(name.strip()) or re.match(r"^(\d+)-(\d+)$", name.strip())
    if not m:
        raise ValueError(f"cannot parse head name {name!r}; write heads as L{{layer}}H{{head}} (e.g. L3H5)")
    return int(m.group(1)), int(m.group(2))
