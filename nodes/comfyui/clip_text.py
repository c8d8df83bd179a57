"""Text to conditioning the way ComfyUI's CLIP encoders do it: SD 1.x's CLIP-L, SDXL's
CLIP-L + OpenCLIP-G, and the SDXL refiner's OpenCLIP-G.

Why not our own Tokenize/EncodeText: ComfyUI never truncates a prompt. It tokenizes word by
word, fills 77-token windows (start token, up to 75 tokens, end token, then padding), starts
a new window when a word would not fit (a word of 8 tokens or more is split across windows
instead), encodes every window and concatenates them along the sequence, so a long prompt
gives `[1, 77 * n, D]`. Weighted tokens are pulled away from the empty prompt's encoding:
`empty + (z - empty) * weight`.

Each encoder is read at its own layer (`Reader`): SD 1.x at the last layer, or with clip skip
an earlier layer's state passed through the final layer norm; SDXL's two encoders at their
penultimate layer without the norm (clip skip moves both). A requested layer deeper than an
encoder has means its last layer. SDXL concatenates L's and G's states along the features
and takes G's projected pooled output; OpenCLIP-G's windows pad with token 0, not with the
end token.

Given a lookup, `embedding:name` puts the embedding's n vectors into the window at that
place, as n tokens carrying the weight of their bracket group; they are encoded as extra
rows of the token table (`nodes.textual_inversion.extra_token_vectors`). Each encoder reads
the vectors as wide as it is (an SDXL file's `clip_l` for L, `clip_g` for G). Vectors no
encoder width fits are dropped from that encoder's window the way ComfyUI drops them: the
tokens after them move up, padding fills the end, and the weights stay where they were.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nodes.comfyui.prompt_syntax import prompt_words
from nodes.comfyui.types import Clip
from nodes.lazy import lazy_module
from nodes.textual_inversion import Embedding, extra_token_vectors

torch = lazy_module("torch")

log = logging.getLogger("noodle.comfyui")

WINDOW = 77
# Words of this many tokens or more may be split across windows.
LONG_WORD = 8
# OpenCLIP-G's tokenizer pads with token 0 ("!"); OpenAI's CLIP pads with its end token.
G_PAD = 0
# SDXL reads both encoders at the penultimate layer.
SDXL_LAYER = -2
# The id an embedding vector's place holds until it is encoded (see `Window.vectors`).
EMBEDDING_SLOT = -1
# The tensor an encoder's `embedding:` words prefer in SDXL files, by ComfyUI's names.
KINDS = {"l": "clip_l", "g": "clip_g"}

Tokens = Mapping[str, list["Window"]]
Lookup = Callable[[str], Embedding | None]
# A place in a window: a token id, an embedding vector, or None for a vector the encoder
# cannot read (dropped when the window is finished).
Entry = tuple["int | torch.Tensor | None", float]


@dataclass(frozen=True, eq=False)
class Window:
    """One 77-token window: ids and a weight per token, and the embedding vectors by
    position (their ids are `EMBEDDING_SLOT`)."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]
    vectors: tuple[tuple[int, torch.Tensor], ...] = ()


@dataclass(frozen=True)
class EmbeddingSource:
    """How one encoder reads `embedding:` words: the lookup by name, its width, and which
    of an SDXL file's tensors it prefers."""

    lookup: Lookup
    width: int
    kind: str

    def entries(self, embedding: Embedding, weight: float) -> list[Entry]:
        """The embedding's vectors as window entries; None for each one when no tensor
        of the file is as wide as the encoder (ComfyUI ignores them, with a warning)."""
        try:
            rows = embedding.for_width(self.width, self.kind)
        except ValueError as exc:
            log.warning("%s; ignored by this encoder", exc)
            return [(None, weight)] * int(embedding.preferred(self.kind).shape[0])
        return [(row, weight) for row in rows]


@dataclass(frozen=True, eq=False)
class Reader:
    """How one text encoder of a CLIP is read: its tokenizer and padding token (None: the
    end token), the hidden state to take (None: the last layer, normalized), whether an
    earlier layer's state gets the final layer norm, and whether the pooled output is the
    projected one."""

    tokenizer: Any
    model: torch.nn.Module
    pad: int | None
    layer: int | None
    norm_hidden: bool
    projected: bool
    kind: str = "clip_l"

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)


def _special_ids(tokenizer: object) -> tuple[int, int]:
    start = getattr(tokenizer, "bos_token_id", None)
    end = getattr(tokenizer, "eos_token_id", None)
    if start is None or end is None:
        raise ValueError("the CLIP tokenizer has no start or end token")
    return int(start), int(end)


