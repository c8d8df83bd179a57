"""Text nodes: tokenize prompts, encode them, or both in one step.

A prompt widget holds one prompt; with `batch` set, every non-empty line is its own prompt
and the result is a batch (the prompt lists of diffusers' write-your-own-pipeline guide).
Alongside the prompts, the empty prompt is tokenized and encoded the same way: that is the
unconditional input classifier-free guidance uses when no negative conditioning is wired,
exactly as diffusers does.
"""

from __future__ import annotations

from typing import Annotated

import torch

from graph_runtime import Bool, Text, node
from nodes.types import Conditioning, TextEncoder, Tokenizer, Tokens, require

Prompt = Annotated[str, Text(multiline=True)]
Batch = Annotated[bool, Bool(tooltip="one prompt per line: the lines become a batch of prompts")]


def split_prompts(text: str, batch: bool) -> list[str]:
    """The prompts a text widget holds: the whole text, or one per non-empty line."""
    if not batch:
        return [text]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines or [""]


def tokenize_prompts(tokenizer: Tokenizer, prompts: list[str]) -> Tokens:
    """Pad to `model_max_length` (77 for CLIP) and truncate, as diffusers' guide does;
    the empty prompt is padded to the same length."""
    tok = tokenizer.tokenizer
    enc = tok(prompts, padding="max_length", max_length=tok.model_max_length,
              truncation=True, return_tensors="pt")
    length = int(enc.input_ids.shape[-1])
    empty = tok([""], padding="max_length", max_length=length, truncation=True,
                return_tensors="pt")
    return Tokens(enc.input_ids, enc.attention_mask, empty.input_ids, empty.attention_mask,
                  tuple(prompts))


def _encode(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    use_mask = bool(getattr(model.config, "use_attention_mask", False))
    with torch.no_grad():
        out = model(ids.to(device), attention_mask=mask.to(device) if use_mask else None)[0]
    return out.to(dtype=model.dtype)


def encode_tokens(text_encoder: TextEncoder, tokens: Tokens) -> Conditioning:
    """Encode prompts and the empty prompt separately (one call each, as diffusers does)."""
    model = text_encoder.model
    embeds = _encode(model, tokens.input_ids, tokens.attention_mask)
    uncond = _encode(model, tokens.uncond_ids, tokens.uncond_mask)
    return Conditioning(embeds, uncond, tokens.prompts)


@node("Tokenize", category="conditioning", output="tokens")
def tokenize(tokenizer: Tokenizer, text: Prompt = "", batch: Batch = False) -> Tokens:
    """Turn a prompt into CLIP token ids, padded to the model's maximum length (77)."""
    require(tokenizer, "Tokenize", "tokenizer")
    return tokenize_prompts(tokenizer, split_prompts(text, batch))


@node("EncodeText", category="conditioning", output="conditioning")
def encode_text(text_encoder: TextEncoder, tokens: Tokens) -> Conditioning:
    """Run the text encoder: token ids to the embeddings the UNet attends to."""
    require(text_encoder, "EncodeText", "text_encoder")
    return encode_tokens(text_encoder, tokens)


@node("TextToConditioning", category="conditioning", output="conditioning",
      display_name="Text to Conditioning")
def text_to_conditioning(tokenizer: Tokenizer, text_encoder: TextEncoder, text: Prompt = "",
                         batch: Batch = False) -> Conditioning:
    """Tokenize and encode a prompt in one node (ComfyUI's CLIPTextEncode)."""
    require(tokenizer, "TextToConditioning", "tokenizer")
    require(text_encoder, "TextToConditioning", "text_encoder")
    return encode_tokens(text_encoder, tokenize_prompts(tokenizer, split_prompts(text, batch)))
