"""Text nodes: tokenize prompts, encode them, or both in one step.

A prompt widget holds one prompt; with `batch` set, every non-empty line is its own prompt
and the result is a batch (the prompt lists of diffusers' write-your-own-pipeline guide).
Alongside the prompts, the empty prompt is tokenized and encoded the same way: that is the
unconditional input classifier-free guidance uses when no negative conditioning is wired,
exactly as diffusers does.

With the defaults a prompt of up to 75 tokens gives exactly diffusers' tensors. Longer
prompts are encoded in 77-token windows side by side (`long_prompts`), `weighting` reads
ComfyUI's or A1111's emphasis syntax, `embedding:name` uses a textual-inversion embedding
from models/embeddings, and `clip_skip` reads an earlier layer (diffusers' `clip_skip`).

SDXL runs two tokenizers and encoders on each prompt; their values carry both, so these
nodes work unchanged on SDXL and give what diffusers' SDXL pipelines compute.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Annotated, Any

from graph_runtime import Bool, Choice, Folders, Int, Text, folders, node
from nodes.comfyui.prompt_embeddings import unknown_embeddings
from nodes.lazy import lazy_module
from nodes.prompt_chunks import chunk_pieces, embedding_names, prompt_pieces, special_ids
from nodes.prompt_chunks import windows as make_windows
from nodes.prompt_comfy import encode_comfy, tokenize_comfy
from nodes.prompt_encoding import (
    Read,
    check_clip_skip,
    embedding_vectors,
    encode_sequence,
    reading,
)
from nodes.prompt_weighting import WEIGHTINGS, parse_prompt
from nodes.textual_inversion import (
    Embedding,
    embedding_references,
    embeddings_fingerprint,
    find_embedding,
    get_embedding,
    missing_message,
)
from nodes.types import Conditioning, TextEncoder, Tokenizer, Tokens, require

torch = lazy_module("torch")

Prompt = Annotated[str, Text(multiline=True)]
Batch = Annotated[bool, Bool(tooltip="one prompt per line: the lines become a batch of prompts")]
Weighting = Annotated[str, Choice(WEIGHTINGS, tooltip=(
    "none: brackets are text (diffusers); comfy: ComfyUI's (word:1.2); a1111: A1111's "
    "(word) [word] (word:1.2) and BREAK"))]
LongPrompts = Annotated[str, Choice(("chunk", "truncate"), tooltip=(
    "chunk: past 75 tokens, more 77-token windows side by side; truncate: cut at 77 "
    "(diffusers)"))]
# OpenCLIP-bigG, the deepest CLIP in use, has 32 layers; the encoder's own depth is checked
# when it runs.
MAX_CLIP_SKIP = 31
ClipSkip = Annotated[int, Int(min=0, max=MAX_CLIP_SKIP, tooltip=(
    "layers to skip from the end of the text encoder (diffusers' clip_skip; 1 = "
    "ComfyUI's CLIPSetLastLayer -2 on SD 1.x)"))]


def split_prompts(text: str, batch: bool) -> list[str]:
    """The prompts a text widget holds: the whole text, or one per non-empty line."""
    if not batch:
        return [text]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines or [""]


def _rows_for(embeddings: Mapping[str, Embedding], kind: str | None
              ) -> Callable[[str], range]:
    """`name -> its rows of the prompts' embedding table` for one tokenizer."""
    spans: dict[str, range] = {}
    total = 0
    for name, emb in embeddings.items():
        count = int(emb.preferred(kind).shape[0])
        spans[name] = range(total, total + count)
        total += count
    return spans.__getitem__


def _tokenize_with(tok: Any, prompts: list[str], weighting: str, truncate: bool,
                   embeddings: Mapping[str, Embedding], kind: str | None
                   ) -> list[list[list[tuple[int, float]]]]:
    """Each prompt's chunks of (token id, weight)."""
    rows = _rows_for(embeddings, kind)
    out = []
    for prompt in prompts:
        pieces = prompt_pieces(tok, parse_prompt(prompt, weighting), rows)
        chunks = chunk_pieces(pieces, tok.model_max_length - 2, keep_whole=not truncate)
        out.append(chunks[:1] if truncate else chunks)
    return out


def _tokens(tok: Any, prompts: list[str], chunks: list[list[list[tuple[int, float]]]],
            count: int, weighting: str, embeddings: tuple[Embedding, ...]) -> Tokens:
    width = int(tok.model_max_length)
    start, end, pad = special_ids(tok)
    rows = [make_windows(c, count, width, start, end, pad) for c in chunks]
    empty = make_windows([], count, width, start, end, pad)
    weights = torch.stack([w.weights for w in rows]).reshape(len(rows), -1)
    weighted = weighting == "a1111" and bool((weights != 1.0).any())
    return Tokens(torch.stack([w.ids for w in rows]).reshape(len(rows), -1),
                  torch.stack([w.mask for w in rows]).reshape(len(rows), -1),
                  empty.ids.reshape(1, -1), empty.mask.reshape(1, -1), tuple(prompts),
                  window=width, weights=weights if weighted else None, weighting=weighting,
                  embeddings=embeddings)


