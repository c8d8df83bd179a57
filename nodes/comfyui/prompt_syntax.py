"""ComfyUI's prompt syntax: `(words:1.2)` weights, `(words)` emphasis, `\\(` escapes and
`embedding:name` references, read the way its CLIPTextEncode reads them.

A group in parentheses multiplies the weight around it by 1.1, unless it ends in `:number`,
which then sets the weight outright; groups nest. Escaped parentheses are literal text.
Words that name an embedding (`embedding:name`, after a space, a line break or at the start
of a group) are split off and looked up by name: `name` is the word up to the next
whitespace, and when no file has that name but it ends in commas, the name without them
(the commas stay as text). Text after the name is kept. Without a lookup (the folders are
not known) a reference is dropped with a warning, as ComfyUI drops one it cannot find;
with one, a name no folder has is an error (`UnknownEmbeddings`), never silently lost.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TypeVar

from nodes.textual_inversion import EMBEDDING_PREFIX

log = logging.getLogger("noodle.comfyui")

EMPHASIS = 1.1
EMBEDDING = EMBEDDING_PREFIX
# Placeholders for escaped parentheses while the groups are found.
_OPEN, _CLOSE = "\0\2", "\0\1"
_EMBEDDING_SPLIT = re.compile(f" {EMBEDDING}|\n{EMBEDDING}")

T = TypeVar("T")


class UnknownEmbeddings(ValueError):
    """A prompt names embeddings that no folder has (`names`, as written)."""

    def __init__(self, names: list[str], message: str | None = None) -> None:
        self.names = names
        super().__init__(message or "; ".join(f"unknown embedding {n!r}" for n in names))


def _escape(text: str) -> str:
    return text.replace("\\)", _CLOSE).replace("\\(", _OPEN)


def _unescape(text: str) -> str:
    return text.replace(_CLOSE, ")").replace(_OPEN, "(")


def _top_level_groups(text: str) -> list[str]:
    """Split text into plain runs and top-level `( ... )` groups (brackets kept). An
    unbalanced `)` is kept as text; an unclosed `(` runs to the end."""
    items: list[str] = []
    current = ""
    depth = 0
    for char in text:
        if char == "(":
            if depth == 0 and current:
                items.append(current)
                current = ""
            current += char
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                items.append(current + char)
                current = ""
            else:
                current += char
        else:
            current += char
    if current:
        items.append(current)
    return items


def _weighted(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for item in _top_level_groups(text):
        if len(item) >= 2 and item[0] == "(" and item[-1] == ")":
            inner = item[1:-1]
            inner_weight = weight * EMPHASIS
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner_weight = float(inner[colon + 1:])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out += _weighted(inner, inner_weight)
        else:
            out.append((item, weight))
    return out


def weighted_segments(text: str) -> list[tuple[str, float]]:
    """The prompt as (text, weight) runs, in order, escapes resolved."""
    return [(_unescape(part), w) for part, w in _weighted(_escape(text), 1.0)]


def _split_reference(word: str) -> tuple[str, str]:
    """(name, text after it) of a word starting with `embedding:`."""
    pieces = word[len(EMBEDDING):].strip("\n").split()
    return (pieces[0], " ".join(pieces[1:])) if pieces else ("", "")


def _resolve(word: str, lookup: Callable[[str], T | None] | None
             ) -> tuple[T | None, str, str]:
    """(what the lookup found or None, the name tried last, the text left to tokenize)
    for a reference: the name as written, then without trailing commas."""
    name, leftover = _split_reference(word)
    found = lookup(name) if lookup is not None and name else None
    stripped = name.strip(",")
    if found is None and len(stripped) < len(name):
        found = lookup(stripped) if lookup is not None and stripped else None
        return found, stripped, f"{name[len(stripped):]} {leftover}"
    return found, name, leftover


def prompt_words(text: str, lookup: Callable[[str], T | None] | None = None
                 ) -> list[tuple[str | T, float]]:
    """The pieces to tokenize one by one, with their weights: text, or what `lookup` found
    for an embedding reference. Raises `UnknownEmbeddings` (all of them) for names the
    lookup does not find; without a lookup, references are dropped with a warning."""
    out: list[tuple[str | T, float]] = []
    missing: list[str] = []
    for segment, weight in weighted_segments(text):
        first, *rest = _EMBEDDING_SPLIT.split(segment)
        for word in [first, *(EMBEDDING + r for r in rest)]:
            if word.startswith(EMBEDDING):
                found, name, word = _resolve(word, lookup)
                if found is not None:
                    out.append((found, weight))
                elif lookup is None or not name:
                    log.warning("embedding %r ignored: %s", name, "no embedding folders to "
                                "look in" if name else "no name after `embedding:`")
                else:
                    missing.append(name)
            if word:
                out.append((word, weight))
    if missing:
        raise UnknownEmbeddings(list(dict.fromkeys(missing)))
    return out
