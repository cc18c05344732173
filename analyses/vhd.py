"""Vision-aware head divergence (VHD), token-level T-VHD, and vision-aware head reinforcement (VHR).

He et al., "Cracking the Code of Hallucination in LVLMs with Vision-aware Head Divergence" (2025). For an
LVLM, head (l, h) and output token t, with o^{l,h}_t the head's write to the residual stream::

    VHD^{l,h}_t = ‖ o^{l,h}_t(image, text, y_<t) − o^{l,h}_t(text, y_<t) ‖₂
    T-VHD_t     = mean of the top-k VHD^{l,h}_t over all heads           (a hallucination signal: low = the
                                                                          token barely depends on the image)
VHR, layer by layer at each decoding step: compute VHD^{l,h} of the current token for the layer's heads; drop
outliers above mean + std; select the heads above the layer's median (of the rest); scale the selected heads'
outputs by α (default 2); continue to the next layer (whose VHD already sees the reinforced stream).

Runs "without the image" use the same prompt with the image placeholder tokens removed; only the text after
the last image token and the generated tokens are compared, aligned from the end (both runs share them
verbatim). The image-free run is a shadow forward with its own KV cache, stepped alongside ``generate``.
Works with HF LLaVA-family models (``LlavaForConditionalGeneration``: interp locates the language model at
``model.language_model``). Validated in tests/unit/test_vhd.py on a tiny random LLaVA config.

Real checkpoint (needs the weights locally)::

    model = interp.load_model("/path/to/llava-1.5-7b-hf")            # folder with config.json
    proc = transformers.AutoProcessor.from_pretrained("/path/to/llava-1.5-7b-hf")
    inputs = proc(images=img, text="USER: <image>\\nDescribe the image. ASSISTANT:", return_tensors="pt")
    scores, per_token = vhd_scores(model, inputs["input_ids"], inputs["pixel_values"], n_generate=32)
    with VHR(alpha=2.0).apply(model, inputs["input_ids"]):
        out = model.hf.generate(**inputs, max_new_tokens=64, do_sample=False)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pandas as pd
import torch

from interp.arch import head_outputs
from interp.interventions import Intervention
from interp.params import ParamError, Params, param
from interp.scores import ScoreTable
from interp.sites import Site

from .head_divergence import divergence_of, greedy_continuation, suffix_head_outputs


def image_token_id(model) -> int:
    cfg = model.hf.config
    for name in ("image_token_id", "image_token_index"):
        if getattr(cfg, name, None) is not None:
            return int(getattr(cfg, name))
    raise ValueError(f"{type(model.hf).__name__} has no image token id in its config: VHD needs a "
                     "vision-language model (e.g. transformers' LlavaForConditionalGeneration)")


def text_only(model, input_ids: torch.Tensor) -> torch.Tensor:
    """input_ids [1, pos] with the image placeholder tokens removed."""
    img = image_token_id(model)
    if not bool((input_ids == img).any()):
        raise ValueError(f"input_ids contain no image token ({img}); pass the processor's ids for an image prompt")
    return input_ids[:, input_ids[0] != img]


@torch.no_grad()
def vhd_scores(model, input_ids: torch.Tensor, pixel_values: torch.Tensor, *, n_generate: int = 8,
               top_k: int = 10):
    """VHD of every head for each text token after the image and each generated token.

    input_ids: [1, pos] with image placeholder tokens; pixel_values: the processor's [1, channels, H, W].
    Returns ``(scores, per_token)``: score table (analysis "vhd", score "vhd" = mean over generated tokens, or
    over all compared tokens when n_generate=0) and a per-token table with ``t_vhd`` (mean of top-k heads).
    """
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"vhd_scores takes one prompt [1, pos], got {tuple(input_ids.shape)}")
    img = image_token_id(model)
    last_img = int((input_ids[0] == img).nonzero().max())
    gen = greedy_continuation(model, input_ids, n_generate, pixel_values=pixel_values)
    gen_t = torch.tensor([gen], dtype=torch.long)
    with_ids = torch.cat([input_ids, gen_t], 1)
    without_ids = torch.cat([text_only(model, input_ids), gen_t], 1)
    n_suffix = input_ids.shape[1] - last_img - 1 + len(gen)
    if n_suffix <= 0:
        raise ValueError("nothing to compare: the prompt ends with the image and n_generate is 0")
    a = suffix_head_outputs(model, with_ids, n_suffix, pixel_values=pixel_values)
    b = suffix_head_outputs(model, without_ids, n_suffix)
    vhd = divergence_of(a, b)["l2"]  # [layer, token, head]
    L, T, H = vhd.shape
    per_head_token = vhd.permute(1, 0, 2).reshape(T, L * H)
    k = min(top_k, L * H)
    t_vhd = per_head_token.topk(k, dim=-1).values.mean(-1)  # [token]
    rows = vhd[:, T - len(gen):] if gen else vhd
    scores = ScoreTable.from_matrix(rows.mean(1), model=model.name, analysis="vhd", score="vhd",
                                    n_samples=rows.shape[1])
    tokens = with_ids[0, -n_suffix:].tolist()
    per_token = pd.DataFrame({"token_index": range(T), "token_id": tokens,
                              "is_generated": [i >= T - len(gen) for i in range(T)], "t_vhd": t_vhd.numpy()})
    return scores, per_token


def select_heads(vhd_layer: torch.Tensor) -> torch.Tensor:
    """VHR's per-layer rule. vhd_layer: [head]. Returns a bool [head] mask: not an outlier (≤ mean + std)
    and strictly above the median of the non-outliers."""
    keep = vhd_layer <= vhd_layer.mean() + vhd_layer.std(unbiased=False)
    med = vhd_layer[keep].median()
    return keep & (vhd_layer > med)


@dataclass(frozen=True, eq=False, repr=False)
class VHR(Intervention):
    """Vision-aware head reinforcement as a value (an ``interp.interventions.Intervention``): print it, compare
    it, save it with the others (``to_json`` / ``interp.save_interventions``). It acts through ``apply`` (a
    shadow text-only run beside each forward), not through ``model.intervene``."""

    alpha: float = 2.0
    layers: tuple[int, ...] | None = None  # None = every layer

    def __post_init__(self):
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise TypeError(f"VHR: alpha must be a number, got {self.alpha!r}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))

    def compile(self, model):
        raise TypeError("VHR needs the prompt's image tokens and a shadow text-only run: use "
                        "`with vhr.apply(model, image_input_ids): ...` instead of model.intervene")

    @contextlib.contextmanager
    def apply(self, model, image_input_ids: torch.Tensor):
        """Context manager: every forward of ``model`` in the block (prefill and each decode step of
        ``generate``) is reinforced. image_input_ids: [1, pos], the prompt with image tokens."""
        from transformers import DynamicCache

        text_ids = text_only(model, image_input_ids)
        s = model.shape
        layers = range(s.n_layers) if self.layers is None else self.layers
        state = {"shadow": False, "z": {}, "cache": DynamicCache(), "selected": []}

        def shadow_keep(z, site):
            if state["shadow"]:
                state["z"][site.layer] = z[:, -1].detach()

        def step(module, args, kwargs):
            if state["shadow"]:
                return
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                raise ValueError("VHR needs input_ids in each forward (not inputs_embeds)")
            first = ids.shape[1] > 1 or state["cache"].get_seq_length() == 0
            shadow_ids = text_ids if first else ids[:, -1:]
            if first:
                state["cache"] = DynamicCache()
            state["shadow"] = True
            try:
                model.hf(input_ids=shadow_ids.to(model.device), past_key_values=state["cache"], use_cache=True)
            finally:
                state["shadow"] = False

        def reinforce(z, site):  # z: [batch, pos, head, d_head]; act on the current (last) position
            if state["shadow"]:
                return None
            zt, zs = z[:, -1], state["z"][site.layer]
            vhd = head_outputs(zt - zs, model.w_o(site.layer)).norm(dim=-1)[0]  # [head]
            sel = select_heads(vhd)
            state["selected"].append((site.layer, sel.nonzero().flatten().tolist()))
            z = z.clone()
            z[:, -1, sel] *= self.alpha
            return z

        handlers = {Site(layer, "z"): [shadow_keep] + ([reinforce] if layer in layers else [])
                    for layer in range(s.n_layers)}
        handle = model.hf.register_forward_pre_hook(step, with_kwargs=True)
        try:
            with torch.no_grad(), model.hooks(handlers):
                yield state["selected"]
        finally:
            handle.remove()


# --- the report entry ("vhd" in interp.analyses.registry) -----------------------------------------------------
def is_vision_model(model) -> bool:
    """True for LLaVA-style models: an image token id in the config and a vision tower."""
    cfg = model.hf.config
    has_token = any(getattr(cfg, n, None) is not None for n in ("image_token_id", "image_token_index"))
    return has_token and getattr(cfg, "vision_config", None) is not None


@dataclass(frozen=True)
class VhdParams(Params):
    """Parameters of ``vhd`` (needs a LLaVA-style vision-language model)."""

    prompt: str = param("Describe the image.", "text after the image")
    image: str | None = param(None, "image file, encoded by the processor in the model's folder (default: a "
                                    "seeded noise image of the vision tower's size: a smoke test, not a measurement)")
    n_generate: int = param(8, "greedy tokens generated and compared", ge=0)
    top_k: int = param(10, "heads averaged by T-VHD", ge=1)
    seed: int = param(0, "seed of the noise image", ge=0)

    def check(self, where):
        if not self.prompt.strip():
            raise ParamError(f"{where}.prompt = '': give the text that follows the image")
        if self.image is not None:
            from pathlib import Path

            if not Path(self.image).expanduser().is_file():
                raise ParamError(f"{where}.image = {self.image!r}: no such file")

    def check_model(self, model, where=""):
        if not is_vision_model(model):
            raise ParamError(f"analysis 'vhd' needs a vision-language model (LLaVA-style: an image token and a "
                             f"vision tower); {model.name} is text-only. No such model ships offline: pass a local "
                             "LLaVA folder (config.json + weights) as --model, or tiny-llava for a smoke test")


def _inputs(model, p: VhdParams):
    """``(input_ids [1, pos], pixel_values [1, 3, H, W])`` of one image prompt."""
    cfg = model.hf.config
    if p.image is not None:
        from PIL import Image
        from transformers import AutoProcessor

        proc = AutoProcessor.from_pretrained(model.source, local_files_only=True)
        enc = proc(images=Image.open(p.image).convert("RGB"), text=f"USER: <image>\n{p.prompt} ASSISTANT:",
                   return_tensors="pt")
        return enc["input_ids"], enc["pixel_values"].to(model.dtype)
    img, size = image_token_id(model), cfg.vision_config.image_size
    n_img = getattr(cfg, "image_seq_length", None) or (size // cfg.vision_config.patch_size) ** 2
    text = model.tokenizer(p.prompt, add_special_tokens=False)["input_ids"]
    bos = [model.tokenizer.bos_token_id] if getattr(model.tokenizer, "bos_token_id", None) is not None else []
    ids = torch.tensor([bos + [img] * n_img + list(text)])
    gen = torch.Generator().manual_seed(p.seed)
    return ids, torch.randn(1, 3, size, size, generator=gen).to(model.dtype)


def run(model, params: VhdParams | dict | None = None, out_dir=None) -> dict:
    """Report entry: VHD of every head on one image prompt (``VhdParams``)."""
    p = VhdParams.coerce(params, where="vhd")
    p.check_model(model, "params.vhd")
    ids, pixel_values = _inputs(model, p)
    scores, per_token = vhd_scores(model, ids, pixel_values, n_generate=p.n_generate, top_k=p.top_k)
    return {"scores": scores, "per_token": per_token}
