"""The text nodes' `comfy` weighting: prompts tokenized and encoded by the ComfyUI pack's
CLIP code (`nodes.comfyui.clip_text`), so the result is ComfyUI's CLIPTextEncode by
construction: its prompt syntax, its word-wise 77-token windows, weights pulled from the
empty prompt's encoding, its embedding handling and its layer for clip skip.

ComfyUI's windows depend on the encoder (OpenCLIP-G pads with token 0, an embedding's
vectors are picked by the encoder's width), so Tokenize only reads the prompts and finds
the embeddings they name; EncodeText makes the windows with the encoder at hand. In a
batch, and for the empty prompt, prompts get empty-prompt windows until all have as many
as the longest; `truncate` keeps only the first window. The empty prompt is read at the
default layer, as in `nodes.text`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from graph_runtime import folders
from nodes.comfyui.clip_text import Window, encode_tokens, tokenize_all
from nodes.comfyui.prompt_syntax import UnknownEmbeddings, prompt_words
from nodes.comfyui.types import Clip
from nodes.lazy import lazy_module
from nodes.textual_inversion import Embedding, embedding_lookup, missing_message
from nodes.types import Conditioning, TextEncoder, Tokenizer, Tokens

torch = lazy_module("torch")

Windows = dict[str, list[Window]]


@dataclass(frozen=True, eq=False)
class ComfyPrompts:
    """What EncodeText needs to encode prompts the ComfyUI way: the prompts, the tokenizers
    they are read with, the embeddings they name (by name as written) and whether long
    prompts are cut to one window."""

    prompts: tuple[str, ...]
    tokenizer: Tokenizer
    embeddings: Mapping[str, Embedding]
    truncate: bool = False

    def __nbytes__(self) -> int:
        return sum(e.__nbytes__() for e in self.embeddings.values())


def _recording(lookup: Callable[[str], Embedding | None], found: dict[str, Embedding]
               ) -> Callable[[str], Embedding | None]:
    def record(name: str) -> Embedding | None:
        embedding = lookup(name)
        if embedding is not None:
            found[name] = embedding
        return embedding

    return record


def find_embeddings(prompts: list[str], node_type: str) -> dict[str, Embedding]:
    """The embeddings the prompts name, read as the pack reads them; unknown names are an
    error naming the node and its text input."""
    found: dict[str, Embedding] = {}
    record = _recording(embedding_lookup(folders()), found)
    missing: list[str] = []
    for prompt in prompts:
        try:
            prompt_words(prompt, record)
        except UnknownEmbeddings as exc:
            missing += exc.names
        except ValueError as exc:  # a file that is not an embedding
            raise ValueError(f"{node_type}: input 'text': {exc}") from exc
    if missing:
        raise ValueError(f"{node_type}: input 'text': "
                         f"{missing_message(list(dict.fromkeys(missing)), folders())}")
    return found


def tokenize_comfy(tokenizer: Tokenizer, prompts: list[str], truncate: bool,
                   node_type: str) -> Tokens:
    """Tokens that EncodeText hands to the pack (the ids are made there, see the module
    docstring)."""
    comfy = ComfyPrompts(tuple(prompts), tokenizer, find_embeddings(prompts, node_type),
                         truncate)
    none = torch.zeros((len(prompts), 0), dtype=torch.long)
    empty = torch.zeros((1, 0), dtype=torch.long)
    return Tokens(none, none, empty, empty, tuple(prompts), weighting="comfy", comfy=comfy)


def comfy_clip(tokenizer: Tokenizer, text_encoder: TextEncoder, clip_skip: int) -> Clip:
    """The pack's CLIP for our tokenizer and encoder values, at the clip-skip layer (SD:
    `-(k + 1)`, SDXL: `-(k + 2)`; None: the default layer)."""
    if text_encoder.sdxl:
        layer = -(clip_skip + 2) if clip_skip else None
        if text_encoder.model_2 is None:  # the refiner: OpenCLIP-G only
            return Clip(None, None, layer, tokenizer_2=tokenizer.tokenizer,
                        text_encoder_2=text_encoder.model)
        return Clip(tokenizer.tokenizer, text_encoder.model, layer,
                    tokenizer_2=tokenizer.tokenizer_2, text_encoder_2=text_encoder.model_2)
    return Clip(tokenizer.tokenizer, text_encoder.model, -(clip_skip + 1) if clip_skip else None)


def _padded(windows: Windows, empty: Windows, count: int) -> Windows:
    return {name: ws + [empty[name][0]] * (count - len(ws)) for name, ws in windows.items()}


def _check_pairing(tokenizer: Tokenizer, text_encoder: TextEncoder, node_type: str) -> None:
    tokenizers = len(tokenizer.tokenizers)
    if tokenizers != len(text_encoder.models):
        raise ValueError(f"{node_type}: the tokens come from {tokenizers} tokenizer(s) but the "
                         f"text encoder has {len(text_encoder.models)}; tokenize with the "
                         "same pipeline's tokenizer")


def encode_comfy(text_encoder: TextEncoder, tokens: Tokens, clip_skip: int,
                 node_type: str = "EncodeText") -> Conditioning:
    """The prompts and the empty prompt encoded by the pack, padded to equal windows."""
    comfy: ComfyPrompts = tokens.comfy
    _check_pairing(comfy.tokenizer, text_encoder, node_type)
    clip = comfy_clip(comfy.tokenizer, text_encoder, clip_skip)
    lookup = comfy.embeddings.get
    per_prompt = [tokenize_all(clip, p, lookup) for p in comfy.prompts]
    empty = tokenize_all(clip, "")
    if comfy.truncate:
        per_prompt = [{name: ws[:1] for name, ws in w.items()} for w in per_prompt]
    count = max(len(ws) for w in [*per_prompt, empty] for ws in w.values())
    encoded = [encode_tokens(clip, _padded(w, empty, count)) for w in per_prompt]
    dtype = text_encoder.models[-1].dtype
    embeds = torch.cat([e for e, _ in encoded]).to(dtype)
    pooled = torch.cat([p for _, p in encoded]).to(dtype)
    if text_encoder.sdxl and text_encoder.zero_uncond:
        uncond, uncond_pooled = torch.zeros_like(embeds[:1]), torch.zeros_like(pooled[:1])
    else:
        default = comfy_clip(comfy.tokenizer, text_encoder, 0)
        uncond, uncond_pooled = encode_tokens(default, _padded(empty, empty, count))
        uncond, uncond_pooled = uncond.to(dtype), uncond_pooled.to(dtype)
    if not text_encoder.sdxl:
        return Conditioning(embeds, uncond, comfy.prompts)
    return Conditioning(embeds, uncond, comfy.prompts, options={"pooled_output": pooled},
                        uncond_pooled=uncond_pooled)