def _word_entries(tokenizer: Any, text: str, source: EmbeddingSource | None
                  ) -> list[list[Entry]]:
    """Each word's (or embedding's) entries, in order."""
    words: list[list[Entry]] = []
    for word, weight in prompt_words(text, source.lookup if source is not None else None):
        if isinstance(word, str):
            ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word))
            words.append([(int(t), weight) for t in ids])
        else:
            assert source is not None
            words.append(source.entries(word, weight))
    return words


def _finish(entries: list[Entry], fill: int) -> Window:
    """A window from its entries: vectors the encoder cannot read leave their place and
    padding fills the end, while every weight stays at its position (as in ComfyUI)."""
    weights = tuple(w for _, w in entries)
    kept = [t for t, _ in entries if t is not None]
    kept += [fill] * (len(entries) - len(kept))
    ids = tuple(EMBEDDING_SLOT if isinstance(t, torch.Tensor) else int(t) for t in kept)
    vectors = tuple((i, t) for i, t in enumerate(kept) if isinstance(t, torch.Tensor))
    return Window(ids, weights, vectors)


def tokenize(tokenizer: Any, text: str, pad: int | None = None,
             source: EmbeddingSource | None = None) -> list[Window]:
    """The prompt in 77-token windows (see the module docstring), padded with `pad`
    (the end token when None); `source` reads `embedding:` words (None: dropped)."""
    start, end = _special_ids(tokenizer)
    fill = end if pad is None else pad
    windows: list[list[Entry]] = [[(start, 1.0)]]
    current = windows[0]
    room = WINDOW - 1  # the end token always takes the last place
    for group in _word_entries(tokenizer, text, source):
        long_word = len(group) >= LONG_WORD
        while group:
            if len(current) + len(group) <= room:
                current.extend(group)
                break
            free = room - len(current)
            if long_word:
                current.extend(group[:free])
                group = group[free:]
                current.append((end, 1.0))
            else:
                current.append((end, 1.0))
                current.extend([(fill, 1.0)] * free)
            current = [(start, 1.0)]
            windows.append(current)
    current.append((end, 1.0))
    current.extend([(fill, 1.0)] * (WINDOW - len(current)))
    return [_finish(w, fill) for w in windows]


def _layer(requested: int | None, default: int | None, model: torch.nn.Module) -> int | None:
    """The hidden state index to read, or None for the last layer (normalized)."""
    layer = default if requested is None else requested
    if layer is None or abs(layer) > int(model.config.num_hidden_layers):
        return None  # more layers skipped than the model has: ComfyUI uses the last
    return layer


def readers(clip: Clip) -> dict[str, Reader]:
    """The encoders of a CLIP by ComfyUI's names: "l" (CLIP-L), "g" (OpenCLIP-G)."""
    out: dict[str, Reader] = {}
    if not clip.sdxl:
        if clip.text_encoder is None:
            raise ValueError("this CLIP has no text encoder")
        out["l"] = Reader(clip.tokenizer, clip.text_encoder, None,
                          _layer(clip.layer, None, clip.text_encoder), True, False)
        return out
    if clip.text_encoder is not None:
        out["l"] = Reader(clip.tokenizer, clip.text_encoder, None,
                          _layer(clip.layer, SDXL_LAYER, clip.text_encoder), False, False)
    assert clip.text_encoder_2 is not None
    out["g"] = Reader(clip.tokenizer_2, clip.text_encoder_2, G_PAD,
                      _layer(clip.layer, SDXL_LAYER, clip.text_encoder_2), False, True,
                      KINDS["g"])
    return out


def _hidden(reader: Reader, ids: torch.Tensor, extra: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token states of the reader's layer and the pooled output (always from the last
    layer, at the first end token), both float32. With `extra` ids (embedding vectors)
    the end token is found here: a model config with the old end-token id would take the
    largest id, an extra one."""
    model = reader.model
    device = next(model.parameters()).device
    ids = ids.to(device)
    with torch.no_grad():
        out = model(ids, output_hidden_states=reader.layer is not None)
        if reader.layer is None:
            states = out.last_hidden_state
        else:
            states = out.hidden_states[reader.layer]
            if reader.norm_hidden:
                inner = getattr(model, "text_model", model)
                states = inner.final_layer_norm(states)
        pooled = out.text_embeds if reader.projected else out.pooler_output
        if extra:
            end = _special_ids(reader.tokenizer)[1]
            at = (ids == end).int().argmax(dim=-1)
            pooled = out.last_hidden_state[torch.arange(ids.shape[0], device=device), at]
            if reader.projected:
                pooled = model.text_projection(pooled)
    return states.float(), pooled.float()


def _with_vectors(reader: Reader, rows: list[list[int]], windows: list[Window]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """`_hidden` with the windows' embedding vectors as extra rows of the token table."""
    vectors = [v for win in windows for _, v in win.vectors]
    with extra_token_vectors(reader.model, torch.stack(vectors)) as first:
        next_id = first
        for row, win in zip(rows, windows, strict=False):
            for position, _ in win.vectors:
                row[position] = next_id
                next_id += 1
        return _hidden(reader, torch.tensor(rows, dtype=torch.long), extra=True)