def _tokenizer_kinds(count: int) -> tuple[str | None, ...]:
    """Which tensor of an SDXL embedding file sets the layout for each tokenizer (a single
    tokenizer may be SD's or the SDXL refiner's: the file's first tensor)."""
    return (None,) if count == 1 else ("clip_l", "clip_g")


def load_embeddings(names: list[str], node_type: str) -> dict[str, Embedding]:
    """The named embeddings from the run's folders; an unknown name is an error naming the
    node and its text input."""
    found: dict[str, Embedding] = {}
    for name in names:
        try:
            found[name] = get_embedding(name, folders())
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"{node_type}: input 'text': {exc}") from exc
    return found


def tokenize_prompts(tokenizer: Tokenizer, prompts: list[str], weighting: str = "none",
                     long_prompts: str = "chunk", node_type: str = "Tokenize") -> Tokens:
    """Token windows of the prompts for every tokenizer the model has (SDXL's second one in
    `Tokens.second`), all with as many windows as the longest prompt needs."""
    if weighting == "comfy":
        return tokenize_comfy(tokenizer, prompts, long_prompts == "truncate", node_type)
    truncate = long_prompts == "truncate"
    names = list(dict.fromkeys(n for p in prompts
                               for n in embedding_names(parse_prompt(p, weighting))))
    embeddings = load_embeddings(names, node_type)
    kinds = _tokenizer_kinds(len(tokenizer.tokenizers))
    chunked = [_tokenize_with(tok, prompts, weighting, truncate, embeddings, kind)
               for tok, kind in zip(tokenizer.tokenizers, kinds, strict=True)]
    count = max(len(chunks) for per_tok in chunked for chunks in per_tok)
    values = tuple(embeddings.values())
    sets = [_tokens(tok, prompts, c, count, weighting, values)
            for tok, c in zip(tokenizer.tokenizers, chunked, strict=True)]
    return sets[0] if len(sets) == 1 else replace(sets[0], second=sets[1])


def _token_sets(text_encoder: TextEncoder, tokens: Tokens) -> list[Tokens]:
    sets = [tokens] if tokens.second is None else [tokens, tokens.second]
    if len(sets) != len(text_encoder.models):
        raise ValueError(f"EncodeText: the tokens come from {len(sets)} tokenizer(s) but the "
                         f"text encoder has {len(text_encoder.models)}; tokenize with the "
                         "same pipeline's tokenizer")
    return sets


def _encoder_kinds(text_encoder: TextEncoder) -> tuple[str | None, ...]:
    """Which tensor of an SDXL embedding file each encoder reads (the refiner's only
    encoder is OpenCLIP-G)."""
    if not text_encoder.sdxl:
        return (None,)
    return ("clip_l", "clip_g") if text_encoder.model_2 is not None else ("clip_g",)


Kinds = tuple[str | None, str | None]


