"""ComfyUI's prompt syntax: `(words:1.2)` weights, `(words)` emphasis, `\\(` escapes and
`embedding:name` references, read the way its CLIPTextEncode reads them.

A group in parentheses multiplies the weight around it by 1.1, unless it ends in `:number`,
which then sets the weight outright; groups nest. Escaped parentheses are literal text.
Words that name an embedding (`embedding:name`) are split off; this pack does not load
embeddings yet, and ComfyUI drops a reference whose file it cannot find, so the reference
is dropped here too (with a warning) and the text after it is kept.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger("noodle.comfyui")

EMPHASIS = 1.1
EMBEDDING = "embedding:"
# Placeholders for escaped parentheses while the groups are found.
_OPEN, _CLOSE = "\0\2", "\0\1"
_EMBEDDING_SPLIT = re.compile(f" {EMBEDDING}|\n{EMBEDDING}")


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


def _drop_embedding(word: str) -> str:
    """The text left after a reference to an embedding we cannot load."""
    rest = word[len(EMBEDDING):].strip("\n")
    pieces = rest.split()
    name, leftover = (pieces[0], " ".join(pieces[1:])) if pieces else ("", "")
    log.warning("embedding %r: embeddings are not loaded by this pack yet; ignored", name)
    stripped = name.strip(",")
    if len(stripped) < len(name):
        return f"{name[len(stripped):]} {leftover}"
    return leftover


def prompt_words(text: str) -> list[tuple[str, float]]:
    """The (text, weight) pieces to tokenize one by one, embedding references removed."""
    out: list[tuple[str, float]] = []
    for segment, weight in weighted_segments(text):
        first, *rest = _EMBEDDING_SPLIT.split(segment)
        for word in [first, *(EMBEDDING + r for r in rest)]:
            if word.startswith(EMBEDDING):
                word = _drop_embedding(word)
            if word:
                out.append((word, weight))
    return out