def encode_windows(reader: Reader, windows: list[Window]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(embeds [1, 77 * windows, D], pooled [1, P])` of one encoder: every window in one
    batch (plus the empty prompt when some token is weighted); pooled of the first."""
    weighted = any(w != 1.0 for win in windows for w in win.weights)
    rows = [list(win.ids) for win in windows]
    if weighted:
        start, end = _special_ids(reader.tokenizer)
        fill = end if reader.pad is None else reader.pad
        rows.append([start, end] + [fill] * (WINDOW - 2))
    if any(win.vectors for win in windows):
        states, pooled = _with_vectors(reader, rows, windows)
    else:
        states, pooled = _hidden(reader, torch.tensor(rows, dtype=torch.long))
    parts = []
    for k, win in enumerate(windows):
        z = states[k]
        if weighted:
            weights = torch.tensor(win.weights, dtype=z.dtype, device=z.device)[:, None]
            empty = states[-1]
            z = torch.where(weights != 1.0, (z - empty) * weights + empty, z)
        parts.append(z)
    return torch.cat(parts)[None], pooled[:1]


def _source(reader: Reader, lookup: Lookup | None) -> EmbeddingSource | None:
    return None if lookup is None else EmbeddingSource(lookup, reader.width, reader.kind)


def tokenize_all(clip: Clip, text: str, lookup: Lookup | None = None
                 ) -> dict[str, list[Window]]:
    """The prompt's windows for each encoder of the CLIP (`lookup` finds embeddings)."""
    return {name: tokenize(r.tokenizer, text, r.pad, _source(r, lookup))
            for name, r in readers(clip).items()}


def encode_tokens(clip: Clip, tokens: Tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """`(embeds, pooled)` from each encoder's windows. SDXL: L's and G's states side by
    side (cut to the shorter), G's pooled output. Offloaded encoders (`--vram low`) are on
    their compute device meanwhile."""
    from nodes.offload import on_compute_device

    with on_compute_device(clip.text_encoder, clip.text_encoder_2):
        return _encode_tokens(clip, tokens)


def _encode_tokens(clip: Clip, tokens: Tokens) -> tuple[torch.Tensor, torch.Tensor]:
    found = readers(clip)
    if "g" not in found:
        return encode_windows(found["l"], tokens["l"])
    g_states, g_pooled = encode_windows(found["g"], tokens["g"])
    if "l" not in found:
        return g_states, g_pooled
    l_states, _ = encode_windows(found["l"], tokens["l"])
    cut = min(l_states.shape[1], g_states.shape[1])
    return torch.cat([l_states[:, :cut], g_states[:, :cut]], dim=-1), g_pooled


def encode(clip: Clip, text: str, lookup: Lookup | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """`(embeds [1, 77 * windows, D], pooled [1, P])` for a prompt."""
    return encode_tokens(clip, tokenize_all(clip, text, lookup))


def sdxl_tokens(clip: Clip, text_g: str, text_l: str, lookup: Lookup | None = None
                ) -> dict[str, list[Window]]:
    """CLIPTextEncodeSDXL's windows: G reads `text_g`, L reads `text_l`, and the side with
    fewer windows gets empty-prompt windows until both have as many. (The refiner reads
    only G, but `text_l`'s window count still pads G, as in ComfyUI.)"""
    found = readers(clip)
    if "g" not in found:
        raise ValueError("this is not an SDXL CLIP (it has no OpenCLIP-G encoder); use "
                         "CLIPTextEncode")
    g_reader = found["g"]
    l_tokenizer = found["l"].tokenizer if "l" in found else g_reader.tokenizer
    l_reader = found.get("l", g_reader)
    g = tokenize(g_reader.tokenizer, text_g, G_PAD, _source(g_reader, lookup))
    lw = tokenize(l_tokenizer, text_l, None, _source(l_reader, lookup))
    while len(lw) < len(g):
        lw += tokenize(l_tokenizer, "")
    while len(g) < len(lw):
        g += tokenize(g_reader.tokenizer, "", G_PAD)
    return {"g": g, "l": lw} if "l" in found else {"g": g}
