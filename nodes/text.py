"""Text nodes: tokenize prompts, encode them, or both in one step.

A prompt widget holds one prompt; with `batch` set, every non-empty line is its own prompt
and the result is a batch (the prompt lists of diffusers' write-your-own-pipeline guide).
Alongside the prompts, the empty prompt is tokenized and encoded the same way: that is the
unconditional input classifier-free guidance uses when no negative conditioning is wired,
exactly as diffusers does.

SDXL runs two tokenizers and encoders on each prompt; their values carry both, so these
nodes work unchanged on SDXL and give what diffusers' SDXL pipelines compute.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

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


def _tokenize_with(tok: Any, prompts: list[str]) -> Tokens:
    """Pad to `model_max_length` (77 for CLIP) and truncate, as diffusers' guide does;
    the empty prompt is padded to the same length."""
    enc = tok(prompts, padding="max_length", max_length=tok.model_max_length,
              truncation=True, return_tensors="pt")
    length = int(enc.input_ids.shape[-1])
    empty = tok([""], padding="max_length", max_length=length, truncation=True,
                return_tensors="pt")
    return Tokens(enc.input_ids, enc.attention_mask, empty.input_ids, empty.attention_mask,
                  tuple(prompts))


def tokenize_prompts(tokenizer: Tokenizer, prompts: list[str]) -> Tokens:
    """Token ids of the prompts for every tokenizer the model has (SDXL's second one in
    `Tokens.second`)."""
    tokens = _tokenize_with(tokenizer.tokenizer, prompts)
    if tokenizer.tokenizer_2 is not None:
        tokens = replace(tokens, second=_tokenize_with(tokenizer.tokenizer_2, prompts))
    return tokens


def _encode(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    use_mask = bool(getattr(model.config, "use_attention_mask", False))
    with torch.no_grad():
        out = model(ids.to(device), attention_mask=mask.to(device) if use_mask else None)[0]
    return out.to(dtype=model.dtype)


def _encode_sdxl(models: tuple[torch.nn.Module, ...], ids: list[torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's prompt encoding: each encoder's penultimate hidden states, concatenated along
    the channels, and the pooled embedding of the last encoder (its projection)."""
    states, pooled = [], None
    for model, model_ids in zip(models, ids, strict=True):
        device = next(model.parameters()).device
        with torch.no_grad():
            out = model(model_ids.to(device), output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled = out[0]
    if pooled is None or pooled.ndim != 2:
        raise ValueError("EncodeText: SDXL's last text encoder must give a pooled "
                         "projection (CLIPTextModelWithProjection)")
    dtype = models[-1].dtype
    return torch.cat(states, dim=-1).to(dtype=dtype), pooled.to(dtype=dtype)


def _token_sets(text_encoder: TextEncoder, tokens: Tokens) -> list[Tokens]:
    sets = [tokens] if tokens.second is None else [tokens, tokens.second]
    if len(sets) != len(text_encoder.models):
        raise ValueError(f"EncodeText: the tokens come from {len(sets)} tokenizer(s) but the "
                         f"text encoder has {len(text_encoder.models)}; tokenize with the "
                         "same pipeline's tokenizer")
    return sets


def encode_tokens(text_encoder: TextEncoder, tokens: Tokens) -> Conditioning:
    """Encode prompts and the empty prompt separately (one call each, as diffusers does).

    SDXL's conditioning also carries the pooled embeddings; its unconditional input is
    zeros when the pipeline says `force_zeros_for_empty_prompt`."""
    if not text_encoder.sdxl:
        model = text_encoder.model
        embeds = _encode(model, tokens.input_ids, tokens.attention_mask)
        uncond = _encode(model, tokens.uncond_ids, tokens.uncond_mask)
        return Conditioning(embeds, uncond, tokens.prompts)
    sets = _token_sets(text_encoder, tokens)
    models = text_encoder.models
    embeds, pooled = _encode_sdxl(models, [t.input_ids for t in sets])
    if text_encoder.zero_uncond:
        uncond, uncond_pooled = torch.zeros_like(embeds[:1]), torch.zeros_like(pooled[:1])
    else:
        uncond, uncond_pooled = _encode_sdxl(models, [t.uncond_ids for t in sets])
    return Conditioning(embeds, uncond, tokens.prompts, options={"pooled_output": pooled},
                        uncond_pooled=uncond_pooled)


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