def _encode_set(model: torch.nn.Module, tokens: Tokens, read: Read, kinds: Kinds,
                uncond: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One encoder's states for one tokenizer's tokens; `kinds`: the embedding tensor the
    tokens were laid out for and the one the encoder reads."""
    if uncond:
        return encode_sequence(model, tokens.uncond_ids, tokens.uncond_mask, tokens.window,
                               read, None, None)
    rows = sum(int(e.preferred(kinds[0]).shape[0]) for e in tokens.embeddings)
    try:
        vectors = embedding_vectors(tokens.embeddings, int(model.config.hidden_size),
                                    kinds[1], rows)
    except ValueError as exc:
        raise ValueError(f"EncodeText: {exc}") from exc
    weights = tokens.weights if tokens.weighting == "a1111" else None
    return encode_sequence(model, tokens.input_ids, tokens.attention_mask, tokens.window,
                           read, vectors, weights)


def _encode_all(text_encoder: TextEncoder, sets: list[Tokens], clip_skip: int, uncond: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The prompts' (or the empty prompt's) states, and SDXL's pooled embeddings."""
    models, sdxl = text_encoder.models, text_encoder.sdxl
    kinds = zip(_tokenizer_kinds(len(sets)), _encoder_kinds(text_encoder), strict=True)
    states, pooled = [], None
    for model, tokens, kind in zip(models, sets, kinds, strict=True):
        s, first = _encode_set(model, tokens, reading(model, sdxl, clip_skip), kind, uncond)
        states.append(s)
        pooled = first
    if not sdxl:
        return states[0], None
    if pooled is None or pooled.ndim != 2:
        raise ValueError("EncodeText: SDXL's last text encoder must give a pooled "
                         "projection (CLIPTextModelWithProjection)")
    dtype = models[-1].dtype
    return torch.cat(states, dim=-1).to(dtype=dtype), pooled.to(dtype=dtype)


def encode_tokens(text_encoder: TextEncoder, tokens: Tokens, clip_skip: int = 0,
                  node_type: str = "EncodeText") -> Conditioning:
    """`_encode_tokens` with offloaded encoders (`--vram low`) on their compute device."""
    from nodes.offload import on_compute_device

    with on_compute_device(*text_encoder.models):
        return _encode_tokens(text_encoder, tokens, clip_skip, node_type)


def _encode_tokens(text_encoder: TextEncoder, tokens: Tokens, clip_skip: int,
                   node_type: str) -> Conditioning:
    """Encode prompts and the empty prompt separately (one call each, as diffusers does).

    SDXL's conditioning also carries the pooled embeddings; its unconditional input is
    zeros when the pipeline says `force_zeros_for_empty_prompt`. The empty prompt is read
    at the default layer whatever `clip_skip` says, as diffusers' pipelines read their
    unconditional input (a wired negative prompt uses its own node's `clip_skip`)."""
    comfy = tokens.comfy is not None
    check_clip_skip(text_encoder.models, text_encoder.sdxl, clip_skip, node_type,
                    to_embeddings=not comfy)
    if comfy:
        return encode_comfy(text_encoder, tokens, clip_skip, node_type)
    sets = _token_sets(text_encoder, tokens)
    embeds, pooled = _encode_all(text_encoder, sets, clip_skip, uncond=False)
    if not text_encoder.sdxl:
        uncond, _ = _encode_all(text_encoder, sets, 0, uncond=True)
        return Conditioning(embeds, uncond, tokens.prompts)
    assert pooled is not None
    if text_encoder.zero_uncond:
        uncond, uncond_pooled = torch.zeros_like(embeds[:1]), torch.zeros_like(pooled[:1])
    else:
        uncond, uncond_pooled = _encode_all(text_encoder, sets, 0, uncond=True)
    return Conditioning(embeds, uncond, tokens.prompts, options={"pooled_output": pooled},
                        uncond_pooled=uncond_pooled)


def _referenced(text: str, weighting: Any) -> list[str]:
    """Every embedding name a prompt may use, as validation and fingerprints see it."""
    names = embedding_references(text)
    if weighting in ("none", "a1111"):
        names += embedding_names(parse_prompt(text, weighting))
    return list(dict.fromkeys(names))


def check_text(values: Mapping[str, Any], folders: Folders) -> dict[str, str]:
    """A literal prompt naming embeddings that no folder has."""
    text = values.get("text")
    if not isinstance(text, str) or "embedding:" not in text:
        return {}
    weighting = values.get("weighting", "none")
    if weighting == "comfy":
        missing = unknown_embeddings(text, folders)
    else:
        missing = []
        for name in _referenced(text, weighting):
            try:
                find_embedding(name, folders)
            except FileNotFoundError:
                missing.append(name)
    return {"text": missing_message(missing, folders)} if missing else {}


def text_fingerprint(values: Mapping[str, Any], folders: Folders) -> str | None:
    """The embedding files a literal prompt uses, so replacing one re-runs the node."""
    text = values.get("text")
    if not isinstance(text, str) or "embedding:" not in text:
        return None
    names = _referenced(text, values.get("weighting", "none"))
    return embeddings_fingerprint([f"embedding:{n}" for n in names], folders) or None


@node("Tokenize", category="conditioning", output="tokens", check_inputs=check_text,
      fingerprint=text_fingerprint)
def tokenize(tokenizer: Tokenizer, text: Prompt = "", batch: Batch = False,
             weighting: Weighting = "none", long_prompts: LongPrompts = "chunk") -> Tokens:
    """Turn a prompt into CLIP token ids in 77-token windows (one per 75 tokens).
    `embedding:name` uses an embedding from models/embeddings."""
    require(tokenizer, "Tokenize", "tokenizer")
    return tokenize_prompts(tokenizer, split_prompts(text, batch), weighting, long_prompts)


@node("EncodeText", category="conditioning", output="conditioning")
def encode_text(text_encoder: TextEncoder, tokens: Tokens, clip_skip: ClipSkip = 0
                ) -> Conditioning:
    """Run the text encoder: token ids to the embeddings the UNet attends to. `clip_skip`
    reads an earlier layer."""
    require(text_encoder, "EncodeText", "text_encoder")
    return encode_tokens(text_encoder, tokens, clip_skip)


@node("TextToConditioning", category="conditioning", output="conditioning",
      display_name="Text to Conditioning", check_inputs=check_text,
      fingerprint=text_fingerprint)
def text_to_conditioning(tokenizer: Tokenizer, text_encoder: TextEncoder, text: Prompt = "",
                         batch: Batch = False, weighting: Weighting = "none",
                         long_prompts: LongPrompts = "chunk", clip_skip: ClipSkip = 0
                         ) -> Conditioning:
    """Tokenize and encode a prompt in one node (ComfyUI's CLIPTextEncode, with the
    weighting, long-prompt and clip-skip options of Tokenize and EncodeText)."""
    require(tokenizer, "TextToConditioning", "tokenizer")
    require(text_encoder, "TextToConditioning", "text_encoder")
    tokens = tokenize_prompts(tokenizer, split_prompts(text, batch), weighting, long_prompts,
                              "TextToConditioning")
    return encode_tokens(text_encoder, tokens, clip_skip, "TextToConditioning")
