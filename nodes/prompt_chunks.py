"""Prompts as CLIP token windows: weighted text and embeddings to 75-token chunks, each
chunk one 77-token window (start token, the chunk, end token, padding).

CLIP reads 77 tokens at a time. A longer prompt is split into chunks of 75 that are encoded
one window each and concatenated along the sequence, as ComfyUI and A1111 do; a prompt
that fits is exactly the window diffusers' tokenizer makes (padded to 77 with the
tokenizer's padding token). An embedding's vectors stay in one chunk when they fit (moved
whole to the next one otherwise, as A1111 does); `BREAK` closes the current chunk. Chunks
are cut at 75 tokens exactly: A1111's optional move of a full chunk's words after its last
comma into the next chunk is not made.

Token ids below zero stand for embedding vectors: -1 is the first row of the prompts'
embedding table, -2 the second, and so on. The encoder maps them to the rows it appends
after its vocabulary (`nodes.textual_inversion.extra_token_vectors`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nodes.lazy import lazy_module
from nodes.prompt_weighting import Segment
from nodes.textual_inversion import EMBEDDING_PREFIX

torch = lazy_module("torch")

CHUNK = 75
# `embedding:name` at the start of the text or after whitespace or "(", as
# `nodes.textual_inversion.embedding_references` finds it; the name runs to whitespace or a
# bracket, less a trailing weight (`:1.2`), backslash or commas, which stay text.
EMBEDDING_REF = re.compile(r"(?:^|(?<=[\s(]))" + re.escape(EMBEDDING_PREFIX)
                           + r"(?P<name>[^\s()]+)")
_WEIGHT_SUFFIX = re.compile(r":[-+]?(?:\d+\.?\d*|\.\d+)$")

Item = tuple[int, float]  # a token id (negative: an embedding row) and its weight


@dataclass(frozen=True)
class Piece:
    """Tokens laid out together: text tokens (may be split across chunks), an embedding's
    vectors (`whole`: kept in one chunk when they fit) or a chunk break."""

    items: tuple[Item, ...] = ()
    whole: bool = False
    brk: bool = False


@dataclass(frozen=True)
class Windows:
    """One prompt's windows `[k, W]`: ids, attention mask (1 up to the end token) and
    per-token weights."""

    ids: torch.Tensor
    mask: torch.Tensor
    weights: torch.Tensor


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a text without start or end token and without truncation (quietly:
    a text longer than one window is expected here)."""
    if not text:
        return []
    ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
    return [int(t) for t in ids]


def references(text: str) -> list[tuple[str, int, int]]:
    """`(name, start, end)` of each embedding reference in a text."""
    found = []
    for match in EMBEDDING_REF.finditer(text):
        name = _WEIGHT_SUFFIX.sub("", match.group("name").rstrip("\\")).rstrip(",")
        if name:
            found.append((name, match.start(), match.start("name") + len(name)))
    return found


def embedding_names(segments: Sequence[Segment]) -> list[str]:
    """The embeddings the segments refer to, in order of first use."""
    names: list[str] = []
    for seg in segments:
        for name, _, _ in references(seg.text):
            if name not in names:
                names.append(name)
    return names


def prompt_pieces(tokenizer: Any, segments: Sequence[Segment],
                  rows: Callable[[str], range]) -> list[Piece]:
    """The segments as pieces; `rows(name)` gives an embedding's rows of the table."""
    pieces: list[Piece] = []
    for seg in segments:
        if seg.brk:
            pieces.append(Piece(brk=True))
            continue
        at = 0
        for name, start, end in references(seg.text):
            ids = text_ids(tokenizer, seg.text[at:start])
            pieces.append(Piece(tuple((t, seg.weight) for t in ids)))
            pieces.append(Piece(tuple((-1 - r, seg.weight) for r in rows(name)), whole=True))
            at = end
        ids = text_ids(tokenizer, seg.text[at:])
        pieces.append(Piece(tuple((t, seg.weight) for t in ids)))
    return [p for p in pieces if p.items or p.brk]


def chunk_pieces(pieces: Sequence[Piece], size: int = CHUNK, keep_whole: bool = True
                 ) -> list[list[Item]]:
    """Pieces to chunks of at most `size` tokens (at least one chunk, maybe empty)."""
    chunks: list[list[Item]] = [[]]
    for piece in pieces:
        if piece.brk:
            chunks.append([])
            continue
        items = list(piece.items)
        if keep_whole and piece.whole and len(items) <= size < len(chunks[-1]) + len(items):
            chunks.append([])
        while items:
            room = size - len(chunks[-1])
            if room == 0:
                chunks.append([])
                continue
            chunks[-1].extend(items[:room])
            items = items[room:]
    if len(chunks) > 1 and not chunks[-1]:
        chunks.pop()  # a closing BREAK opens no window (as in A1111)
    return chunks


def windows(chunks: Sequence[Sequence[Item]], count: int, width: int, start: int, end: int,
            pad: int) -> Windows:
    """`count` windows of `width` tokens: the chunks, then empty chunks up to `count`."""
    size = width - 2
    ids = torch.full((count, width), pad, dtype=torch.long)
    mask = torch.zeros((count, width), dtype=torch.long)
    weights = torch.ones((count, width), dtype=torch.float32)
    for k in range(count):
        chunk = list(chunks[k]) if k < len(chunks) else []
        if len(chunk) > size:
            raise ValueError(f"a chunk of {len(chunk)} tokens does not fit a window of "
                             f"{width}")
        n = len(chunk)
        ids[k, 0], ids[k, n + 1] = start, end
        if chunk:
            ids[k, 1:n + 1] = torch.tensor([t for t, _ in chunk], dtype=torch.long)
            weights[k, 1:n + 1] = torch.tensor([w for _, w in chunk], dtype=torch.float32)
        mask[k, :n + 2] = 1
    return Windows(ids, mask, weights)


def special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """Start, end and padding token (the end token when the tokenizer has no padding)."""
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    if start is None or end is None:
        raise ValueError("the CLIP tokenizer has no start or end token")
    pad = tokenizer.pad_token_id
    return int(start), int(end), int(end if pad is None else pad)
