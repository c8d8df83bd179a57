"""Running CLIP text encoders on token windows: clip skip, long prompts, embeddings and
A1111 weights, with diffusers' conventions so a plain prompt encodes exactly as its
pipelines encode it.

Clip skip `k` (diffusers' `clip_skip`): SD 1.x/2.x read `hidden_states[-(k + 1)]` through
the final layer norm (k = 0: the last layer's normalized output, as before); SDXL reads
`hidden_states[-(k + 2)]` of both encoders, without the norm. A window sequence `[N, k*W]`
is encoded as `N*k` windows and put back side by side `[N, k*W, D]`; SDXL's pooled output
is the first window's.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from nodes.lazy import lazy_module
from nodes.prompt_weighting import apply_a1111_weights
from nodes.textual_inversion import Embedding, extra_token_vectors

torch = lazy_module("torch")


@dataclass(frozen=True)
class Read:
    """How an encoder is read: the hidden state (None: the last layer's normalized
    output), whether that state gets the final layer norm, whether the attention mask is
    passed (SD's encoders that ask for it; never for SDXL, as diffusers)."""

    layer: int | None
    norm: bool
    use_mask: bool


def layer_count(model: torch.nn.Module) -> int:
    return int(model.config.num_hidden_layers)


def max_clip_skip(model: torch.nn.Module, sdxl: bool, to_embeddings: bool = True) -> int:
    """The most layers an encoder can skip: down to its token embeddings (diffusers), or
    to its first layer's output (ComfyUI, which reads deeper requests as the last layer)."""
    return layer_count(model) - (1 if sdxl else 0) - (0 if to_embeddings else 1)


def check_clip_skip(models: Sequence[torch.nn.Module], sdxl: bool, clip_skip: int,
                    node: str, to_embeddings: bool = True) -> None:
    """Refuse a clip skip the encoders do not have layers for, naming node and input."""
    if clip_skip < 0:
        raise ValueError(f"{node}: input 'clip_skip' is {clip_skip}; it must be 0 or more")
    most = min(max_clip_skip(m, sdxl, to_embeddings) for m in models)
    if clip_skip > most:
        layers = ", ".join(str(layer_count(m)) for m in models)
        raise ValueError(f"{node}: input 'clip_skip' is {clip_skip}, but this text encoder "
                         f"has {layers} layer(s): at most {most}")


def reading(model: torch.nn.Module, sdxl: bool, clip_skip: int) -> Read:
    if sdxl:
        return Read(-(clip_skip + 2), False, False)
    use_mask = bool(getattr(model.config, "use_attention_mask", False))
    return Read(-(clip_skip + 1) if clip_skip else None, True, use_mask)


def embedding_vectors(embeddings: Sequence[Embedding], width: int, kind: str | None,
                      rows: int) -> torch.Tensor | None:
    """The prompts' embedding table for an encoder `width` wide (None without embeddings);
    its row count must be the one the tokens were laid out for."""
    if not embeddings:
        return None
    table = torch.cat([e.for_width(width, kind) for e in embeddings])
    if int(table.shape[0]) != rows:
        names = ", ".join(e.name for e in embeddings)
        raise ValueError(f"the embeddings {names} hold a different number of vectors for "
                         f"this text encoder than for its tokenizer")
    return table


def run_encoder(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, read: Read,
                vectors: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(states [B, W, D], first output)` of windows `[B, W]`; ids below 0 are rows of
    `vectors`, appended to the token table for the call."""
    device = next(model.parameters()).device
    with ExitStack() as stack, torch.no_grad():
        if vectors is not None:
            first = stack.enter_context(extra_token_vectors(model, vectors))
            ids = torch.where(ids < 0, first - 1 - ids, ids)
        elif bool((ids < 0).any()):
            raise ValueError("the tokens name embedding vectors they do not carry")
        out = model(ids.to(device), attention_mask=mask.to(device) if read.use_mask else None,
                    output_hidden_states=read.layer is not None)
        if read.layer is None:
            states = out[0]
        else:
            states = out.hidden_states[read.layer]
            if read.norm:
                states = getattr(model, "text_model", model).final_layer_norm(states)
    return states, out[0]


def encode_sequence(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                    window: int, read: Read, vectors: torch.Tensor | None,
                    weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(states [N, L, D], first window's output [N, ...])` of sequences `[N, L]` read in
    windows of `window` tokens, A1111 weights applied per window when given."""
    n, length = ids.shape
    width = window or length
    count = length // width
    states, first = run_encoder(model, ids.reshape(n * count, width),
                                mask.reshape(n * count, width), read, vectors)
    if weights is not None:
        states = apply_a1111_weights(states, weights.reshape(n * count, width))
    states = states.reshape(n, count * width, -1)
    first = first.reshape(n, count, *first.shape[1:])[:, 0]
    return states.to(dtype=model.dtype), first.to(dtype=model.dtype)
