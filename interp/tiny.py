"""Tiny randomly initialised HF models and a byte tokenizer: built in milliseconds from a config, no weights.

``build_tiny("llama")`` / ``"qwen2"`` / ``"gemma3"`` / ``"llava"``: GQA everywhere (4 query heads, 2 KV heads by
default); qwen2 adds QKV bias; gemma3 adds sliding-window layers and its extra norms; llava wraps a tiny llama in
a LLaVA model with a 1-layer CLIP vision tower (image token id 63, 4 image tokens of an 8 × 8 image).
Deterministic under ``seed``. ``interp.load_model("tiny-<family>")`` and ``interp.testing.tiny_model`` wrap them
as an ``interp.Model`` (this module does not import ``interp.model``, so the two do not import each other).
"""

from __future__ import annotations

import torch

FAMILIES = ("llama", "qwen2", "gemma3", "llava")
LLAVA_IMAGE_TOKEN = 63
_VOCAB = 64


def tiny_config(family: str = "llama", *, n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 2,
                d_head: int = 8, d_mlp: int = 64, vocab: int = _VOCAB, n_ctx: int = 256, sliding_window: int = 8):
    """A transformers config for a tiny model of the given family (one of ``FAMILIES``)."""
    common = dict(
        vocab_size=vocab, hidden_size=n_heads * d_head, intermediate_size=d_mlp, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, head_dim=d_head,
        max_position_embeddings=n_ctx, bos_token_id=0, eos_token_id=1, pad_token_id=1, tie_word_embeddings=False,
    )
    if family == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    if family == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common)
    if family == "gemma3":
        from transformers import Gemma3TextConfig

        types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)]
        return Gemma3TextConfig(**common, sliding_window=sliding_window, layer_types=types,
                                query_pre_attn_scalar=d_head)
    if family == "llava":
        return _llava_config(common)
    raise ValueError(f"unknown tiny model family {family!r}; choose one of {', '.join(map(repr, FAMILIES))}")


def _llava_config(text: dict):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=8, patch_size=4, projection_dim=16)
    return LlavaConfig(vision_config=vision, text_config=LlamaConfig(**text), image_token_index=LLAVA_IMAGE_TOKEN,
                       image_seq_length=4, vision_feature_select_strategy="default", vision_feature_layer=-1)


class CharTokenizer:
    """A minimal tokenizer for tiny models: one id per byte (mod vocab), BOS = 0. Enough for tests."""

    def __init__(self, vocab: int = _VOCAB):
        self.vocab_size = vocab
        self.bos_token_id, self.eos_token_id, self.pad_token_id = 0, 1, 1
        self.chat_template = None
        self.padding_side = "left"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [2 + (b % (self.vocab_size - 2)) for b in text.encode()]
        return ([self.bos_token_id] if add_special_tokens else []) + ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return "".join(chr(32 + (i - 2) % 95) if i >= 2 else "" for i in ids)

    def convert_ids_to_tokens(self, ids):
        return [self.decode([i]) for i in ids]

    def __call__(self, text, return_tensors=None, add_special_tokens: bool = True, **_):
        single = isinstance(text, str)
        rows = [self.encode(t, add_special_tokens) for t in ([text] if single else text)]
        if return_tensors != "pt":
            return {"input_ids": rows[0] if single else rows}
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        return {"input_ids": ids, "attention_mask": mask}


def build_tiny(family: str = "llama", *, seed: int = 0, dtype=torch.float32, **config_kwargs):
    """``(hf_model, tokenizer)`` of a randomly initialised tiny model (eval mode)."""
    from transformers import AutoModelForCausalLM

    from .compat import import_hub_kernels

    import_hub_kernels()  # before the model is built (see interp.compat)

    config = tiny_config(family, **config_kwargs)
    torch.manual_seed(seed)
    if family == "llava":
        from transformers import LlavaForConditionalGeneration

        hf = LlavaForConditionalGeneration(config).to(dtype)
        vocab = config.text_config.vocab_size
    else:
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
        vocab = config.vocab_size
    hf.eval()
    return hf, CharTokenizer(vocab)
